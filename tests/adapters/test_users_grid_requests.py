"""The Users grid's storage requests are bounded (issue 22 #9): counted on the wire, on Azurite.

A filter that matched nobody read every user it scanned, one request each (1,500 on a 1,500-user org, 5,000 a call at
most). The grid reads with queries now: a call costs at most ⌈users / 1,000⌉ + ⌈pageSize / 14⌉ requests.
"""
import secrets

import pytest

from benchmarks.users_grid import CALLS, bound, counting_store, grid_user, load, measure
from sync.ports import UserFilter

USERS = 1500


@pytest.fixture
async def grid(azurite):
    store, counter = counting_store(azurite.connection_string, "g" + secrets.token_hex(5))
    await load(store, USERS)
    yield store, counter
    await store.close()


async def test_every_grid_call_costs_a_bounded_number_of_requests_and_pages_stay_complete(grid):
    store, counter = grid
    figures = await measure(store, counter)
    for name, (_, size) in CALLS.items():
        assert figures[name]["requests"] <= bound(USERS, size), (name, figures[name])
    assert figures["search matching nobody"] == {"requests": 2, "returned": 0}
    assert figures["pageSize 1"] == {"requests": 2, "returned": 1}

    everyone = sorted((grid_user(i) for i in range(USERS)), key=lambda u: u.username)
    for filters, expect in [(UserFilter(), everyone),
                            (UserFilter(status="Inactive"), [u for u in everyone if u.status == "Inactive"]),
                            (UserFilter(status="Active", source_type="Manual", search="USER0012"),
                             [u for u in everyone if u.status == "Active" and u.source_type == "Manual"
                              and "user0012" in u.username])]:
        seen, token = [], None
        while True:
            page, token = await store.users.page("org-grid", filters, 97, token)
            seen += page
            if token is None:
                break
            assert len(page) == 97  # a page is full unless it is the last
        assert [u.username for u in seen] == [u.username for u in expect]
        assert all(u.display_name and u.org == "org-grid" for u in seen)
