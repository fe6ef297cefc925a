"""The $batch codec of the Table adapter: what it writes and how it reads the service's answers."""
import email
import json
from datetime import datetime, timezone

import pytest
from azure.core import MatchConditions
from azure.data.tables import UpdateMode

from sync.adapters.table_wire import Part, decode, encode, transaction_error

ENDPOINT = "https://acct.table.core.windows.net"


def _parts(content_type: str, body: bytes) -> list[tuple[str, dict, bytes]]:
    """Parse our request with the standard library's MIME parser: request line, headers, body of each operation."""
    message = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    (changeset,) = message.get_payload()
    out = []
    for part in changeset.get_payload():
        raw = part.get_payload(decode=True)  # the bytes as sent (binary transfer encoding)
        head, _, payload = raw.partition(b"\r\n\r\n")
        line, *headers = head.decode().split("\r\n")
        out.append((line, dict(h.split(": ", 1) for h in headers), payload.rstrip(b"\r\n")))
    return out


def test_each_operation_becomes_one_http_request_the_mime_parser_reads_back():
    stamp = datetime(2026, 11, 27, 9, 30, tzinfo=timezone.utc)
    ops = [
        ("create", {"PartitionKey": "org%2F1", "RowKey": "u1", "name": "Zoë \"Z\" O'Neil", "n": 7, "on": True, "at": stamp}),
        ("update", {"PartitionKey": "org%2F1", "RowKey": "it's|me"}, {"mode": UpdateMode.REPLACE, "etag": 'W/"dt\'1\'"',
                                                                       "match_condition": MatchConditions.IfNotModified}),
        ("update", {"PartitionKey": "org%2F1", "RowKey": "u3", "g_x": True}, {"mode": UpdateMode.MERGE}),
        ("upsert", {"PartitionKey": "org%2F1", "RowKey": "u4"}, {"mode": UpdateMode.REPLACE}),
        ("delete", {"PartitionKey": "org%2F1", "RowKey": "|n|abc"}),
    ]
    content_type, body = encode(ENDPOINT, "Users", ops)
    parts = _parts(content_type, body)
    assert [p[0] for p in parts] == [
        f"POST {ENDPOINT}/Users HTTP/1.1",
        f"PUT {ENDPOINT}/Users(PartitionKey='org%252F1',RowKey='it%27%27s%7Cme') HTTP/1.1",
        f"PATCH {ENDPOINT}/Users(PartitionKey='org%252F1',RowKey='u3') HTTP/1.1",
        f"PUT {ENDPOINT}/Users(PartitionKey='org%252F1',RowKey='u4') HTTP/1.1",
        f"DELETE {ENDPOINT}/Users(PartitionKey='org%252F1',RowKey='%7Cn%7Cabc') HTTP/1.1",
    ]
    for _, headers, payload in parts:
        assert int(headers.get("Content-Length", 0)) == len(payload)
    created = json.loads(parts[0][2])
    assert created["name"] == "Zoë \"Z\" O'Neil" and created["n"] == 7 and created["on"] is True
    assert (created["at"], created["at@odata.type"]) == ("2026-11-27T09:30:00.000000Z", "Edm.DateTime")
    assert parts[0][1]["Prefer"] == "return-no-content"
    assert [p[1].get("If-Match") for p in parts] == [None, 'W/"dt\'1\'"', "*", None, "*"]


def test_unknown_operations_and_conditions_without_etag_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        encode(ENDPOINT, "Users", [("frobnicate", {"PartitionKey": "a", "RowKey": "b"})])
    with pytest.raises(ValueError, match="etag"):
        encode(ENDPOINT, "Users", [("update", {"PartitionKey": "a", "RowKey": "b"},
                                    {"match_condition": MatchConditions.IfNotModified})])


# Shaped like the service's answers in "Performing entity group transactions" (learn.microsoft.com).
SUCCESS = (
    "--batchresponse_e9b8\r\nContent-Type: multipart/mixed; boundary=changesetresponse_f27d\r\n\r\n"
    "--changesetresponse_f27d\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 201 Created\r\nContent-ID: 1\r\nContent-Type: application/json;odata=minimalmetadata\r\n"
    "ETag: W/\"datetime'2026-11-27T09%3A30%3A00.1Z'\"\r\n\r\n{\"PartitionKey\":\"a\",\"RowKey\":\"1\"}\r\n"
    "--changesetresponse_f27d\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nContent-ID: 2\r\nETag: W/\"datetime'2026-11-27T09%3A30%3A00.2Z'\"\r\n\r\n\r\n"
    "--changesetresponse_f27d--\r\n--batchresponse_e9b8--\r\n"
)
FAILURE = (
    "--batchresponse_e9b8\nContent-Type: multipart/mixed; boundary=changesetresponse_f27d\n\n"
    "--changesetresponse_f27d\nContent-Type: application/http\nContent-Transfer-Encoding: binary\n\n"
    "HTTP/1.1 409 Conflict\nContent-ID: 3\nContent-Type: application/json;odata=minimalmetadata;charset=utf-8\n\n"
    '{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US","value":"2:The specified entity '
    'already exists.\\nRequestId:1"}}}\n'
    "--changesetresponse_f27d--\n--batchresponse_e9b8--\n"
)


def test_a_successful_changeset_gives_each_operations_etag():
    parts = decode("multipart/mixed; boundary=batchresponse_e9b8", SUCCESS.encode())
    assert [p.status for p in parts] == [201, 204]
    assert [p.headers["etag"] for p in parts] == ["W/\"datetime'2026-11-27T09%3A30%3A00.1Z'\"",
                                                  "W/\"datetime'2026-11-27T09%3A30%3A00.2Z'\""]


def test_a_failed_changeset_names_the_operation_and_its_code():
    (part,) = decode('multipart/mixed; boundary="batchresponse_e9b8"', FAILURE.encode())
    exc = transaction_error(part)
    assert (exc.index, exc.error_code, exc.status_code) == (2, "EntityAlreadyExists", 409)
    assert "already exists" in exc.message


def test_answers_that_are_not_a_changeset_are_errors_not_silence():
    with pytest.raises(ValueError, match="multipart"):
        decode("application/json", b"{}")
    with pytest.raises(ValueError, match="HTTP answer"):
        decode("multipart/mixed; boundary=b", b"--b\r\nContent-Type: application/http\r\n\r\nnonsense\r\n--b--")
    exc = transaction_error(Part(500, {}, "<html>oops</html>"))
    assert (exc.index, exc.error_code, exc.status_code) == (0, None, 500)


def test_entity_properties_are_the_sdks_apart_from_redundant_string_annotations():
    import enum
    import uuid as uuidlib
    from datetime import timedelta

    from azure.data.tables._serialize import _add_entity_properties

    from sync.adapters.table_wire import _properties

    class Colour(str, enum.Enum):
        RED = "red"

    cet = timezone(timedelta(hours=1))
    entities = [
        {"PartitionKey": "p", "RowKey": "r", "s": "x", "b": False, "n": -(2**31), "m": 2**31 - 1, "none": None,
         "at": datetime(2026, 11, 27, 10, 0, 0, 5, tzinfo=cet)},
        {"PartitionKey": "p", "RowKey": "r", "naive": datetime(2026, 1, 1)},  # the SDK's rules, not ours
        {"PartitionKey": "p", "RowKey": "r", "colour": Colour.RED, "f": 0.5, "id": uuidlib.UUID(int=7),
         "big": (2**40, "Edm.Int64"), "raw": b"\x00\xff"},
    ]
    for entity in entities:
        sdk = _add_entity_properties(entity)
        expected = {k: v for k, v in sdk.items() if not (k.endswith("@odata.type") and v == "Edm.String")}
        assert {k: v for k, v in _properties(entity).items()
                if not (k.endswith("@odata.type") and v == "Edm.String")} == expected
    assert _properties(entities[0])["at"] == "2026-11-27T09:00:00.000005Z"
    with pytest.raises(TypeError):
        _properties({"PartitionKey": "p", "RowKey": "r", "huge": 2**40})  # as the SDK refuses it


def test_query_entities_convert_annotated_values_and_drop_metadata():
    import math

    from sync.adapters.table_wire import _entity

    raw = {"odata.etag": "W/\"x\"", "PartitionKey": "p", "RowKey": "r", "Timestamp": "2026-11-27T21:07:08.5866937Z",
           "Timestamp@odata.type": "Edm.DateTime", "at": "2026-01-02T03:04:05Z", "at@odata.type": "Edm.DateTime",
           "big": "1099511627776", "big@odata.type": "Edm.Int64", "f": "NaN", "f@odata.type": "Edm.Double",
           "raw": "AP8=", "raw@odata.type": "Edm.Binary", "g": "00000000-0000-0000-0000-000000000007",
           "g@odata.type": "Edm.Guid", "n": 5, "on": True, "s": "text"}
    e = _entity(raw)
    assert e["Timestamp"] == datetime(2026, 11, 27, 21, 7, 8, 586693, tzinfo=timezone.utc)
    assert e["at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert e["big"] == 2**40 and math.isnan(e["f"]) and e["raw"] == b"\x00\xff"
    assert (e["g"], e["n"], e["on"], e["s"]) == ("00000000-0000-0000-0000-000000000007", 5, True, "text")
    assert set(e) == {"PartitionKey", "RowKey", "Timestamp", "at", "big", "f", "raw", "g", "n", "on", "s"}
