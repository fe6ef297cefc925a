"""What the abuse tests share: the API's routes (from openapi.json), the victim org, and the error shape."""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from local.client import FakeTenantAdmin, Portal, portal_token
from tests.faults.helpers import connect, emails_of_org, poll, settle, sync
from tests.faults.tenants import with_large_group

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = json.loads((ROOT / "openapi.json").read_text())
ANONYMOUS = {("GET", "/api/health"), ("GET", "/api/directory/consent"), ("POST", "/api/directory/consent"),
             ("GET", "/api/openapi.json"),
             ("GET", "/api/directory/notify-emails/confirm"),  # an e-mail's link: proven by its token (test_abuse_alerts)
             ("POST", "/api/directory/notifications")}  # Graph's webhook: proven by clientState (test_abuse_changes)
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def routes() -> list[tuple[str, str]]:
    """(METHOD, path template) of every operation the API document describes and that needs a portal token."""
    out = []
    for path, item in OPENAPI["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "patch", "delete") and (method.upper(), path) not in ANONYMOUS:
                out.append((method.upper(), path))
    return out


def fill(template: str, **ids: str) -> str:
    """A route template with its ``{name}`` parameters replaced (``/api`` prefix removed)."""
    path = template.removeprefix("/api")
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, path
    return path


def assert_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    """``response`` is an error of ``status`` in the API's shape: JSON ``{"code": snake_case, "message": text}``."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and SNAKE.match(body.get("code", "")), body
    assert isinstance(body.get("message"), str) and body["message"].strip(), body
    if code:
        assert body["code"] == code, body
    return body


@dataclass
class Victim:
    """An org whose subscription, runs and users other callers must neither see nor change."""

    portal: Portal
    admin: FakeTenantAdmin
    sub: str
    run: str
    synced_user: str
    manual_user: str
    enrollment_token: str
    tenant_id: str

    @classmethod
    def create(cls, devhost, tokens: list[str]) -> "Victim":
        org = "victim-" + secrets.token_hex(4)
        token = portal_token(LOCAL_PORTAL_TOKEN_SECRET, org=org)
        tokens.append(token)
        portal = Portal(devhost.ready["api"], token, ca=devhost.ready["authorityCa"])
        t = with_large_group(3)
        admin = FakeTenantAdmin.load(devhost.ready["graph"], t.tenant)
        sub = connect(portal, [t.ids["eng"], t.ids["sales"]], sendEnrollmentEmail=True)
        run = sync(portal, sub)
        assert run["status"] == "succeeded", run
        settle(devhost)
        synced = next(u for u in portal.users() if u["username"].startswith("ann.lee@"))
        manual = portal.call("POST", "/users", json={"username": f"manual@{org}.example", "displayName": "Manual"})
        mails = poll(lambda: emails_of_org(devhost, org), 30, "the victim's invitations")
        text = mails[0].get_body(preferencelist=("plain",)).get_content()
        enrollment = re.search(r"/enroll\?token=([A-Za-z0-9_\-.]+)", text).group(1)
        victim = cls(portal, admin, sub, run["runId"], synced["id"], manual["id"], enrollment, t.tenant["tenantId"])
        victim.org = org  # type: ignore[attr-defined]
        return victim

    def snapshot(self) -> dict[str, Any]:
        """Everything the victim's portal can read, as the API returns it."""
        p, sub = self.portal, self.sub
        return {
            "subscriptions": p.call("GET", "/directory/subscriptions"),
            "groups": p.call("GET", f"/directory/subscriptions/{sub}/groups"),
            "runs": p.call("GET", f"/directory/subscriptions/{sub}/runs"),
            "users": sorted(p.users(), key=lambda u: u["id"]),
            "grid": p.call("GET", "/groups"),
            "manual": p.call("GET", f"/users/{self.manual_user}"),
        }
