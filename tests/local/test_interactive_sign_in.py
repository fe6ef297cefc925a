"""The local identity platform's pages a person clicks (``python -m local --interactive-sign-in``): sign-in, consent
with Accept and Cancel, the account picker; the tenant's listed admins with their own passwords and roles.

One FakeGraph for the module with interactive sign-in on; each test is a fresh browser (an httpx client with its own
cookies) after POST /_fake/reset.
"""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from local.fake_graph import DEMO_TENANT, FakeGraph, generate_tenant, load_tenant
from local.identity import LocalApp
from local.identity.server import parse_form_post

DEMO_TID = load_tenant(DEMO_TENANT)["tenantId"]
LISTED = {**generate_tenant(users=3, groups=1, seed=27, domain="fabrikam.example"),
          "admins": [{"userPrincipalName": "grace@fabrikam.example", "password": "grace-pw",
                      "roles": ["Global Administrator"], "displayName": "Grace Taylor"},
                     {"userPrincipalName": "cam@fabrikam.example", "password": "cam-pw",
                      "roles": ["Cloud Application Administrator"]}]}
CLIENT_ID = "6f1d3c2a-0b7e-4d59-9a3e-5c8b2f4e7a27"
REDIRECT = "http://localhost:7071/api/directory/consent"
CONSENT = f"/organizations/v2.0/adminconsent?client_id={CLIENT_ID}&redirect_uri={REDIRECT}&state=S1" \
          "&scope=https://graph.microsoft.com/.default"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    app = LocalApp.create(CLIENT_ID, [REDIRECT], folder=tmp_path_factory.mktemp("interactive-app"))
    server = FakeGraph(tenants=[DEMO_TENANT, LISTED], registration=app.registration, tls=app.tls).start()
    server.identity.interactive = True
    yield server
    server.stop()


@pytest.fixture
def browser(fake):
    assert httpx.post(f"{fake.origin}/_fake/reset").json() == {"reset": True}
    with httpx.Client(base_url=fake.authority, verify=str(fake.tls.ca_file), timeout=10) as client:
        yield client


def grants(fake) -> dict:
    return {g["tenant"]: g for g in httpx.get(f"{fake.origin}/_fake/consent").json()["grants"]}


def test_sign_in_then_consent_cancel_and_accept(fake, browser):
    page = browser.get(CONSENT)
    assert page.status_code == 200 and "<title>Sign in to your account</title>" in page.text
    assert 'name="loginfmt"' in page.text and 'name="passwd"' in page.text

    wrong = browser.post(CONSENT, data={"loginfmt": "admin@contoso.example", "passwd": "nope"})
    assert "Your account or password is incorrect." in wrong.text and "ESTSAUTH" not in wrong.cookies
    unknown = browser.post(CONSENT, data={"loginfmt": "someone@nowhere.example", "passwd": "admin"})
    assert "Your account or password is incorrect." in unknown.text

    consent = browser.post(CONSENT, data={"loginfmt": "admin@contoso.example", "passwd": "admin"})
    assert "Permissions requested" in consent.text and "Directory Sync (local)" in consent.text
    for permission in ("User.Read.All", "GroupMember.Read.All", "Group.Read.All"):
        assert permission in consent.text
    cookie = consent.headers["set-cookie"]
    assert "ESTSAUTH=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
    assert grants(fake) == {}  # signing in grants nothing

    cancelled = browser.post(CONSENT, data={"consent": "cancel"})
    answer = parse_qs(urlsplit(cancelled.headers["location"]).query)
    assert cancelled.status_code == 302 and answer["error"] == ["access_denied"] and answer["state"] == ["S1"]
    assert grants(fake) == {}

    again = browser.get(CONSENT)  # the browser's session: straight to the consent page
    assert "Permissions requested" in again.text
    accepted = browser.post(CONSENT, data={"consent": "accept"})
    answer = parse_qs(urlsplit(accepted.headers["location"]).query)
    assert answer["admin_consent"] == ["True"] and answer["tenant"] == [DEMO_TID]
    assert set(grants(fake)) == {DEMO_TID}


def test_the_tenants_listed_admins_sign_in_with_their_own_passwords_and_roles(fake, browser):
    browser.get(CONSENT)
    refused = browser.post(CONSENT, data={"loginfmt": "admin@fabrikam.example", "passwd": "admin"})
    assert "Your account or password is incorrect." in refused.text  # the default admin exists only when none listed

    browser.post(CONSENT, data={"loginfmt": "cam@fabrikam.example", "passwd": "cam-pw"})
    not_allowed = browser.post(CONSENT, data={"consent": "accept"})
    assert not_allowed.status_code == 400 and "AADSTS90094" in not_allowed.text
    assert grants(fake) == {}

    browser.cookies.clear()
    browser.get(CONSENT)
    browser.post(CONSENT, data={"loginfmt": "Grace@Fabrikam.example", "passwd": "grace-pw"})
    accepted = browser.post(CONSENT, data={"consent": "accept"})
    assert parse_qs(urlsplit(accepted.headers["location"]).query)["tenant"] == [LISTED["tenantId"]]


def sign_in_url(tenant: str, prompt: str | None = "select_account") -> str:
    url = (f"/{tenant}/oauth2/v2.0/authorize?client_id={CLIENT_ID}&redirect_uri={REDIRECT}&response_type=id_token"
           f"&response_mode=form_post&scope=openid%20profile&nonce=N1&state=S2")
    return url + (f"&prompt={prompt}" if prompt else "")


def id_token_claims(page: httpx.Response) -> dict:
    action, fields = parse_form_post(page.text)
    assert action == REDIRECT and fields["state"] == "S2"
    return jwt.decode(fields["id_token"], options={"verify_signature": False})


def test_the_sign_in_shows_the_account_picker_to_a_signed_in_browser(fake, browser):
    url = sign_in_url(LISTED["tenantId"])
    first = browser.get(url)
    assert "<title>Sign in to your account</title>" in first.text  # no session yet: sign in, no picker after
    claims = id_token_claims(browser.post(url, data={"loginfmt": "grace@fabrikam.example", "passwd": "grace-pw"}))
    assert claims["preferred_username"] == "grace@fabrikam.example" and claims["name"] == "Grace Taylor"

    picker = browser.get(url)
    assert "<title>Pick an account</title>" in picker.text and "grace@fabrikam.example" in picker.text
    claims = id_token_claims(browser.post(url, data={"account": "grace@fabrikam.example"}))
    assert claims["tid"] == LISTED["tenantId"] and claims["nonce"] == "N1"

    assert "<title>Sign in to your account</title>" in browser.get(sign_in_url(LISTED["tenantId"], "login")).text
    silent = browser.get(sign_in_url(LISTED["tenantId"], None))
    assert id_token_claims(silent)["preferred_username"] == "grace@fabrikam.example"


def test_an_account_of_another_tenant_gets_the_error_page(fake, browser):
    url = sign_in_url(DEMO_TID)
    browser.get(url)
    page = browser.post(url, data={"loginfmt": "grace@fabrikam.example", "passwd": "grace-pw"})
    assert page.status_code == 400 and "AADSTS50020" in page.text


def test_without_the_flag_the_pages_take_no_form(fake, browser):
    fake.identity.interactive = False
    try:
        assert browser.post(CONSENT, data={"consent": "accept"}).status_code == 405
        automatic = browser.get(CONSENT)
        assert automatic.status_code == 302 and "admin_consent=True" in automatic.headers["location"]
    finally:
        fake.identity.interactive = True
