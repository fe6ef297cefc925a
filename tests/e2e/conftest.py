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
