"""Function keys as Azure checks them (the dev host's --require-function-keys), and a rotated key: Graph's
deliveries to the old notification URL get 401 before our code runs, until the renewal timer moves the watches."""
import secrets
import time
from urllib.parse import urlsplit

import httpx
import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from local.client import DevHostProcess, FakeTenantAdmin, Portal, portal_token
from tests.e2e.tenants import scenario
from tests.e2e.test_changes import poll, wait_for_run
from tests.e2e.test_full_sync import connect, grid, sync

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """One dev host that checks keys (one credential kind: the keys are the host's, not the app's)."""
    outbox = tmp_path_factory.mktemp("outbox-keys")
    host = DevHostProcess("--require-function-keys", env={"GRAPH_CREDENTIAL": "secret"}, outbox=str(outbox),
                          log=str(outbox.parent / "devhost-keys.log"))
    host.start()
    yield host
    assert host.stop() == 0


def portal_of(host, key, org):
    return Portal(host.ready["api"], portal_token(LOCAL_PORTAL_TOKEN_SECRET, org=org),
                  ca=host.ready["authorityCa"], http=httpx.Client(timeout=60, headers={"x-functions-key": key}))


def admin_url(host, name):
    api = urlsplit(host.ready["api"])
    return f"{api.scheme}://{api.netloc}/admin/functions/{name}"


def test_function_level_routes_need_a_key_and_anonymous_ones_do_not(keyed):
    api, keys = keyed.ready["api"], keyed.ready["functionKeys"]
    token = {"Authorization": "Bearer " + portal_token(LOCAL_PORTAL_TOKEN_SECRET, org="org-keys")}
    for headers, params in [({}, {}), ({"x-functions-key": "wrong"}, {}), ({}, {"code": "wrong"})]:
        refused = httpx.get(f"{api}/directory/subscriptions", headers={**token, **headers}, params=params, timeout=10)
        assert (refused.status_code, refused.content) == (401, b"")
    for headers, params in [({"x-functions-key": keys["default"]}, {}), ({}, {"code": keys["default"]}),
                            ({"x-functions-key": keys["master"]}, {})]:
        assert httpx.get(f"{api}/directory/subscriptions", headers={**token, **headers}, params=params,
                         timeout=10).status_code == 200
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    assert httpx.post(admin_url(keyed, "watch_renewal"), headers={"x-functions-key": keys["default"]},
                      timeout=10).status_code == 401  # the admin API takes the master key only


def test_a_rotated_key_heals_at_the_next_renewal(keyed):
    old, org = keyed.ready["functionKeys"]["default"], "org-" + secrets.token_hex(4)
    t = scenario()
    admin = FakeTenantAdmin.load(keyed.ready["graph"], t.tenant)

    def watches():
        return [s for s in admin.notifications()["subscriptions"] if s.get("tenantId") == admin.tenant_id]

    portal = portal_of(keyed, old, org)
    sub = connect(portal, admin, [t.ids["eng"], t.ids["sales"], t.ids["support"]],
                  deactivateBlockedUsers=True, sendEnrollmentEmail=False)
    first = sync(portal, sub)
    assert first["status"] == "succeeded", first
    poll(lambda: len(watches()) == 2, 10, "the subscriptions")
    assert all(w["notificationUrl"].endswith("?code=" + old) for w in watches())

    # A redeploy with a new key: the host takes the new key and the new NOTIFICATION_URL, and restarts.
    new = keyed.control("POST", "/function-keys/default", json={"value": secrets.token_urlsafe(32)})["value"]
    portal = portal_of(keyed, new, org)
    poll(lambda: httpx.get(keyed.ready["api"] + "/health", timeout=5).status_code == 200, 30, "the restart")
    admin.block(t.ids["bob.stone"])
    poll(lambda: any(d["status"] == 401 and d["url"].endswith("code=" + old)
                     for d in admin.notifications_log()["deliveries"]), 20, "a delivery refused with 401")
    assert [r["runId"] for r in portal.call("GET", f"/directory/subscriptions/{sub}/runs")["runs"]] == [first["runId"]]

    fired = httpx.post(admin_url(keyed, "watch_renewal"),
                       headers={"x-functions-key": keyed.ready["functionKeys"]["master"]}, timeout=10)
    assert fired.status_code == 202
    poll(lambda: all(w["notificationUrl"].endswith("?code=" + new) for w in watches()), 30, "the watches' move")
    admin.block(t.ids["cat.moss"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        users = grid(portal)
        if users[f"cat.moss@{t.domain}"]["status"] == "Inactive":
            break
        time.sleep(0.2)
    users = grid(portal)
    assert users[f"cat.moss@{t.domain}"]["status"] == "Inactive" and users[f"bob.stone@{t.domain}"]["status"] == "Inactive"
    run = wait_for_run(portal, sub, {first["runId"]})
    assert run["trigger"] == "change_notification", run
