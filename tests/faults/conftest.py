"""The fault and abuse suite's dev host: Table Storage behind the fault proxy, short locks, few deliveries.

One dev host for the session (``python -m local --table-proxy``), with settings that make faults quick to show:
--max-delivery-count 3 (a message that keeps failing is dead-lettered after three tries), a 5-second message lock
(a crashed host's message comes back soon), MAX_PAGES_PER_MESSAGE=1 (a group over 999 members is several
messages). SMTP login and a Graph client secret are set to known values so the suite can look for them in the log.
"""
from __future__ import annotations

import secrets
import time

import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from local.client import DevHostProcess, FakeTenantAdmin, Portal, portal_token
from tests.faults import figures

# Values the app must never log or return; recognisable so a leak is easy to find.
SMTP_PASSWORD = "smtp-pw-" + secrets.token_hex(12)
GRAPH_CLIENT_SECRET = "graph-cs-" + secrets.token_hex(12)
SESSION_TOKENS: list[str] = []  # every valid portal token the suite minted (access tokens: never logged)

SETTINGS = {
    "MAX_PAGES_PER_MESSAGE": "1",
    "DEPROVISION_GUARD_MIN_USERS": "10",
    "INVITATION_LEASE_SECONDS": "60",  # test_crash waits out a dead sender's claim (longer than its 20 s hold)
    # The recovery timer fires when a test asks (POST /admin/functions/recovery_sweep), never in the middle of another
    # test's faults (its Table Storage calls would take them).
    "RECOVERY_SCHEDULE": "0 0 0 1 1 *",
    "ENROLLMENT_REMINDERS_SCHEDULE": "0 0 0 1 1 *",  # the reminder test fires it itself
    # test_invitation_lifecycle: a reminder "day" of 2 s, and 4 s between two invitations of one user (only a
    # subscription with enrollmentReminders has reminders, and only resends and reissues wait for the interval).
    "REMINDER_DAY_SECONDS": "2",
    "INVITATION_MIN_INTERVAL_SECONDS": "4",
    "SMTP_USERNAME": "mailer",
    "SMTP_PASSWORD": SMTP_PASSWORD,
    "GRAPH_CLIENT_SECRET": GRAPH_CLIENT_SECRET,
    # Many tests connect one fake tenant to a clean reference org and a faulty one (helpers.clean_then_faulty): a
    # tenant in several orgs, which the consent confirm refuses by default (409 tenant_connected_elsewhere).
    "ALLOW_SHARED_TENANTS": "true",
    "WEBHOOK_ALLOW_HTTP_LOOPBACK": "false",  # as in Azure (test_abuse_webhooks)
}


@pytest.fixture(scope="session")
def devhost(tmp_path_factory):
    figures.STARTED = time.monotonic()  # the suite's own time, not the session's
    outbox = tmp_path_factory.mktemp("faults-outbox")
    host = DevHostProcess("--table-proxy", "--lock-duration", "5", "--max-delivery-count", "3", env=SETTINGS, outbox=str(outbox),
                          log=str(outbox.parent / "faults-devhost.log"))
    host.start()
    yield host
    assert host.stop() == 0


@pytest.fixture
def new_portal(devhost):
    """Portals of fresh organisations: ``new_portal()`` (so tests never see each other's rows)."""
    def make(role: str = "Administrator") -> Portal:
        org = "org-" + secrets.token_hex(4)
        token = portal_token(LOCAL_PORTAL_TOKEN_SECRET, org=org, role=role)
        SESSION_TOKENS.append(token)
        portal = Portal(devhost.ready["api"], token, ca=devhost.ready["authorityCa"])
        portal.org = org  # type: ignore[attr-defined]
        return portal
    return make


@pytest.fixture
def portal(new_portal):
    return new_portal()


@pytest.fixture
def load_tenant(devhost):
    """Load a tenant into the fake and make it the one that consents."""
    def load(tenant: dict) -> FakeTenantAdmin:
        return FakeTenantAdmin.load(devhost.ready["graph"], tenant)
    return load


@pytest.fixture(autouse=True)
def no_fault_left_behind(devhost):
    """Every test starts and ends without pending faults, so one test's faults never land in the next."""
    yield
    devhost.control("DELETE", "/tables/faults")
    devhost.control("POST", "/tables/limits", json={"enabled": False})
    devhost.control("DELETE", "/smtp/faults")
    devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": False})
    fake = FakeTenantAdmin(devhost.ready["graph"], "-")
    fake.control("DELETE", "/faults")
    fake.control("POST", "/limits", json={"enabled": False})
    fake.control("POST", "/authority", json={"tokenLifetimeSeconds": 3600, "clientSecretExpired": False})
    fake.control("POST", "/hidden", json={"answer": "empty"})
    fake.control("POST", "/consent", json={"deny": False, "roles": ["User.Read.All", "GroupMember.Read.All"],
                                           "propagationSeconds": 0})


def pytest_terminal_summary(terminalreporter, exitstatus):
    if not (figures.FAULTS or figures.TRIED):
        return
    outcome = "passed" if exitstatus == 0 else f"exit status {exitstatus}"
    terminalreporter.write_sep("=", "fault and abuse suite: figures")
    terminalreporter.write_line(figures.markdown(outcome))
    written = figures.write(outcome)
    if written:
        terminalreporter.write_line(f"figures written to {written}")


@pytest.fixture(scope="session")
def victim(devhost):
    """An organisation with something to lose, shared by the abuse tests: a synced subscription (a run, synced users,
    invitations) and a Manual user. Tests must leave it as they found it; they compare its snapshot."""
    from tests.faults.abuse import Victim

    return Victim.create(devhost, SESSION_TOKENS)


def pytest_collection_modifyitems(items):
    """The secrets test reads the log the rest of the suite produced, so it runs after everything else."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/faults/test_secrets.py"))
