"""The link index against Azurite: one atomic write per link, found by every later reader, never made twice."""
import asyncio
from dataclasses import replace

from sync.linking import Candidate
from sync.ports import AlreadyLinked, Created, Stale, Updated, UserFilter, UsernameTaken
from tests.adapters.test_tables import user


def manual(i: int, **kw):
    return user(i, source_type="Manual", subscription_id=None, azure_object_id=None, group_ids=frozenset(), **kw)


def linking(u, sub="sub-1", oid="obj-x", username=None):
    return replace(u, source_type="AdSync", subscription_id=sub, azure_object_id=oid,
                   username=username or u.username), u.username


async def test_a_link_writes_the_user_its_entry_and_its_claims_at_once_and_only_once(table_store):
    users = table_store.users
    [a, b] = [o.user for o in await users.create([manual(1), manual(2, email="two@contoso.example")])]
    assert {c.id for c in await users.link_candidates("org-a")} == {a.id, b.id}
    assert Candidate(b.id, b.username, "two@contoso.example") in await users.link_candidates("org-a")
    # two workers link the same directory object to the same user at once: one wins, the other finds its entry
    outcomes = await asyncio.gather(users.link([linking(a)]), users.link([linking(a)]))
    kinds = sorted(type(o[0]).__name__ for o in outcomes)
    assert kinds in (["AlreadyLinked", "Updated"], ["Stale", "Updated"])
    assert await users.links("org-a", "sub-1") == {"obj-x": a.id}
    [again] = await users.link([linking(await users.get("org-a", a.id))])  # a redelivered link
    assert again == AlreadyLinked(a.id)
    # the index is not a user: the grid, the candidates and the subscription's users never see it
    grid, _ = await users.page("org-a", UserFilter(), 10, None)
    assert sorted(u.id for u in grid) == sorted([a.id, b.id])
    assert [u.id async for u in users.subscription_users("org-a", "sub-1")] == [a.id]
    assert [c.id for c in await users.link_candidates("org-a")] == [b.id]


async def test_a_link_by_email_moves_the_claim_or_is_refused_whole(table_store):
    users = table_store.users
    [a, b, c] = [o.user for o in await users.create([manual(1), manual(2), manual(3)])]
    [out] = await users.link([linking(a, oid="obj-1", username="Renamed@contoso.example")])
    assert isinstance(out, Updated) and await users.username_owner("org-a", "renamed@contoso.example") == a.id
    assert await users.username_owner("org-a", a.username) is None
    [out] = await users.link([linking(b, oid="obj-2", username=c.username)])  # c holds it
    assert out == UsernameTaken(c.id, c.username)
    assert await users.links("org-a", "sub-1") == {"obj-1": a.id}  # nothing of the refused link was written
    assert (await users.get("org-a", b.id)).source_type == "Manual"
    [out] = await users.link([linking(replace(c, etag='W/"datetime\'2000-01-01T00%3A00%3A00Z\'"'), oid="obj-3")])
    assert isinstance(out, Stale) and "obj-3" not in await users.links("org-a", "sub-1")
    assert await users.unlink_all("org-a", "sub-1") == 1 and await users.links("org-a", "sub-1") == {}
    assert isinstance((await users.create([user(9)]))[0], Created)


async def test_links_go_fifty_to_a_transaction(table_store):
    users = table_store.users
    made = [o.user for o in await users.create([manual(i) for i in range(100, 160)])]
    table_store.counters.reset()
    outcomes = await users.link([linking(u, oid=f"obj-{i}") for i, u in enumerate(made)])
    assert all(isinstance(o, Updated) for o in outcomes)
    assert (table_store.counters.requests, table_store.counters.entities) == (2, 120)  # a link: its row and entry
    assert len(await users.links("org-a", "sub-1")) == 60
