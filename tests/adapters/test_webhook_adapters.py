"""Issue 25's adapters: the events log and the webhooks table against Azurite, and the HTTP sender against a real
receiver on loopback (addresses vetted after resolution: ``localhost`` is 127.0.0.1)."""
import asyncio
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from local.webhook_receiver import WebhookReceiver
from sync.adapters.table_events import TableEvents
from sync.adapters.table_webhooks import TableWebhooks
from sync.adapters.webhook_http import HttpWebhookSender
from sync.errors import DeliveryFailed, PreconditionFailed
from sync.event_model import Event, Webhook, event_id
from sync.webhooks import address_allowed

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
ORG = "org/a#1"


def ev(n, at=NOW, org=ORG) -> Event:
    return Event(org, event_id(org, str(n)), "user.updated", at, {"n": n, "name": "zoë \u2028 زينب"})


async def test_events_get_gapless_sequences_once_each_even_when_appended_concurrently(table_store):
    log = TableEvents(table_store)
    first = await log.append(ORG, [ev(1), ev(2), ev(1)])
    assert [e.sequence for e in first] == [1, 2]
    batches = [[ev(n) for n in range(k * 10, k * 10 + 10)] for k in range(1, 5)]
    results = await asyncio.gather(*(log.append(ORG, b) for b in batches), log.append(ORG, [ev(1), ev(11)]))
    assert sum(len(r) for r in results) == 40  # ev(11) recorded by one of the two appends carrying it, ev(1) by none
    stored = await log.after(ORG, 0, 1000)
    assert [e.sequence for e in stored] == list(range(1, 43)) and len({e.id for e in stored}) == 42
    assert stored[0].data == ev(1).data and stored[0].timestamp == NOW
    assert await log.last_sequence(ORG) == 42 and await log.last_sequence("other") == 0
    assert [e.sequence for e in await log.after(ORG, 40, 5)] == [41, 42]
    many = await log.append(ORG, [ev(n) for n in range(100, 220)])  # more than one transaction
    assert [e.sequence for e in many] == list(range(43, 163))
    assert await log.after("other", 0, 10) == []
    elsewhere = TableEvents(table_store)  # another process: its own view of the counter, the ETag referees
    both = await asyncio.gather(elsewhere.append(ORG, [ev(n) for n in range(300, 400)]),
                                log.append(ORG, [ev(n) for n in range(350, 450)]), elsewhere.append(ORG, many[:60]))
    assert sum(len(r) for r in both) == 150
    stored = await log.after(ORG, 0, 1000)
    assert [e.sequence for e in stored] == list(range(1, 313)) and len({e.id for e in stored}) == 312


async def test_expired_events_go_with_their_ids(table_store):
    log = TableEvents(table_store)
    await log.append(ORG, [ev(1, NOW - timedelta(days=40)), ev(2)])
    assert await log.expire(NOW - timedelta(days=30)) == 1
    assert [e.data["n"] for e in await log.after(ORG, 0, 10)] == [2]
    assert [e.sequence for e in await log.append(ORG, [ev(3)])] == [3]


async def test_webhooks_are_org_scoped_and_saved_on_their_etag(table_store):
    hooks = TableWebhooks(table_store)
    hook = await hooks.add(Webhook(org=ORG, id="h1", url="https://portal.example.com/x", secret="whsec_abc",
                                   events=("user.created",), created_at=NOW, cursor=7))
    assert await hooks.get(ORG, "h1") == hook and await hooks.get("other", "h1") is None
    saved = await hooks.save(replace(hook, cursor=8, next_attempt_at=NOW))
    with pytest.raises(PreconditionFailed):
        await hooks.save(replace(hook, cursor=9))
    assert (await hooks.get(ORG, "h1")).cursor == 8 and saved.next_attempt_at == NOW
    assert [h.id for h in await hooks.list(ORG)] == ["h1"] and await hooks.list("other") == []
    await hooks.delete(ORG, "h1")
    await hooks.delete(ORG, "h1")
    assert await hooks.list(ORG) == []


@pytest.fixture
def receiver():
    r = WebhookReceiver().start()
    yield r
    r.stop()


async def test_the_sender_posts_only_to_vetted_addresses(receiver):
    sender = HttpWebhookSender()
    url = receiver.url.replace("127.0.0.1", "localhost")
    assert "127.0.0.1" in await sender.addresses("localhost")
    with pytest.raises(DeliveryFailed):  # localhost resolves to loopback: refused when loopback is not allowed
        await sender.post(url, {}, b"{}", allowed=lambda ip: address_allowed(ip, allow_loopback=False), timeout_s=5)
    assert receiver.deliveries == []
    receiver.answers = [500]
    assert await sender.post(url, {"webhook-id": "evt_1"}, b"{}", timeout_s=5,
                             allowed=lambda ip: address_allowed(ip, allow_loopback=True)) == 500
    assert await sender.post(receiver.url, {"webhook-id": "evt_1"}, b"{}", timeout_s=5,
                             allowed=lambda ip: address_allowed(ip, allow_loopback=True)) == 204
    assert [d.id for d in receiver.deliveries] == ["evt_1", "evt_1"]
    with pytest.raises(DeliveryFailed):
        await sender.post("https://no-such-host.invalid/x", {}, b"{}", allowed=lambda ip: True, timeout_s=5)
