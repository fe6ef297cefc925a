"""The reminder index, the invitation's lifecycle fields of a user and a subscription's reminders, against Azurite."""
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from sync.adapters.table_invitations import TableInvitations
from sync.adapters.table_reminders import TableReminders
from sync.model import EmailState, Subscription, User
from sync.ports import UserFilter

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


async def test_the_reminder_index_is_a_table_of_its_own_read_by_due_time(table_store):
    reminders, pending = TableReminders(table_store), TableInvitations(table_store)
    await reminders.expect("org-a", ["u1"], NOW)
    await reminders.expect("org-a", ["u2"], NOW + timedelta(days=2))
    await pending.expect("org-a", ["u3"], NOW)
    assert await reminders.due(NOW + timedelta(minutes=1), 10) == [("org-a", "u1")]
    assert await pending.due(NOW + timedelta(minutes=1), 10) == [("org-a", "u3")]
    await reminders.defer("org-a", "u1", NOW + timedelta(days=10))
    assert await reminders.due(NOW + timedelta(days=3), 10) == [("org-a", "u2")]


async def test_lifecycle_fields_round_trip_and_the_grid_filters_by_enrollment(table_store):
    users = [User(org="org-a", id=f"u{i}", username=f"user{i}@x.example", email=f"user{i}@x.example",
                  display_name=f"User {i}", created_at=NOW, updated_at=NOW) for i in range(4)]
    await table_store.users.create(users)
    [done] = await table_store.users.update([(replace(
        users[1], enrolled_at=NOW, enrollment_email=EmailState.SENT, invited_at=NOW, reminders_sent=2,
        next_reminder_at=NOW + timedelta(days=8), invitation_expires_at=NOW + timedelta(days=7),
        invitation_reason="reminder", invitation_queued_at=NOW), users[1].username)])
    read = await table_store.users.get("org-a", "u1")
    assert (read.reminders_sent, read.invitation_reason, read.invited_at, read.next_reminder_at) == (
        2, "reminder", NOW, NOW + timedelta(days=8))
    assert (await table_store.users.get("org-a", "u0")).reminders_sent == 0
    enrolled, _ = await table_store.users.page("org-a", UserFilter(enrollment="enrolled"), 50, None)
    assert [u.id for u in enrolled] == ["u1"]
    pending, token = await table_store.users.page("org-a", UserFilter(enrollment="not_enrolled"), 2, None)
    rest, _ = await table_store.users.page("org-a", UserFilter(enrollment="not_enrolled"), 2, token)
    assert [u.id for u in pending + rest] == ["u0", "u2", "u3"]
    await table_store.subscriptions.add(Subscription(org="org-a", id="s1", name="A", created_at=NOW, updated_at=NOW,
                                                     enrollment_reminders=(2, 10)))
    assert (await table_store.subscriptions.get("org-a", "s1")).enrollment_reminders == (2, 10)
