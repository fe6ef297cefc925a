"""End-to-end fixtures: the dev host (``python -m local``) on free ports, driven only through HTTP."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from local.client import DevHostProcess, FakeTenantAdmin, Portal, portal_token

# The suite runs once per kind of Microsoft credential the app supports, each getting its tokens from the local
# identity platform: a client secret, a certificate, and the managed identity's federated credential.
# `E2E_CREDENTIALS=secret pytest tests/e2e` runs one kind only.
CREDENTIALS = os.environ.get("E2E_CREDENTIALS", "secret,certificate,managed_identity").split(",")


@pytest.fixture(scope="session", params=CREDENTIALS)
def devhost(request, tmp_path_factory):
    """One dev host per credential kind, loaded with the demo tenant and the e2e tenant."""
    outbox = tmp_path_factory.mktemp(f"outbox-{request.param}")
    host = DevHostProcess("--lock-duration", "20", "--max-delivery-count", "3",
                          # Every watch is due when the renewal timer is fired by hand (test_changes).
                          env={"DEPROVISION_GUARD_MIN_USERS": "10",
                               "WATCH_RENEW_BEFORE_HOURS": "1000", "GRAPH_CREDENTIAL": request.param},
                          outbox=str(outbox), log=str(outbox.parent / "devhost.log"))
    host.start()
    yield host
    assert host.stop() == 0


@pytest.fixture
def portal(devhost):
    """The portal backend of a fresh organisation (so tests never see each other's rows)."""
    return Portal(devhost.ready["api"], portal_token(LOCAL_PORTAL_TOKEN_SECRET, org="org-" + secrets.token_hex(4)),
                  ca=devhost.ready["authorityCa"])


@pytest.fixture
def load_tenant(devhost):
    """Load a tenant into the fake (its own tenantId, so tests never share one) and make it the one that consents."""
    def load(tenant: dict) -> FakeTenantAdmin:
        return FakeTenantAdmin.load(devhost.ready["graph"], tenant)
    return load


def emails_to(devhost, domain: str) -> list:
    """E-mails the SMTP sink received for addresses of ``domain``, oldest first."""
    from email import policy
    from email.parser import BytesParser

    out = []
    for path in sorted(Path(devhost.ready["outbox"]).glob("*.eml")):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if message.get("X-Envelope-To", "").endswith("@" + domain):
            out.append(message)
    return out


CONFIRMATION_SUBJECT = "Confirm that you want Directory Sync alerts"


def alerts_to(devhost, domain: str) -> list:
    """The admin alerts (and any other e-mail but the notifyEmails confirmations) the sink received for ``domain``."""
    return [m for m in emails_to(devhost, domain) if m["Subject"] != CONFIRMATION_SUBJECT]


def confirm_alert_addresses(devhost, addresses: list[str], timeout: float = 30) -> list:
    """Each address follows the link in the confirmation e-mail it got for ``notifyEmails``, as a real recipient
    would (a GET in the browser: 200 and a page); the confirmation e-mails, one per address."""
    import re
    import time

    import httpx

    wanted = {a.casefold() for a in addresses}
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for domain in {a.rpartition("@")[2] for a in addresses}:
            for m in emails_to(devhost, domain):
                if m["Subject"] == CONFIRMATION_SUBJECT and m["X-Envelope-To"].casefold() in wanted:
                    found.setdefault(m["X-Envelope-To"].casefold(), []).append(m)
        if set(found) == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(found) == wanted, f"confirmation e-mails for {sorted(wanted - set(found))} did not come"
    assert all(len(ms) == 1 for ms in found.values()), "an address was asked twice"
    mails = [ms[0] for ms in found.values()]
    for m in mails:
        link = re.search(r"(http\S+/api/directory/notify-emails/confirm\?token=\S+)",
                         m.get_body(("plain",)).get_content()).group(1)
        page = httpx.get(link, timeout=30)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
    return mails
