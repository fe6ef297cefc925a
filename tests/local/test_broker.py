"""The local Service Bus broker, exercised with the real azure-servicebus client (sync and aio)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from azure.servicebus import (
    AutoLockRenewer,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusError,
)
from proton import Connection, Described, Link, Message, Transport, TransportException, uint, ulong

from local.broker import LocalServiceBus
from local.broker.codec import EncodedMessage, encode_value, unpack_transfer
from local.broker.frames import IncomingFrames
from local.broker.queues import QueueSettings, load_definition

QUEUE = "group-sync"
OTHER_QUEUE = "enrollment"
REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def make_bus():
    """Start brokers with custom settings; all are stopped after the test."""
    started: list[LocalServiceBus] = []

    def make(**settings) -> LocalServiceBus:
        settings.setdefault("queues", (QUEUE, OTHER_QUEUE))
        bus = LocalServiceBus(**settings).start()
        started.append(bus)
        return bus

    yield make
    for bus in started:
        bus.stop()


@pytest.fixture
def bus(make_bus) -> LocalServiceBus:
    return make_bus()


@pytest.fixture
def client(bus):
    # No retries: a failing operation should fail the test at once, not after backoff.
    with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as sb_client:
        yield sb_client


def sender(client, queue: str = QUEUE):
    """A sender; keep_alive=0 spares close() joining a keep-alive thread that sleeps in one-second steps."""
    return client.get_queue_sender(queue, keep_alive=0)


def quick_receiver(client, queue: str = QUEUE, **options):
    """A peek-lock receiver that prefetches one message.

    With the default prefetch_count=0 the client always runs a keep-alive thread that close() joins,
    which costs up to a second per receiver. A prefetching receiver can do without (keep_alive=0).
    Tests about lock counts, prefetch 0 or competition use the default receiver instead.
    """
    return client.get_queue_receiver(queue, prefetch_count=1, keep_alive=0, **options)


def text(message) -> str:
    return b"".join(message.body).decode()


def receive(receiver, count: int, timeout: float = 5.0) -> list:
    """Receive until ``count`` messages arrived or ``timeout`` passed."""
    received: list = []
    deadline = time.monotonic() + timeout
    while len(received) < count and (remaining := deadline - time.monotonic()) > 0:
        received += receiver.receive_messages(
            max_message_count=count - len(received), max_wait_time=max(0.2, min(1.0, remaining))
        )
    return received


async def receive_async(receiver, count: int, timeout: float = 5.0) -> list:
    received: list = []
    deadline = time.monotonic() + timeout
    while len(received) < count and (remaining := deadline - time.monotonic()) > 0:
        received += await receiver.receive_messages(
            max_message_count=count - len(received), max_wait_time=max(0.2, min(1.0, remaining))
        )
    return received


def queue_stats(bus: LocalServiceBus, queue: str = QUEUE) -> dict:
    return bus.stats()["queues"][queue]


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- sending and receiving ----------------------------------------------------------------


def test_single_message_round_trip_keeps_content_and_metadata(bus, client):
    before = datetime.datetime.now(datetime.timezone.utc)
    with sender(client) as out:
        out.send_messages(
            ServiceBusMessage(
                '{"userId": "u-1"}',
                application_properties={"kind": "user.changed", "attempt": 2},
                message_id="msg-1",
                subject="user",
                content_type="application/json",
                correlation_id="corr-1",
            )
        )
    assert queue_stats(bus)["active"] == 1

    with client.get_queue_receiver(QUEUE) as receiver:
        [message] = receive(receiver, 1)
        assert text(message) == '{"userId": "u-1"}'
        # pyamqp hands application property keys and string values back as bytes.
        assert message.application_properties == {b"kind": b"user.changed", b"attempt": 2}
        assert message.message_id == "msg-1"
        assert message.subject == "user"
        assert message.content_type == "application/json"
        assert message.correlation_id == "corr-1"
        assert message.delivery_count == 0
        assert message.sequence_number == 1
        assert isinstance(message.lock_token, uuid.UUID)
        assert abs(message.enqueued_time_utc - before) < datetime.timedelta(seconds=5)
        assert 25 < (message.locked_until_utc - before).total_seconds() < 35
        assert queue_stats(bus)["locked"] == 1

        receiver.complete_message(message)

    assert queue_stats(bus) == {
        "active": 0, "locked": 0, "deadLettered": 0, "scheduled": 0,
        "sent": 1, "completed": 1, "abandoned": 0, "deliveries": 1, "duplicates": 0, "expired": 0,
    }


def test_batches_and_lists_are_unpacked_into_separate_messages_in_order(bus, client):
    with sender(client) as out:
        batch = out.create_message_batch()
        for i in range(50):
            batch.add_message(
                ServiceBusMessage(f"body-{i}", message_id=f"id-{i}", application_properties={"index": i})
            )
        out.send_messages(batch)
        out.send_messages([ServiceBusMessage(b"\x00\x01binary"), ServiceBusMessage("last")])
    assert queue_stats(bus)["sent"] == 52

    with client.get_queue_receiver(QUEUE) as receiver:
        messages = receive(receiver, 52)
        for message in messages:
            receiver.complete_message(message)

    batched, listed = messages[:50], messages[50:]
    assert [text(m) for m in batched] == [f"body-{i}" for i in range(50)]
    assert [m.message_id for m in batched] == [f"id-{i}" for i in range(50)]
    assert [m.application_properties[b"index"] for m in batched] == list(range(50))
    assert [m.sequence_number for m in messages] == list(range(1, 53))
    assert [b"".join(m.body) for m in listed] == [b"\x00\x01binary", b"last"]
    assert queue_stats(bus)["completed"] == 52
    assert queue_stats(bus)["active"] == 0


def test_dead_letter_with_reason_is_readable_from_the_dead_letter_queue(bus, client):
    with sender(client) as out:
        out.send_messages(ServiceBusMessage("poison", message_id="p-1", application_properties={"k": "v"}))
    with quick_receiver(client) as receiver:
        [message] = receive(receiver, 1)
        receiver.dead_letter_message(message, reason="InvalidPayload", error_description="missing userId")
    assert queue_stats(bus)["deadLettered"] == 1
    assert queue_stats(bus)["active"] == 0

    with quick_receiver(client, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = receive(dlq, 1)
        assert (text(dead), dead.message_id) == ("poison", "p-1")
        assert dead.dead_letter_reason == "InvalidPayload"
        assert dead.dead_letter_error_description == "missing userId"
        assert dead.application_properties[b"k"] == b"v"
        dlq.complete_message(dead)
    assert queue_stats(bus)["deadLettered"] == 0


def test_abandon_redelivers_until_max_delivery_count_then_dead_letters(make_bus):
    bus = make_bus(max_delivery_count=2)
    with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
        with sender(client) as out:
            out.send_messages(ServiceBusMessage("always fails", message_id="f-1"))
        with quick_receiver(client) as receiver:
            [first] = receive(receiver, 1)
            receiver.abandon_message(first)
            [second] = receive(receiver, 1)
            assert (second.message_id, second.delivery_count) == ("f-1", 1)
            assert second.sequence_number == first.sequence_number
            receiver.abandon_message(second)
            # The client waits for the broker to confirm each settlement, so stats are already current.
            stats = queue_stats(bus)
            assert (stats["deadLettered"], stats["active"], stats["abandoned"], stats["deliveries"]) == (1, 0, 2, 2)
        with quick_receiver(client, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            [dead] = receive(dlq, 1)
            assert (dead.message_id, dead.delivery_count) == ("f-1", 2)
            assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
            dlq.complete_message(dead)


def test_expired_locks_redeliver_and_renewed_locks_hold(make_bus):
    bus = make_bus(lock_duration_s=1.0)
    with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
        with sender(client) as out:
            out.send_messages([ServiceBusMessage("kept", message_id="kept"), ServiceBusMessage("lost", message_id="lost")])
        with quick_receiver(client) as receiver:
            kept, lost = receive(receiver, 2)
            original = kept.locked_until_utc
            time.sleep(0.6)
            renewed = receiver.renew_message_lock(kept)
            assert renewed > original
            assert kept.locked_until_utc == renewed

            [again] = receive(receiver, 1, timeout=5)  # "lost" comes back once its lock expires
            assert datetime.datetime.now(datetime.timezone.utc) > original
            assert (again.message_id, again.delivery_count) == ("lost", 1)
            with pytest.raises(MessageLockLostError):
                receiver.complete_message(lost)
            receiver.complete_message(again)
            receiver.complete_message(kept)  # past its original expiry, within the renewed one
    stats = queue_stats(bus)
    assert (stats["deliveries"], stats["completed"], stats["active"]) == (3, 2, 0)


def test_schedule_and_cancel_scheduled_messages(bus, client):
    enqueue_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1.5)
    with sender(client) as out:
        kept, cancelled = out.schedule_messages(
            [ServiceBusMessage("later", message_id="later"), ServiceBusMessage("never", message_id="never")],
            enqueue_at,
        )
        assert queue_stats(bus)["scheduled"] == 2
        out.cancel_scheduled_messages(cancelled)
        assert queue_stats(bus)["scheduled"] == 1
        with pytest.raises(MessageNotFoundError):
            out.cancel_scheduled_messages(cancelled)

    with quick_receiver(client) as receiver:
        [peeked] = receiver.peek_messages(10)
        assert (peeked.sequence_number, peeked.state) == (kept, ServiceBusMessageState.SCHEDULED)
        [message] = receive(receiver, 1, timeout=5)
        assert datetime.datetime.now(datetime.timezone.utc) >= enqueue_at - datetime.timedelta(milliseconds=5)
        assert message.message_id == "later"
        assert abs(message.scheduled_enqueue_time_utc - enqueue_at) < datetime.timedelta(milliseconds=2)
        assert message.sequence_number > kept  # activation assigns a new sequence number, as on Service Bus
        receiver.complete_message(message)
    assert (queue_stats(bus)["scheduled"], queue_stats(bus)["active"]) == (0, 0)


def test_peek_browses_without_locking(bus, client):
    with sender(client) as out:
        out.send_messages([ServiceBusMessage(f"p{i}") for i in range(3)])
    with client.get_queue_receiver(QUEUE) as receiver:
        peeked = receiver.peek_messages(10)
        assert [text(m) for m in peeked] == ["p0", "p1", "p2"]
        assert [m.sequence_number for m in peeked] == [1, 2, 3]
        assert [text(m) for m in receiver.peek_messages(10, sequence_number=2)] == ["p1", "p2"]
        assert (queue_stats(bus)["locked"], queue_stats(bus)["active"]) == (0, 3)
        assert len(receive(receiver, 3)) == 3


def test_competing_receivers_get_disjoint_messages(bus):
    count = 40
    clients = [ServiceBusClient.from_connection_string(bus.connection_string) for _ in range(2)]
    receivers = [c.get_queue_receiver(QUEUE) for c in clients]
    try:
        for receiver in receivers:
            receiver.peek_messages(1)  # opens the link before the messages arrive
        with sender(clients[0]) as out:
            out.send_messages([ServiceBusMessage(f"job-{i}") for i in range(count)])

        results: list[list[str]] = [[], []]
        barrier = threading.Barrier(2)

        def consume(index: int) -> None:
            receiver = receivers[index]
            barrier.wait()
            while messages := receiver.receive_messages(max_message_count=5, max_wait_time=0.5):
                for message in messages:
                    results[index].append(text(message))
                    receiver.complete_message(message)

        threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        # Closing joins each receiver's keep-alive thread (up to a second): close both at once.
        closers = [threading.Thread(target=c.close) for c in clients]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(10)

    first, second = set(results[0]), set(results[1])
    assert first and second
    assert not first & second
    assert first | second == {f"job-{i}" for i in range(count)}
    assert len(results[0]) + len(results[1]) == count
    assert queue_stats(bus)["completed"] == count


def test_receive_and_delete_mode_removes_messages_on_delivery(bus, client):
    with sender(client) as out:
        out.send_messages([ServiceBusMessage(f"rd{i}") for i in range(3)])
    with client.get_queue_receiver(QUEUE, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE) as receiver:
        messages = receive(receiver, 3)
        assert [text(m) for m in messages] == ["rd0", "rd1", "rd2"]
        assert all(m.lock_token is None for m in messages)
        stats = queue_stats(bus)
        assert (stats["active"], stats["locked"], stats["completed"]) == (0, 0, 3)


def test_defer_and_receive_deferred_by_sequence_number(bus, client):
    with sender(client) as out:
        out.send_messages(ServiceBusMessage("not yet", message_id="d-1"))
    with quick_receiver(client) as receiver:
        [message] = receive(receiver, 1)
        receiver.defer_message(message)
        assert (queue_stats(bus)["active"], queue_stats(bus)["locked"]) == (0, 0)
        [deferred] = receiver.receive_deferred_messages([message.sequence_number])
        assert deferred.message_id == "d-1"
        assert isinstance(deferred.lock_token, uuid.UUID)
        receiver.complete_message(deferred)  # settled through the management link
    assert queue_stats(bus)["completed"] == 1


def test_settling_a_purged_message_reports_a_lost_lock(bus, client):
    with sender(client) as out:
        out.send_messages(ServiceBusMessage("gone"))
    with quick_receiver(client) as receiver:
        [message] = receive(receiver, 1)
        bus.purge(QUEUE)
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(message)


def test_closing_a_prefetching_receiver_releases_its_buffer(bus, client):
    with sender(client) as out:
        out.send_messages([ServiceBusMessage(f"b{i}") for i in range(5)])
    with client.get_queue_receiver(QUEUE, prefetch_count=10, keep_alive=0) as receiver:
        [first] = receiver.receive_messages(max_message_count=1, max_wait_time=2)
        receiver.complete_message(first)
    wait_for(lambda: queue_stats(bus)["active"] == 4)
    assert queue_stats(bus)["locked"] == 0
    with quick_receiver(client) as receiver:
        rest = receive(receiver, 4)
        assert [(text(m), m.delivery_count) for m in rest] == [(f"b{i}", 0) for i in range(1, 5)]


def test_auto_lock_renewer_keeps_a_long_running_message(make_bus):
    bus = make_bus(lock_duration_s=1.0)
    renewer = AutoLockRenewer(max_lock_renewal_duration=20)
    try:
        with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
            with sender(client) as out:
                out.send_messages(ServiceBusMessage("long"))
            with quick_receiver(client, auto_lock_renewer=renewer) as receiver:
                [message] = receive(receiver, 1)
                time.sleep(1.8)  # well past the lock duration
                assert queue_stats(bus)["active"] == 0
                receiver.complete_message(message)
    finally:
        renewer.close()
    stats = queue_stats(bus)
    assert (stats["deliveries"], stats["completed"]) == (1, 1)


def test_topics_and_sessions_are_refused(bus, client):
    with pytest.raises(MessagingEntityNotFoundError):
        with client.get_subscription_receiver("topic", "subscription", prefetch_count=1, keep_alive=0) as receiver:
            receiver.receive_messages(max_wait_time=1)
    with pytest.raises(ServiceBusError, match="does not support sessions"):
        with client.get_queue_receiver(QUEUE, session_id="s-1", prefetch_count=1, keep_alive=0) as receiver:
            receiver.receive_messages(max_wait_time=1)


# -- the queues as declared (infra/queues.json): entity existence, duplicates, expiry, size -----------------


def test_an_undeclared_queue_is_not_found_rather_than_created(bus, client):
    with pytest.raises(MessagingEntityNotFoundError):
        with sender(client, "never-declared") as out:
            out.send_messages(ServiceBusMessage("lost"))
    with pytest.raises(MessagingEntityNotFoundError):
        with quick_receiver(client, "never-declared") as receiver:
            receiver.receive_messages(max_wait_time=1)
    assert set(bus.stats()["queues"]) == {QUEUE, OTHER_QUEUE}


def test_duplicate_detection_accepts_and_drops_a_seen_message_id_scheduled_ones_included(make_bus):
    bus = make_bus(queues=(QueueSettings(QUEUE, duplicate_detection_window_s=1.5), OTHER_QUEUE))
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.3)
    with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
        with sender(client) as out, sender(client, OTHER_QUEUE) as other:
            first_sent = time.monotonic()
            out.send_messages(ServiceBusMessage("first", message_id="enroll:o:u"))
            out.send_messages(ServiceBusMessage("again", message_id="enroll:o:u"))  # no error: reported as accepted
            [number] = out.schedule_messages(ServiceBusMessage("later", message_id="enroll:o:u"), later)
            out.send_messages(ServiceBusMessage("fresh", message_id="enroll:o:u:requeue1"))
            other.send_messages([ServiceBusMessage("x", message_id="same"), ServiceBusMessage("x", message_id="same")])
            assert isinstance(number, int)
            with quick_receiver(client) as receiver:
                got = receive(receiver, 3, timeout=1.5)
                assert sorted(text(m) for m in got) == ["first", "fresh"]
                for message in got:
                    receiver.complete_message(message)
                stats = queue_stats(bus)
                assert (stats["sent"], stats["duplicates"], stats["scheduled"]) == (4, 2, 0)
                assert queue_stats(bus, OTHER_QUEUE)["active"] == 2  # a queue without duplicate detection
                # The history keeps an id for the window, completed or not; after it, the id is new again.
                def resent() -> bool:
                    out.send_messages(ServiceBusMessage("next window", message_id="enroll:o:u"))
                    return queue_stats(bus)["active"] == 1

                wait_for(resent)
                assert time.monotonic() - first_sent >= 1.5
                [message] = receive(receiver, 1)
                assert text(message) == "next window"
                receiver.complete_message(message)


def test_an_expired_message_is_dead_lettered_with_ttl_expired_exception(make_bus):
    bus = make_bus(queues=(QueueSettings(QUEUE, default_ttl_s=60, dead_letter_on_expiration=True),
                           QueueSettings(OTHER_QUEUE, default_ttl_s=0.3)))
    with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
        with sender(client) as out, sender(client, OTHER_QUEUE) as other:
            # The sender's time to live applies when shorter than the queue's default; the queue's caps it otherwise.
            out.send_messages(ServiceBusMessage("stale", message_id="e-1", time_to_live=datetime.timedelta(seconds=1)))
            out.send_messages(ServiceBusMessage("fresh", message_id="e-2", time_to_live=datetime.timedelta(days=30)))
            other.send_messages(ServiceBusMessage("dropped"))
        wait_for(lambda: queue_stats(bus)["deadLettered"] == 1 and queue_stats(bus, OTHER_QUEUE)["expired"] == 1)
        assert queue_stats(bus, OTHER_QUEUE)["deadLettered"] == 0  # dead-lettering on expiry is off there
        with quick_receiver(client, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            [dead] = receive(dlq, 1)
            assert (text(dead), dead.dead_letter_reason) == ("stale", "TTLExpiredException")
            assert dead.dead_letter_error_description == "The message expired and was dead lettered."
            dlq.complete_message(dead)
        with quick_receiver(client) as receiver:
            [message] = receive(receiver, 1)
            assert (text(message), message.time_to_live) == ("fresh", datetime.timedelta(seconds=60))
            receiver.complete_message(message)


def test_a_message_over_256_kb_is_refused(bus, client):
    with sender(client) as out:
        batch = out.create_message_batch()  # sized by the limit the link announces (Standard tier: 256 KB)
        with pytest.raises(MessageSizeExceededError):
            batch.add_message(ServiceBusMessage(b"x" * (256 * 1024)))
        with pytest.raises(MessageSizeExceededError):  # a single message is not checked by the client: the broker
            out.send_messages(ServiceBusMessage(b"x" * (256 * 1024 + 1)))
        out.send_messages(ServiceBusMessage(b"x" * (200 * 1024)))
    assert (queue_stats(bus)["sent"], queue_stats(bus)["active"]) == (1, 1)


def test_the_declared_queues_are_the_deployments():
    declared = load_definition()
    assert {s: q.name for s, q in declared.items()} == {
        "GROUP_SYNC_QUEUE": "group-sync", "ENROLLMENT_QUEUE": "enrollment-email",
        "CHANGE_QUEUE": "directory-changes", "ALERT_QUEUE": "admin-alerts", "WEBHOOK_QUEUE": "webhook-deliveries"}
    for queue in declared.values():
        assert (queue.lock_duration_s, queue.max_delivery_count, queue.dead_letter_on_expiration,
                queue.duplicate_detection_window_s, queue.max_message_bytes) == (300, 10, True, 600, 256 * 1024)
    assert declared["GROUP_SYNC_QUEUE"].default_ttl_s == 86400
    bus = LocalServiceBus.declared({"GROUP_SYNC_QUEUE": "gs-test"}, lock_duration_s=5, max_delivery_count=3)
    settings = bus.queue_settings()
    assert set(settings) == {"gs-test", "enrollment-email", "directory-changes", "admin-alerts", "webhook-deliveries"}
    assert (settings["gs-test"].lock_duration_s, settings["gs-test"].max_delivery_count) == (5, 3)
    assert settings["gs-test"].duplicate_detection_window_s == 600


# -- fault injection and administration ----------------------------------------------------


def test_duplicate_deliveries_fault_redelivers_completed_messages_once(bus, client):
    bus.set_faults(duplicate_deliveries=True)
    with sender(client) as out, quick_receiver(client) as receiver:
        out.send_messages(ServiceBusMessage("pay once", message_id="dup-1"))
        [original] = receive(receiver, 1)
        receiver.complete_message(original)
        [duplicate] = receive(receiver, 1)
        assert (text(duplicate), duplicate.message_id, duplicate.delivery_count) == ("pay once", "dup-1", 0)
        assert duplicate.sequence_number != original.sequence_number
        receiver.complete_message(duplicate)
        assert queue_stats(bus)["active"] == 0  # a duplicate is not duplicated again

        bus.set_faults()
        out.send_messages(ServiceBusMessage("once", message_id="n-1"))
        [message] = receive(receiver, 1)
        receiver.complete_message(message)
        assert queue_stats(bus)["active"] == 0
    assert queue_stats(bus)["completed"] == 3
    with pytest.raises(ValueError):
        bus.set_faults(no_such_fault=True)


def test_stats_list_queues_and_purge_resets_them(bus, client):
    empty = {
        "active": 0, "locked": 0, "deadLettered": 0, "scheduled": 0,
        "sent": 0, "completed": 0, "abandoned": 0, "deliveries": 0, "duplicates": 0, "expired": 0,
    }
    assert bus.stats() == {"queues": {OTHER_QUEUE: empty, QUEUE: empty}}

    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    for queue in (QUEUE, OTHER_QUEUE):
        with sender(client, queue) as out:
            out.send_messages([ServiceBusMessage("a"), ServiceBusMessage("b")])
            out.schedule_messages(ServiceBusMessage("later"), later)
    with client.get_queue_receiver(QUEUE) as receiver:
        [message] = receive(receiver, 1)
        receiver.dead_letter_message(message, reason="test")
    assert queue_stats(bus) == {**empty, "active": 1, "deadLettered": 1, "scheduled": 1, "sent": 3, "deliveries": 1}

    bus.purge(QUEUE)
    assert queue_stats(bus) == empty
    assert queue_stats(bus, OTHER_QUEUE)["active"] == 2
    bus.purge()
    assert bus.stats() == {"queues": {OTHER_QUEUE: empty, QUEUE: empty}}

    # Names are case-insensitive.
    with sender(client, QUEUE.upper()) as out:
        out.send_messages(ServiceBusMessage("hello"))
    assert queue_stats(bus)["active"] == 1


def test_admin_calls_are_safe_from_other_threads(bus, client):
    errors: list[BaseException] = []

    def poll() -> None:
        try:
            for _ in range(50):
                bus.stats()
                bus.set_faults()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for poller in pollers:
        poller.start()
    with sender(client) as out:
        for i in range(20):
            out.send_messages(ServiceBusMessage(f"m{i}"))
    for poller in pollers:
        poller.join(10)
    assert errors == []
    assert queue_stats(bus)["sent"] == 20


def test_start_stop_cycle_frees_the_thread_and_the_port():
    bus = LocalServiceBus().start()
    port = bus.port
    thread_name = f"local-servicebus-{port}"
    assert any(t.name == thread_name for t in threading.enumerate())
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    bus.stop()
    bus.stop()  # idempotent
    assert not any(t.name == thread_name for t in threading.enumerate())
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free again
    assert bus.stats()["queues"] == {}  # still answers when stopped


def test_stop_disconnects_clients(make_bus):
    bus = make_bus()
    with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
        with sender(client) as out:
            out.send_messages(ServiceBusMessage("before"))
            bus.stop()
            with pytest.raises(ServiceBusError):
                out.send_messages(ServiceBusMessage("after"))


def test_command_line_prints_ready_and_exits_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "local.broker", "--port", "0", "--queue", QUEUE],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("READY ")
        connection_string = json.loads(line.removeprefix("READY "))["serviceBus"]
        assert connection_string.endswith(";UseDevelopmentEmulator=true")
        with ServiceBusClient.from_connection_string(connection_string) as client:
            with sender(client) as out:
                out.send_messages(ServiceBusMessage("via cli"))
            with quick_receiver(client) as receiver:
                [message] = receive(receiver, 1)
                assert text(message) == "via cli"
                receiver.complete_message(message)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- aio client -------------------------------------------------------------------------------


async def test_aio_batch_with_prefetching_competing_receivers(bus):
    async with AsyncServiceBusClient.from_connection_string(bus.connection_string) as client:
        async with client.get_queue_sender(QUEUE, keep_alive=0) as out:
            batch = await out.create_message_batch()
            for i in range(30):
                batch.add_message(ServiceBusMessage(f"a{i}", application_properties={"i": i}))
            await out.send_messages(batch)

        async def consume(receiver) -> list[str]:
            seen = []
            while messages := await receiver.receive_messages(max_message_count=5, max_wait_time=0.5):
                for message in messages:
                    seen.append(text(message))
                    await receiver.complete_message(message)
            return seen

        async with client.get_queue_receiver(QUEUE, prefetch_count=10, keep_alive=0) as first, \
                client.get_queue_receiver(QUEUE, prefetch_count=10, keep_alive=0) as second:
            seen_first, seen_second = await asyncio.gather(consume(first), consume(second))

    assert not set(seen_first) & set(seen_second)
    assert sorted(seen_first + seen_second) == sorted(f"a{i}" for i in range(30))
    stats = queue_stats(bus)
    assert (stats["completed"], stats["active"], stats["locked"]) == (30, 0, 0)


async def test_aio_settlement_operations(bus):
    async with AsyncServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
        async with client.get_queue_sender(QUEUE, keep_alive=0) as out:
            await out.send_messages([ServiceBusMessage("x", message_id="x"), ServiceBusMessage("y", message_id="y")])
        async with client.get_queue_receiver(QUEUE) as receiver:
            x, y = await receive_async(receiver, 2)
            before = x.locked_until_utc
            await asyncio.sleep(0.01)
            assert await receiver.renew_message_lock(x) > before
            await receiver.abandon_message(x)
            await receiver.dead_letter_message(y, reason="bad", error_description="really bad")
            [x_again] = await receive_async(receiver, 1)
            assert (x_again.message_id, x_again.delivery_count) == ("x", 1)
            await receiver.complete_message(x_again)
            assert await receiver.peek_messages(5, sequence_number=1) == []
        async with client.get_queue_receiver(
            QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER, prefetch_count=1, keep_alive=0
        ) as dlq:
            [dead] = await receive_async(dlq, 1)
            assert (dead.message_id, dead.dead_letter_reason, dead.dead_letter_error_description) == (
                "y", "bad", "really bad"
            )
            await dlq.complete_message(dead)
    stats = queue_stats(bus)
    assert (stats["completed"], stats["abandoned"], stats["deadLettered"]) == (1, 1, 0)


async def test_aio_concurrent_renewals_and_settlements_on_one_receiver_keep_the_connection(make_bus):
    """Regression: the aio client gives transfers sent from concurrent coroutines stale delivery-ids (it increments
    the session's next id only after the awaited write). proton took that for a sequencing error and closed the
    connection, so lock renewals failed with "Management Operation error occurred." and the receiver shut down.
    The function host works this way: an AutoLockRenewer per message, settling from several tasks, receiving
    meanwhile, one prefetch-0 receiver."""
    bus = make_bus(lock_duration_s=2.0)
    async with AsyncServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as client:
        async with client.get_queue_sender(QUEUE, keep_alive=0) as out:
            await out.send_messages([ServiceBusMessage(f"r{i}") for i in range(8)])
        async with client.get_queue_receiver(QUEUE, prefetch_count=0) as receiver:
            messages = await receive_async(receiver, 8)
            assert len(messages) == 8
            for _ in range(3):  # 2.4 s in all: past the lock duration, so only renewed locks hold
                await asyncio.sleep(0.8)
                before = [m.locked_until_utc for m in messages]
                expiries = await asyncio.gather(*(receiver.renew_message_lock(m) for m in messages))
                assert all(new > old for new, old in zip(expiries, before))
            first, rest = messages[:4], messages[4:]
            *settled, received = await asyncio.gather(
                *(receiver.complete_message(m) for m in first),
                *(receiver.renew_message_lock(m) for m in rest),
                receiver.receive_messages(max_message_count=1, max_wait_time=0.5),
            )
            assert settled[:4] == [None] * 4 and all(isinstance(t, datetime.datetime) for t in settled[4:])
            assert received == []  # every message is still locked
            # A renewal racing its message's settlement: renewed, or lock lost (410) if the settlement came first.
            outcomes = await asyncio.gather(
                *(call(m) for m in rest for call in (receiver.complete_message, receiver.renew_message_lock)),
                return_exceptions=True,
            )
            assert outcomes[0::2] == [None] * 4
            assert all(isinstance(o, (datetime.datetime, MessageLockLostError)) for o in outcomes[1::2]), outcomes
    stats = queue_stats(bus)
    assert (stats["completed"], stats["deliveries"], stats["active"], stats["locked"]) == (8, 8, 0, 0)


# -- frame filter ---------------------------------------------------------------------------------


def test_transfers_with_stale_delivery_ids_reach_proton_renumbered():
    client = Connection()
    client_transport = Transport()
    client_transport.bind(client)
    client.open()
    session = client.session()
    session.open()
    link = session.sender("s")
    link.target.address = QUEUE
    link.open()
    opening = bytes(client_transport.peek(client_transport.pending()))

    def frame(code: int, fields: list, payload: bytes = b"") -> bytes:  # on channel 0
        body = encode_value(Described(ulong(code), fields)) + payload
        return (8 + len(body)).to_bytes(4, "big") + b"\x02\x00\x00\x00" + body

    def transfer(delivery_id: int, tag: bytes, more: bool, payload: bytes) -> bytes:
        return frame(0x14, [uint(0), uint(delivery_id), tag, uint(0), False, more], payload)

    # What two coroutines sending at once produce: a second delivery with the first one's id, and a continuation
    # and a third delivery with ids read before or after another coroutine's increment.
    stream = b"".join([
        transfer(0, b"a", False, b"first"),
        transfer(0, b"b", True, b"sec"),
        transfer(2, b"b", False, b"ond"),
        transfer(1, b"c", False, b"third"),
    ])

    def serve(filtered: bool) -> tuple[Transport, Link, IncomingFrames]:
        server = Connection()
        transport = Transport(Transport.SERVER)
        transport.bind(server)
        frames = IncomingFrames()

        def push(data: bytes) -> None:
            if not filtered:
                transport.push(data)
                return
            for i in range(0, len(data), 7):  # in arbitrary socket-sized pieces
                frames.feed(data[i : i + 7])
            transport.push(frames.take(frames.pending))

        push(opening)
        server.open()
        server.session_head(0).open()
        receiver = server.link_head(0)
        receiver.open()
        receiver.flow(10)
        transport.pop(transport.pending())
        try:
            push(stream)
        except TransportException:
            pass
        return transport, receiver, frames

    transport, _, _ = serve(filtered=False)
    assert transport.condition.name == "amqp:session:invalid-field"  # what closed the client's connection

    transport, receiver, frames = serve(filtered=True)
    assert transport.condition is None and frames.renumbered == 3
    received = []
    while (delivery := receiver.current) is not None:
        received.append((delivery.tag, bytes(receiver.recv(delivery.pending))))
        receiver.advance()
    assert received == [("a", b"first"), ("b", b"second"), ("c", b"third")]

    # The client's close races too: a link's detach after its session's end ("no such channel" for proton).
    frames.feed(frame(0x17, []) + frame(0x16, [uint(0), True]))
    transport.push(frames.take(frames.pending))
    assert transport.condition is None


# -- codec ------------------------------------------------------------------------------------


def test_plain_messages_are_not_mistaken_for_batches():
    encoded = bytes(Message(body=b'{"not": "amqp"}', id="m", inferred=True).encode())
    [message] = unpack_transfer(encoded)
    assert message.body_codes == (0x75,)


def test_a_batch_envelope_is_split_into_its_messages():
    inner = [bytes(Message(body=f"m{i}".encode(), properties={"i": i}, inferred=True).encode()) for i in range(3)]
    # A batch envelope: one data section per encoded message.
    envelope = b"".join(b"\x00\x53\x75\xb0" + len(m).to_bytes(4, "big") + m for m in inner)
    messages = unpack_transfer(envelope)
    assert [m.application_properties_map for m in messages] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert all(isinstance(m, EncodedMessage) for m in messages)
