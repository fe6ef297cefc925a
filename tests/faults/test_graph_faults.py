"""Microsoft Graph throttling (429 + Retry-After), 503 and slow answers while syncing and while using the API."""
import time

import pytest

from tests.faults.helpers import (
    GraphFaults,
    bus_counters,
    clean_then_faulty,
    connect,
    emails_of_org,
    errors,
    poll,
    recipients,
    settle,
    state,
    sync,
)
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

OPTIONS = {"deactivateBlockedUsers": True, "sendEnrollmentEmail": True}


def members_route(group_id: str) -> str:
    return f"/groups/{group_id}/transitiveMembers"


def test_throttling_errors_and_slow_pages_on_every_worker_route_end_like_a_clean_run(devhost, new_portal, load_tenant):
    t = with_large_group(1200)
    load_tenant(t.tenant)
    ids = t.ids
    groups = [ids["eng"], ids["sales"], ids["support"], ids["large"]]

    clean = new_portal()
    clean_run = sync(clean, connect(clean, groups, **OPTIONS))
    assert clean_run["status"] == "succeeded", clean_run
    settle(devhost)

    faulty = new_portal()
    sub = connect(faulty, groups, **OPTIONS)
    faults = GraphFaults(load_tenant(t.tenant))
    # Continuation pages of the large group (the second segment): a slow page, then 503 more often than the SDK
    # retries within one delivery, so the continuation message itself is redelivered.
    faults.add("$skiptoken=", status=503, retry_after=1, times=4)
    faults.add("$skiptoken=", delay_ms=1500, times=1)
    # First pages: throttled within the SDK's retries, failing past them (a redelivery), and slow. A fault is
    # consumed by one request, in the order given.
    faults.add(members_route(ids["large"]), status=429, retry_after=1, times=2)
    faults.add(members_route(ids["eng"]), status=429, retry_after=1, times=3)
    faults.add(members_route(ids["sales"]), status=503, retry_after=1, times=5)
    faults.add(members_route(ids["eng"]), delay_ms=2000, times=1)
    faults.add(members_route(ids["support"]), status=429, retry_after=1, times=1)
    faults.add(members_route(ids["support"]), delay_ms=2000, times=1)
    run = sync(faulty, sub)
    settle(devhost)
    assert faults.pending() == []  # every injected fault was met by the worker
    injected = faults.count()
    assert injected == {"graph slow response": 3, "graph 503": 9, "graph 429": 6}
    assert run["status"] == "succeeded", run
    assert (run["groupsTotal"], run["groupsDone"]) == (4, 4)
    assert run["counts"] == clean_run["counts"]
    assert errors(run) == errors(clean_run)
    assert state(faulty) == state(clean)
    assert state(faulty)["groups"]["Large Department"] == 1200 + 4  # staff, hal, ivy, jon (via Platform Team), ann
    # Each new active user with an address got exactly one invitation, whatever was redelivered.
    assert recipients(emails_of_org(devhost, faulty.org)) == recipients(emails_of_org(devhost, clean.org))
    assert len(emails_of_org(devhost, faulty.org)) == 11


def test_graph_errors_during_group_search_and_selection_answer_503_with_retry_after(devhost, portal, load_tenant):
    t = with_large_group(10)
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"]])
    faults = GraphFaults(admin)

    # Once: the API retries within the request and the person waiting sees nothing.
    faults.add('$search="displayName:Depa', status=503, retry_after=1, times=1)
    assert [g["displayName"] for g in portal.search_groups(sub, "Depa")] == [
        "Engineering Department", "Large Department", "Sales Department", "Support Department"]
    # Persistently: 503 temporarily_unavailable with Retry-After, and the selection is unchanged.
    faults.add(t.ids['sales'], status=429, retry_after=1, times=2)  # the look-up: $filter=id in (…, sales)
    refused = portal.http.put(f"{portal.api}/directory/subscriptions/{sub}/groups",
                              headers={"Authorization": f"Bearer {portal.token}"},
                              json={"groupIds": [t.ids["eng"], t.ids["sales"]]})
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["code"] == "directory_unavailable" and refused.json()["message"]
    assert [g["id"] for g in portal.call("GET", f"/directory/subscriptions/{sub}/groups")["groups"]] == [t.ids["eng"]]
    faults.add('$search="displayName:Sales', delay_ms=1500, times=1)
    assert len(portal.search_groups(sub, "Sales")) == 1
    assert faults.pending() == []
    faults.count()
    # After the throttling: the same selection succeeds.
    assert [g["id"] for g in portal.select_groups(sub, [t.ids["eng"], t.ids["sales"]])] == [t.ids["eng"], t.ids["sales"]]


def test_a_long_retry_after_parks_the_segment_instead_of_sleeping_and_the_run_ends_like_a_clean_one(
        devhost, new_portal, load_tenant):
    """Graph's Retry-After can be minutes: the worker hands its segment back to Service Bus, scheduled for then,
    instead of sleeping in the function with the message locked; a person's search answers at once."""
    t = with_large_group(1200)
    admin = load_tenant(t.tenant)
    clean, faulty, sub = clean_then_faulty(devhost, new_portal, [t.ids["eng"], t.ids["large"]])
    faults = GraphFaults(admin)
    faults.add("$skiptoken=", status=429, retry_after=15, times=1)  # the large group's second page
    started = time.monotonic()
    run_id = faulty.full_sync(sub)
    # While Graph asks for 15 s: once the other group's job is done, the throttled segment waits scheduled in the
    # queue and no handler holds a message locked (nothing sleeps in a function), well before the 15 s are over.
    def parked() -> bool:
        queue = bus_counters(devhost)["group-sync"]
        return faults.pending() == [] and queue["scheduled"] >= 1 and queue["locked"] == queue["active"] == 0
    poll(parked, 30, "the throttled segment to be scheduled with no message held")
    assert time.monotonic() - started < 14
    run = faulty.wait(sub, run_id, timeout=120)
    assert run["status"] == "succeeded", run
    assert time.monotonic() - started >= 14  # it waited for Graph's Retry-After, not less
    assert faults.count() == {"graph 429": 1}
    settle(devhost)
    assert state(faulty)["users"] == state(clean)["users"]

    # A person is never made to wait for minutes: 120 s of Retry-After on the search is a 503 at once.
    faults.add('$search="displayName:Depa', status=503, retry_after=120, times=1)
    faults.add("startswith(displayName,'Depa')", status=503, retry_after=120, times=1)
    asked = time.monotonic()
    refused = faulty.http.get(f"{faulty.api}/directory/subscriptions/{sub}/directory-groups",
                              params={"search": "Depa"}, headers={"Authorization": f"Bearer {faulty.token}"})
    assert time.monotonic() - asked < 5
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 100, refused.text
    assert refused.json()["code"] == "directory_unavailable"
    faults.count()
    admin.control("DELETE", "/faults")  # the search sends both at once; the first 503 may cancel the other


def test_a_401_mid_run_is_a_fresh_token_not_a_lost_consent(devhost, new_portal, load_tenant):
    """401 InvalidAuthenticationToken (a token Graph no longer takes: clock skew, a rotated key) on a worker's page:
    the worker asks the authority for a new token and goes on; the subscription stays authorized."""
    t = with_large_group(1200)
    admin = load_tenant(t.tenant)
    groups = [t.ids["eng"], t.ids["large"]]
    portal = new_portal()
    sub = connect(portal, groups)
    faults = GraphFaults(admin)
    faults.add("$skiptoken=", status=401, code="InvalidAuthenticationToken", times=1)
    faults.add(members_route(t.ids["eng"]), status=401, code="InvalidAuthenticationToken", times=1)
    admin.control("POST", "/stats/reset")
    run = sync(portal, sub)
    assert run["status"] == "succeeded", run
    assert faults.count() == {"graph 401": 2}
    tokens = sum(n for route, n in admin.control("GET", "/stats")["byRoute"].items() if "oauth2/v2.0/token" in route)
    assert tokens >= 2  # each 401 dropped the cached token: a fresh one was issued
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["status"] == "authorized"
    assert len(portal.users()) > 1200
