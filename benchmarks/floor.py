"""The physical floor of a full sync on this machine: page the groups raw, batch-write the users raw.

    python benchmarks/floor.py --graph URL --tenant TID --groups G1,G2 --tables CONNSTR [--table NAME]

Pages ``/groups/{id}/transitiveMembers`` at ``$top=999`` with httpx (untyped, users kept by ``@odata.type``: a cast
needs the advanced query parameters, as the app's listing knows) and writes, per page,
the rows a full sync must write (a new user's row and username claim, or a membership property merged into a
user another group already wrote) to Azurite in transactions of 100 entities, hand-serialized and signed, with
the same concurrency as the app: ``maxConcurrentCalls`` groups at once, ``GRAPH_CONCURRENCY`` Graph requests and
the Table store's transaction limit in flight. No SDK, no reads, no conflicts (one process knows every user).
Graph checks every bearer token: one token with the app's read roles is asked of the fake once
(``POST /_fake/token``), before the clock starts, and sent with every page.
The last line printed is a JSON object with the measured seconds and what was sent.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Awaitable, Callable
from urllib.parse import quote

import httpx

USER_SELECT = "id,displayName,userPrincipalName,mail,givenName,surname,accountEnabled,onPremisesSamAccountName,employeeId,userType"
PAGE_SIZE = 999
USER_TYPE = "#microsoft.graph.user"
APP_ROLES = ["User.Read.All", "GroupMember.Read.All"]  # what admin consent grants the app
MAX_TRANSACTION = 100
INNER_STATUS = re.compile(r"^HTTP/1\.1 (\d{3})", re.M)


async def _retrying(send: Callable[[], Awaitable[httpx.Response]], attempts: int = 3) -> httpx.Response:
    """Send again when a pooled connection was closed by the server while idle (Node closes them after 5 s)."""
    for attempt in range(attempts):
        try:
            return await send()
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@dataclass
class Tables:
    """Just enough of the Table service's REST API: signed entity-group transactions over one HTTP client."""

    endpoint: str
    account: str
    key: bytes
    http: httpx.AsyncClient
    requests: int = 0
    entities: int = 0

    @classmethod
    def from_connection_string(cls, text: str, http: httpx.AsyncClient) -> "Tables":
        parts = dict(p.split("=", 1) for p in text.split(";") if "=" in p)
        return cls(parts["TableEndpoint"].rstrip("/"), parts["AccountName"], base64.b64decode(parts["AccountKey"]), http)

    def _headers(self, path: str, content_type: str) -> dict[str, str]:
        date = formatdate(usegmt=True)
        resource = f"/{self.account}{path}"
        signature = base64.b64encode(hmac.new(self.key, f"{date}\n{resource}".encode(), hashlib.sha256).digest()).decode()
        return {"x-ms-date": date, "x-ms-version": "2019-02-02", "DataServiceVersion": "3.0",
                "Content-Type": content_type, "Accept": "application/json",
                "Authorization": f"SharedKeyLite {self.account}:{signature}"}

    async def create_table(self, table: str) -> None:
        path = self._path("/Tables")
        response = await self.http.post(self.endpoint + "/Tables", headers=self._headers(path, "application/json"),
                                         content=json.dumps({"TableName": table}))
        if response.status_code not in (201, 204, 409):
            raise RuntimeError(f"create table {table}: {response.status_code} {response.text[:300]}")

    def _path(self, suffix: str) -> str:
        return httpx.URL(self.endpoint + suffix).raw_path.decode()

    async def transaction(self, table: str, ops: list[tuple[str, dict]]) -> None:
        """One entity-group transaction of ("insert" | "merge", entity) operations."""
        batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
        parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
        for n, (op, entity) in enumerate(ops):
            body = json.dumps(entity, separators=(",", ":"), ensure_ascii=False)
            if op == "insert":
                line, extra = f"POST {self.endpoint}/{table} HTTP/1.1", "Prefer: return-no-content\r\n"
            else:
                pk, rk = (quote(entity[k].replace("'", "''"), safe="") for k in ("PartitionKey", "RowKey"))
                line, extra = f"MERGE {self.endpoint}/{table}(PartitionKey='{pk}',RowKey='{rk}') HTTP/1.1", "If-Match: *\r\n"
            parts.append(f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                         f"Content-ID: {n}\r\n\r\n{line}\r\nContent-Type: application/json\r\n"
                         f"Accept: application/json;odata=minimalmetadata\r\nDataServiceVersion: 3.0\r\n{extra}"
                         f"Content-Length: {len(body.encode())}\r\n\r\n{body}\r\n")
        parts.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n")
        body = "".join(parts).encode()
        response = await _retrying(lambda: self.http.post(
            self.endpoint + "/$batch", content=body,
            headers=self._headers(self._path("/$batch"), f"multipart/mixed; boundary={batch}")))
        self.requests += 1
        self.entities += len(ops)
        statuses = INNER_STATUS.findall(response.text)
        if response.status_code != 202 or not statuses or any(not s.startswith("2") for s in statuses):
            raise RuntimeError(f"transaction failed: {response.status_code} {response.text[:500]}")


@dataclass
class Floor:
    """One run of the floor: the groups' pages in, the rows out."""

    graph: str
    token: str
    tables: Tables
    table: str
    org: str
    subscription: str
    graph_limit: asyncio.Semaphore
    write_limit: asyncio.Semaphore
    graph_only: bool = False
    written: dict[str, asyncio.Future] = field(default_factory=dict)
    graph_requests: int = 0
    memberships: int = 0

    async def group(self, http: httpx.AsyncClient, group_id: str) -> None:
        url: str | None = f"{self.graph}/groups/{group_id}/transitiveMembers"
        params: dict[str, str] | None = {"$select": USER_SELECT, "$top": str(PAGE_SIZE)}
        prop = "g_" + group_id.replace("-", "").lower()
        while url:
            async with self.graph_limit:
                response = await _retrying(lambda: http.get(url, params=params,
                                                            headers={"Authorization": f"Bearer {self.token}"}))
            self.graph_requests += 1
            response.raise_for_status()
            data = response.json()
            url, params = data.get("@odata.nextLink"), None
            if not self.graph_only:
                await self.write_page([i for i in data.get("value", []) if i.get("@odata.type") == USER_TYPE], prop)

    async def write_page(self, items: list[dict], prop: str) -> None:
        inserts: list[tuple[str, dict]] = []
        merges: list[tuple[str, dict]] = []
        waits: set[asyncio.Future] = set()
        fresh: list[str] = []
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        pk = quote(self.org, safe="")
        for item in items:
            uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dirsync:{self.org}:{self.subscription}:{item['id']}"))
            self.memberships += 1
            if uid in self.written:
                merges.append(("merge", {"PartitionKey": pk, "RowKey": uid, prop: True}))
                waits.add(self.written[uid])
                continue
            fresh.append(uid)
            username = item["userPrincipalName"]
            claim = "|n|" + hashlib.sha256(username.strip().casefold().encode()).hexdigest()[:48]
            user = {"PartitionKey": pk, "RowKey": uid, "kind": "user", "org": self.org, "id": uid, "username": username,
                    "email": item.get("mail") or (username if "#EXT#" not in username else None),
                    "displayName": item.get("displayName") or username, "givenName": item.get("givenName"),
                    "surname": item.get("surname"), "status": "Active" if item.get("accountEnabled") else "Inactive",
                    "sourceType": "AdSync", "subscriptionId": self.subscription, "azureObjectId": item["id"],
                    "lastRunId": "floor", "lastChange": "created", "createdAt@odata.type": "Edm.DateTime",
                    "createdAt": now, "updatedAt@odata.type": "Edm.DateTime", "updatedAt": now, prop: True}
            inserts.append(("insert", {k: v for k, v in user.items() if v is not None}))
            inserts.append(("insert", {"PartitionKey": pk, "RowKey": claim, "kind": "claim", "userId": uid, "username": username}))

        async def send(chunk: list[tuple[str, dict]]) -> None:
            async with self.write_limit:
                await self.tables.transaction(self.table, chunk)

        sent = [asyncio.ensure_future(send(inserts[i:i + MAX_TRANSACTION])) for i in range(0, len(inserts), MAX_TRANSACTION)]
        for n, uid in enumerate(fresh):
            self.written[uid] = sent[2 * n // MAX_TRANSACTION]
        # A membership is merged into a row another group inserts: only once that insert has committed.
        await asyncio.gather(*waits)
        sent += [asyncio.ensure_future(send(merges[i:i + MAX_TRANSACTION])) for i in range(0, len(merges), MAX_TRANSACTION)]
        await asyncio.gather(*sent)


async def graph_token(http: httpx.AsyncClient, graph: str, tenant: str) -> str:
    """A Graph token of ``tenant`` with the app's roles, from the fake's control endpoint (valid for a day)."""
    origin = graph.rstrip("/").rsplit("/v1.0", 1)[0]
    response = await http.post(f"{origin}/_fake/token", json={"tenant": tenant, "roles": APP_ROLES,
                                                                "lifetimeSeconds": 86400})
    response.raise_for_status()
    return response.json()["access_token"]


async def run(args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
    async with httpx.AsyncClient(timeout=120, limits=limits) as graph_http, \
            httpx.AsyncClient(timeout=120, limits=limits) as table_http:
        tables = Tables.from_connection_string(args.tables, table_http) if args.tables else None
        token = await graph_token(graph_http, args.graph, args.tenant)
        floor = Floor(args.graph.rstrip("/"), token, tables, args.table, args.org, args.subscription,
                      asyncio.Semaphore(args.graph_concurrency), asyncio.Semaphore(args.write_concurrency),
                      graph_only=not args.tables)
        if tables:
            await tables.create_table(args.table)
        groups = [g for g in args.groups.split(",") if g]
        slots = asyncio.Semaphore(args.group_concurrency)

        async def one(group_id: str) -> None:
            async with slots:
                await floor.group(graph_http, group_id)

        started = time.perf_counter()
        await asyncio.gather(*(one(g) for g in groups))
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "graph_requests": floor.graph_requests,
            "write_requests": tables.requests if tables else 0, "entities": tables.entities if tables else 0,
            "users": len(floor.written), "memberships": floor.memberships}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", required=True, help="the fake tenant's Graph base URL (…/v1.0)")
    parser.add_argument("--tenant", required=True, help="tenant id (its Graph token is fetched from the fake)")
    parser.add_argument("--groups", required=True, help="comma-separated group ids")
    parser.add_argument("--tables", help="Table Storage connection string; without it only Graph is paged (a warm-up)")
    parser.add_argument("--table", default="floorUsers")
    parser.add_argument("--org", default="org-bench")
    parser.add_argument("--subscription", default="00000000-0000-0000-0000-00000000f100")
    parser.add_argument("--group-concurrency", type=int, default=4, help="host.json maxConcurrentCalls")
    parser.add_argument("--graph-concurrency", type=int, default=4, help="GRAPH_CONCURRENCY")
    parser.add_argument("--write-concurrency", type=int, default=8, help="the Table store's transactions in flight")
    result = asyncio.run(run(parser.parse_args(argv)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
