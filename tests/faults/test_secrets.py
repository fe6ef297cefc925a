"""Secrets never reach the logs or the API's answers.

Counted as secrets: the app's own keys (PORTAL_TOKEN_SECRET, SIGNING_SECRET), the credentials it holds for others
(GRAPH_CLIENT_SECRET — the secret the local authority checks —, SMTP_PASSWORD, the Table Storage account key, the
Service Bus key), access tokens (every portal token the suite used, and any JWT: the Graph tokens the local authority
issues, the consenting admin's id_tokens, the managed identity's assertions) and the
single-use values that act as credentials (consent nonces, enrollment tokens: they belong in the browser and the
invitation, not in a log). Not secrets: ids (org, subscription, tenant, user), names and addresses.

This module runs after every other test of the suite (see conftest), so the log it reads is the whole suite's:
faults, crashes, dead letters, revoked consent, forged tokens, hostile input and schemathesis included.
"""
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET, LOCAL_SIGNING_SECRET
from local.azurite import KEY as AZURITE_KEY
from tests.faults import figures
from tests.faults.conftest import GRAPH_CLIENT_SECRET, SESSION_TOKENS, SMTP_PASSWORD
from tests.faults.helpers import GraphFaults, connect, emails_of_org, poll, settle, sync
from tests.faults.tenants import with_large_group
from tests.faults.test_abuse_consent import state_claims

pytestmark = pytest.mark.faults


def secrets_of(devhost, extra: list[str]) -> dict[str, str]:
    """What must never appear, by name."""
    found = {
        "PORTAL_TOKEN_SECRET": LOCAL_PORTAL_TOKEN_SECRET,
        "SIGNING_SECRET": LOCAL_SIGNING_SECRET,
        "GRAPH_CLIENT_SECRET": GRAPH_CLIENT_SECRET,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "Table Storage account key": AZURITE_KEY,
        "Service Bus key": re.search(r"SharedAccessKey=([^;]+)", devhost.ready["serviceBus"]).group(0),
    }
    for n, token in enumerate(SESSION_TOKENS):
        found[f"portal token #{n}"] = token
        found[f"portal token #{n} signature"] = token.rsplit(".", 1)[1]
    for n, value in enumerate(extra):
        found[f"single-use value #{n}"] = value
    return found


def test_no_secret_in_the_log_or_in_any_answer(devhost, portal, load_tenant, victim):
    t = with_large_group(3)
    admin = load_tenant(t.tenant)
    tid = t.tenant["tenantId"]
    answers: list[str] = []

    def keep(response: httpx.Response) -> None:
        response.read()
        answers.append(f"{response.status_code} {response.headers.get('location', '')} {response.text}")

    portal.http.event_hooks["response"] = [keep]
    # A run that e-mails (SMTP login with the password), meets Graph errors, loses consent, and a consent dance.
    # Short tokens: a revoked consent takes effect when the token the host holds expires.
    admin.control("POST", "/authority", json={"tokenLifetimeSeconds": 3})
    sub = connect(portal, [t.ids["eng"], t.ids["sales"]], sendEnrollmentEmail=True)
    url = portal.call("POST", f"/directory/subscriptions/{sub}/authorize")["authorizeUrl"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    faults = GraphFaults(admin)
    faults.add(f"/groups/{t.ids['eng']}/transitiveMembers", status=503, retry_after=1, times=5)
    assert sync(portal, sub)["status"] == "succeeded"
    faults.count()
    mails = poll(lambda: emails_of_org(devhost, portal.org), 30, "invitations")
    settle(devhost)
    enrollment = [re.search(r"/enroll\?token=([A-Za-z0-9_\-.]+)", m.get_body(preferencelist=("plain",)).get_content())
                  .group(1) for m in mails]
    portal.call("POST", "/enrollment/complete", json={"token": enrollment[0]})
    admin.control("POST", "/consent", json={"revoked": True, "revokedTenant": tid})
    time.sleep(3.5)
    run = sync(portal, sub)
    assert run["status"] == "failed"
    figures.fault("admin consent revoked")
    for path in ("/directory/subscriptions", f"/directory/subscriptions/{sub}/runs", "/users", "/groups",
                 "/openapi.json"):
        portal.call("GET", path)
    for forged in ("Bearer " + SESSION_TOKENS[0][:-4] + "AAAA", "Bearer x.y.z"):
        keep(httpx.get(portal.api + "/users", headers={"Authorization": forged}))
    keep(httpx.get(portal.api + "/directory/consent", params={"state": state, "error": "x"}))
    figures.tried("requests whose answers were searched for secrets", len(answers))

    # The clientState of every Graph subscription the app made (the webhook's proof) is a secret too.
    client_states = [w["clientState"] for w in admin.notifications()["subscriptions"] if w.get("clientState")]
    single_use = [*enrollment, victim.enrollment_token, state_claims(state)["n"], *client_states]
    never = secrets_of(devhost, single_use)
    log = Path(devhost.log).read_text(encoding="utf-8", errors="replace")
    assert len(log) > 100_000  # the whole suite's log, not an empty file
    leaked_to_log = sorted(name for name, value in never.items() if value in log)
    leaked_in_answers = sorted(name for name, value in never.items() if any(value in a for a in answers))
    assert leaked_to_log == []
    assert leaked_in_answers == []
    # Bearer tokens of any kind, and anything that looks like a dumped header or connection string.
    # A JWT of any kind (Graph access tokens, the managed identity's assertion, id_tokens of the consent sign-in,
    # client assertions) and the app's client secret or certificate key never reach the log or an answer.
    jwt_like = r"eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\."
    for pattern in (jwt_like, r"Bearer\s+[A-Za-z0-9_\-]{10,}", r"(?i)authorization['\"]?\s*[:=]", r"BEGIN PRIVATE KEY",
                    r"AccountKey=", r"(?i)password['\"]?\s*[=:]\s*\S", r"/enroll\?token=", r"client_secret="):
        assert not re.search(pattern, log), pattern
    for pattern in (jwt_like, r"Bearer\s+eyJ", r"AccountKey=", r"/enroll\?token=", r"client_secret="):
        assert not any(re.search(pattern, a) for a in answers), pattern  # (the API's texts may name the header)
