"""The local Microsoft identity platform, driven by the app's real azure-identity credentials (and httpx for shapes).

One FakeGraph for the module (its authority on HTTPS, trusted in this process); every test starts from
POST /_fake/reset: no consent, default token lifetime, the secret valid, no faults.
"""
from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp  # noqa: F401 - imported before trust_in_this_process so its verifying context exists
import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential
from cryptography.hazmat.primitives.asymmetric import rsa

from local.fake_graph import DEMO_TENANT, FakeGraph, generate_tenant, load_tenant
from local.identity import LocalApp
from local.identity.platform import GLOBAL_ADMINISTRATOR
from local.identity.server import parse_form_post
from local.identity.tls import self_signed_client_certificate, trust_in_this_process
from sync.adapters.credentials import FederatedIdentityCredential

DEMO_TID = load_tenant(DEMO_TENANT)["tenantId"]
OTHER = generate_tenant(users=5, groups=1, seed=21, domain="fabrikam.example")
OTHER_TID = OTHER["tenantId"]
CLIENT_ID = "6f1d3c2a-0b7e-4d59-9a3e-5c8b2f4e7a10"
REDIRECT = "http://localhost:7071/api/consent/callback"
SCOPE = "https://graph.microsoft.com/.default"
TOKEN_ROUTE = "POST /{tenant}/oauth2/v2.0/token"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return LocalApp.create(CLIENT_ID, [REDIRECT], folder=tmp_path_factory.mktemp("local-app"))


@pytest.fixture(scope="module")
def fake(app):
    server = FakeGraph(tenants=[DEMO_TENANT, OTHER], registration=app.registration,
                       managed_identity=app.managed_identity, tls=app.tls).start()
    trust_in_this_process(app.tls.ca_file)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def reset(fake):
    assert httpx.post(f"{fake.origin}/_fake/reset").json() == {"reset": True}
    yield


@pytest.fixture
async def authority(fake):
    async with httpx.AsyncClient(base_url=fake.authority, verify=str(fake.tls.ca_file), timeout=10) as client:
        yield client


def secret_credential(fake: FakeGraph, app: LocalApp, tenant: str = DEMO_TID, secret: str | None = None):
    return ClientSecretCredential(tenant, CLIENT_ID, secret or app.client_secret, authority=fake.authority)


async def token_of(credential) -> str:
    async with credential:
        return (await credential.get_token(SCOPE)).token


async def graph_get(fake: FakeGraph, token: str, path: str = "/groups") -> httpx.Response:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
        return await http.get(f"{fake.base_url}{path}")


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


async def token_request(authority: httpx.AsyncClient, app: LocalApp, tenant: str = DEMO_TID, **form: str):
    data = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": app.client_secret,
            "scope": SCOPE, **form}
    return await authority.post(f"/{tenant}/oauth2/v2.0/token", data=data)


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def authorize_params(**extra: str) -> dict[str, str]:
    return {"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "response_type": "id_token",
            "response_mode": "form_post", "scope": "openid profile", "nonce": "n-0S6_WzA2Mj", "state": "st-1", **extra}


# --- client credentials: consent, secrets, certificates, managed identity -----------------------------


async def test_no_token_before_the_tenant_consents(fake, app, authority):
    response = await token_request(authority, app)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "unauthorized_client" and body["error_codes"] == [700016]
    assert body["error_description"].startswith("AADSTS700016:")
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        await token_of(secret_credential(fake, app))


async def test_after_consent_the_secret_credentials_token_reads_graph(fake, app, authority):
    fake.identity.consent(DEMO_TID)
    token = await token_of(secret_credential(fake, app))
    seen = claims(token)
    assert seen["aud"] == "https://graph.microsoft.com" and seen["iss"] == f"https://sts.windows.net/{DEMO_TID}/"
    assert seen["tid"] == DEMO_TID and seen["appid"] == CLIENT_ID and seen["idtyp"] == "app"
    assert sorted(seen["roles"]) == ["Group.Read.All", "GroupMember.Read.All", "User.Read.All"]
    response = await graph_get(fake, token)
    assert response.status_code == 200 and len(response.json()["value"]) == 8
    # A token of one tenant is a token of that tenant only: the other has not consented.
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        await token_of(secret_credential(fake, app, tenant=OTHER_TID))


async def test_consent_through_the_page_then_a_token(fake, app, authority):
    fake.set_consent(tenant=OTHER_TID)
    response = await authority.get(f"/{OTHER_TID}/v2.0/adminconsent",
                                   params={"client_id": CLIENT_ID, "redirect_uri": REDIRECT, "state": "x"})
    assert response.status_code == 302 and response.headers["Location"].startswith(REDIRECT + "?")
    token = await token_of(secret_credential(fake, app, tenant=OTHER_TID))
    response = await graph_get(fake, token, "/groups?$select=displayName")
    assert sorted(g["displayName"] for g in response.json()["value"]) == sorted(g["displayName"] for g in OTHER["groups"])


async def test_wrong_secret_is_7000215(fake, app, authority):
    fake.identity.consent(DEMO_TID)
    response = await token_request(authority, app, client_secret="not-the-secret")
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client" and body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215:")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        await token_of(secret_credential(fake, app, secret="not-the-secret"))


async def test_expired_secret_is_7000222(fake, app, authority):
    fake.identity.consent(DEMO_TID)
    assert (await authority.post("/_fake/authority", json={"clientSecretExpired": True})).json()["clientSecretExpired"]
    response = await token_request(authority, app)
    assert response.status_code == 401 and response.json()["error_codes"] == [7000222]
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000222"):
        await token_of(secret_credential(fake, app))


async def test_certificate_credential(fake, app, tmp_path):
    fake.identity.consent(DEMO_TID)
    token = await token_of(CertificateCredential(DEMO_TID, CLIENT_ID, str(app.certificate_path),
                                                 authority=fake.authority))
    assert claims(token)["appid"] == CLIENT_ID
    assert (await graph_get(fake, token)).status_code == 200

    unregistered, _ = self_signed_client_certificate(tmp_path, "not-on-the-registration")
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        await token_of(CertificateCredential(DEMO_TID, CLIENT_ID, str(unregistered), authority=fake.authority))


async def test_managed_identity_federated_credential(fake, app, monkeypatch):
    settings = app.app_settings("managed_identity", fake.authority)  # also adds the federated credential
    monkeypatch.setenv("IDENTITY_ENDPOINT", settings["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", settings["IDENTITY_HEADER"])
    fake.identity.consent(DEMO_TID)
    fake.identity.consent(OTHER_TID)
    # As the app builds it: one managed identity credential shared by every tenant's federated credential.
    managed = ManagedIdentityCredential(client_id=app.managed_identity.client_id)
    tokens = {}
    try:
        for tenant in (DEMO_TID, OTHER_TID):
            credential = FederatedIdentityCredential(tenant, CLIENT_ID, fake.authority, managed)
            try:
                tokens[tenant] = (await credential.get_token(SCOPE)).token
            finally:
                await credential.close()
    finally:
        await managed.close()
    for tenant, token in tokens.items():
        assert claims(token)["appid"] == CLIENT_ID and claims(token)["tid"] == tenant
        assert (await graph_get(fake, token)).status_code == 200
    stats = fake.stats()["byRoute"]
    assert stats[TOKEN_ROUTE] == 2 and 1 <= stats["GET /msi/token"] <= 2


async def test_managed_identity_without_the_federated_credential_is_refused(fake, app, monkeypatch):
    settings = app.app_settings("managed_identity", fake.authority)
    monkeypatch.setenv("IDENTITY_ENDPOINT", settings["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", settings["IDENTITY_HEADER"])
    monkeypatch.setattr(app.registration, "federated", [])  # the operator never added the federated credential
    fake.identity.consent(DEMO_TID)
    managed = ManagedIdentityCredential(client_id=app.managed_identity.client_id)
    credential = FederatedIdentityCredential(DEMO_TID, CLIENT_ID, fake.authority, managed)
    try:
        with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
            await credential.get_token(SCOPE)
    finally:
        await credential.close()
        await managed.close()


async def test_managed_identity_endpoint_needs_its_header(fake, app, authority):
    response = await authority.get("/msi/token", params={"resource": "api://AzureADTokenExchange",
                                                         "api-version": "2019-08-01"},
                                   headers={"X-IDENTITY-HEADER": "wrong"})
    assert response.status_code == 401


# --- revocation, lifetime, propagation, permissions, forged tokens -----------------------------------


async def test_revoked_consent_is_7000229_but_issued_tokens_work_until_they_expire(fake, app, authority):
    fake.identity.consent(DEMO_TID)
    fake.set_authority(tokenLifetimeSeconds=2)
    before = await token_of(secret_credential(fake, app))
    state = fake.set_consent(revoked=True, revokedTenant=DEMO_TID)
    assert state["revoked"] == [DEMO_TID] and state["grants"] == []

    response = await token_request(authority, app)
    assert response.status_code == 401 and response.json()["error_codes"] == [7000229]
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000229"):
        await token_of(secret_credential(fake, app))
    assert (await graph_get(fake, before)).status_code == 200  # no CAE for app-only tokens: Graph still takes it

    await asyncio.sleep(max(0.0, claims(before)["exp"] - time.time()) + 0.2)
    response = await graph_get(fake, before)
    assert response.status_code == 401 and error_code(response) == "InvalidAuthenticationToken"


async def test_short_token_lifetime_expires_on_graph(fake, app, authority):
    fake.identity.consent(DEMO_TID)
    assert (await authority.post("/_fake/authority", json={"tokenLifetimeSeconds": 2})).json()["tokenLifetimeSeconds"] == 2
    response = await token_request(authority, app)
    assert response.json()["expires_in"] == 2
    token = response.json()["access_token"]
    assert claims(token)["exp"] - claims(token)["iat"] == 2
    assert (await graph_get(fake, token)).status_code == 200
    await asyncio.sleep(max(0.0, claims(token)["exp"] - time.time()) + 0.2)  # no clock-skew leeway on exp
    response = await graph_get(fake, token)
    assert response.status_code == 401 and error_code(response) == "InvalidAuthenticationToken"
    assert "expired" in response.json()["error"]["message"]


async def test_consent_propagation_first_token_has_no_roles(fake, app, authority):
    fake.set_consent(tenant=DEMO_TID, roles=["User.Read.All", "GroupMember.Read.All"], propagationSeconds=1.5)
    response = await authority.get(f"/{DEMO_TID}/v2.0/adminconsent",
                                   params={"client_id": CLIENT_ID, "redirect_uri": REDIRECT})
    assert response.status_code == 302
    early = await token_of(secret_credential(fake, app))
    assert "roles" not in claims(early)
    response = await graph_get(fake, early)
    assert response.status_code == 403 and error_code(response) == "Authorization_RequestDenied"

    await asyncio.sleep(1.6)
    later = await token_of(secret_credential(fake, app))  # a new credential: the first one caches its token
    assert sorted(claims(later)["roles"]) == ["GroupMember.Read.All", "User.Read.All"]
    assert (await graph_get(fake, later)).status_code == 200


@pytest.mark.parametrize(("code", "error"), [(65001, "invalid_grant"), (700016, "unauthorized_client")])
async def test_consent_propagation_can_answer_a_token_error_instead(fake, app, authority, code, error):
    state = (await authority.post("/_fake/consent", json={"tenant": DEMO_TID, "propagationSeconds": 1.5,
                                                          "propagationError": code})).json()
    assert (state["propagationSeconds"], state["propagationError"]) == (1.5, code)
    response = await authority.get(f"/{DEMO_TID}/v2.0/adminconsent",
                                   params={"client_id": CLIENT_ID, "redirect_uri": REDIRECT})
    assert response.status_code == 302
    [grant] = (await authority.get("/_fake/consent")).json()["grants"]
    assert (grant["tenant"], grant["propagationSeconds"], grant["propagationError"]) == (DEMO_TID, 1.5, code)
    response = await token_request(authority, app)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == error and body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")
    assert {"timestamp", "trace_id", "correlation_id", "error_uri"} <= set(body)
    with pytest.raises(ClientAuthenticationError, match=f"AADSTS{code}"):
        await token_of(secret_credential(fake, app))

    await asyncio.sleep(1.6)
    token = await token_of(secret_credential(fake, app))  # the window has passed: a token with the roles
    assert sorted(claims(token)["roles"]) == ["Group.Read.All", "GroupMember.Read.All", "User.Read.All"]
    assert (await graph_get(fake, token)).status_code == 200


async def test_propagation_error_needs_a_window_and_a_propagation_code(fake, authority):
    for body in ({"propagationError": 65001}, {"propagationSeconds": 0, "propagationError": 65001},
                 {"propagationSeconds": 5, "propagationError": 7000229},
                 {"propagationSeconds": 5, "propagationError": "65001"}, {"propagationSeconds": 5, "propagationError": True}):
        response = await authority.post("/_fake/consent", json=body)
        assert response.status_code == 400 and "propagationError" in response.json()["error"]["message"], body
    assert fake.set_consent(propagationSeconds=5, propagationError=700016)["propagationError"] == 700016
    # Naming the next grant again without it: role-less tokens, as before the field existed.
    state = fake.set_consent(propagationSeconds=5)
    assert (state["propagationSeconds"], state["propagationError"]) == (5.0, None)


async def test_propagation_through_next_grant(fake, app):
    fake.identity.next_grant = (("GroupMember.Read.All",), 60.0)
    assert fake.set_consent()["propagationSeconds"] == 60.0
    fake.identity.consent(DEMO_TID, *fake.identity.next_grant)  # what the consent page does
    token = await token_of(secret_credential(fake, app))
    assert "roles" not in claims(token)
    assert (await graph_get(fake, token)).status_code == 403


async def test_group_member_read_only_cannot_read_users(fake, app):
    fake.identity.consent(DEMO_TID, roles=("GroupMember.Read.All",))
    token = await token_of(secret_credential(fake, app))
    assert claims(token)["roles"] == ["GroupMember.Read.All"]
    assert (await graph_get(fake, token, "/groups")).status_code == 200
    response = await graph_get(fake, token, "/users")
    assert response.status_code == 403 and error_code(response) == "Authorization_RequestDenied"


async def test_forged_and_altered_tokens_are_401(fake, app):
    fake.identity.consent(DEMO_TID)
    real = await token_of(secret_credential(fake, app))
    header = jwt.get_unverified_header(real)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(real), other_key, algorithm="RS256", headers={"kid": header["kid"]})
    unsigned = jwt.encode(claims(real), None, algorithm="none")
    head, body, signature = real.split(".")
    # Signed by the authority's own key, but not a Graph token of the tenant it names:
    wrong_audience = fake.identity._sign({**claims(real), "aud": "api://something-else"})
    wrong_issuer = fake.identity._sign({**claims(real), "iss": f"https://sts.windows.net/{OTHER_TID}/"})
    unloaded_tenant = fake.identity.app_token("00000000-0000-0000-0000-0000000000aa", ("User.Read.All",))
    for token in (forged, unsigned, f"{head}.{body}.{signature[:-4]}AAAA", wrong_audience, wrong_issuer,
                  unloaded_tenant):
        response = await graph_get(fake, token)
        assert response.status_code == 401 and error_code(response) == "InvalidAuthenticationToken"
        assert "WWW-Authenticate" in response.headers
    assert (await graph_get(fake, real)).status_code == 200


# --- OpenID Connect: discovery, keys, sign-in -----------------------------------------------------------


async def test_discovery_and_jwks_shape(fake, authority):
    config = (await authority.get(f"/{DEMO_TID}/v2.0/.well-known/openid-configuration")).json()
    assert config["issuer"] == f"{fake.authority}/{DEMO_TID}/v2.0"
    assert config["authorization_endpoint"] == f"{fake.authority}/{DEMO_TID}/oauth2/v2.0/authorize"
    assert config["token_endpoint"] == f"{fake.authority}/{DEMO_TID}/oauth2/v2.0/token"
    assert "form_post" in config["response_modes_supported"] and "id_token" in config["response_types_supported"]
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    generic = (await authority.get("/organizations/v2.0/.well-known/openid-configuration")).json()
    assert generic["issuer"] == f"{fake.authority}/{{tenantid}}/v2.0"

    jwks_uri = urlsplit(config["jwks_uri"])
    assert f"{jwks_uri.scheme}://{jwks_uri.netloc}" == fake.authority
    keys = (await authority.get(jwks_uri.path)).json()["keys"]
    assert len(keys) == 1
    assert {"kty", "n", "e", "kid", "use", "alg"} <= set(keys[0])
    assert (keys[0]["kty"], keys[0]["use"], keys[0]["alg"]) == ("RSA", "sig", "RS256")


async def test_authorize_form_posts_an_id_token_that_verifies_against_the_jwks(fake, authority):
    fake.set_consent(tenant=DEMO_TID)
    response = await authority.get(f"/{DEMO_TID}/oauth2/v2.0/authorize", params=authorize_params())
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    action, fields = parse_form_post(response.text)
    assert action == REDIRECT and fields["state"] == "st-1" and "error" not in fields

    config = (await authority.get(f"/{DEMO_TID}/v2.0/.well-known/openid-configuration")).json()
    jwks = jwt.PyJWKSet.from_dict((await authority.get(urlsplit(config["jwks_uri"]).path)).json())
    key = jwks[jwt.get_unverified_header(fields["id_token"])["kid"]]
    seen = jwt.decode(fields["id_token"], key.key, algorithms=["RS256"], audience=CLIENT_ID, issuer=config["issuer"])
    assert seen["iss"] == f"{fake.authority}/{DEMO_TID}/v2.0"
    assert seen["nonce"] == "n-0S6_WzA2Mj" and seen["tid"] == DEMO_TID
    assert GLOBAL_ADMINISTRATOR in seen["wids"]

    # /organizations signs in whoever the browser is: the id_token names that account's tenant.
    fake.set_consent(tenant=OTHER_TID)
    _, fields = parse_form_post((await authority.get("/organizations/oauth2/v2.0/authorize",
                                                     params=authorize_params())).text)
    assert claims(fields["id_token"])["tid"] == OTHER_TID


async def test_authorize_for_another_tenant_than_the_accounts_is_aadsts50020(fake, authority):
    fake.set_consent(tenant=DEMO_TID)
    response = await authority.get(f"/{OTHER_TID}/oauth2/v2.0/authorize", params=authorize_params())
    assert response.status_code == 400 and "AADSTS50020" in response.text
    with pytest.raises(ValueError):
        parse_form_post(response.text)


async def test_authorize_without_nonce_form_posts_an_error(authority):
    params = authorize_params()
    del params["nonce"]
    response = await authority.get(f"/{DEMO_TID}/oauth2/v2.0/authorize", params=params)
    assert response.status_code == 200
    action, fields = parse_form_post(response.text)
    assert action == REDIRECT and "id_token" not in fields
    assert fields["error"] == "invalid_request" and "nonce" in fields["error_description"]
    assert fields["state"] == "st-1"


async def test_authorize_takes_one_documented_prompt_and_names_the_tenants_domain(fake, authority):
    fake.set_consent(tenant=OTHER_TID)
    for prompt in ("select_account", "login", "none", "consent"):
        response = await authority.get(f"/{OTHER_TID}/oauth2/v2.0/authorize", params=authorize_params(prompt=prompt))
        _, fields = parse_form_post(response.text)
        assert fake.set_consent()["lastSignInPrompt"] == prompt  # GET /_fake/consent shows the same
    assert claims(fields["id_token"])["preferred_username"] == "admin@fabrikam.example"  # a verified domain
    for prompt in ("consent select_account", "admin_consent", ""):
        response = await authority.get(f"/{OTHER_TID}/oauth2/v2.0/authorize", params=authorize_params(prompt=prompt))
        assert response.status_code == 400 and "AADSTS90023" in response.text, prompt


async def test_authorize_with_an_unregistered_redirect_uri_is_aadsts50011(authority):
    response = await authority.get(f"/{DEMO_TID}/oauth2/v2.0/authorize",
                                   params=authorize_params(redirect_uri="https://attacker.example/cb"))
    assert response.status_code == 400 and "AADSTS50011" in response.text
    assert "attacker.example" not in response.headers.get("Location", "")


# --- statistics and faults ----------------------------------------------------------------------------


async def test_stats_count_the_token_route(fake, app, authority):
    fake.identity.consent(DEMO_TID)
    await token_of(secret_credential(fake, app))
    await token_request(authority, app, client_secret="wrong")
    stats = (await authority.get("/_fake/stats")).json()
    assert stats["byRoute"] == {TOKEN_ROUTE: 2} and stats["requests"] == 2


async def test_fault_with_an_aadsts_code_on_the_token_route(fake, app, authority):
    fake.identity.consent(DEMO_TID)
    added = await authority.post("/_fake/faults", json={"path": "/oauth2/v2.0/token", "status": 400, "code": 65001,
                                                        "message": "The user or administrator has not consented."})
    assert added.status_code == 200
    response = await token_request(authority, app)
    assert response.status_code == 400
    body = response.json()
    assert body["error_codes"] == [65001] and body["error_description"].startswith("AADSTS65001:")
    assert (await token_request(authority, app)).status_code == 200  # consumed
