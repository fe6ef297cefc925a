"""Table Storage's scalability targets, metered by the table fault proxy when they are switched on.

Azure serves "up to 2,000 entities per second" from one table partition and 20,000 per storage account
(https://learn.microsoft.com/azure/storage/tables/scalability-targets: "Target throughput for a single table
partition (1 KiB-entities)", "Maximum request rate per storage account"); beyond them it answers 503 ServerBusy
(same page, and the Table service's error codes:
https://learn.microsoft.com/rest/api/storageservices/common-rest-api-error-codes).

Each partition (a table's PartitionKey) and the account hold a token bucket of one second's entities, refilled
continuously. A request is admitted while its partition and the account have credit left; it then spends its
entities, and may overdraw: later requests wait until the bucket is back above zero. A write spends what it carries
(a transaction its operations); a query spends the entities it returned (at least 1), charged per partition of the
rows; anything else (a table's creation, a point read, a 404) spends 1. Off by default (``enabled``).
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from typing import Any, Callable
from urllib.parse import unquote

PARTITION_PER_S = 2000
ACCOUNT_PER_S = 20000
PARTITION_BUSY = "The server is currently unable to receive requests. Please retry your request."
ACCOUNT_BUSY = "Operations per second is over the account limit."

_KEY_IN_PATH = re.compile(r"\(PartitionKey='((?:[^']|'')*)'")
_KEY_IN_BODY = re.compile(r'"PartitionKey"\s*:\s*"((?:[^"\\]|\\.)*)"')
_KEY_IN_FILTER = re.compile(r"PartitionKey\s+eq\s+'((?:[^']|'')*)'")
_BATCH_OPERATION = re.compile(r"^(?:POST|PUT|MERGE|PATCH|DELETE|GET) https?://\S+ HTTP/1\.1\r?$", re.M)
_TABLE = re.compile(r"^/[^/]+/([^/(?]+)")
_BATCH_TARGET = re.compile(r"^(?:POST|PUT|MERGE|PATCH|DELETE|GET) https?://[^/\s]+/[^/\s]+/([^/(\s?]+)", re.M)


class LimitError(ValueError):
    """Settings that cannot be used."""


class _Bucket:
    __slots__ = ("credit", "at")

    def __init__(self, credit: float, at: float) -> None:
        self.credit, self.at = credit, at

    def refill(self, rate: float, now: float) -> float:
        self.credit = min(rate, self.credit + (now - self.at) * rate)
        self.at = now
        return self.credit


class TableLimits:
    """Meters entities per partition and per account per second (thread-safe)."""

    def __init__(self, enabled: bool = False, partition_per_s: float = PARTITION_PER_S,
                 account_per_s: float = ACCOUNT_PER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.enabled = enabled
        self.partition_per_s = float(partition_per_s)
        self.account_per_s = float(account_per_s)
        self._partitions: dict[tuple[str, str], _Bucket] = {}
        self._account: _Bucket | None = None
        self._counts: Counter[str] = Counter()
        self._usage: Counter[tuple[str, str, str]] = Counter()  # (table, partition, "written" | "read") → entities

    # ------------------------------------------------------------ settings

    def configure(self, body: Any) -> dict[str, Any]:
        """``{"enabled": bool, "partitionEntitiesPerSecond": n, "accountEntitiesPerSecond": n}`` (each optional);
        a change empties the buckets' history (every bucket starts full)."""
        if not isinstance(body, dict):
            raise LimitError("the limits are a JSON object")
        unknown = set(body) - {"enabled", "partitionEntitiesPerSecond", "accountEntitiesPerSecond"}
        if unknown:
            raise LimitError(f"unknown field(s): {', '.join(sorted(unknown))}")
        enabled = body.get("enabled", self.enabled)
        if not isinstance(enabled, bool):
            raise LimitError("enabled is true or false")
        rates = {}
        for name in ("partitionEntitiesPerSecond", "accountEntitiesPerSecond"):
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise LimitError(f"{name} is a positive number")
            rates[name] = value
        with self._lock:
            self.enabled = enabled
            self.partition_per_s = float(rates["partitionEntitiesPerSecond"] or self.partition_per_s)
            self.account_per_s = float(rates["accountEntitiesPerSecond"] or self.account_per_s)
            self._partitions.clear()
            self._account = None
        return self.state()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"enabled": self.enabled, "partitionEntitiesPerSecond": self.partition_per_s,
                    "accountEntitiesPerSecond": self.account_per_s,
                    "throttled": {"partition": self._counts["throttled:partition"],
                                  "account": self._counts["throttled:account"]},
                    "entities": self._counts["entities"],
                    "written": sum(n for k, n in self._usage.items() if k[2] == "written"),
                    "read": sum(n for k, n in self._usage.items() if k[2] == "read"),
                    "partitions": self._busiest(5)}

    def _busiest(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` partitions that spent the most entities, with what they wrote and read (under the lock)."""
        totals: Counter[tuple[str, str]] = Counter()
        for (table, pk, _), spent in self._usage.items():
            totals[(table, pk)] += spent
        return [{"table": table, "partitionKey": pk, "written": self._usage[(table, pk, "written")],
                 "read": self._usage[(table, pk, "read")]} for (table, pk), _ in totals.most_common(n)]

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._usage.clear()

    # ------------------------------------------------------------ metering

    def admit(self, method: str, raw_path: str, body: bytes) -> tuple[str, str] | None:
        """None when the request may go on (its write entities already spent), else (scope, message) of the 503."""
        if not self.enabled:
            return None
        table, partition, entities = describe(method, raw_path, body)
        now = self._clock()
        with self._lock:
            account = self._account or _Bucket(self.account_per_s, now)
            self._account = account
            if account.refill(self.account_per_s, now) <= 0:
                self._counts["throttled:account"] += 1
                return ("account", ACCOUNT_BUSY)
            bucket = None
            if partition is not None:
                bucket = self._partitions.get((table, partition))
                if bucket is None:
                    bucket = self._partitions[(table, partition)] = _Bucket(self.partition_per_s, now)
                if bucket.refill(self.partition_per_s, now) <= 0:
                    self._counts["throttled:partition"] += 1
                    return ("partition", PARTITION_BUSY)
            if entities:  # a write: what it carries, spent now
                account.credit -= entities
                if bucket is not None:
                    bucket.credit -= entities
                    self._usage[(table, partition, "written")] += entities
                self._counts["entities"] += entities
        return None

    def charge_answer(self, method: str, raw_path: str, body: bytes, status: int, payload: bytes) -> None:
        """Spend what a read returned: a query's entities per partition, 1 for anything else that spent nothing."""
        if not self.enabled:
            return
        table, partition, entities = describe(method, raw_path, body)
        if entities:
            return  # a write, spent on admission
        per_partition: Counter[str | None] = Counter()
        if method == "GET" and status == 200 and payload[:1] == b"{":
            try:
                rows = json.loads(payload).get("value")
            except (ValueError, AttributeError):
                rows = None
            if isinstance(rows, list):  # a query: the entities it returned, by their partition (its filter's when
                for row in rows:  # a $select left PartitionKey out)
                    per_partition[(row.get("PartitionKey") if isinstance(row, dict) else None) or partition] += 1
        if not per_partition:
            per_partition[partition] = 1
        now = self._clock()
        with self._lock:
            account = self._account or _Bucket(self.account_per_s, now)
            self._account = account
            account.refill(self.account_per_s, now)
            for pk, n in per_partition.items():
                account.credit -= n
                self._counts["entities"] += n
                if pk is None:
                    continue
                self._usage[(table, pk, "read")] += n
                bucket = self._partitions.get((table, pk))
                if bucket is None:
                    bucket = self._partitions[(table, pk)] = _Bucket(self.partition_per_s, now)
                bucket.refill(self.partition_per_s, now)
                bucket.credit -= n


def describe(method: str, raw_path: str, body: bytes) -> tuple[str, str | None, int]:
    """(table, partition or None, entities written) of a Table service request; 0 entities for a read."""
    path = raw_path.split("?", 1)[0]
    text = body.decode("utf-8", "replace") if body else ""
    if path.endswith("/$batch"):
        op = _BATCH_TARGET.search(text)
        table = unquote(op.group(1)) if op else ""
        return table, _key_of(text), max(1, len(_BATCH_OPERATION.findall(text)))
    match = _TABLE.match(path)
    table = unquote(match.group(1)) if match else ""
    if table == "Tables":
        return table, None, 0 if method == "GET" else 1
    if method == "GET":
        in_path = _KEY_IN_PATH.search(path)
        if in_path:
            return table, _path_key(in_path), 0
        query = unquote(raw_path.split("?", 1)[1].replace("+", " ")) if "?" in raw_path else ""
        found = _KEY_IN_FILTER.search(query)
        return table, found.group(1).replace("''", "'") if found else None, 0
    return table, _key_of(path + "\n" + text), 1


def _key_of(text: str) -> str | None:
    """The PartitionKey a write names: in its address (percent-encoded) or its JSON body."""
    in_path = _KEY_IN_PATH.search(text)
    if in_path:
        return _path_key(in_path)
    in_body = _KEY_IN_BODY.search(text)
    if in_body:
        return json.loads(f'"{in_body.group(1)}"')
    return None


def _path_key(match: re.Match[str]) -> str:
    return unquote(match.group(1)).replace("''", "'")
