"""The hand-encoded $batch against Azurite: the same rows, types, ETags and errors as the SDK's own calls."""
from datetime import datetime, timezone

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableServiceClient

from sync.adapters.table_wire import query, submit

STAMP = datetime(2026, 11, 27, 9, 30, 15, 250000, tzinfo=timezone.utc)
PK = "org%2F1 'quoted' Zoë"


@pytest.fixture
async def tables(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    client = await service.create_table("batchcodec")
    yield service, client
    await service.delete_table("batchcodec")
    await service.close()


async def test_rows_written_by_the_codec_read_back_like_the_sdks(tables):
    _, table = tables
    row = {"PartitionKey": PK, "RowKey": "it's|me", "name": "Zoë \"Z\" <b>", "n": 7, "x": 1.5,
           "on": True, "at": STAMP, "none": None}
    await table.create_entity({**row, "RowKey": "by-sdk"})
    result = await submit(table, [("create", row), ("create", {"PartitionKey": PK, "RowKey": "second"})])
    mine, sdks = await table.get_entity(PK, "it's|me"), await table.get_entity(PK, "by-sdk")
    assert {k: v for k, v in mine.items() if k != "RowKey"} == {k: v for k, v in sdks.items() if k != "RowKey"}
    assert mine["at"] == STAMP and mine["n"] == 7 and "none" not in mine
    assert result[0]["etag"] == mine.metadata["etag"] and result[1]["etag"]


async def test_updates_merges_and_deletes_with_and_without_etags(tables):
    _, table = tables
    (created,) = await submit(table, [("create", {"PartitionKey": PK, "RowKey": "a", "v": 1, "keep": "k"})])
    await submit(table, [("create", {"PartitionKey": PK, "RowKey": "b", "v": 1}),
                         ("create", {"PartitionKey": PK, "RowKey": "c", "v": 1})])
    await submit(table, [
        ("update", {"PartitionKey": PK, "RowKey": "a", "v": 2}, {"mode": UpdateMode.MERGE, "etag": created["etag"],
                                                                 "match_condition": MatchConditions.IfNotModified}),
        ("update", {"PartitionKey": PK, "RowKey": "b", "v": 2}, {"mode": UpdateMode.REPLACE}),
        ("delete", {"PartitionKey": PK, "RowKey": "c"}),
        ("upsert", {"PartitionKey": PK, "RowKey": "d", "v": 4}, {"mode": UpdateMode.MERGE}),
    ])
    rows = {e["RowKey"]: dict(e) async for e in table.list_entities()}
    assert rows["a"]["v"] == 2 and rows["a"]["keep"] == "k"
    assert rows["b"]["v"] == 2 and set(rows) == {"a", "b", "d"}

    with pytest.raises(TableTransactionError) as stale:  # the first ETag is no longer current
        await submit(table, [("create", {"PartitionKey": PK, "RowKey": "e"}),
                             ("update", {"PartitionKey": PK, "RowKey": "a", "v": 3},
                              {"mode": UpdateMode.REPLACE, "etag": created["etag"],
                               "match_condition": MatchConditions.IfNotModified})])
    assert (stale.value.index, stale.value.error_code) == (1, "UpdateConditionNotSatisfied")
    with pytest.raises(TableTransactionError) as exists:
        await submit(table, [("create", {"PartitionKey": PK, "RowKey": "f"}), ("create", {"PartitionKey": PK, "RowKey": "f2"}),
                             ("create", {"PartitionKey": PK, "RowKey": "b"})])
    assert (exists.value.index, exists.value.error_code) == (2, "EntityAlreadyExists")
    with pytest.raises(TableTransactionError) as missing:
        await submit(table, [("delete", {"PartitionKey": PK, "RowKey": "nope"})])
    assert (missing.value.index, missing.value.error_code) == (0, "ResourceNotFound")
    assert {e["RowKey"] async for e in table.list_entities()} == {"a", "b", "d"}  # nothing of a failed changeset


async def test_a_missing_table_is_an_http_error_with_the_services_status(tables):
    service, _ = tables
    with pytest.raises(HttpResponseError) as failed:
        await submit(service.get_table_client("nosuchtable"), [("create", {"PartitionKey": "a", "RowKey": "b"})])
    assert failed.value.status_code in (400, 404)


async def test_query_pages_through_everything_and_answers_like_query_entities(tables):
    _, table = tables
    other = "org-b"
    ops = [("create", {"PartitionKey": PK, "RowKey": f"r{i:03d}", "i": i, "even": i % 2 == 0, "at": STAMP,
                       "name": f"O'Brien {i}", "big": (2**40 + i, "Edm.Int64")}) for i in range(95)]
    for chunk in (ops[:50], ops[50:]):
        await submit(table, chunk)
    await submit(table, [("create", {"PartitionKey": other, "RowKey": "r001", "i": 1, "even": False})])

    mine = [e async for e in query(table, "PartitionKey eq @pk and even eq true", {"pk": PK}, page_size=7)]
    sdks = [e async for e in table.query_entities("PartitionKey eq @pk and even eq true", parameters={"pk": PK})]
    assert [e["RowKey"] for e in mine] == [e["RowKey"] for e in sdks] and len(mine) == 48
    first = mine[0]
    assert (first["i"], first["even"], first["at"], first["name"], first["big"]) == (0, True, STAMP, "O'Brien 0", 2**40)
    assert not any(k.startswith("odata.") or "@odata" in k for k in first)

    selected = [e async for e in query(table, "PartitionKey eq @pk and i lt @n", {"pk": PK, "n": 3}, select=["i"])]
    assert [e["i"] for e in selected] == [0, 1, 2] and "name" not in selected[0]


async def test_query_parameters_cannot_change_the_filter(tables):
    _, table = tables
    await submit(table, [("create", {"PartitionKey": PK, "RowKey": "a", "name": "x"})])
    hostile = "x' or PartitionKey ne 'nothing"
    assert [e async for e in query(table, "PartitionKey eq @pk and name eq @name", {"pk": PK, "name": hostile})] == []
    assert [e["RowKey"] async for e in query(table, "PartitionKey eq @pk and name eq @name", {"pk": PK, "name": "x"})] == ["a"]


async def test_query_of_a_missing_table_is_an_http_error(tables):
    service, _ = tables
    with pytest.raises(HttpResponseError) as failed:
        [e async for e in query(service.get_table_client("nosuchtable"), "PartitionKey eq @pk", {"pk": "a"})]
    assert failed.value.status_code == 404


EVERY_KIND = {
    "separators": "line\u2028para\u2029next\u0085end",
    "astral": "Grinning \U0001F600 and \U00020000 (CJK ext. B)",
    "combining": "Zoe\u0301 e\u0308 n\u0303",
    "right_to_left": "\u202eevil\u202c نور الهدى עברית",
    "quotes": "'single' \"double\" `back` \u2018curly\u2019",
    "backslashes": "C:\\path\\ \\u0041 \\\\ \\n",
    "controls": "tab\there\u200bzero-width\ufeffbom",
}


async def test_every_kind_of_directory_character_is_written_and_read_back(tables):
    """A batch carrying any of these answered 500 from Azurite when sent unescaped; now as the SDK writes them."""
    _, table = tables
    rows = [{"PartitionKey": PK, "RowKey": f"u-{kind}", "displayName": text, "mail": f"{kind}@x.example"}
            for kind, text in EVERY_KIND.items()]
    await submit(table, [("create", row) for row in rows])
    for row in rows:
        stored = await table.get_entity(PK, row["RowKey"])
        assert stored["displayName"] == row["displayName"], row["RowKey"]
    found = [e async for e in query(table, "PartitionKey eq @pk", {"pk": PK}, select=["RowKey", "displayName"])]
    assert {e["RowKey"]: e["displayName"] for e in found if e["RowKey"].startswith("u-")} == \
        {r["RowKey"]: r["displayName"] for r in rows}
