"""The reference console's backend (portal/server.py) against a stand-in API that records what it is sent."""
from __future__ import annotations

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from portal.server import Console, TokenSettings

SECRET = "console-test-portal-token-secret-0123456789"


@pytest.fixture
async def api():
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        if request.path.endswith("/missing"):
            return web.json_response({"code": "not_found", "message": "No such thing."}, status=404,
                                     headers={"Set-Cookie": "api=1"})
        return web.json_response({"path": request.path, "query": dict(request.query)}, status=201,
                                 headers={"Location": "/api/x", "Set-Cookie": "api=1"})

    app = web.Application()
    app.router.add_route("*", "/api/{tail:.*}", answer)
    async with TestServer(app) as server:
        server.seen, server.bodies = seen, bodies
        yield server


@pytest.fixture
async def console(api):
    app = Console(str(api.make_url("/api")), TokenSettings(SECRET, audience="portal-api")).app()
    async with TestClient(TestServer(app)) as client:
        yield client


async def sign_in(console, org="contoso", role="Administrator", next_="") -> None:
    response = await console.post("/signin", data={"organisation": org, "role": role, "next": next_},
                                  allow_redirects=False)
    assert response.status == 303, await response.text()


async def test_pages_need_a_session_and_sign_in_goes_back_only_to_a_console_path(console):
    response = await console.get("/users?search=ad", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/signin?next=%2Fusers%3Fsearch%3Dad"
    page = await (await console.get("/signin?next=/users")).text()
    assert 'value="/users"' in page and "Organisation" in page and "Role" in page
    bad = await console.post("/signin", data={"organisation": "contoso", "role": "Superuser"}, allow_redirects=False)
    assert bad.status == 303 and bad.headers["Location"].startswith("/signin?error=invalid")
    elsewhere = await console.post("/signin", data={"organisation": "contoso", "role": "Owner",
                                                    "next": "//evil.example/x"}, allow_redirects=False)
    assert elsewhere.headers["Location"] == "/directory-sync"
    cookie = elsewhere.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert (await console.get("/users", allow_redirects=False)).status == 200


async def test_the_api_is_called_with_the_sessions_token_and_answers_pass_through(console, api):
    assert (await console.get("/api/users")).status == 401  # no session: the API is not called
    assert api.seen == []
    await sign_in(console, org="org-7", role="User Manager")
    response = await console.post("/api/directory/subscriptions?x=1", json={"name": "AD"})
    assert response.status == 201 and response.headers["Location"] == "/api/x"
    assert "Set-Cookie" not in response.headers  # nothing of the API's but the body and a few headers
    assert await response.json() == {"path": "/api/directory/subscriptions", "query": {"x": "1"}}
    sent = api.seen[-1]
    assert api.bodies[-1] == b'{"name": "AD"}' and "Cookie" not in sent.headers
    claims = jwt.decode(sent.headers["Authorization"].removeprefix("Bearer "), SECRET, algorithms=["HS256"],
                        audience="portal-api")
    assert claims["org"] == "org-7" and claims["role"] == "User Manager" and claims["sub"].startswith("console-")
    missing = await console.get("/api/users/missing")
    assert missing.status == 404 and (await missing.json())["message"] == "No such thing."


async def test_each_sign_in_is_its_own_portal_user(console, api):
    await sign_in(console)
    await console.get("/api/users")
    console.session.cookie_jar.clear()
    await sign_in(console)
    await console.get("/api/users")
    subs = [jwt.decode(r.headers["Authorization"][7:], SECRET, algorithms=["HS256"], audience="portal-api")["sub"]
            for r in api.seen]
    assert subs[0] != subs[1]  # a consent started in one session is confirmed by that session alone


async def test_writes_from_another_site_are_refused_and_the_secret_never_reaches_the_browser(console, api):
    await sign_in(console)
    refused = await console.post("/api/directory/subscriptions", json={}, headers={"Origin": "https://evil.example"})
    assert refused.status == 403 and api.seen == []
    for path in ("/signin", "/directory-sync", "/static/console.js", "/static/console.css", "/session"):
        response = await console.get(path)
        assert response.status == 200 and SECRET not in await response.text()
    assert "Content-Security-Policy" in (await console.get("/directory-sync")).headers
