"""A small client of the dev host, used by the demo, the end-to-end tests and the benchmarks.

It talks to the app only through its public HTTP API, as the portal backend would, and to the local stand-ins
only through their control endpoints (the fake tenant's Graph writes and ``/_fake``; the dev host's control API).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import httpx
import jwt

ROOT = Path(__file__).resolve().parents[1]


def portal_token(secret: str, org: str = "contoso", role: str = "Administrator", sub: str = "admin@contoso.example",
                 ttl_s: int = 3600) -> str:
    """A portal caller token as the portal backend mints it (HS256, claims org, sub, role, exp)."""
    return jwt.encode({"org": org, "sub": sub, "role": role, "exp": int(time.time()) + ttl_s}, secret, algorithm="HS256")


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers
        try:
            self.body = response.json()
        except ValueError:
            self.body = {"code": "unknown", "message": response.text[:200]}
        super().__init__(f"{response.request.method} {response.request.url.path} -> {self.status} {self.body}")


@dataclass
class Portal:
    """The portal backend's view of the API: one org, one administrator."""

    api: str
    token: str
    ca: str | None = None  # the local authority's CA bundle (READY's authorityCa), for the browser's sign-in pages
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))

    def call(self, method: str, path: str, *, expect: int | tuple[int, ...] = (200, 201, 202, 204), **kw: Any) -> Any:
        response = self.http.request(method, self.api + path, headers={"Authorization": f"Bearer {self.token}"}, **kw)
        allowed = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in allowed:
            raise ApiError(response)
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else None

    def create_subscription(self, name: str) -> dict:
        return self.call("POST", "/directory/subscriptions", json={"name": name}, expect=201)

    def authorize(self, sub_id: str, *, swap_tenant: str | None = None, confirm: bool = True) -> dict[str, str]:
        """Walk admin consent as the admin's browser does, then confirm it as the portal does; the outcome.

        Microsoft's consent page → our callback (GET) → Microsoft's sign-in → its form_post to our callback (POST) →
        the portal with ``consent=pending&consentCode=…``. The portal, for the same signed-in user, then shows
        ``GET …/consent?consentCode=`` and sends ``POST …/consent/confirm``: ``{"subscriptionId", "consent":
        "confirmed", "tenantId"}``, or ``consent: error`` with the confirm's error code. ``confirm=False`` stops at
        the redirect's query (``consent=pending``, ``consentCode``); ``signinError`` if Microsoft refused.
        ``swap_tenant`` rewrites the ``tenant`` of Microsoft's redirect on the way back, as an attacker can.
        """
        url = self.call("POST", f"/directory/subscriptions/{sub_id}/authorize")["authorizeUrl"]
        outcome = self.follow_consent(url, swap_tenant=swap_tenant)
        if not confirm or outcome.get("consent") != "pending":
            return outcome
        return self.confirm_consent(sub_id, outcome["consentCode"])

    def pending_consent(self, sub_id: str, code: str) -> dict:
        """What confirming ``code`` would connect: tenantId, tenantDomain, consentedBy."""
        return self.call("GET", f"/directory/subscriptions/{sub_id}/consent", params={"consentCode": code})

    def confirm_consent(self, sub_id: str, code: str) -> dict[str, str]:
        """The portal's confirm of a ``consent=pending`` redirect, as the user who called authorize (see ``authorize``)."""
        try:
            shown = self.pending_consent(sub_id, code)
            self.call("POST", f"/directory/subscriptions/{sub_id}/consent/confirm", json={"consentCode": code})
        except ApiError as exc:
            return {"subscriptionId": sub_id, "consent": "error", "error": str(exc.body.get("code"))}
        return {"subscriptionId": sub_id, "consent": "confirmed", "tenantId": shown["tenantId"]}

    def follow_consent(self, url: str, *, swap_tenant: str | None = None) -> dict[str, str]:
        """From Microsoft's admin-consent URL to the portal (see ``authorize``)."""
        from local.identity.server import parse_form_post

        with httpx.Client(timeout=60, verify=self.ca or True) as browser:
            consent = browser.get(url, follow_redirects=False)
            if consent.status_code != 302:
                return {"signinError": _page_error(consent)}
            back = consent.headers["location"]
            if swap_tenant:
                parts = urlsplit(back)
                query = [(k, swap_tenant if k == "tenant" else v) for k, v in parse_qsl(parts.query)]
                back = parts._replace(query=urlencode(query)).geturl()
            step = self.http.get(back, follow_redirects=False)
            if step.status_code != 302:
                raise RuntimeError(f"the consent callback answered {step.status_code}: {step.text[:200]}")
            location = step.headers["location"]
            if "/oauth2/v2.0/authorize?" not in location:  # back to the portal (an error, or a replay)
                return _outcome(location)
            signin = browser.get(location, follow_redirects=False)
            if signin.status_code != 200:
                return {"signinError": _page_error(signin)}
            action, fields = parse_form_post(signin.text)
            done = self.http.post(action, data=fields, follow_redirects=False)
            if done.status_code != 302:
                raise RuntimeError(f"the sign-in callback answered {done.status_code}: {done.text[:200]}")
            return _outcome(done.headers["location"])

    def update(self, sub_id: str, **fields: Any) -> dict:
        return self.call("PATCH", f"/directory/subscriptions/{sub_id}", json=fields)

    def search_groups(self, sub_id: str, text: str) -> list[dict]:
        return self.call("GET", f"/directory/subscriptions/{sub_id}/directory-groups", params={"search": text})["groups"]

    def select_groups(self, sub_id: str, group_ids: list[str]) -> list[dict]:
        return self.call("PUT", f"/directory/subscriptions/{sub_id}/groups", json={"groupIds": group_ids})["groups"]

    def full_sync(self, sub_id: str, *, dry_run: bool = False) -> str:
        body = {"dryRun": True} if dry_run else None
        return self.call("POST", f"/directory/subscriptions/{sub_id}/sync", json=body, expect=202)["runId"]

    def changes(self, sub_id: str, run_id: str, **params: Any) -> list[dict]:
        """Every page of a run's change list."""
        out: list[dict] = []
        token = None
        while True:
            query = {k: v for k, v in {**params, "pageSize": 500, "continuationToken": token}.items() if v is not None}
            page = self.call("GET", f"/directory/subscriptions/{sub_id}/runs/{run_id}/changes", params=query)
            out += page["changes"]
            token = page["continuationToken"]
            if not token:
                return out

    def history(self, user_id: str) -> list[dict]:
        return self.call("GET", f"/users/{user_id}/history")["history"]

    def run(self, sub_id: str, run_id: str) -> dict:
        return self.call("GET", f"/directory/subscriptions/{sub_id}/runs/{run_id}")

    def runs(self, sub_id: str) -> list[dict]:
        return self.call("GET", f"/directory/subscriptions/{sub_id}/runs")["runs"]

    def wait(self, sub_id: str, run_id: str, timeout: float = 300, progress: Any = None) -> dict:
        """Poll a run until it is no longer queued or running."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(sub_id, run_id)
            if progress:
                progress(run)
            if run["status"] not in ("queued", "running"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['status']} after {timeout:.0f}s: {run}")
            time.sleep(0.2)

    def users(self, **params: Any) -> list[dict]:
        """Every page of the Users grid."""
        out: list[dict] = []
        token = None
        while True:
            query = {k: v for k, v in {**params, "pageSize": 500, "continuationToken": token}.items() if v is not None}
            page = self.call("GET", "/users", params=query)
            out += page["users"]
            token = page["continuationToken"]
            if not token:
                return out

    def groups(self) -> list[dict]:
        return self.call("GET", "/groups")["groups"]


def _outcome(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _page_error(response: httpx.Response) -> str:
    import re

    found = re.search(r"AADSTS\d+[^<]*", response.text)
    return found.group(0) if found else f"HTTP {response.status_code}"


@dataclass
class FakeTenantAdmin:
    """Changes the fake tenant the way an Azure admin changes a real one (Graph writes) and drives its controls."""

    graph: str  # .../v1.0
    tenant_id: str
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))
    _token: tuple[str, float] | None = None

    @property
    def origin(self) -> str:
        return self.graph.rsplit("/v1.0", 1)[0]

    def _graph(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A Graph call with a token of the tenant admin's own tool (never the app's: it may only read)."""
        if self._token is None or self._token[1] < time.time() + 60:
            token = self.control("POST", "/token", json={"tenant": self.tenant_id})["access_token"]
            self._token = (token, time.time() + 3000)
        response = self.http.request(method, self.graph + path, headers={"Authorization": f"Bearer {self._token[0]}"}, **kw)
        response.raise_for_status()
        return response

    @classmethod
    def load(cls, graph: str, tenant: dict) -> "FakeTenantAdmin":
        """Load ``tenant`` (the fake's JSON format) into the fake at ``graph`` and make it the tenant that consents."""
        admin = cls(graph, tenant["tenantId"])
        admin.control("POST", "/tenants", json=tenant)
        admin.control("POST", "/consent", json={"tenant": tenant["tenantId"], "deny": False})
        return admin

    def block(self, user_id: str, blocked: bool = True) -> None:
        self._graph("PATCH", f"/users/{user_id}", json={"accountEnabled": not blocked})

    def remove_member(self, group_id: str, member_id: str) -> None:
        self._graph("DELETE", f"/groups/{group_id}/members/{member_id}/$ref")

    def add_member(self, group_id: str, member_id: str) -> None:
        self._graph("POST", f"/groups/{group_id}/members/$ref",
                    json={"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{member_id}"})

    def add_user(self, user: dict) -> dict:
        return self._graph("POST", "/users", json=user).json()

    def delete_user(self, user_id: str) -> None:
        self._graph("DELETE", f"/users/{user_id}")

    def control(self, method: str, path: str, **kw: Any) -> Any:
        response = self.http.request(method, self.origin + "/_fake" + path, **kw)
        response.raise_for_status()
        return response.json() if response.content else None

    def dump(self) -> dict:
        return self.control("GET", f"/tenants/{self.tenant_id}")

    def update_user(self, user_id: str, **fields: Any) -> None:
        self._graph("PATCH", f"/users/{user_id}", json=fields)

    def add_group(self, group: dict) -> dict:
        return self._graph("POST", "/groups", json=group).json()

    def delete_group(self, group_id: str) -> None:
        self._graph("DELETE", f"/groups/{group_id}")

    # --- change notifications and delta (local/fake_graph/README.md, "Change notifications and delta") ---------

    def notifications(self) -> dict:
        """GET /_fake/notifications: {"subscriptions": [...], "delivered": n, "failed": n, "pending": n}."""
        return self.control("GET", "/notifications")

    def notifications_log(self) -> dict:
        """GET /_fake/notifications/log: {"deliveries": [...], "dropped": n, "lost": n, "settings": {...}}."""
        return self.control("GET", "/notifications/log")

    def set_notifications(self, **settings: Any) -> dict:
        """POST /_fake/notifications: allowHttpLoopback, retrySeconds, duplicate, delayMs, paused, reorder,
        timeoutSeconds, validationTimeoutSeconds, batchMs; answers the settings now in force."""
        return self.control("POST", "/notifications", json=settings)

    def send_lifecycle(self, subscription_id: str, event: str) -> dict:
        """POST /_fake/notifications/lifecycle: reauthorizationRequired, subscriptionRemoved or missed."""
        return self.control("POST", "/notifications/lifecycle", json={"subscriptionId": subscription_id, "event": event})

    def wait_for_deliveries(self, timeout: float = 10) -> dict:
        """Poll GET /_fake/notifications until nothing is pending; answers the last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.notifications()
            if state["pending"] == 0 or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def set_delta(self, **settings: Any) -> dict:
        """POST /_fake/delta: tokenLifetimeSeconds, pageSize, replay, expiredStatus (expireAll: expire_delta_tokens)."""
        return self.control("POST", "/delta", json=settings)

    def expire_delta_tokens(self) -> dict:
        """Every delta token of this tenant answers 410 resyncRequired from now on."""
        return self.control("POST", "/delta", json={"expireAll": True, "tenant": self.tenant_id})


class DevHostProcess:
    """``python -m local`` as a child process: started on free ports, READY parsed, stopped cleanly."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, outbox: str | None = None,
                 log: str | None = None) -> None:
        self.args = list(args)
        self.env = env or {}
        self.outbox = outbox
        self.log = log  # a file for the host's log lines (default: this process's stderr)
        self.proc: subprocess.Popen | None = None
        self.ready: dict[str, str] = {}

    def start(self, timeout: float = 120, *, attempts: int = 3) -> "DevHostProcess":
        """Start and wait for READY. The stack picks free ports for its services and binds them a moment later; if
        another process took one meanwhile (EADDRINUSE in the host's log), it starts again on new ports."""
        for attempt in range(attempts):
            logged = os.path.getsize(self.log) if self.log and os.path.exists(self.log) else 0
            try:
                return self._start(timeout)
            except RuntimeError:
                if attempt == attempts - 1 or not self.log:
                    raise
                with open(self.log, "rb") as f:
                    f.seek(logged)
                    if b"address already in use" not in f.read():
                        raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> "DevHostProcess":
        cmd = [sys.executable, "-m", "local", "--port", "0", *self.args]
        if self.outbox:
            cmd += ["--outbox", self.outbox]
        stderr = open(self.log, "ab") if self.log else None
        try:
            from local.lifecycle import die_with_parent

            self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                         stderr=stderr, text=True, start_new_session=True, preexec_fn=die_with_parent)
        finally:
            if stderr:
                stderr.close()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the dev host exited with {self.proc.wait()} before READY")
            if line.startswith("READY "):
                self.ready = json.loads(line[len("READY "):])
                return self
        self.stop()
        raise TimeoutError("the dev host did not print READY in time")

    def control(self, method: str, path: str, **kw: Any) -> Any:
        response = httpx.request(method, self.ready["control"] + path, timeout=30, **kw)
        response.raise_for_status()
        return response.json()

    def stop(self, timeout: float = 30) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()
        return proc.returncode

    def __enter__(self) -> "DevHostProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
