"""Graph's identity and access service limits, metered per application and tenant when they are switched on.

https://learn.microsoft.com/graph/throttling-limits ("Identity and access service limits"): a token bucket of
resource units per application+tenant pair, S 3,500 / M 5,000 / L 8,000 per 10 seconds by the tenant's size (S under
50 users, M 50 to 500, L above 500), and a write quota of 3,000 requests per 2 minutes 30 seconds. A request's cost is
its base cost (``GET users`` 2, ``GET groups/{id}/members`` 3, ``GET groups/{id}/transitiveMembers`` 5,
``users/{id}/memberOf`` and ``transitiveMemberOf`` 2 as their ``me/`` forms, any other identity path 1), 1 less with
``$select``, 1 more with ``$expand``, 1 less with ``$top`` under 20, never below 1; writes (POST, PATCH, PUT, DELETE)
also cost 1 write. Only requests beyond the limits are throttled: 429 ``TooManyRequests`` with ``Retry-After`` (the
seconds until the bucket holds the request's cost; https://learn.microsoft.com/graph/throttling) and
``x-ms-throttle-scope`` / ``x-ms-throttle-information``; an answered request carries ``x-ms-resource-unit``.
The resources metered are users, groups, devices and organization (subscriptions are another service's).
"""
from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Callable

BUDGET_BY_SIZE = (("S", 50, 3500), ("M", 501, 5000), ("L", None, 8000))  # users below the bound → units per 10 s
WINDOW_S = 10.0
WRITE_QUOTA = 3000
WRITE_WINDOW_S = 150.0
WRITES = {"POST", "PATCH", "PUT", "DELETE"}
IDENTITY_PREFIXES = ("/v1.0/users", "/v1.0/groups", "/v1.0/devices", "/v1.0/organization")
BASE_COSTS = {
    ("GET", "/v1.0/users"): 2,
    ("GET", "/v1.0/users/{id}/memberOf"): 2,
    ("GET", "/v1.0/users/{id}/transitiveMemberOf"): 2,
}
THROTTLED_MESSAGE = "Too many requests. Please retry after the time given in the Retry-After header."


def tenant_budget(users: int) -> tuple[str, int]:
    """The tenant's size class and its application+tenant resource units per 10 seconds."""
    for size, below, units in BUDGET_BY_SIZE:
        if below is None or users < below:
            return size, units
    raise AssertionError("unreachable")


def request_cost(method: str, template: str, options: dict[str, str]) -> int:
    """Resource units of one request by the documented table and modifiers (0: not an identity resource)."""
    if not template.startswith(IDENTITY_PREFIXES):
        return 0
    cost = BASE_COSTS.get((method, template))
    if cost is None:
        members = method == "GET" and not template.endswith("/$count")
        if members and template.startswith("/v1.0/groups/{id}/transitiveMembers"):
            cost = 5
        elif members and template.startswith("/v1.0/groups/{id}/members"):
            cost = 3
        else:
            cost = 1
    if "$select" in options:
        cost -= 1
    if "$expand" in options:
        cost += 1
    top = options.get("$top")
    if top is not None and top.isdigit() and int(top) < 20:
        cost -= 1
    return max(1, cost)


class GraphLimits:
    """Token buckets per (application, tenant). Used from the fake's event loop only."""

    def __init__(self, enabled: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.default_enabled = enabled
        self.enabled = enabled
        self.units_override: int | None = None
        self.write_quota = WRITE_QUOTA
        self._buckets: dict[tuple[str, str, str], list[float]] = {}  # (kind, app, tenant) → [credit, at]
        self.counts: Counter[str] = Counter()

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"enabled": bool, "resourceUnitsPer10s": n | null, "writesPer150s": n}``; any change refills the buckets."""
        unknown = set(body) - {"enabled", "resourceUnitsPer10s", "writesPer150s"}
        if unknown:
            raise ValueError(f"Unknown limits fields: {', '.join(sorted(unknown))}.")
        enabled = body.get("enabled", self.enabled)
        if not isinstance(enabled, bool):
            raise ValueError("enabled is true or false.")
        units = body.get("resourceUnitsPer10s", self.units_override)
        writes = body.get("writesPer150s", self.write_quota)
        for name, value in (("resourceUnitsPer10s", units), ("writesPer150s", writes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} is a positive whole number.")
        if writes is None:
            raise ValueError("writesPer150s is a positive whole number.")
        self.enabled, self.units_override, self.write_quota = enabled, units, writes
        self._buckets.clear()
        return self.state()

    def reset(self) -> None:
        """As started: enabled as the fake was started, the documented budgets, full buckets, zero counts."""
        self.enabled, self.units_override, self.write_quota = self.default_enabled, None, WRITE_QUOTA
        self._buckets.clear()
        self.counts.clear()

    def state(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "resourceUnitsPer10s": self.units_override,
                "writesPer150s": self.write_quota, "throttled": self.counts["throttled"],
                "resourceUnits": self.counts["units"]}

    def _take(self, kind: str, app: str, tenant: str, capacity: float, window: float, cost: float,
              now: float) -> float:
        """0 when ``cost`` was taken from the bucket, else the seconds until it holds ``cost``."""
        rate = capacity / window
        bucket = self._buckets.get((kind, app, tenant))
        if bucket is None:
            bucket = self._buckets[(kind, app, tenant)] = [capacity, now]
        bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        need = min(cost, capacity)
        if bucket[0] >= need:
            bucket[0] -= cost
            return 0.0
        return (need - bucket[0]) / rate

    def check(self, method: str, template: str, options: dict[str, str], app: str, tenant_id: str,
              users: int) -> tuple[int, dict[str, str] | None]:
        """(cost, None) when the request may go on, else (cost, the 429's headers)."""
        if not self.enabled:
            return 0, None
        cost = request_cost(method, template, options)
        if not cost:
            return 0, None
        _, units = tenant_budget(users)
        units = self.units_override or units
        now = self._clock()
        write = method in WRITES
        if write:
            wait = self._take("write", app, tenant_id, self.write_quota, WRITE_WINDOW_S, 1, now)
            if wait:
                return cost, self._throttled(wait, "Write", "WriteLimitExceeded", app, tenant_id)
        wait = self._take("units", app, tenant_id, units, WINDOW_S, cost, now)
        if wait:
            if write:  # give the write back: the request was not served
                self._buckets[("write", app, tenant_id)][0] += 1
            return cost, self._throttled(wait, "ReadWrite", "ResourceUnitLimitExceeded", app, tenant_id)
        self.counts["units"] += cost
        return cost, None

    def _throttled(self, wait: float, limit: str, why: str, app: str, tenant_id: str) -> dict[str, str]:
        self.counts["throttled"] += 1
        return {"Retry-After": str(max(1, math.ceil(wait))),
                "x-ms-throttle-scope": f"Tenant_Application/{limit}/{app}/{tenant_id}",
                "x-ms-throttle-information": why}
