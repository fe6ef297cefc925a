"""Broken object-level authorization: another org's ids, on every endpoint, answer 404 and change nothing."""
import httpx
import pytest

from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
from local.client import portal_token
from tests.faults import figures
from tests.faults.abuse import assert_error, fill, routes
from tests.faults.helpers import connect, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

BODIES = {  # valid bodies, so that only the ids can be what is wrong
    ("PATCH", "/api/directory/subscriptions/{subscriptionId}"): {"name": "Pwned", "nightlySync": True},
    ("PUT", "/api/directory/subscriptions/{subscriptionId}/groups"): {"groupIds": []},
}


def attacker_orgs(victim_org: str) -> list[str]:
    """Orgs an attacker might claim (with a correctly signed token) hoping to reach the victim's rows."""
    return ["mallory-" + victim_org, victim_org.upper(), victim_org + " ", victim_org + "|x", victim_org + "%",
            "' or PartitionKey ne '", victim_org[:-1]]


def test_every_endpoint_with_another_orgs_ids_answers_404_and_changes_nothing(devhost, victim, portal, load_tenant):
    # The attacker is a real customer with its own directory, runs and users.
    t = with_large_group(3)
    load_tenant(t.tenant)
    own_sub = connect(portal, [t.ids["eng"]])
    own_run = sync(portal, own_sub)["runId"]
    before = victim.snapshot()
    foreign = {"subscriptionId": victim.sub, "runId": victim.run}
    mixes = [  # every combination in which at least one id is the victim's
        foreign,
        {"subscriptionId": own_sub, "runId": victim.run},
        {"subscriptionId": victim.sub, "runId": own_run},
    ]
    tried = 0
    for method, template in routes():
        if "{userId}" in template:
            combos = [{"userId": victim.manual_user}, {"userId": victim.synced_user}]
        elif "{subscriptionId}" in template:
            combos = mixes if "{runId}" in template else [{"subscriptionId": victim.sub}]
        else:
            continue
        for ids in combos:
            path = fill(template, **ids)
            response = portal.http.request(method, portal.api + path, json=BODIES.get((method, template), {}),
                                           params={"search": "Engineering"} if "directory-groups" in path else None,
                                           headers={"Authorization": f"Bearer {portal.token}"})
            tried += 1
            assert_error(response, 404)
    # Enrollment: the victim's invitation token, presented by another org.
    refused = portal.http.post(portal.api + "/enrollment/complete", json={"token": victim.enrollment_token},
                               headers={"Authorization": f"Bearer {portal.token}"})
    tried += 1
    assert_error(refused, 400, "invalid_token")
    figures.tried("another org's ids (object-level authorization)", tried)

    # Listings show only the attacker's own objects.
    assert [s["id"] for s in portal.call("GET", "/directory/subscriptions")["subscriptions"]] == [own_sub]
    assert not {victim.manual_user, victim.synced_user} & {u["id"] for u in portal.users()}
    assert {g["subscriptionId"] for g in portal.groups()} == {own_sub}
    assert victim.snapshot() == before


def test_tokens_claiming_lookalike_orgs_reach_nothing_of_the_victim(devhost, victim):
    before = victim.snapshot()
    tried = 0
    with httpx.Client(timeout=30) as client:
        for org in attacker_orgs(victim.org):
            auth = {"Authorization": "Bearer " + portal_token(LOCAL_PORTAL_TOKEN_SECRET, org=org)}
            api = devhost.ready["api"]
            for path in ("/directory/subscriptions", "/users", "/groups"):
                listed = client.get(api + path, headers=auth)
                tried += 1
                assert listed.status_code == 200 and victim.sub not in listed.text and victim.manual_user not in listed.text
            for path in (f"/directory/subscriptions/{victim.sub}", f"/users/{victim.manual_user}",
                         f"/directory/subscriptions/{victim.sub}/runs/{victim.run}"):
                tried += 1
                assert_error(client.get(api + path, headers=auth), 404)
            tried += 1
            assert_error(client.post(api + f"/users/{victim.manual_user}/deactivate", headers=auth), 404)
    figures.tried("lookalike org claims", tried)
    assert victim.snapshot() == before
