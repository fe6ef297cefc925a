"""The alerts table against Azurite: one row per event (insert-if-absent), ETag-guarded claims, unsent alerts."""
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from sync.adapters.alert_table import TableAlerts
from sync.alert_model import Alert, AlertKind
from sync.errors import PreconditionFailed
from sync.model import EmailState

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
NAME = 'Fabrikam <b>&</b> "Co"\u2028\U0001d4b3 زينب'


def alert(n: int = 1, org: str = "org/a#1", sub: str = "sub?1", **kw) -> Alert:
    values = dict(org=org, subscription_id=sub, id=f"run:{n:013d}-abcd:failed", kind=AlertKind.RUN_FAILED,
                  subscription_name=NAME, recipients=("ops@contoso.example", "zoë@bücher.example"), run_id=f"{n:013d}-abcd",
                  facts={"status": "failed", "failedGroups": [{"name": NAME, "message": "x" * 300}],
                         "errorCodes": [["group_not_found", 1]]},
                  created_at=NOW, updated_at=NOW)
    values.update(kw)
    return Alert(**values)


@pytest.fixture
def alerts(table_store):
    return TableAlerts(table_store)


async def test_an_event_is_one_row_however_often_it_is_recorded(alerts):
    first, created = await alerts.add(alert())
    assert created and first.etag
    again, created = await alerts.add(replace(alert(), subscription_name="other", recipients=("x@y.example",)))
    assert not created and again == first and again.subscription_name == NAME  # the first recording stands
    stored = await alerts.get("org/a#1", "sub?1", first.id)
    assert stored == first and stored.facts == alert().facts and stored.recipients == alert().recipients


async def test_claims_are_conditional_and_unsent_lists_queued_and_sending(alerts):
    a, _ = await alerts.add(alert(1))
    b, _ = await alerts.add(alert(2))
    await alerts.add(alert(3, sub="another"))
    claimed = await alerts.save(replace(a, state=EmailState.SENDING, lease_until=NOW + timedelta(minutes=2)))
    with pytest.raises(PreconditionFailed):
        await alerts.save(replace(a, state=EmailState.SENDING))  # the same claim from a stale read loses
    await alerts.save(replace(claimed, state=EmailState.SENT, lease_until=None, sent_at=NOW, refused=("z@x.example",)))
    assert [x.id for x in await alerts.unsent("org/a#1", "sub?1")] == [b.id]
    sent = await alerts.get("org/a#1", "sub?1", a.id)
    assert (sent.state, sent.sent_at, sent.refused, sent.lease_until) == (EmailState.SENT, NOW, ("z@x.example",), None)
    await alerts.save(replace(b, state=EmailState.SENDING, lease_until=NOW))
    assert [x.state for x in await alerts.unsent("org/a#1", "sub?1")] == [EmailState.SENDING]


async def test_delete_all_removes_one_subscriptions_alerts(alerts):
    a, _ = await alerts.add(alert(1))
    await alerts.add(alert(2))
    other, _ = await alerts.add(alert(1, sub="another"))
    await alerts.delete_all("org/a#1", "sub?1")
    assert await alerts.get("org/a#1", "sub?1", a.id) is None
    assert await alerts.get("org/a#1", "another", other.id) == other
    with pytest.raises(PreconditionFailed):
        await alerts.save(a)  # gone: a claim cannot bring it back


async def test_recent_lists_the_subscriptions_alerts_recorded_since(alerts):
    await alerts.add(alert(1, created_at=NOW - timedelta(hours=2)))
    await alerts.add(alert(2, created_at=NOW - timedelta(minutes=59)))
    await alerts.add(alert(3, created_at=NOW))
    await alerts.add(alert(4, sub="another", created_at=NOW))
    recent = await alerts.recent("org/a#1", "sub?1", NOW - timedelta(hours=1))
    assert sorted(a.run_id for a in recent) == [f"{n:013d}-abcd" for n in (2, 3)]
