"""The identity platform as Microsoft runs it: consent propagates, revocation waits for token expiry, our secret expires."""
import time

import pytest

from tests.faults import figures
from tests.faults.helpers import connect, expect_error, poll, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults


def token_requests(admin) -> int:
    return sum(n for route, n in admin.control("GET", "/stats")["byRoute"].items() if "oauth2/v2.0/token" in route)


def synced_with_short_tokens(portal, load_tenant, seconds: int):
    """A tenant whose tokens live ``seconds``, connected and synced once: (tenant, its admin, subscription id)."""
    t = with_large_group(3)
    admin = load_tenant(t.tenant)
    admin.control("POST", "/authority", json={"tokenLifetimeSeconds": seconds})
    sub = connect(portal, [t.ids["eng"], t.ids["large"]])
    assert sync(portal, sub)["status"] == "succeeded"
    return t, admin, sub


def test_a_fresh_consent_propagates_for_a_while_and_is_never_taken_for_revoked(devhost, portal, load_tenant):
    t = with_large_group(3)
    admin = load_tenant(t.tenant)
    admin.control("POST", "/consent", json={"tenant": t.tenant["tenantId"], "propagationSeconds": 6})
    sub = portal.create_subscription("Fresh")["id"]
    assert portal.authorize(sub)["consent"] == "confirmed"
    started = time.monotonic()
    body = expect_error(lambda: portal.search_groups(sub, "Depa"), 503, "consent_propagating")
    assert "try again" in body["message"]
    figures.fault("consent propagating (tokens without roles for 6 s)")
    # The Retry-After loop a portal would run: it works seconds later, and the subscription never flips to revoked.
    found = poll(lambda: _search_or_none(portal, sub), 30, "group search to work once consent propagated", interval=1)
    assert found and 5 <= time.monotonic() - started < 30
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "authorized"


def test_a_fresh_consent_answering_aadsts65001_propagates_and_is_never_taken_for_revoked(devhost, portal, load_tenant):
    """The other way Microsoft answers a consent still replicating: the token request itself fails with 65001."""
    from local.client import ApiError

    t = with_large_group(3)
    admin = load_tenant(t.tenant)
    admin.control("POST", "/consent", json={"tenant": t.tenant["tenantId"], "propagationSeconds": 6,
                                            "propagationError": 65001})
    sub = portal.create_subscription("Fresh")["id"]
    assert portal.authorize(sub)["consent"] == "confirmed"
    before = token_requests(admin)
    started = time.monotonic()
    with pytest.raises(ApiError) as err:
        portal.search_groups(sub, "Depa")
    assert (err.value.status, err.value.body["code"]) == (503, "consent_propagating"), err.value.body
    assert 1 <= int(err.value.headers["Retry-After"]) <= 5
    assert token_requests(admin) > before  # the authority was asked and answered 65001 (no Graph token to reuse)
    figures.fault("consent propagating (AADSTS65001 from the token endpoint for 6 s)")
    found = poll(lambda: _search_or_none(portal, sub), 30, "group search to work once consent propagated", interval=1)
    assert found and 5 <= time.monotonic() - started < 30
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "authorized"


def test_a_run_started_right_after_consent_waits_for_propagation(devhost, portal, load_tenant):
    t = with_large_group(3)
    admin = load_tenant(t.tenant)
    admin.control("POST", "/authority", json={"tokenLifetimeSeconds": 1})  # the host's cached tokens go quickly
    sub = connect(portal, [t.ids["eng"]])  # consented and groups selected while the roles were there
    admin.control("POST", "/consent", json={"tenant": t.tenant["tenantId"], "propagationSeconds": 6})
    assert portal.authorize(sub)["consent"] == "confirmed"  # consent again: a new grant, propagating for 6 s
    time.sleep(1.5)
    started = time.monotonic()
    run = sync(portal, sub)
    assert time.monotonic() - started >= 4  # it waited for the roles rather than failing
    assert run["status"] == "succeeded", run
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "authorized"


def test_revocation_takes_effect_when_the_issued_token_expires_and_deactivates_nobody(devhost, portal, load_tenant):
    t, admin, sub = synced_with_short_tokens(portal, load_tenant, 5)
    before = {u["id"]: (u["status"], u["updatedAt"]) for u in portal.users()}
    admin.control("POST", "/consent", json={"revoked": True, "revokedTenant": t.tenant["tenantId"]})
    figures.fault("admin consent revoked (5-second tokens)")
    time.sleep(5.5)  # the token the host holds has expired; the authority issues no new one
    started = time.monotonic()
    run = sync(portal, sub, timeout=60)
    assert time.monotonic() - started < 30
    assert run["status"] == "failed" and "consent_revoked" in {e["code"] for e in run["errors"]}, run
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "consent_revoked"
    assert {u["id"]: (u["status"], u["updatedAt"]) for u in portal.users()} == before


def test_an_expired_client_secret_fails_runs_at_once_with_credential_invalid(devhost, portal, load_tenant):
    t, admin, sub = synced_with_short_tokens(portal, load_tenant, 2)
    admin.control("POST", "/authority", json={"clientSecretExpired": True})
    figures.fault("the app's client secret expired")
    time.sleep(2.5)
    requests = token_requests(admin)
    run = sync(portal, sub, timeout=60)
    assert run["status"] == "failed" and {e["code"] for e in run["errors"]} == {"credential_invalid"}, run
    assert token_requests(admin) - requests <= 4  # one per group and retry, not ten redeliveries per group
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "authorized"  # not the customer's fault
    body = expect_error(lambda: portal.search_groups(sub, "Depa"), 503, "credential_invalid")
    assert "AADSTS" not in body["message"]
    admin.control("POST", "/authority", json={"clientSecretExpired": False})
    assert sync(portal, sub)["status"] == "succeeded"


def _search_or_none(portal, sub):
    from local.client import ApiError

    try:
        return portal.search_groups(sub, "Depa")
    except ApiError as exc:
        if exc.body.get("code") == "consent_propagating":
            return None
        raise
