"""What the fault tests share: connecting a directory, running a sync, waiting for quiet, comparing final states."""
from __future__ import annotations

import base64
import json
import re
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Callable

from local.client import ApiError, FakeTenantAdmin, Portal
from tests.faults import figures

QUEUES = ("group-sync", "enrollment-email", "admin-alerts")


def connect(portal: Portal, groups: list[str], **options: Any) -> str:
    """A subscription of the portal's org, consented, with ``options`` and ``groups`` selected.

    ``nightlySync`` is off unless asked for, so running the nightly function in one test syncs only its own.
    """
    sub = portal.create_subscription("Fabrikam")
    assert portal.authorize(sub["id"])["consent"] == "confirmed"
    portal.update(sub["id"], **{"nightlySync": False, **options})
    portal.select_groups(sub["id"], groups)
    return sub["id"]


def sync(portal: Portal, sub_id: str, timeout: float = 240) -> dict:
    """A Full Sync, waited for until it is no longer queued or running."""
    return portal.wait(sub_id, portal.full_sync(sub_id), timeout=timeout)


def clean_then_faulty(devhost, new_portal: Callable[[], Portal], groups: list[str]) -> tuple[Portal, Portal, str]:
    """Two orgs selecting ``groups`` of the loaded tenant: one synced with no fault (the reference, settled), and one
    connected, its subscription's id returned, for the test to inject faults and sync."""
    clean = new_portal()
    assert sync(clean, connect(clean, groups))["status"] == "succeeded"
    settle(devhost)
    faulty = new_portal()
    return clean, faulty, connect(faulty, groups)


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """``check()`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def settle(devhost, timeout: float = 90) -> None:
    """Wait until no group or e-mail message is queued, locked, scheduled or dead-lettered (all handlers done)."""
    def idle() -> bool:
        queues = devhost.control("GET", "/servicebus/stats")["queues"]
        return all(queues[q][k] == 0 for q in QUEUES for k in ("active", "locked", "scheduled", "deadLettered"))
    try:
        poll(idle, timeout, "the Service Bus queues to drain")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {bus_counters(devhost)}") from None


def bus_counters(devhost) -> dict[str, dict[str, int]]:
    return devhost.control("GET", "/servicebus/stats")["queues"]


def state(portal: Portal) -> dict[str, Any]:
    """The org's Users and Groups grids without what differs between two orgs or two runs (ids, times)."""
    users = {}
    for u in portal.users():
        users[u["username"]] = (u["email"], u["displayName"], u["givenName"], u["surname"], u["status"],
                                u["statusReason"], u["sourceType"], u["azureObjectId"],
                                tuple(sorted(g["displayName"] for g in u["groups"])))
    groups = {g["displayName"]: g["userCount"] for g in portal.groups()}
    return {"users": users, "groups": groups}


def raw_grid(portal: Portal) -> list[dict]:
    """Every user row exactly as the API returns it (for before/after comparisons within one org)."""
    return sorted(portal.users(), key=lambda u: u["id"])


def errors(run: dict) -> list[tuple]:
    """A run's errors without the org-specific user ids, in a stable order."""
    return sorted((e["code"], e["message"], e.get("groupId") or "") for e in run["errors"])


# ---------------------------------------------------------------- e-mails


def _link_org(message) -> str | None:
    """The org named by the enrollment token in an invitation (its payload is readable, its MAC is not ours)."""
    text = message.get_body(preferencelist=("plain",)).get_content()
    found = re.search(r"/enroll\?token=([A-Za-z0-9_\-]+)\.", text)
    if not found:
        return None
    body = found.group(1)
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))).get("org")


def emails_of_org(devhost, org: str) -> list:
    """Invitations the SMTP sink received whose link belongs to ``org``, oldest first."""
    out = []
    for path in sorted(Path(devhost.ready["outbox"]).glob("*.eml")):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if _link_org(message) == org:
            out.append(message)
    return out


def recipients(messages: list) -> list[str]:
    return sorted(m["X-Envelope-To"] for m in messages)


# ---------------------------------------------------------------- faults


def table_faults(devhost, *specs: dict) -> None:
    devhost.control("POST", "/tables/faults", json=list(specs))


def table_faults_left(devhost) -> list[dict]:
    return devhost.control("GET", "/tables/faults")["faults"]


def table_injected(devhost) -> dict[str, int]:
    return devhost.control("GET", "/tables/stats")["injected"]


def count_table_faults(devhost, before: dict[str, int]) -> dict[str, int]:
    """Faults the proxy injected since ``before``, added to the suite's figures."""
    after = table_injected(devhost)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    for kind, n in delta.items():
        figures.fault(f"table storage {kind.replace('_', ' ')}", n)
    return delta


def smtp_faults(devhost, *specs: dict) -> dict:
    """Hold or fail the SMTP sink's next commands (``{"stage": "DATA", "delayMs": 8000}``); returns its status."""
    return devhost.control("POST", "/smtp/faults", json=list(specs))


def smtp_status(devhost) -> dict:
    """The sink's pending faults, the commands it holds now (``holding``) and its ``counts`` (failed, held, cut)."""
    return devhost.control("GET", "/smtp/faults")


class GraphFaults:
    """Faults on the fake tenant's Graph routes, counted when consumed (the fake removes a fault once used up)."""

    def __init__(self, admin: FakeTenantAdmin) -> None:
        self.admin = admin
        self.asked: list[dict] = []

    def add(self, path: str, *, status: int | None = None, times: int = 1, retry_after: float | None = None,
            delay_ms: int | None = None, code: str | None = None) -> None:
        spec = {"path": path, "times": times, "status": status, "retryAfter": retry_after, "delayMs": delay_ms,
                "code": code}
        spec = {k: v for k, v in spec.items() if v is not None}
        self.admin.control("POST", "/faults", json=spec)
        self.asked.append(spec)

    def pending(self) -> list[dict]:
        mine = {f["path"] for f in self.asked}
        return [f for f in self.admin.control("GET", "/faults")["faults"] if f["path"] in mine]

    def count(self) -> dict[str, int]:
        """Injected so far per kind (asked minus what is still pending), added to the figures once."""
        left: dict[tuple, int] = {}
        for f in self.pending():
            left[(f["path"], f.get("status"), f.get("delayMs") or 0)] = left.get((f["path"], f.get("status"), f.get("delayMs") or 0), 0) + f["times"]
        injected: dict[str, int] = {}
        for spec in self.asked:
            key = (spec["path"], spec.get("status"), spec.get("delayMs") or 0)
            used = spec["times"] - left.pop(key, 0)
            kind = f"graph {spec['status']}" if spec.get("status") else "graph slow response"
            if spec.get("status") and spec.get("delayMs"):
                kind += " (slow)"
            injected[kind] = injected.get(kind, 0) + max(used, 0)
        for kind, n in injected.items():
            figures.fault(kind, n)
        self.asked = []
        return injected


def expect_error(call: Callable[[], Any], status: int, code: str | None = None) -> dict:
    """The ApiError body of ``call()``, asserting its status (and code)."""
    try:
        call()
    except ApiError as err:
        assert err.status == status, (err.status, err.body)
        if code:
            assert err.body["code"] == code, err.body
        return err.body
    raise AssertionError(f"expected HTTP {status}, got a success")
