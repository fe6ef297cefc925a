"""Property-based requests from the OpenAPI document (schemathesis), valid and invalid, against the dev host.

Every operation is tried with generated parameters and bodies, half of them aimed at the org's real subscription,
run and user (so they reach past the 404), with a valid portal token: no answer is a 5xx, and every error is
``{"code": snake_case, "message": text}``. Examples are bounded and derandomized, so runs are repeatable.
"""
import itertools
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.faults import figures
from tests.faults.abuse import ROOT, SNAKE
from tests.faults.helpers import connect, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

schema = schemathesis.openapi.from_path(ROOT / "openapi.json")
EXAMPLES = 50
_turn = itertools.count()


@pytest.fixture(scope="module")
def target(devhost, new_portal_module):
    """An org with an authorized subscription (one small group), a finished run and a Manual user."""
    portal, load = new_portal_module
    t = with_large_group(2)
    load(t.tenant)
    sub = connect(portal, [t.ids["level3"]])
    run = sync(portal, sub)["runId"]
    user = portal.call("POST", "/users", json={"username": "fuzz@own.example"})["id"]
    return portal, {"subscriptionId": sub, "runId": run, "userId": user}


@pytest.fixture(scope="module")
def new_portal_module(devhost):
    """A portal of a fresh org and a tenant loader, for the whole module."""
    import secrets

    from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
    from local.client import FakeTenantAdmin, Portal, portal_token
    from tests.faults.conftest import SESSION_TOKENS

    token = portal_token(LOCAL_PORTAL_TOKEN_SECRET, org="fuzz-" + secrets.token_hex(4))
    SESSION_TOKENS.append(token)

    def load(tenant):
        FakeTenantAdmin.load(devhost.ready["graph"], tenant)
    return Portal(devhost.ready["api"], token, ca=devhost.ready["authorityCa"]), load


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_never_get_a_5xx_and_errors_have_the_api_shape(case, devhost, target):
    portal, ids = target
    # Half the cases address the org's real objects (never DELETE the subscription the others need).
    if case.path_parameters and case.method != "DELETE" and next(_turn) % 2 == 0:
        case.path_parameters = {k: ids.get(k, v) for k, v in case.path_parameters.items()}
    api = urlsplit(devhost.ready["api"])
    anonymous = ("/api/directory/consent", "/api/directory/notify-emails/confirm")
    headers = {"Authorization": f"Bearer {portal.token}"} if case.path not in anonymous else {}
    response = case.call(base_url=f"{api.scheme}://{api.netloc}", headers=headers, allow_redirects=False)
    figures.tried("schemathesis generated requests", 1)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    if response.status_code == 400 and response.text.startswith("Got more than 8190 bytes"):
        return  # the HTTP server refused a request line over 8 KiB before the app saw it (Azure's front end: 414)
    if case.path == "/api/directory/notify-emails/confirm" and case.method == "GET":  # a browser's link: an HTML page
        assert "text/html" in str(response.headers.get("content-type")) and response.status_code in (400, 410), (
            response.status_code, response.text[:200])
        assert "Code: <code>" in response.text
        return
    if response.status_code >= 400:
        assert "application/json" in str(response.headers.get("content-type")), (
            case.method, response.request.url, response.status_code, response.text[:200])
        body = response.json()
        assert SNAKE.match(body.get("code", "")) and isinstance(body.get("message"), str) and body["message"], body
