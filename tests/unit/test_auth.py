"""The caller-identity matrix of docs/API.md, through the real HTTP functions."""
import base64
import json
import time

import jwt
import pytest

from tests.helpers import call, token

WRONG_KEY = "a-completely-different-secret-of-40-bytes!!"


def _none_alg_token() -> str:
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'org': 'org-a', 'sub': 'x', 'role': 'Owner', 'exp': int(time.time()) + 600})}."


def _rs256_token() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode({"org": "org-a", "sub": "x", "role": "Owner", "exp": int(time.time()) + 600}, key, algorithm="RS256")


@pytest.mark.parametrize("auth,code", [
    (None, "missing_token"),
    ("Basic dXNlcjpwYXNz", "missing_token"),
    ("Bearer ", "missing_token"),
    ("Bearer not-a-jwt", "invalid_token"),
    (f"Bearer {token(secret=WRONG_KEY)}", "invalid_token"),
    (f"Bearer {token(exp=time.time() - 3600)}", "token_expired"),
    (f"Bearer {token(org=None)}", "invalid_token"),
    (f"Bearer {token(sub=None)}", "invalid_token"),
    (f"Bearer {token(role=None)}", "invalid_token"),
    (f"Bearer {token(org='')}", "invalid_token"),
    (f"Bearer {token(alg='HS512')}", "invalid_token"),
    (f"Bearer {_none_alg_token()}", "invalid_token"),
    (f"Bearer {_rs256_token()}", "invalid_token"),
])
async def test_bad_tokens_get_401(svc, auth, code):
    status, body, _ = await call("list_subscriptions", auth=auth)
    assert status == 401
    assert body["code"] == code and body["message"]


async def test_token_without_exp_is_refused(svc):
    raw = jwt.encode({"org": "org-a", "sub": "x", "role": "Owner"}, "unit-test-portal-token-secret-0123456789", algorithm="HS256")
    status, body, _ = await call("list_subscriptions", auth=f"Bearer {raw}")
    assert status == 401 and body["code"] == "invalid_token"


@pytest.mark.parametrize("role", ["Help Desk", "Viewer", "owner", "", "Administrator "])
async def test_roles_not_allowed_get_403(svc, role):
    status, body, _ = await call("list_subscriptions", auth=f"Bearer {token(role=role)}" if role else f"Bearer {token(role='Help Desk')}")
    assert status == 403 and body["code"] == "role_not_allowed"


@pytest.mark.parametrize("role", ["Owner", "Administrator", "User Manager"])
async def test_allowed_roles_pass(svc, role):
    status, body, _ = await call("list_subscriptions", auth=f"Bearer {token(role=role)}")
    assert status == 200 and body == {"subscriptions": []}


async def test_org_b_cannot_read_or_change_org_a(svc):
    status, created, _ = await call("create_subscription", body={"name": "A's directory"}, auth=f"Bearer {token(org='org-a')}")
    assert status == 201
    sid = created["id"]
    other = f"Bearer {token(org='org-b')}"
    for name, method, body in [("get_subscription", "GET", None), ("update_subscription", "PATCH", {"name": "stolen"}),
                               ("delete_subscription", "DELETE", None), ("authorize_subscription", "POST", None),
                               ("list_selected_groups", "GET", None), ("start_full_sync", "POST", None),
                               ("list_runs", "GET", None)]:
        status, body, _ = await call(name, method=method, body=body, route={"subscriptionId": sid}, auth=other)
        assert status == 404, name
        assert body["code"] == "subscription_not_found"
    status, body, _ = await call("list_subscriptions", auth=other)
    assert body == {"subscriptions": []}
    status, body, _ = await call("get_subscription", route={"subscriptionId": sid}, auth=f"Bearer {token(org='org-a')}")
    assert status == 200 and body["name"] == "A's directory"


async def test_health_is_anonymous_and_needs_no_settings(monkeypatch):
    for key in ("PORTAL_TOKEN_SECRET", "SIGNING_SECRET"):
        monkeypatch.delenv(key, raising=False)
    status, body, _ = await call("health", auth=None)
    assert status == 200 and body["status"] == "ok" and body["version"]


def _signed(claims: dict, secret: str | None = None) -> str:
    from tests.fakes import SECRET

    return "Bearer " + jwt.encode(claims, secret or SECRET, algorithm="HS256")


def _claims(**changes):
    return {"org": "org-a", "sub": "admin@portal", "role": "Administrator", "exp": int(time.time()) + 600, **changes}


@pytest.mark.parametrize("claims", [
    _claims(exp=10 ** 30),  # lives forever
    _claims(exp=int(time.time()) + 25 * 3600),  # more than the 24-hour maximum ahead
    _claims(exp=str(int(time.time()) + 600)),  # a numeric string
    _claims(exp=True),
    _claims(org="o" * 2000),
    _claims(org="org-\ud800"),  # a lone surrogate cannot be a storage key
    _claims(org="org\r\nx"),
    _claims(sub="x" * 300),
    _claims(role="Owner\u2028"),
], ids=["exp 10^30", "exp 25h", "exp text", "exp bool", "org 2000", "org surrogate", "org CRLF", "sub long",
        "role U+2028"])
async def test_tokens_that_cannot_name_a_caller_safely_are_401(svc, claims):
    try:
        auth = _signed(claims)
    except UnicodeEncodeError:  # PyJWT cannot encode a lone surrogate itself: build the token by hand
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        import hashlib
        import hmac

        from tests.fakes import SECRET

        mac = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
        auth = "Bearer " + b".".join((header, body, mac)).decode()
    status, body, _ = await call("list_users", auth=auth)
    assert status == 401 and body["code"] in ("invalid_token", "token_expired"), body  # exp true reads as 1: expired


async def test_audience_and_issuer_are_checked_when_set(svc):
    from dataclasses import replace

    svc.settings = replace(svc.settings, portal_token_audience="directory-sync", portal_token_issuer="https://portal")
    good = _claims(aud="directory-sync", iss="https://portal")
    assert (await call("list_users", auth=_signed(good)))[0] == 200
    for bad in (_claims(), _claims(aud="other", iss="https://portal"), _claims(aud="directory-sync", iss="https://evil")):
        status, body, _ = await call("list_users", auth=_signed(bad))
        assert (status, body["code"]) == (401, "invalid_token"), bad


def test_the_token_and_cursor_decoders_never_fail_unexpectedly():
    """Property: whatever text arrives, the decoders answer a caller or a 4xx error, never an exception of their own."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sync.adapters.table_users import _decode_token
    from sync.auth import authenticate
    from sync.errors import InvalidInput, Unauthenticated
    from tests.fakes import SECRET

    claim = st.one_of(st.text(max_size=300), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
                      st.lists(st.text(max_size=5), max_size=3))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(["org", "sub", "role", "exp", "aud", "iss", "nbf"]), claim), st.text())
    def check(claims, raw):
        for value in (_signed_or_none(claims, SECRET), "Bearer " + raw, raw):
            if value is None:
                continue
            try:
                authenticate({"Authorization": value}, SECRET)
            except Unauthenticated:
                pass
        try:
            _decode_token(raw)
        except InvalidInput:
            pass

    check()


def _signed_or_none(claims, secret):
    try:
        return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")
    except (TypeError, ValueError, UnicodeEncodeError, OverflowError):
        return None
