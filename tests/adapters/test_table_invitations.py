"""The pending-invitation index and the recovery fields of a run, against Azurite."""
from datetime import datetime, timedelta, timezone

from sync.adapters.table_invitations import TableInvitations
from sync.model import GroupProgress, Run, Subscription

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


async def test_only_due_entries_of_every_org_are_read_and_dropped_ones_are_gone(table_store):
    index = TableInvitations(table_store)
    await index.expect("org-a", ["u1", "u2"], NOW)
    await index.expect("org/b", ["u3"], NOW + timedelta(minutes=5))
    await index.expect("org-a", [f"bulk{i}" for i in range(150)], NOW + timedelta(hours=1))  # two transactions
    assert sorted(await index.due(NOW + timedelta(minutes=1), 100)) == [("org-a", "u1"), ("org-a", "u2")]
    await index.defer("org-a", "u1", NOW + timedelta(minutes=10))
    await index.drop("org-a", "u2")
    await index.drop("org-a", "u2")  # gone already is fine
    assert await index.due(NOW + timedelta(minutes=6), 100) == [("org/b", "u3")]
    assert len(await index.due(NOW + timedelta(hours=2), 100)) == 100  # the limit holds


async def test_a_run_keeps_its_recovery_fields_and_subscriptions_with_an_active_run_are_found(table_store):
    run = Run(org="org-a", subscription_id="sub-1", id="r1", trigger="change_notification", status="running",
              group_ids=("g1",), started_at=NOW, updated_at=NOW, jobs_sent=False, job_id="changes:org-a:sub-1:1:0",
              job_delivery=2, job_group="g1", applying=True)
    stored = await table_store.runs.add(run, [GroupProgress(group_id="g1", updated_at=NOW)])
    read = await table_store.runs.get("org-a", "sub-1", "r1")
    assert read == stored == run
    subs = table_store.subscriptions
    await subs.add(Subscription(org="org-a", id="sub-1", name="A", created_at=NOW, updated_at=NOW, active_run_id="r1"))
    await subs.add(Subscription(org="org-a", id="sub-2", name="B", created_at=NOW, updated_at=NOW))
    assert [s.id for s in await subs.with_active_run()] == ["sub-1"]
