"""The Directory Sync page's HTTP functions on fakes: the flow, bad input, consent state abuse, roles."""
import json
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from sync import signing
from sync.errors import Transient
from tests.fakes import SIGNING
from tests.helpers import call, http_function_names, http_route_of, token
from tests.unit.syncdsl import TENANT

SALES, MANAGERS, ENG = "g-sales", "g-sales-managers", "g-eng"


@pytest.fixture
def tenant(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(SALES, "Sales Team")
    t.add_group(MANAGERS, "Sales Managers")
    t.add_group(ENG, "Engineering")
    t.add_group("g-quote", 'Quote "and" back\\slash')
    return t


async def new_sub(name="Contoso AD"):
    status, body, headers = await call("create_subscription", body={"name": name})
    assert status == 201 and headers["Location"].endswith(body["id"])
    return body


async def consent(sub_id, *, tenant=TENANT, signed_in=None, confirm=True, **extra):
    """Microsoft's admin-consent redirect to the callback, then (when it sends the browser there) the admin's sign-in
    of ``signed_in`` (default: ``tenant``) posted back: (authorize URL, state, where the browser ends up). With
    ``confirm``, a ``consent=pending`` ending is confirmed by the same portal user, as the portal does."""
    status, body, _ = await call("authorize_subscription", route={"subscriptionId": sub_id})
    assert status == 200
    url = body["authorizeUrl"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    params = {"admin_consent": "True", "tenant": tenant, "state": state, **extra}
    status, _, headers = await call("consent_callback", params=params, auth=None)
    assert status == 302
    location = headers["Location"]
    if "/oauth2/v2.0/authorize?" in location:
        location = await sign_in(location, signed_in or tenant)
        if confirm and outcome(location)[1].get("consent") == "pending":
            code = outcome(location)[1]["consentCode"]
            status, body, _ = await call("confirm_consent", route={"subscriptionId": sub_id}, body={"consentCode": code})
            assert status == 200 and body["status"] == "authorized", body
    return url, state, location


async def sign_in(location, tenant, **issue):
    """The form_post of Microsoft's sign-in page for ``location``, as an admin of ``tenant``: where the browser goes."""
    from tests.helpers import svc_of_triggers

    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    id_token = svc_of_triggers().sign_ins.issue(tenant, nonce=query["nonce"], **issue)
    form = urlencode({"id_token": id_token, "state": query["state"]}).encode()
    status, _, headers = await call("consent_callback", method="POST", raw=form, auth=None,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302
    return headers["Location"]


def outcome(location):
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", {k: v[0] for k, v in parse_qs(parts.query).items()}


async def test_the_whole_flow(svc, tenant):
    sub = await new_sub()
    assert sub["status"] == "authorization_required" and sub["usernameAttribute"] == "userPrincipalName"
    assert (sub["deactivateBlockedUsers"], sub["sendEnrollmentEmail"], sub["nightlySync"]) == (False, False, True)
    url, _, location = await consent(sub["id"])
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://login.microsoftonline.com/organizations/v2.0/adminconsent"
    assert q["client_id"] == svc.settings.graph_client_id and q["scope"] == "https://graph.microsoft.com/.default"
    assert q["redirect_uri"] == svc.settings.consent_redirect_uri
    back, result = outcome(location)
    assert back == "https://portal.example/directory-sync"
    assert result == {"consent": "pending", "subscriptionId": sub["id"], "consentCode": result["consentCode"]}
    status, body, _ = await call("update_subscription", route={"subscriptionId": sub["id"]},
                                 body={"usernameAttribute": "mail", "deactivateBlockedUsers": True, "sendEnrollmentEmail": True})
    assert status == 200 and body["usernameAttribute"] == "mail" and body["status"] == "authorized"
    assert body["azureTenantId"] == TENANT
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "sales"})
    assert status == 200 and [g["displayName"] for g in body["groups"]] == ["Sales Managers", "Sales Team"]
    assert set(body["groups"][0]) == {"id", "displayName", "description", "mail", "membershipReadable"}
    assert all(g["membershipReadable"] is True for g in body["groups"])
    status, body, _ = await call("select_groups", route={"subscriptionId": sub["id"]},
                                 body={"groupIds": [SALES, MANAGERS, SALES]})
    assert status == 200 and body == {"groups": [{"id": SALES, "displayName": "Sales Team"},
                                                 {"id": MANAGERS, "displayName": "Sales Managers"}]}
    status, body, _ = await call("list_selected_groups", route={"subscriptionId": sub["id"]})
    assert [g["id"] for g in body["groups"]] == [SALES, MANAGERS]
    status, body, _ = await call("list_subscriptions")
    assert [s["id"] for s in body["subscriptions"]] == [sub["id"]]


@pytest.mark.parametrize("patch,code", [
    ({"usernameAttribute": "sAMAccountName"}, "invalid_username_attribute"),
    ({"nightlySync": "yes"}, "invalid_field"),
    ({"name": ""}, "invalid_name"),
    ({"name": "x" * 201}, "invalid_name"),
    ({"colour": "blue"}, "unknown_field"),
])
async def test_bad_patches_are_400_and_change_nothing(svc, tenant, patch, code):
    sub = await new_sub()
    status, body, _ = await call("update_subscription", route={"subscriptionId": sub["id"]}, body=patch)
    assert status == 400 and body["code"] == code
    if code == "invalid_username_attribute":
        assert "userPrincipalName, mail, onPremisesSamAccountName, employeeId" in body["message"]
    status, again, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert again == sub


@pytest.mark.parametrize("raw,code,status", [
    (b"{not json", "malformed_json", 400),
    (b"[1,2]", "invalid_body", 400),
    (b"\xff\xfe", "malformed_json", 400),
    (b'{"name": "' + b"x" * (1024 * 1024) + b'"}', "payload_too_large", 413),
])
async def test_bodies_that_are_not_json_objects(svc, raw, code, status):
    got, body, _ = await call("create_subscription", raw=raw)
    assert (got, body["code"]) == (status, code)
    _, listed, _ = await call("list_subscriptions")
    assert listed == {"subscriptions": []}


async def test_search_rules(svc, tenant):
    sub = await new_sub()
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "sal"})
    assert status == 409 or status == 400
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "  sal  "})
    assert (status, body["code"]) == (400, "search_too_short")
    requests = svc.directory.requests
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "sales"})
    assert (status, body["code"]) == (409, "not_authorized")
    await consent(sub["id"])
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": 'Quote "and" back\\slash'})
    assert status == 200 and [g["id"] for g in body["groups"]] == ["g-quote"]
    assert svc.directory.requests == requests + 1  # the short searches never reached Graph


async def test_search_flags_hidden_groups_whose_members_a_sync_cannot_read(svc, tenant):
    sub = await new_sub()
    await consent(sub["id"])
    tenant.hide(SALES)

    async def readable() -> dict[str, bool]:
        status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]},
                                     params={"search": "sales"})
        assert status == 200
        return {g["id"]: g["membershipReadable"] for g in body["groups"]}

    assert await readable() == {SALES: False, MANAGERS: True}  # the tenant lacks Member.Read.Hidden
    tenant.permissions.add("Member.Read.Hidden")
    assert await readable() == {SALES: True, MANAGERS: True}


async def test_search_when_graph_is_down_or_consent_revoked(svc, tenant):
    sub = await new_sub()
    await consent(sub["id"])
    svc.directory.fail["search"] = Transient("429", retry_after=7)
    status, body, headers = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "sales"})
    assert (status, body["code"], headers["Retry-After"]) == (503, "directory_unavailable", "7")
    del svc.directory.fail["search"]
    svc.directory.revoked.add(TENANT)
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "sales"})
    assert (status, body["code"]) == (409, "consent_revoked")
    assert "authorize" in body["message"].lower()
    _, again, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert again["status"] == "consent_revoked"
    svc.directory.revoked.clear()
    await consent(sub["id"])
    _, again, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert again["status"] == "authorized"


async def test_select_groups_validates_against_the_directory(svc, tenant):
    sub = await new_sub()
    await consent(sub["id"])
    status, body, _ = await call("select_groups", route={"subscriptionId": sub["id"]},
                                 body={"groupIds": [SALES, "g-nope", "bad id!"]})
    assert status == 400 and body["code"] == "unknown_groups"
    assert "bad id!" in body["message"]
    status, body, _ = await call("select_groups", route={"subscriptionId": sub["id"]}, body={"groupIds": [SALES, "g-nope"]})
    assert status == 400 and body["unknownIds"] == ["g-nope"]
    for bad in ({"groupIds": "g-sales"}, {"groupIds": [1]}, {}, {"groupIds": [], "extra": 1}):
        status, body, _ = await call("select_groups", route={"subscriptionId": sub["id"]}, body=bad)
        assert status == 400, bad
    status, body, _ = await call("select_groups", route={"subscriptionId": sub["id"]}, body={"groupIds": []})
    assert status == 200 and body == {"groups": []}
    status, body, _ = await call("start_full_sync", route={"subscriptionId": sub["id"]})
    assert (status, body["code"]) == (409, "no_groups_selected")


async def test_consent_state_cannot_be_replayed_forged_expired_or_swapped(svc, tenant):
    a = await new_sub("A")
    b = await new_sub("B")
    _, state, location = await consent(a["id"])
    assert outcome(location)[1]["consent"] == "pending"
    # replayed
    status, _, headers = await call("consent_callback", params={"admin_consent": "True", "tenant": TENANT, "state": state}, auth=None)
    assert outcome(headers["Location"])[1]["error"] == "state_used"
    # forged: a state signed with another key, or with its body edited to name B
    forged = signing.sign("another-signing-secret-of-sufficient-length", "consent-state",
                          {"org": "org-a", "sub": b["id"], "n": "x", "exp": int(time.time()) + 600})
    body, mac = state.split(".")
    swapped = signing._b64(json.dumps({**signing.verify(SIGNING, "consent-state", state), "sub": b["id"]}).encode()) + "." + mac
    for bad in (forged, swapped, "garbage", "", "a.b.c"):
        status, _, headers = await call("consent_callback", params={"admin_consent": "True", "tenant": TENANT, "state": bad}, auth=None)
        assert status == 302
        back, result = outcome(headers["Location"])
        assert back == "https://portal.example/directory-sync" and result["consent"] == "error"
    # an enrollment token is not a consent state
    enrol = signing.sign(SIGNING, "enrollment", {"org": "org-a", "sub": b["id"], "n": "x", "exp": int(time.time()) + 600})
    status, _, headers = await call("consent_callback", params={"admin_consent": "True", "tenant": TENANT, "state": enrol}, auth=None)
    assert outcome(headers["Location"])[1]["error"] == "invalid_token"
    _, again, _ = await call("get_subscription", route={"subscriptionId": b["id"]})
    assert again["status"] == "authorization_required" and again["azureTenantId"] is None
    # expired
    status, body, _ = await call("authorize_subscription", route={"subscriptionId": b["id"]})
    state_b = parse_qs(urlsplit(body["authorizeUrl"]).query)["state"][0]
    svc.clock.advance(minutes=11)
    status, _, headers = await call("consent_callback", params={"admin_consent": "True", "tenant": TENANT, "state": state_b}, auth=None)
    assert outcome(headers["Location"])[1]["error"] == "state_expired"
    _, again, _ = await call("get_subscription", route={"subscriptionId": b["id"]})
    assert again["status"] == "authorization_required"


async def test_consent_denied_keeps_the_subscription_and_says_why(svc, tenant):
    sub = await new_sub()
    _, _, location = await consent(sub["id"], admin_consent="", error="access_denied",
                                   error_description="The admin canceled the request")
    back, result = outcome(location)
    assert result == {"subscriptionId": sub["id"], "consent": "error", "error": "access_denied"}
    _, again, _ = await call("get_subscription", route={"subscriptionId": sub["id"]})
    assert again["status"] == "authorization_required"


async def test_consent_callback_cannot_redirect_elsewhere(svc, tenant):
    sub = await new_sub()
    _, _, location = await consent(sub["id"], redirect_uri="https://evil.example", error="x\r\nSet-Cookie: a=b",
                                   admin_consent="")
    assert location.startswith("https://portal.example/directory-sync?")
    assert "\r" not in location and "\n" not in location and "evil" not in location


async def test_missing_state_redirects_with_error(svc):
    status, _, headers = await call("consent_callback", params={"admin_consent": "True", "tenant": TENANT}, auth=None)
    assert status == 302 and outcome(headers["Location"])[1] == {"consent": "error", "error": "missing_state"}


@pytest.mark.parametrize("name", [n for n in http_function_names()
                                  if n not in ("health", "consent_callback", "confirm_notify_email", "openapi",
                                                "graph_notifications")])
async def test_every_endpoint_refuses_other_roles_and_no_token(svc, name):
    template, _ = http_route_of(name)
    route = {p: "x" for p in ("subscriptionId", "runId", "userId") if "{" + p + "}" in template}
    status, body, _ = await call(name, route=route, auth=f"Bearer {token(role='Help Desk')}")
    assert status == 403 and body["code"] == "role_not_allowed"
    status, body, _ = await call(name, route=route, auth=None)
    assert status == 401 and set(body) >= {"code", "message"}


async def test_unknown_query_parameters_empty_patches_and_sync_options_are_refused_alike(svc, tenant):
    sub = await new_sub()
    for name, route in (("list_subscriptions", {}), ("get_subscription", {"subscriptionId": sub["id"]}),
                        ("list_runs", {"subscriptionId": sub["id"]}), ("list_users", {}), ("list_groups", {})):
        status, body, _ = await call(name, route=route, params={"sorting": "x"})
        assert (status, body["code"]) == (400, "unknown_parameter"), name
    # The Functions host's key parameter is never the app's business.
    assert (await call("list_subscriptions", params={"code": "function-key"}))[0] == 200
    status, body, _ = await call("update_subscription", route={"subscriptionId": sub["id"]}, body={})
    assert (status, body["code"]) == (400, "empty_patch")
    await consent(sub["id"])
    await call("select_groups", route={"subscriptionId": sub["id"]}, body={"groupIds": [SALES]})
    for options, code in (({"dryrun": True}, "unknown_field"), ({"groups": [SALES]}, "unknown_field"),
                          ({"dryRun": True, "force": True}, "unknown_field"), ({"dryRun": "true"}, "invalid_field"),
                          ({"dryRun": 1}, "invalid_field"), ({"dryRun": None}, "invalid_field")):
        status, body, _ = await call("start_full_sync", route={"subscriptionId": sub["id"]}, body=options)
        assert (status, body["code"]) == (400, code), options
    assert svc.queue.group_jobs == []  # a misspelt option started nothing
    assert (await call("start_full_sync", route={"subscriptionId": sub["id"]}, body={}))[0] == 202


async def test_the_api_description_needs_no_token(svc):
    status, body, _ = await call("openapi", auth=None)
    assert status == 200 and body["openapi"].startswith("3")
