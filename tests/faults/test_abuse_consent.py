"""The admin-consent callback: forged, expired, replayed and swapped states change nothing; it only redirects home."""
import base64
import json
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET, LOCAL_SIGNING_SECRET
from local.client import FakeTenantAdmin, Portal, portal_token
from sync import signing
from sync.consent import CONSENT_STATE_PURPOSE
from tests.e2e.conftest import confirm_alert_addresses
from tests.faults import figures
from tests.faults.abuse import assert_error
from tests.faults.helpers import expect_error, poll
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

PORTAL = "http://localhost:3000"
RETURN_PATH = "/directory-sync"


def state_claims(state: str) -> dict:
    body = state.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


class Callback:
    """Microsoft's redirects to the app, as a browser would follow them."""

    def __init__(self, devhost):
        self.url = devhost.ready["api"] + "/directory/consent"
        self.authority = devhost.ready["authority"]
        self.ca = devhost.ready["authorityCa"]
        self.tried = 0

    def __call__(self, params: dict | list, headers: dict | None = None) -> dict[str, str]:
        """Call the callback; assert it redirects to the portal's page (or Microsoft's sign-in) and nowhere else."""
        response = httpx.get(self.url, params=params, headers=headers, follow_redirects=False, timeout=30)
        self.tried += 1
        return self._back(response)

    def _back(self, response: httpx.Response) -> dict[str, str]:
        assert response.status_code == 302, (response.status_code, response.text[:200])
        location = urlsplit(response.headers["location"])
        if f"{location.scheme}://{location.netloc}" == self.authority:  # on to the admin's sign-in, nothing recorded
            assert location.path.endswith("/oauth2/v2.0/authorize"), location
            return {"signIn": response.headers["location"]}
        assert f"{location.scheme}://{location.netloc}" == PORTAL and location.path == RETURN_PATH, location
        assert not location.fragment and "\r" not in response.headers["location"]
        query = {k: v[0] for k, v in parse_qs(location.query).items()}
        assert set(query) <= {"consent", "error", "subscriptionId", "consentCode"}, query
        assert all(c.isalnum() or c in "_-" for c in query.get("error", "")), query
        return query

    def sign_in(self, location: str) -> dict[str, str]:
        """Microsoft's sign-in page for ``location`` (as the account the fake signs in with), its form posted back."""
        from local.identity.server import parse_form_post

        page = httpx.get(location, verify=self.ca, timeout=30)
        if page.status_code != 200:
            return {"signinError": page.text[page.text.find("AADSTS"):][:80]}
        action, fields = parse_form_post(page.text)
        assert action == self.url
        return self.post(fields)

    def post(self, fields: dict[str, str]) -> dict[str, str]:
        self.tried += 1
        return self._back(httpx.post(self.url, data=fields, follow_redirects=False, timeout=30))


def _other_bits(last: str) -> str:
    """The last character of a 32-byte MAC (two unused low bits) spelled with one of them set: the same bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return alphabet[alphabet.index(last) ^ 1]


def consent_url(portal, sub: str) -> tuple[str, dict]:
    url = portal.call("POST", f"/directory/subscriptions/{sub}/authorize")["authorizeUrl"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    return state, state_claims(state)


def test_forged_expired_replayed_and_swapped_states_change_nothing(devhost, portal, load_tenant):
    t = with_large_group(3)
    load_tenant(t.tenant)
    tid = t.tenant["tenantId"]
    callback = Callback(devhost)
    a = portal.create_subscription("A")["id"]
    b = portal.create_subscription("B")["id"]
    state_a, claims_a = consent_url(portal, a)
    state_b, claims_b = consent_url(portal, b)
    granted = {"admin_consent": "True", "tenant": tid}
    now = int(time.time())

    def signed(**claims):
        return signing.sign(LOCAL_SIGNING_SECRET, CONSENT_STATE_PURPOSE, claims)

    body_a, mac_a = state_a.split(".")
    swapped_body = base64.urlsafe_b64encode(json.dumps({**claims_a, "sub": b}).encode()).rstrip(b"=").decode()
    refused = {
        "no state": ({**granted}, "missing_state"),
        "garbage": ({**granted, "state": "garbage"}, "invalid_token"),
        "forged MAC": ({**granted, "state": body_a + ".AAAA"}, "invalid_token"),
        # The genuine state respelled (issue 22, finding 10): a lenient base64url decoder reads the same MAC.
        # (Two characters: the lenient decoder then also finds the length it expects.)
        "MAC with '!!' appended": ({**granted, "state": state_a + "!!"}, "invalid_token"),
        "MAC with '*' and '~' inserted": ({**granted, "state": f"{body_a}.{mac_a[:5]}*{mac_a[5:9]}~{mac_a[9:]}"},
                                          "invalid_token"),
        "MAC padded": ({**granted, "state": state_a + "="}, "invalid_token"),
        "MAC's last character with other unused bits": ({**granted, "state": state_a[:-1] + _other_bits(state_a[-1])},
                                                        "invalid_token"),
        "payload swapped to B under A's MAC": ({**granted, "state": f"{swapped_body}.{mac_a}"}, "invalid_token"),
        "enrollment-purpose token": ({**granted, "state": signing.sign(LOCAL_SIGNING_SECRET, "enrollment", claims_a)},
                                     "invalid_token"),
        # Signed with the real secret but expired; its nonce is unknown to an attacker, expiry is checked first.
        "expired": ({**granted, "state": signed(**{**claims_a, "exp": now - 60})}, "state_expired"),
        "expired with a guessed nonce": ({**granted, "state": signed(org=portal.org, sub=a, n="guess", exp=now - 1)},
                                         "state_expired"),
        "wrong nonce": ({**granted, "state": signed(org=portal.org, sub=a, n="guess", exp=now + 600)}, "state_used"),
        "A's nonce on B": ({**granted, "state": signed(**{**claims_a, "sub": b})}, "state_used"),
        "another org's subscription": ({**granted, "state": signed(**{**claims_a, "org": "mallory"})},
                                       "subscription_not_found"),
        "exp as text": ({**granted, "state": signed(**{**claims_a, "exp": str(now + 600)})}, "invalid_state"),
    }
    for what, (params, code) in refused.items():
        assert callback(params).get("error") == code, what
    for params in ({**granted, "state": state_a, "admin_consent": "False"},
                   {**granted, "state": state_a, "tenant": "https://evil.example/"},
                   {**granted, "state": state_a, "tenant": ""}):
        assert callback(params) == {"subscriptionId": a, "consent": "error", "error": "consent_not_granted"}
    subs = {s["id"]: s for s in portal.call("GET", "/directory/subscriptions")["subscriptions"]}
    assert all(s["status"] == "authorization_required" and s["azureTenantId"] is None for s in subs.values())

    # The genuine state works once; replayed (with any tenant) it is refused and changes nothing.
    back = callback.sign_in(callback({**granted, "state": state_a})["signIn"])
    assert (back["subscriptionId"], back["consent"]) == (a, "pending")
    assert portal.confirm_consent(a, back["consentCode"])["consent"] == "confirmed"
    for tenant in (tid, "00000000-0000-0000-0000-000000000bad"):
        assert callback({**granted, "tenant": tenant, "state": state_a})["error"] == "state_used"
    assert portal.call("GET", f"/directory/subscriptions/{a}")["azureTenantId"] == tid
    # Microsoft's "denied" redirect consumes B's state: it cannot be turned into a grant afterwards.
    denied = {"error": "access_denied", "error_description": "<script>x</script>", "state": state_b}
    assert callback(denied) == {"subscriptionId": b, "consent": "error", "error": "access_denied"}
    assert callback(denied) == {"subscriptionId": b, "consent": "error", "error": "access_denied"}  # reloaded
    assert callback({**granted, "state": state_b})["error"] == "state_used"
    assert portal.call("GET", f"/directory/subscriptions/{b}")["status"] == "authorization_required"
    # Consent (proven by its admin's sign-in) from another tenant for a subscription already connected to one.
    other = with_large_group(2)
    load_tenant(other.tenant)
    state, _ = consent_url(portal, a)
    signin = callback({**granted, "tenant": other.tenant["tenantId"], "state": state})["signIn"]
    assert callback.sign_in(signin)["error"] == "tenant_mismatch"
    assert portal.call("GET", f"/directory/subscriptions/{a}")["azureTenantId"] == tid
    figures.tried("consent callback: forged, expired, replayed, swapped", callback.tried)


def test_no_url_parameter_or_header_can_redirect_the_browser_elsewhere(devhost, portal, load_tenant):
    t = with_large_group(3)
    load_tenant(t.tenant)
    callback = Callback(devhost)
    sub = portal.create_subscription("A")["id"]
    state, _ = consent_url(portal, sub)
    evil = ["https://evil.example/", "//evil.example", "/\\evil.example", "https:evil.example", "javascript:alert(1)",
            "http://localhost:3000@evil.example", "%0d%0aLocation:%20https://evil.example", "\r\nLocation: //evil"]
    names = ["redirect_uri", "redirect", "returnUrl", "return_to", "next", "url", "continue", "post_login_redirect",
             "error", "error_description", "tenant", "state", "admin_consent", "scope"]
    for target in evil:
        for name in names:
            callback({"admin_consent": "True", "tenant": t.tenant["tenantId"], "state": "x", name: target})
            callback([("state", state), ("state", target), (name, target)])  # repeated parameters too
        callback({"state": "x"}, headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example",
                                          "Referer": target.strip(), "X-Original-URL": "/evil"})
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "authorization_required"
    # The sign-in's form_post (POST) redirects only to the portal too, whatever it carries.
    for target in evil:
        for name in names + ["id_token"]:
            callback.post({"state": state, name: target})
    # Only GET and POST: other methods are refused (and never redirect).
    for method in ("PUT", "DELETE", "PATCH"):
        assert_error(httpx.request(method, callback.url, params={"state": state}, timeout=30), 405)
    figures.tried("consent callback: open-redirect attempts", callback.tried + 3)


def test_another_customers_tenant_cannot_be_bound_by_forging_or_swapping_the_tenant(devhost, new_portal, load_tenant):
    """The cross-customer attack: a victim tenant consented for its own org; an attacker org tries to bind it."""
    victim_t, attacker_t = with_large_group(3), with_large_group(3)
    victim_tid, attacker_tid = victim_t.tenant["tenantId"], attacker_t.tenant["tenantId"]
    victim, attacker = new_portal(), new_portal()
    load_tenant(victim_t.tenant)  # the victim's Global Admin consents, honestly
    honest = victim.create_subscription("Victim")["id"]
    assert victim.authorize(honest)["consent"] == "confirmed"
    assert victim.call("GET", f"/directory/subscriptions/{honest}")["azureTenantId"] == victim_tid

    load_tenant(attacker_t.tenant)  # from now on the browser is signed in as the attacker's own Global Admin
    callback = Callback(devhost)
    sub = attacker.create_subscription("Mallory")["id"]
    # 1. A forged callback: the attacker's own valid state, the victim's tenant id.
    state, _ = consent_url(attacker, sub)
    signin = callback({"admin_consent": "True", "tenant": victim_tid, "state": state})["signIn"]
    assert f"/{victim_tid}/oauth2/v2.0/authorize" in signin
    assert "AADSTS50020" in callback.sign_in(signin)["signinError"]  # Microsoft will not sign them in there
    # ...and their own tenant's sign-in, carrying the victim's tenant in our signed state, proves the wrong tenant.
    own = signin.replace(f"/{victim_tid}/", f"/{attacker_tid}/")
    assert callback.sign_in(own) == {"subscriptionId": sub, "consent": "error", "error": "tenant_unverified"}
    # 2. A genuine walk through Microsoft's pages with the tenant swapped on the way back.
    assert "AADSTS50020" in attacker.authorize(sub, swap_tenant=victim_tid)["signinError"]
    # 3. A non-admin account of the victim's tenant (a member or guest there) signs in for real.
    FakeTenantAdmin(devhost.ready["graph"], victim_tid).control("POST", "/consent", json={"tenant": victim_tid, "wids": []})
    state, _ = consent_url(attacker, sub)
    signin = callback({"admin_consent": "True", "tenant": victim_tid, "state": state})["signIn"]
    assert callback.sign_in(signin) == {"subscriptionId": sub, "consent": "error", "error": "admin_role_required"}
    after = attacker.call("GET", f"/directory/subscriptions/{sub}")
    assert (after["status"], after["azureTenantId"]) == ("authorization_required", None)
    expect_error(lambda: attacker.search_groups(sub, "Depa"), 409, "not_authorized")
    # The honest walk of the attacker's own tenant binds exactly that tenant.
    load_tenant(attacker_t.tenant)
    assert attacker.authorize(sub)["consent"] == "confirmed"
    assert attacker.call("GET", f"/directory/subscriptions/{sub}")["azureTenantId"] == attacker_tid
    figures.tried("consent: another customer's tenant forged, swapped, signed in without a role", callback.tried + 2)


def test_consent_phishing_a_consent_url_completed_by_another_companys_admin_connects_nothing(devhost, new_portal,
                                                                                            load_tenant):
    """Issue 22, finding 1: org A sends its genuine consent URL to another company's Global Administrator, who
    follows it and accepts. A's subscription must not become authorized for that tenant; only A's own portal user,
    with the code the redirect brought to *their* browser, could confirm it, and nobody else can."""
    victim_t = with_large_group(3)
    victim_tid = victim_t.tenant["tenantId"]
    attacker, victim = new_portal(), new_portal()
    load_tenant(victim_t.tenant)  # the browser is signed in as the victim company's Global Administrator
    victims_own = victim.create_subscription("Victim")["id"]
    victim.update(victims_own, notifyEmails=[f"it@{victim_t.tenant['domain']}"])
    confirm_alert_addresses(devhost, [f"it@{victim_t.tenant['domain']}"])  # the victim's admin agreed to alerts

    sub = attacker.create_subscription("Innocent-looking")["id"]
    url = attacker.call("POST", f"/directory/subscriptions/{sub}/authorize")["authorizeUrl"]
    # The victim's admin opens the phishing link: Microsoft's real pages, their own account, their own browser.
    landed = attacker.follow_consent(url)
    after = attacker.call("GET", f"/directory/subscriptions/{sub}")
    assert (after["status"], after["azureTenantId"]) == ("authorization_pending", None)  # not the victim's tenant
    assert set(landed) == {"subscriptionId", "consent", "consentCode"} and landed["consent"] == "pending"
    assert victim_tid not in json.dumps(landed) and victim_tid not in json.dumps(state_claims(landed["consentCode"]))
    expect_error(lambda: attacker.search_groups(sub, "Depa"), 409, "not_authorized")
    expect_error(lambda: attacker.full_sync(sub, dry_run=True), 409, "not_authorized")
    assert victim.authorize(victims_own)["consent"] == "confirmed"  # the victim connects its own tenant, honestly

    # The code lands in the victim's browser, on the portal, where the victim is signed in to their own org (or to
    # none); another user of the attacker's org may not use it either.
    colleague = Portal(devhost.ready["api"], portal_token(LOCAL_PORTAL_TOKEN_SECRET, org=attacker.org,
                                                          sub="colleague@attacker.example"))
    for who, target in ((victim, sub), (victim, victims_own), (colleague, sub)):
        for path, kw in (("/consent", {"params": {"consentCode": landed["consentCode"]}}),
                         ("/consent/confirm", {"json": {"consentCode": landed["consentCode"]}})):
            method = "GET" if path == "/consent" else "POST"
            expect_error(lambda: who.call(method, f"/directory/subscriptions/{target}{path}", **kw), 404,
                         "consent_not_found")
    after = attacker.call("GET", f"/directory/subscriptions/{sub}")
    assert (after["status"], after["azureTenantId"]) == ("authorization_pending", None)
    assert victim.call("GET", f"/directory/subscriptions/{victims_own}")["azureTenantId"] == victim_tid

    # Should the victim forward the URL and the attacker's own user confirm it, the preview names the tenant and
    # who consented, and the victim's admins are told. (This host allows a tenant in several orgs, as the fault
    # suite connects one tenant to a clean and a faulty org: ALLOW_SHARED_TENANTS=true; by default the confirm is
    # 409 tenant_connected_elsewhere, tests/unit/test_consent.py.)
    shown = attacker.pending_consent(sub, landed["consentCode"])
    assert shown["tenantId"] == victim_tid and shown["tenantDomain"] == victim_t.tenant["domain"]
    assert attacker.confirm_consent(sub, landed["consentCode"])["consent"] == "confirmed"
    expect_error(lambda: attacker.call("POST", f"/directory/subscriptions/{sub}/consent/confirm",
                                       json={"consentCode": landed["consentCode"]}), 410, "consent_code_used")

    def alerted():
        for path in Path(devhost.ready["outbox"]).glob("*.eml"):
            message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
            if message["X-Envelope-To"] == f"it@{victim_t.tenant['domain']}" \
                    and "another organisation" in str(message["Subject"]):
                return message
        return None

    told = poll(alerted, 60, "the victim's alert")
    assert attacker.org in told.get_body(("plain",)).get_content()
    figures.tried("consent phishing: another company's admin completes the link; others confirm", 8)
