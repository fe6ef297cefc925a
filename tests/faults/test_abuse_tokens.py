"""Forged, expired, malformed and under-privileged portal tokens on every endpoint and method: refused, nothing changes."""
import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from tests.faults import figures
from tests.faults.abuse import OPENAPI, assert_error, fill, routes

pytestmark = pytest.mark.faults

SECRET = LOCAL_PORTAL_TOKEN_SECRET


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict, claims: dict, key: bytes | None) -> str:
    """A JWT assembled by hand (PyJWT refuses to build some of these), HMAC-SHA256-signed with ``key`` if given."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest()) if key is not None else ""
    return f"{signing_input}.{signature}"


def bad_tokens(org: str) -> list[tuple[str, str | None, int]]:
    """(what, Authorization header or None, expected status) for one org's would-be caller."""
    now = int(time.time())
    claims = {"org": org, "sub": "mallory@evil.example", "role": "Owner", "exp": now + 600}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    other_org = jwt.encode({**claims, "org": "mallory-org"}, SECRET, algorithm="HS256")
    head, _, sig = other_org.split(".")
    tampered = f"{head}.{b64(json.dumps(claims).encode())}.{sig}"

    def hs(**changes):
        return "Bearer " + jwt.encode({k: v for k, v in {**claims, **changes}.items() if v is not None}, SECRET,
                                      algorithm="HS256")

    return [
        ("no Authorization header", None, 401),
        ("Basic scheme", "Basic " + b64(b"admin:admin"), 401),
        ("bearer without a token", "Bearer", 401),
        ("not a JWT", "Bearer not.a.jwt", 401),
        ("alg none", "Bearer " + raw_token({"alg": "none", "typ": "JWT"}, claims, None), 401),
        ("alg None, signed anyway", "Bearer " + raw_token({"alg": "None"}, claims, SECRET.encode()), 401),
        ("wrong key", "Bearer " + jwt.encode(claims, "x" * 48, algorithm="HS256"), 401),
        ("HS384 with the right key", "Bearer " + jwt.encode(claims, SECRET, algorithm="HS384"), 401),
        ("RS256", "Bearer " + jwt.encode(claims, key, algorithm="RS256"), 401),
        ("RS256 header, HMAC by the public key",
         "Bearer " + raw_token({"alg": "RS256", "typ": "JWT"}, claims, public_pem), 401),
        ("HS256 signed with the public key PEM", "Bearer " + raw_token({"alg": "HS256"}, claims, public_pem), 401),
        ("signature stripped", "Bearer " + hs().removeprefix("Bearer ").rsplit(".", 1)[0] + ".", 401),
        ("payload swapped to another org", "Bearer " + tampered, 401),
        ("expired", hs(exp=now - 120), 401),
        ("not yet valid", hs(nbf=now + 3600), 401),
        ("no org", hs(org=None), 401),
        ("no sub", hs(sub=None), 401),
        ("no role", hs(role=None), 401),
        ("no exp", hs(exp=None), 401),
        ("org a number", hs(org=12345), 401),
        ("org empty", hs(org=" "), 401),
        ("role a list", hs(role=["Owner"]), 401),
        ("role not allowed", hs(role="Viewer"), 403),
        ("role in the wrong case", hs(role="owner"), 403),
        ("role with spaces", hs(role=" Owner "), 403),
    ]


# The victim has no webhook (this host refuses loopback URLs, and nothing else resolves here): any well-formed id,
# since a bad token or an undeclared method is refused before the id is looked at (another org's webhook: 404,
# tests/unit/test_webhooks.py).
WEBHOOK_ID = "00000000-0000-4000-8000-000000000000"


def request(client: httpx.Client, api: str, method: str, path: str, auth: str | None) -> httpx.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, api + path, headers=headers, content=body)


def test_bad_tokens_are_refused_on_every_endpoint_and_method_and_change_nothing(devhost, victim):
    before = victim.snapshot()
    ids = {"subscriptionId": victim.sub, "runId": victim.run, "userId": victim.manual_user, "webhookId": WEBHOOK_ID}
    operations = routes()
    # every route but the anonymous ones (health, consent, notify-email confirmation, openapi, Graph's webhook)
    assert len(operations) == 33
    tried = 0
    with httpx.Client(timeout=30) as client:
        for what, auth, status in bad_tokens(victim.org):
            for method, template in operations:
                response = request(client, devhost.ready["api"], method, fill(template, **ids), auth)
                tried += 1
                body = assert_error(response, status)
                if status == 403:
                    assert body["code"] == "role_not_allowed", (what, body)
                else:
                    assert body["code"] in ("missing_token", "invalid_token", "token_expired"), (what, body)
    figures.tried("forged, expired and under-privileged tokens", tried)
    assert victim.snapshot() == before


def test_methods_an_endpoint_does_not_have_are_refused(devhost, victim):
    before = victim.snapshot()
    ids = {"subscriptionId": victim.sub, "runId": victim.run, "userId": victim.manual_user, "webhookId": WEBHOOK_ID}
    tried = 0
    with httpx.Client(timeout=30) as client:
        for template, item in OPENAPI["paths"].items():
            declared = {m.upper() for m in item}
            for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - declared:
                response = request(client, devhost.ready["api"], method, fill(template, **ids),
                                   f"Bearer {victim.portal.token}")
                tried += 1
                assert_error(response, 405)
    figures.tried("undeclared methods", tried)
    assert victim.snapshot() == before
