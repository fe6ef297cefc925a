"""Graph as strict as Microsoft documents it (and as it behaves where the docs are silent): expired page tokens,
short pages."""
import pytest

from local.fake_graph import transitive_user_members
from tests.faults import figures
from tests.faults.helpers import connect, settle, state, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults


def test_an_expired_page_token_restarts_the_group_and_ends_like_a_clean_run(devhost, new_portal, load_tenant):
    t = with_large_group(2100)  # three Graph pages (short ones included): three messages with MAX_PAGES_PER_MESSAGE=1
    admin = load_tenant(t.tenant)
    groups = [t.ids["eng"], t.ids["large"]]
    clean = new_portal()
    assert sync(clean, connect(clean, groups))["status"] == "succeeded"
    settle(devhost)

    faulty = new_portal()
    sub = connect(faulty, groups)
    # The second page's link expires once: Graph's own error on the continuation of the large group.
    admin.control("POST", "/faults", json={"path": "$skiptoken=", "status": 400, "times": 1,
                                           "code": "Directory_ExpiredPageToken",
                                           "message": "The specified page token value has expired and can no longer "
                                                      "be included in your request."})
    run = sync(faulty, sub)
    figures.fault("graph 400 Directory_ExpiredPageToken")
    assert run["status"] == "succeeded", run
    assert admin.control("GET", "/faults")["faults"] == []
    settle(devhost)
    assert state(faulty)["users"] == state(clean)["users"]


def test_page_tokens_really_expire_with_their_lifetime(devhost, portal, load_tenant):
    """Not only a forced fault: a link older than the fake's lifetime is refused, and the sync still completes."""
    t = with_large_group(2100)
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["large"]])
    # Links live 8 s; the first one is answered 9 s late (a slow network or a message waiting in the queue).
    admin.control("POST", "/paging", json={"skiptokenLifetimeSeconds": 8})
    admin.control("POST", "/faults", json={"path": "$skiptoken=", "delayMs": 9000, "times": 1})
    try:
        before = admin.control("GET", "/stats")["byRoute"]
        run = sync(portal, sub)
    finally:
        admin.control("POST", "/paging", json={"skiptokenLifetimeSeconds": 120})
    figures.fault("graph page token older than its lifetime")
    assert run["status"] == "succeeded", run
    after = admin.control("GET", "/stats")["byRoute"]
    route = "GET /v1.0/groups/{id}/transitiveMembers/microsoft.graph.user"
    assert after[route] - before.get(route, 0) >= 4  # three pages, and the page whose token expired read again
    members = transitive_user_members(t.tenant, t.ids["large"])
    assert len(members) > 2100 and sorted(u["azureObjectId"] for u in portal.users()) == sorted(members)
