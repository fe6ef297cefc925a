"""Azurite as the local stack starts it: local/azurite_speedups.js preloaded, answering like stock Azurite except
that it refuses, with Table Storage's error codes, the entities Table Storage refuses."""
import json
import shutil
import subprocess
import uuid
from datetime import datetime, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableServiceClient, TableTransactionError, UpdateMode

from local.azurite import ROOT, SPEEDUPS, Azurite

PARTITIONS = ["org-a", "org-b", "org-c"]


@pytest.fixture
def table(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    client = service.create_table("pointlookups")
    yield client
    service.delete_table("pointlookups")


def test_rows_sharing_a_row_key_stay_apart_in_every_operation(table):
    """The preload looks the RowKey up first; the PartitionKey must still pick the one row of that partition."""
    for n, pk in enumerate(PARTITIONS):
        table.create_entity({"PartitionKey": pk, "RowKey": "same-id", "n": n})
    assert [table.get_entity(pk, "same-id")["n"] for pk in PARTITIONS] == [0, 1, 2]

    with pytest.raises(ResourceExistsError):
        table.create_entity({"PartitionKey": "org-b", "RowKey": "same-id", "n": 9})
    table.update_entity({"PartitionKey": "org-b", "RowKey": "same-id", "m": "merged"}, mode=UpdateMode.MERGE)
    table.update_entity({"PartitionKey": "org-c", "RowKey": "same-id", "n": 7}, mode=UpdateMode.REPLACE)
    table.submit_transaction([("delete", {"PartitionKey": "org-a", "RowKey": "same-id"}),
                              ("create", {"PartitionKey": "org-a", "RowKey": "other", "n": 3})])

    with pytest.raises(ResourceNotFoundError):
        table.get_entity("org-a", "same-id")
    assert table.get_entity("org-b", "same-id")["n"] == 1 and table.get_entity("org-b", "same-id")["m"] == "merged"
    assert table.get_entity("org-c", "same-id")["n"] == 7 and "m" not in table.get_entity("org-c", "same-id")
    rows = sorted((e["PartitionKey"], e["RowKey"]) for e in table.list_entities())
    assert rows == [("org-a", "other"), ("org-b", "same-id"), ("org-c", "same-id")]
    with pytest.raises(ResourceNotFoundError):
        table.get_entity("org-d", "same-id")


NODE_CHECK = r"""
const Loki = require(require.resolve("lokijs", { paths: [require("path").dirname(require.resolve("azurite/package.json"))] }));
const patched = Loki.Collection.prototype.findOne;
const db = new Loki("check");
const coll = db.addCollection("entities", { indices: ["PartitionKey", "RowKey"] });
let seed = 7;
const rnd = (n) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
for (let i = 0; i < 3000; i++) {
  const doc = { PartitionKey: "p" + rnd(5), RowKey: "r" + rnd(400), n: i };
  if (!coll.find({ PartitionKey: doc.PartitionKey, RowKey: doc.RowKey }).length) coll.insert(doc);
  if (i % 7 === 0) { const gone = coll.findOne({ PartitionKey: "p" + rnd(5), RowKey: "r" + rnd(400) }); if (gone) coll.remove(gone); }
}
let checked = 0, mismatches = 0;
for (let p = 0; p < 6; p++) for (let r = 0; r < 410; r++) {
  const q = { PartitionKey: "p" + p, RowKey: "r" + r };
  const want = coll.data.find((d) => d.PartitionKey === q.PartitionKey && d.RowKey === q.RowKey) || null;
  if (coll.findOne(q) !== want) mismatches++;
  checked++;
}
const store = require(require("path").join(require("path").dirname(require.resolve("azurite/package.json")),
  "dist/src/table/persistence/LokiTableMetadataStore")).default;
const queries = store.prototype.queryTableEntities.toString().includes("pinned(");
console.log(JSON.stringify({ replaced: patched.toString().includes("RowKey: query.RowKey"), queries, checked, mismatches }));
"""


def test_preloaded_find_one_answers_like_a_full_scan():
    node = shutil.which("node")
    assert node, "node runs Azurite; the local stack needs it on PATH"
    out = subprocess.run([node, "--require", str(SPEEDUPS), "-e", NODE_CHECK], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result == {"replaced": True, "queries": True, "checked": 2460, "mismatches": 0}


FILTERS = [
    "PartitionKey eq 'p1'",
    "PartitionKey eq 'p1' and n ge 10",
    "(PartitionKey eq 'it''s') and (kind eq 'user')",
    "kind eq 'user' and PartitionKey eq 'p2' and n lt 30",
    "PartitionKey eq 'p1' and name eq 'x or not y'",
    "PartitionKey eq 'p1' or PartitionKey eq 'p2'",
    "not (PartitionKey eq 'p1')",
    "RowKey ge '10' and RowKey lt '5'",
    "PartitionKey ge 'p1' and PartitionKey lt 'p3'",
    "PartitionKey eq 'p1' and PartitionKey eq 'p2'",
    "PartitionKey eq 'nothing'",
    "PartitionKey eq 'p1' and subscriptionId eq 's' and flag eq true",
    "(flag eq false) and PartitionKey eq 'p2'",
    "PartitionKey eq 'p1' and flag eq TRUE and n lt 40",
]


def _load(client, rows) -> None:
    for pk in {r["PartitionKey"] for r in rows}:
        batch = [("upsert", r) for r in rows if r["PartitionKey"] == pk]
        for i in range(0, len(batch), 100):
            client.submit_transaction(batch[i:i + 100])


def _paged(client, query: str, per_page: int, between=None) -> list[tuple]:
    out = []
    for n, page in enumerate(client.query_entities(query, results_per_page=per_page).by_page()):
        out += [(e["PartitionKey"], e["RowKey"], tuple(sorted((k, v) for k, v in e.items() if k != "Timestamp")))
                for e in page]
        if between and n == 0:
            between(client)
    return out


def test_query_pages_answer_like_stock_azurite(azurite):
    """Differential: the preloaded query path against stock Azurite, including writes between two pages."""
    flags = [True, False, "true", None]  # None: the property is absent
    rows = [{"PartitionKey": pk, "RowKey": rk, "n": i, "kind": "user" if i % 3 else "claim", "name": "x or not y",
             "subscriptionId": "s", **({"flag": flags[i % 4]} if flags[i % 4] is not None else {})}
            for pk in ("p1", "p2", "it's", "p10") for i, rk in enumerate(
                ["10", "9", "010", "1e3", "a", "B", "|n|x", "Zoë", "z", *[f"u{j:03d}" for j in range(60)]])]

    def write_between(client) -> None:  # before and after the continuation, a merge, a replace and a delete
        client.upsert_entity({"PartitionKey": "p1", "RowKey": "0000", "n": 1, "kind": "user"})
        client.upsert_entity({"PartitionKey": "p1", "RowKey": "zzzz", "n": 99, "kind": "user"})
        client.upsert_entity({"PartitionKey": "p1", "RowKey": "u030", "merged": True}, mode=UpdateMode.MERGE)
        client.update_entity({"PartitionKey": "p1", "RowKey": "u031", "n": -31}, mode=UpdateMode.REPLACE)
        client.submit_transaction([("upsert", {"PartitionKey": "p1", "RowKey": "u032", "batch": 1}, {"mode": "merge"}),
                                   ("create", {"PartitionKey": "p1", "RowKey": "u0325"})])
        client.delete_entity("p1", "u059")

    stock = Azurite(speedups=False).start()
    try:
        answers = {}
        for name, server in (("preloaded", azurite), ("stock", stock)):
            service = TableServiceClient.from_connection_string(server.connection_string)
            table = f"differential{name}"
            client = service.create_table(table)
            try:
                _load(client, rows)
                answers[name] = [_paged(client, f, per) for f in FILTERS for per in (1000, 7, 1)]
                answers[name].append(_paged(client, "PartitionKey eq 'p1'", 5, between=write_between))
            finally:
                service.delete_table(table)
    finally:
        stock.stop()
    assert answers["preloaded"] == answers["stock"]
    assert len(answers["stock"][0]) == 69
    last = {(pk, rk): dict(props) for pk, rk, props in answers["stock"][-1]}
    assert ("p1", "zzzz") in last and ("p1", "u059") not in last and ("p1", "u0325") in last
    assert last[("p1", "u030")]["merged"] is True and last[("p1", "u031")]["n"] == -31 and "kind" not in last[("p1", "u031")]


# Table Storage's entity limits (local/azurite_speedups.js, section 3), checked on the entity a write would store:
# https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model,
# codes from https://learn.microsoft.com/rest/api/storageservices/table-service-error-codes.
MAX_PROPERTIES = 252  # 255 with PartitionKey, RowKey and Timestamp
MIB = 1024 * 1024


@pytest.fixture
def limits(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    client = service.create_table("entitylimits")
    yield client
    service.delete_table("entitylimits")


def _refused(call, *args, **kwargs) -> str:
    """The error code a refused write answered (create_entity re-raises the SDK's undecoded error, without
    .error_code: the service's x-ms-error-code header is there either way)."""
    with pytest.raises(HttpResponseError) as raised:
        call(*args, **kwargs)
    assert raised.value.status_code == 400
    return raised.value.response.headers["x-ms-error-code"]


def _props(n: int, start: int = 0) -> dict:
    """n custom properties of mixed types; strings and datetimes go out with an @odata.type annotation each."""
    kinds = [lambda i: i, lambda i: f"v{i}", lambda i: datetime(2024, 1, 1, tzinfo=timezone.utc), lambda i: i % 2 == 0]
    return {f"p{i:03d}": kinds[i % 4](i) for i in range(start, start + n)}


def _custom(entity) -> set[str]:
    return set(entity) - {"PartitionKey", "RowKey"}


def test_an_entity_holds_at_most_252_custom_properties(limits):
    limits.create_entity({"PartitionKey": "p", "RowKey": "full", **_props(MAX_PROPERTIES)})
    assert len(_custom(limits.get_entity("p", "full"))) == MAX_PROPERTIES

    over = {"PartitionKey": "p", "RowKey": "over", **_props(MAX_PROPERTIES + 1)}
    assert _refused(limits.create_entity, over) == "TooManyProperties"
    assert _refused(limits.upsert_entity, over, mode=UpdateMode.REPLACE) == "TooManyProperties"  # the insert path
    assert _refused(limits.update_entity, {**over, "RowKey": "full"}, mode=UpdateMode.REPLACE) == "TooManyProperties"
    with pytest.raises(ResourceNotFoundError):
        limits.get_entity("p", "over")
    assert _custom(limits.get_entity("p", "full")) == set(_props(MAX_PROPERTIES))


def test_merges_stop_at_252_properties_and_a_replace_that_drops_some_is_accepted(limits):
    limits.create_entity({"PartitionKey": "p", "RowKey": "grown", **_props(MAX_PROPERTIES - 2)})
    for i in (MAX_PROPERTIES - 2, MAX_PROPERTIES - 1):  # one property a merge, up to 252
        limits.update_entity({"PartitionKey": "p", "RowKey": "grown", **_props(1, start=i)}, mode=UpdateMode.MERGE)
    assert len(_custom(limits.get_entity("p", "grown"))) == MAX_PROPERTIES

    one_more = {"PartitionKey": "p", "RowKey": "grown", "extra": 1}
    assert _refused(limits.update_entity, one_more, mode=UpdateMode.MERGE) == "TooManyProperties"
    assert _refused(limits.upsert_entity, one_more, mode=UpdateMode.MERGE) == "TooManyProperties"
    row = limits.get_entity("p", "grown")
    assert _custom(row) == set(_props(MAX_PROPERTIES)) and row["p000"] == 0
    # Overwriting properties it has is not growing: the merged entity still has 252.
    limits.update_entity({"PartitionKey": "p", "RowKey": "grown", "p000": "changed", "p001": None},
                         mode=UpdateMode.MERGE)
    assert limits.get_entity("p", "grown")["p000"] == "changed"

    limits.update_entity({"PartitionKey": "p", "RowKey": "grown", **_props(10)}, mode=UpdateMode.REPLACE)
    limits.update_entity(one_more, mode=UpdateMode.MERGE)
    assert _custom(limits.get_entity("p", "grown")) == set(_props(10)) | {"extra"}


def test_a_transaction_with_an_over_limit_operation_fails_as_a_whole_with_its_index(limits):
    limits.create_entity({"PartitionKey": "p", "RowKey": "full", **_props(MAX_PROPERTIES)})
    limits.create_entity({"PartitionKey": "p", "RowKey": "small", "n": 1})
    with pytest.raises(TableTransactionError) as raised:
        limits.submit_transaction([
            ("create", {"PartitionKey": "p", "RowKey": "new", "n": 2}),
            ("upsert", {"PartitionKey": "p", "RowKey": "small", "m": 3}, {"mode": "merge"}),
            ("upsert", {"PartitionKey": "p", "RowKey": "full", "extra": 1}, {"mode": "merge"}),
            ("create", {"PartitionKey": "p", "RowKey": "after", "n": 4}),
        ])
    assert raised.value.error_code == "TooManyProperties" and raised.value.index == 2
    assert raised.value.status_code == 400

    with pytest.raises(TableTransactionError) as raised:  # a create over the limit, second in its batch
        limits.submit_transaction([("delete", {"PartitionKey": "p", "RowKey": "small"}),
                                   ("create", {"PartitionKey": "p", "RowKey": "over", **_props(MAX_PROPERTIES + 1)})])
    assert raised.value.error_code == "TooManyProperties" and raised.value.index == 1

    rows = {e["RowKey"]: e for e in limits.list_entities()}
    assert set(rows) == {"full", "small"}
    assert dict(rows["small"]) == {"PartitionKey": "p", "RowKey": "small", "n": 1}
    assert _custom(rows["full"]) == set(_props(MAX_PROPERTIES))


def _size(entity: dict) -> int:
    """Microsoft's entity size: 4 + 2 * len(PartitionKey + RowKey) + for each property 8 + 2 * len(name) + its
    value (String 4 + 2 per UTF-16 code unit, Binary 4 + bytes, Boolean 1, Int32 4, Int64/Double/DateTime 8,
    Guid 16)."""
    def value(v):
        if isinstance(v, EntityProperty):
            return {EdmType.INT64: 8}[v.edm_type]
        if isinstance(v, bool):
            return 1
        if isinstance(v, str):
            return 4 + len(v.encode("utf-16-le"))
        if isinstance(v, bytes):
            return 4 + len(v)
        return {int: 4, float: 8, datetime: 8, uuid.UUID: 16}[type(v)]

    size = 4 + 2 * (len(entity["PartitionKey"]) + len(entity["RowKey"]))
    return size + sum(8 + 2 * len(k) + value(v) for k, v in entity.items() if k not in ("PartitionKey", "RowKey"))


def test_an_entity_over_1_mib_by_the_formula_is_refused_written_at_once_or_by_merges(limits):
    base = {"PartitionKey": "p", "RowKey": "big", **{f"s{i:02d}": "x" * 30_000 for i in range(17)},
            "i32": 7, "i64": EntityProperty(2**40, EdmType.INT64), "dbl": 0.5, "yes": True, "no": False,
            "when": datetime(2024, 1, 1, tzinfo=timezone.utc), "id": uuid.uuid4(), "blob": b"\x00" * 1000}
    pad = (MIB - _size(base) - (8 + 2 * len("pad") + 4)) // 2
    exact = {**base, "pad": "y" * pad}
    assert _size(exact) == MIB
    assert _refused(limits.create_entity, {**exact, "pad": "y" * (pad + 1)}) == "EntityTooLarge"
    limits.create_entity(exact)  # exactly 1 MiB is allowed
    assert limits.get_entity("p", "big")["pad"] == "y" * pad

    limits.update_entity({"PartitionKey": "p", "RowKey": "big", "s00": "z" * 30_000}, mode=UpdateMode.MERGE)
    grow = {"PartitionKey": "p", "RowKey": "big", "flag": True}  # 8 + 8 + 1 bytes more
    assert _refused(limits.update_entity, grow, mode=UpdateMode.MERGE) == "EntityTooLarge"
    longer = {"PartitionKey": "p", "RowKey": "big", "s01": "z" * 30_001}
    assert _refused(limits.update_entity, longer, mode=UpdateMode.MERGE) == "EntityTooLarge"
    with pytest.raises(TableTransactionError) as raised:
        limits.submit_transaction([("create", {"PartitionKey": "p", "RowKey": "other"}),
                                   ("upsert", grow, {"mode": "merge"})])
    assert raised.value.error_code == "EntityTooLarge" and raised.value.index == 1
    row = limits.get_entity("p", "big")
    assert "flag" not in row and row["s00"] == "z" * 30_000 and row["s01"] == "x" * 30_000
    with pytest.raises(ResourceNotFoundError):
        limits.get_entity("p", "other")

    # Reached one merge at a time: 17 strings of 30,000 characters fit, the 18th does not (no request is large).
    grown = {"PartitionKey": "p", "RowKey": "merged"}
    limits.create_entity(grown)
    for i in range(18):
        merge = {"PartitionKey": "p", "RowKey": "merged", f"m{i:02d}": "x" * 30_000}
        grown.update(merge)
        if _size(grown) <= MIB:
            limits.update_entity(merge, mode=UpdateMode.MERGE)
        else:
            assert i == 17 and _size(grown) > MIB
            assert _refused(limits.update_entity, merge, mode=UpdateMode.MERGE) == "EntityTooLarge"
    assert len(_custom(limits.get_entity("p", "merged"))) == 17


def test_a_string_over_32k_utf16_code_units_or_a_binary_over_64_kib_is_refused(limits):
    astral = "\N{GRINNING FACE}"  # one Python character, two UTF-16 code units
    fits = "a" * (32 * 1024 - 2) + astral
    limits.create_entity({"PartitionKey": "p", "RowKey": "fits", "s": fits, "b": b"\x01" * (64 * 1024)})
    assert limits.get_entity("p", "fits")["s"] == fits

    over = "a" * (32 * 1024 - 1) + astral  # 32,768 Python characters, 32,769 code units
    assert len(over) == 32 * 1024
    assert _refused(limits.create_entity, {"PartitionKey": "p", "RowKey": "over", "s": over}) == "PropertyValueTooLarge"
    assert _refused(limits.update_entity, {"PartitionKey": "p", "RowKey": "fits", "s": over},
                    mode=UpdateMode.MERGE) == "PropertyValueTooLarge"
    blob = {"PartitionKey": "p", "RowKey": "over", "b": b"\x01" * (64 * 1024 + 1)}
    assert _refused(limits.create_entity, blob) == "PropertyValueTooLarge"
    with pytest.raises(ResourceNotFoundError):
        limits.get_entity("p", "over")
    assert limits.get_entity("p", "fits")["s"] == fits


def test_keys_over_1_kib_or_with_a_disallowed_character_are_refused_as_table_storage_does(limits):
    """Issue 22 #7: Azurite stored them; Table Storage answers 400 (understanding-the-table-service-data-model)."""
    longest = "k" * 512  # 1 KiB of UTF-16
    limits.create_entity({"PartitionKey": longest, "RowKey": longest, "n": 1})
    limits.create_entity({"PartitionKey": "%2F%23", "RowKey": "ü " * 256, "n": 1})  # escapes and spaces are fine
    for pk, rk in [(longest + "k", "r"), ("p", longest + "k"), ("é" * 513, "r"), ("p", "🙂" * 257)]:
        assert _refused(limits.create_entity, {"PartitionKey": pk, "RowKey": rk}) == "KeyValueTooLarge"
        assert _refused(limits.upsert_entity, {"PartitionKey": pk, "RowKey": rk}, mode=UpdateMode.REPLACE) == \
            "KeyValueTooLarge"
    for bad in ["a/b", "a\\b", "a#b", "a?b", "tab\there", "nul\x00", "del\x7f", "c1\x85", "c1\x9f"]:
        assert _refused(limits.create_entity, {"PartitionKey": bad, "RowKey": "r"}) == "OutOfRangeInput", bad
        assert _refused(limits.create_entity, {"PartitionKey": "p", "RowKey": bad}) == "OutOfRangeInput", bad
    with pytest.raises(TableTransactionError) as raised:
        limits.submit_transaction([("create", {"PartitionKey": "q", "RowKey": "fine"}),
                                   ("upsert", {"PartitionKey": "q", "RowKey": "x" * 513}, {"mode": "merge"})])
    assert raised.value.error_code == "KeyValueTooLarge" and raised.value.index == 1
    assert {(e["PartitionKey"][:3], len(e["RowKey"])) for e in limits.list_entities()} == {("kkk", 512), ("%2F", 512)}
    for pk, rk, code in [("p", "x" * 513, "KeyValueTooLarge"), ("é" * 513, "r", "KeyValueTooLarge"),
                         ("p", "a#b", "OutOfRangeInput"), ("p\x01", "r", "OutOfRangeInput")]:
        assert _refused(limits.get_entity, pk, rk) == code  # Azurite answered 404: a read names a key too
        assert _refused(limits.delete_entity, pk, rk) == code
    assert limits.get_entity(longest, longest)["n"] == 1
