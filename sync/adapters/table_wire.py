"""The Table service's wire format for the adapter's two hot paths, sent through the SDK client's own pipeline.

Transactions (``submit``): ``TableClient.submit_transaction`` builds every operation as an ``HttpRequest``,
serializes the changeset with the ``email`` package and parses the answer with it again. Profiled at 20,000 users,
that was 33 s of a 55 s Full Sync: the worker's CPU, not the store, set the pace. Here the same wire format (as
SDK 12.7 sends it and the Table service documents it) is written with string formatting and read with one split
per boundary. Queries (``query``): the SDK runs every page through its generated deserializer and then converts
each entity, about 45 µs an entity; a finalizer reads every user of a subscription. Here a page is ``json.loads``
and the few annotated types are converted.

Both go through the client's pipeline, so authentication (shared key or Entra token), retries, timeouts and the
transport are the SDK's, and errors are the SDK's types: a failed operation raises ``TableTransactionError``
with ``index`` and ``error_code``; a failed request ``HttpResponseError``. Filters are substituted by the SDK's
own ``_parameter_filter_substitution``, so parameters are quoted exactly as in ``query_entities``.
"""
from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterable, Mapping
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient, TableTransactionError, UpdateMode
from azure.data.tables._serialize import (  # the SDK's own rules, so values and filters mean what they mean there
    _add_entity_properties,
    _parameter_filter_substitution,
)

Operation = tuple  # ("create" | "update" | "upsert" | "delete", entity[, {"mode": ..., "etag": ..., ...}])

_BOUNDARY = re.compile(r'boundary="?([^";\s]+)"?', re.I)
_STATUS = re.compile(r"^HTTP/1\.[01] (\d{3})")
_INDEX = re.compile(r"^(\d+):")
_HEADER = re.compile(r"^([A-Za-z0-9-]+):[ \t]*([^\r\n]*)", re.M)


@dataclass
class Part:
    """One operation's answer inside the changeset."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


def encode(endpoint: str, table: str, operations: Iterable[Operation]) -> tuple[str, bytes]:
    """The ``$batch`` request body for one changeset, and its Content-Type."""
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    out = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
    for n, operation in enumerate(operations):
        kind, entity = operation[0], operation[1]
        options: Mapping[str, Any] = operation[2] if len(operation) > 2 else {}
        line, headers, body = _operation(endpoint, table, kind.lower(), entity, options)
        payload = body.encode("utf-8")
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out.append(f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                   f"Content-ID: {n}\r\n\r\n{line} HTTP/1.1\r\n{head}Content-Length: {len(payload)}\r\n\r\n")
        out.append(payload)
        out.append(b"\r\n")
    out.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n")
    return f"multipart/mixed; boundary={batch}", b"".join(p.encode("utf-8") if isinstance(p, str) else p for p in out)


def _operation(endpoint: str, table: str, kind: str, entity: Mapping[str, Any],
               options: Mapping[str, Any]) -> tuple[str, dict[str, str], str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json;odata=minimalmetadata",
               "DataServiceVersion": "3.0"}
    if kind == "create":
        headers["Prefer"] = "return-no-content"
        return f"POST {endpoint}/{table}", headers, _json(entity)
    address = f"{endpoint}/{table}(PartitionKey='{_key(entity['PartitionKey'])}',RowKey='{_key(entity['RowKey'])}')"
    mode = options.get("mode", UpdateMode.MERGE)
    verb = "PUT" if mode == UpdateMode.REPLACE else "PATCH"  # PATCH merges, as the SDK sends it
    if kind == "upsert":  # no If-Match: insert or replace/merge
        return f"{verb} {address}", headers, _json(entity)
    if_match = _if_match(options)
    if kind == "update":
        return f"{verb} {address}", {**headers, "If-Match": if_match}, _json(entity)
    if kind == "delete":
        return f"DELETE {address}", {"Accept": headers["Accept"], "DataServiceVersion": "3.0", "If-Match": if_match}, ""
    raise ValueError(f"unknown transaction operation {kind!r}")


def _if_match(options: Mapping[str, Any]) -> str:
    condition = options.get("match_condition")
    etag = options.get("etag")
    if condition == MatchConditions.IfNotModified:
        if not etag:
            raise ValueError("match_condition IfNotModified needs an etag")
        return str(etag)
    return "*"


def _key(value: Any) -> str:
    return quote(str(value).replace("'", "''"), safe="")


def _json(entity: Mapping[str, Any]) -> str:
    # Escaped like the SDK (json.dumps defaults): raw U+2028/U+2029 made Azurite answer 500 to the whole batch.
    return json.dumps(_properties(entity), separators=(",", ":"))


def _properties(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The entity's JSON properties. The types the adapter writes (str, bool, int32, aware datetime) are written
    here as the SDK writes them (a JSON string is an Edm.String without annotation); any other value hands the
    whole entity to the SDK's serializer, so its rules (Enum, Int64 tuples, bytes, UUID, errors) still apply."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        kind = type(value)
        if kind is str or kind is bool:
            out[name] = value
        elif value is None:
            continue
        elif kind is int and -(2**31) <= value < 2**31:
            out[name] = value
        elif kind is datetime and value.tzinfo is not None:
            out[name] = value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            out[f"{name}@odata.type"] = "Edm.DateTime"
        else:
            return _add_entity_properties(dict(entity))
    return out


def decode(content_type: str, body: bytes) -> list[Part]:
    """The operations' answers in a ``$batch`` response (a changeset nested in the batch, or parts directly)."""
    match = _BOUNDARY.search(content_type or "")
    if not match:
        raise ValueError(f"not a multipart answer: {content_type!r}")
    parts: list[Part] = []
    for head, content in _mime_parts(body.decode("utf-8", errors="replace"), match.group(1)):
        nested = _BOUNDARY.search(head) if "multipart/mixed" in head.lower() else None
        if nested:
            parts.extend(_http_part(inner) for _, inner in _mime_parts(content, nested.group(1)))
        else:
            parts.append(_http_part(content))
    return parts


def _mime_parts(text: str, boundary: str) -> list[tuple[str, str]]:
    """(MIME header block, content) of each part between ``--boundary`` lines, up to the closing one."""
    out = []
    for chunk in text.split(f"--{boundary}")[1:]:
        if chunk.startswith("--"):
            break
        chunk = chunk.lstrip("\r\n")
        head, _, content = chunk.partition("\r\n\r\n") if "\r\n\r\n" in chunk else chunk.partition("\n\n")
        out.append((head, content))
    return out


def _http_part(content: str) -> Part:
    content = content.lstrip("\r\n")
    head, _, body = content.partition("\r\n\r\n") if "\r\n\r\n" in content else content.partition("\n\n")
    status = _STATUS.match(head)
    if not status:
        raise ValueError(f"not an HTTP answer in the changeset: {head[:80]!r}")
    headers = {name.lower(): value.strip() for name, value in _HEADER.findall(head)}
    return Part(int(status.group(1)), headers, body.strip())


def transaction_error(part: Part) -> TableTransactionError:
    """The SDK's exception for the operation that failed the changeset (the service names it as ``<index>:``)."""
    code, message = None, part.body or f"operation failed with {part.status}"
    try:
        error = json.loads(part.body).get("odata.error", {})
        code, message = error.get("code"), error.get("message", {}).get("value", message)
    except (ValueError, AttributeError):
        pass
    index = _INDEX.match(message)
    exc = TableTransactionError(message=message, index=int(index.group(1)) if index else 0)
    exc.status_code, exc.error_code = part.status, code
    return exc


def _endpoint(table: TableClient) -> str:
    return f"{table.scheme}://{table._primary_hostname}"  # as TableClient addresses its own requests


async def _send(table: TableClient, request: HttpRequest, expected: int) -> Any:
    """``request`` through the client's pipeline (auth, retries, timeouts); an HttpResponseError unless ``expected``.

    Streamed, so the pipeline's content decoder leaves the body (multipart or JSON) to the caller.
    """
    response = await table._client.send_request(request, stream=True)
    await response.read()
    if response.status_code != expected:
        exc = HttpResponseError(response=response)
        exc.error_code = response.headers.get("x-ms-error-code")
        raise exc
    return response


async def submit(table: TableClient, operations: list[Operation]) -> list[dict[str, Any]]:
    """Commit ``operations`` (at most 100, one partition) as one transaction; the ETag of each, in order."""
    endpoint = _endpoint(table)
    content_type, body = encode(endpoint, table.table_name, operations)
    request = HttpRequest("POST", f"{endpoint}/$batch", content=body, headers={
        "Content-Type": content_type, "Accept": "application/json", "DataServiceVersion": "3.0",
        "MaxDataServiceVersion": "3.0;NetFx", "x-ms-version": table.api_version})
    response = await _send(table, request, 202)
    parts = decode(response.headers.get("Content-Type", ""), response.content)
    failed = next((p for p in parts if not 200 <= p.status < 300), None)
    if failed is not None:
        raise transaction_error(failed)
    if len(parts) != len(operations):
        raise HttpResponseError(message=f"the changeset answered {len(parts)} operations for {len(operations)}",
                                response=response)
    return [{"etag": p.headers.get("etag")} for p in parts]


async def query(table: TableClient, query_filter: str, parameters: Mapping[str, Any] | None = None, *,
                select: list[str] | None = None, page_size: int = 1000) -> AsyncIterator[dict[str, Any]]:
    """The entities matching ``query_filter`` (with ``@name`` parameters), page by page, as plain dicts."""
    endpoint = _endpoint(table)
    params: dict[str, str] = {"$filter": _parameter_filter_substitution(dict(parameters or {}), query_filter),
                              "$top": str(page_size)}
    if select:
        params["$select"] = ",".join(select)
    headers = {"Accept": "application/json;odata=minimalmetadata", "DataServiceVersion": "3.0",
               "x-ms-version": table.api_version}
    url = f"{endpoint}/{quote(table.table_name, safe='')}()"
    while True:
        # Encoded here: HttpRequest puts ``params`` into the URL as they are.
        request = HttpRequest("GET", url + "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items()),
                              headers=headers)
        response = await _send(table, request, 200)
        for raw in json.loads(response.content).get("value", []):
            yield _entity(raw)
        next_pk = response.headers.get("x-ms-continuation-NextPartitionKey")
        if not next_pk:
            return
        params["NextPartitionKey"] = next_pk
        next_rk = response.headers.get("x-ms-continuation-NextRowKey")
        if next_rk:
            params["NextRowKey"] = next_rk
        else:
            params.pop("NextRowKey", None)


def _entity(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An entity from a minimal-metadata JSON page: annotated values converted, ``odata.*`` keys dropped."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name.startswith("odata.") or name.endswith("@odata.type"):
            continue
        kind = raw.get(f"{name}@odata.type")
        out[name] = _convert(kind, value) if kind else value
    return out


def _convert(kind: str, value: Any) -> Any:
    if kind == "Edm.DateTime":
        text = str(value).rstrip("Z")
        head, dot, fraction = text.partition(".")
        return datetime.fromisoformat(f"{head}.{fraction[:6].ljust(6, '0')}" if dot else head).replace(tzinfo=timezone.utc)
    if kind == "Edm.Int64":
        return int(value)
    if kind == "Edm.Double":
        return float(value)
    if kind == "Edm.Binary":
        return base64.b64decode(value)
    return value  # Edm.Guid, Edm.String, ...: the text
