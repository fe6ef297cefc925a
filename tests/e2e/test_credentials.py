"""The app's real Microsoft credentials end to end: client secret, certificate, and the managed identity's federated
credential, each getting its tokens from the local identity platform over HTTPS and used by Graph as issued."""
import secrets

import jwt
import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from local.client import FakeTenantAdmin, Portal, portal_token
from tests.e2e.tenants import scenario
from tests.e2e.test_full_sync import connect, grid, sync

pytestmark = pytest.mark.e2e


def by_route(admin: FakeTenantAdmin, needle: str) -> int:
    return sum(n for route, n in admin.control("GET", "/stats")["byRoute"].items() if needle in route)


def walk(ready: dict) -> dict:
    """Consent, search, select and a Full Sync of a fresh tenant; what the authority and Graph saw."""
    t = scenario()
    admin = FakeTenantAdmin.load(ready["graph"], t.tenant)
    portal = Portal(ready["api"], portal_token(LOCAL_PORTAL_TOKEN_SECRET, org="org-" + secrets.token_hex(4)),
                    ca=ready["authorityCa"])
    admin.control("POST", "/stats/reset")
    sub = connect(portal, admin, [t.ids["eng"], t.ids["sales"]], deactivateBlockedUsers=True)
    assert [g["id"] for g in portal.search_groups(sub, "Engi")] == [t.ids["eng"]]
    run = sync(portal, sub)
    assert run["status"] == "succeeded", run
    users = grid(portal)
    assert users and all(u["sourceType"] == "AdSync" for u in users.values())
    return {"tokens": by_route(admin, "POST /{tenant}/oauth2/v2.0/token"), "msi": by_route(admin, "GET /msi/token"),
            "graph": by_route(admin, "/v1.0/"), "users": len(users)}


def test_each_credential_kind_gets_few_tokens_from_the_authority(devhost):
    """The whole suite runs once per credential kind (conftest); here, what each asked the authority for."""
    credential = devhost.env["GRAPH_CREDENTIAL"]
    seen = walk(devhost.ready)
    print(f"{credential}:", seen)
    # azure-identity caches the tenant's token: a few requests (the HTTP functions' first call, the workers' first
    # concurrent calls), never one per Graph call.
    assert 1 <= seen["tokens"] <= 3 < seen["graph"]
    # The managed identity's token is the assertion of the federated credential: asked for at most once per app
    # token (it is cached for its own lifetime, so an earlier test may have fetched it), and only by that kind.
    if credential == "managed_identity":
        assert seen["msi"] <= seen["tokens"]
    else:
        assert seen["msi"] == 0


def test_graph_refuses_what_the_authority_did_not_sign(devhost):
    """Graph trusts only the authority's tokens: a token signed by anybody else, or for another audience, is a 401."""
    import httpx
    from cryptography.hazmat.primitives.asymmetric import rsa

    t = scenario()
    admin = FakeTenantAdmin.load(devhost.ready["graph"], t.tenant)
    good = admin.control("POST", "/token", json={"tenant": t.tenant["tenantId"]})["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other_key, algorithm="RS256", headers=jwt.get_unverified_header(good))
    wrong_aud = jwt.decode(admin.control("POST", "/token", json={"tenant": t.tenant["tenantId"]})["access_token"],
                           options={"verify_signature": False})
    for token in (forged, jwt.encode({**wrong_aud, "alg": "none"}, None, algorithm="none"), "local:" + t.tenant["tenantId"]):
        response = httpx.get(devhost.ready["graph"] + "/groups", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert httpx.get(devhost.ready["graph"] + "/groups", headers={"Authorization": f"Bearer {good}"}).status_code == 200
