"""Issue 25 through the dev host: the portal's webhook receiver (a real HTTP server on loopback, verifying every
delivery with the ``standardwebhooks`` library) hears of every change, and the events feed replays them.

Nothing here depends on the kind of Microsoft credential, so it runs with the suite's first kind only."""
import secrets
import time

import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from local.client import Portal, portal_token
from local.webhook_receiver import WebhookReceiver
from tests.e2e.conftest import CREDENTIALS
from tests.e2e.test_changes import connected, poll, wait_for_run

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def one_credential_kind(request):
    if request.node.callspec.params.get("devhost") != CREDENTIALS[0]:
        pytest.skip("independent of the credential kind: runs with the first one only")


@pytest.fixture
def receiver():
    r = WebhookReceiver().start()
    yield r
    r.stop()


def feed(portal, **params) -> list[dict]:
    """Every event of the org, paged by cursor (``limit`` per page)."""
    out, page = [], portal.call("GET", "/events", params=params)
    while page["events"]:
        out += page["events"]
        page = portal.call("GET", "/events", params={**params, "after": page["cursor"]})
    return out


def test_the_portal_hears_of_every_change_signed_in_order_and_can_replay_them(devhost, portal, load_tenant, receiver):
    other = Portal(devhost.ready["api"], portal_token(LOCAL_PORTAL_TOKEN_SECRET, org="org-" + secrets.token_hex(4)))
    for url in ("http://portal.example.com/hooks", "https://169.254.169.254/latest", "https://user:pw@example.com/x",
                "https://10.1.2.3/x", "https://portal.example.com/" + "a" * 2048):
        refused = other.call("POST", "/webhooks", json={"url": url}, expect=400)
        assert refused["code"] == "invalid_webhook_url", url
    assert other.call("POST", "/webhooks", json={"url": receiver.url, "events": ["user.merged"]},
                      expect=400)["code"] == "invalid_event_type"

    a = portal.call("POST", "/webhooks", json={"url": receiver.url + "/a"}, expect=201)
    b = portal.call("POST", "/webhooks", json={"url": receiver.url + "/b", "events": ["user.deactivated"]}, expect=201)
    receiver.secrets = {"/hooks/a": a["secret"], "/hooks/b": b["secret"]}
    listed = portal.call("GET", "/webhooks")["webhooks"]
    assert {h["id"] for h in listed} == {a["id"], b["id"]} and all("secret" not in h for h in listed)
    assert other.call("GET", "/webhooks") == {"webhooks": []}
    assert other.call("DELETE", f"/webhooks/{a['id']}", expect=404)["code"] == "webhook_not_found"
    assert other.call("POST", f"/webhooks/{a['id']}/rotate-secret", expect=404)["code"] == "webhook_not_found"

    receiver.answers = [500]  # the portal stumbles on the first delivery: retried about 5 s later, same webhook-id
    t, admin, sub, first = connected(devhost, portal, load_tenant, sendEnrollmentEmail=False)
    created = first["counts"]["created"]
    on_a = receiver.wait_for(lambda d: d.path == "/hooks/a" and d.status == 204, count=created + 1, timeout=30)
    assert all(d.verified for d in receiver.deliveries)
    assert receiver.deliveries[0].status == 500 and receiver.deliveries[1].id == receiver.deliveries[0].id
    assert [d.type for d in on_a] == ["user.created"] * created + ["run.completed"]
    assert [d.json["data"]["sequence"] for d in on_a] == sorted(d.json["data"]["sequence"] for d in on_a)
    assert on_a[-1].json["data"]["status"] == "succeeded" and on_a[-1].json["data"]["counts"]["created"] == created
    assert not [d for d in receiver.deliveries if d.path == "/hooks/b"]  # filtered: no deactivation yet

    dry = portal.full_sync(sub, dry_run=True)
    portal.wait(sub, dry, timeout=60)
    before = feed(portal)
    assert [e["id"] for e in before] == [d.id for d in on_a]  # the dry run told nothing; the feed has it all
    assert [e["id"] for e in feed(portal, limit=3)] == [e["id"] for e in before]

    started = time.monotonic()
    admin.block(t.ids["bob.stone"])
    [deactivated] = receiver.wait_for(lambda d: d.type == "user.deactivated" and d.path == "/hooks/a", timeout=30)
    took = time.monotonic() - started
    print(f"blocked in Azure → user.deactivated at the portal's endpoint: {took:.1f} s")
    assert took < 30
    data = deactivated.json["data"]
    assert data["username"] == f"bob.stone@{t.domain}" and data["status"] == "Inactive"
    assert data["previous"]["status"] == "Active" and data["reason"] == "blocked_in_directory"
    assert data["subscriptionId"] == sub and data["sequence"] == before[-1]["data"]["sequence"] + 1
    receiver.wait_for(lambda d: d.type == "user.deactivated" and d.path == "/hooks/b")
    wait_for_run(portal, sub, {first["runId"], dry})

    rotated = portal.call("POST", f"/webhooks/{a['id']}/rotate-secret", expect=200)["secret"]
    assert rotated != a["secret"] and rotated.startswith("whsec_")
    receiver.secrets["/hooks/a"] = rotated
    portal.call("DELETE", f"/webhooks/{b['id']}", expect=204)
    made = portal.call("POST", "/users", json={"username": f"max@{t.domain}"}, expect=201)
    portal.call("POST", f"/users/{made['id']}/deactivate", expect=200)
    [new] = receiver.wait_for(lambda d: d.json["data"].get("id") == made["id"] and d.type == "user.deactivated")
    assert new.verified  # signed with the new secret
    assert not [d for d in receiver.deliveries if d.path == "/hooks/b" and d.json["data"].get("id") == made["id"]]
    assert [e["type"] for e in feed(portal)[-2:]] == ["user.created", "user.deactivated"]
    assert other.call("GET", "/events") == {"events": [], "cursor": other.call("GET", "/events")["cursor"]}
    foreign = other.call("GET", "/events")["cursor"]
    assert portal.call("GET", "/events", params={"after": foreign}, expect=400)["code"] == "invalid_cursor"
    poll(lambda: all(d.verified for d in receiver.deliveries), 5, "every delivery verified")
