"""The Service Bus adapter against the local broker, read back with the real azure-servicebus client."""
import asyncio
import json

import pytest
from azure.servicebus.aio import ServiceBusClient

from local.broker import LocalServiceBus
from sync.adapters.servicebus import ServiceBusQueue
from sync.alert_model import AlertJob
from sync.errors import SettingsError, Transient
from sync.model import EnrollmentJob, GroupJob


@pytest.fixture
def bus():
    server = LocalServiceBus.declared()  # the queues of infra/queues.json, duplicate detection included
    server.start()
    yield server
    server.stop()


async def receive_all(connection: str, queue: str, expected: int) -> list:
    got = []
    async with ServiceBusClient.from_connection_string(connection) as client:
        async with client.get_queue_receiver(queue) as receiver:
            while len(got) < expected:
                batch = await receiver.receive_messages(max_message_count=100, max_wait_time=2)
                if not batch:
                    break
                for m in batch:
                    await receiver.complete_message(m)
                got += batch
    return got


async def test_one_message_per_group_with_stable_ids(bus):
    queue = ServiceBusQueue.from_connection_string(bus.connection_string, "group-sync", "enrollment-email")
    jobs = [GroupJob("org-a", "sub-1", "run-1", f"group-{i:03d}") for i in range(250)]
    await queue.send_group_jobs(jobs)
    await queue.close()
    received = await receive_all(bus.connection_string, "group-sync", 250)
    assert sorted(m.message_id for m in received) == sorted(f"run-1:group-{i:03d}:0" for i in range(250))
    first = next(m for m in received if m.message_id == "run-1:group-007:0")
    assert GroupJob.from_json(b"".join(first.body)) == jobs[7]
    assert first.content_type == "application/json"
    assert bus.stats()["queues"]["group-sync"]["sent"] == 250


async def test_concurrent_senders_share_one_link_safely(bus):
    queue = ServiceBusQueue.from_connection_string(bus.connection_string, "group-sync", "enrollment-email")
    await asyncio.gather(*(queue.send_enrollment_jobs([EnrollmentJob("org-a", f"user-{i}", "run-1")]) for i in range(20)))
    await queue.close()
    received = await receive_all(bus.connection_string, "enrollment-email", 20)
    assert sorted(json.loads(b"".join(m.body))["userId"] for m in received) == sorted(f"user-{i}" for i in range(20))
    assert {m.message_id for m in received} == {f"enroll:org-a:user-{i}" for i in range(20)}


async def test_unreachable_namespace_is_transient():
    queue = ServiceBusQueue.from_connection_string(
        "Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=local;SharedAccessKey=local;UseDevelopmentEmulator=true",
        "group-sync", "enrollment-email", retry_total=0)
    with pytest.raises(Transient):
        await asyncio.wait_for(queue.send_group_jobs([GroupJob("o", "s", "r", "g")]), timeout=60)
    await queue.close()


async def test_a_delayed_invitation_is_scheduled_not_sent(bus):
    queue = ServiceBusQueue.from_connection_string(bus.connection_string, "group-sync", "enrollment-email")
    await queue.send_enrollment_jobs([EnrollmentJob("org-a", "user-1", "run-1", attempt=2)], delay_s=600)
    await queue.close()
    stats = bus.stats()["queues"]["enrollment-email"]
    assert (stats["scheduled"], stats["active"]) == (1, 0)


async def test_alerts_go_to_their_own_queue_with_short_stable_ids(bus):
    queue = ServiceBusQueue.from_connection_string(bus.connection_string, "group-sync", "enrollment-email", "admin-alerts")
    job = AlertJob("o" * 256, "sub-1", "run:8204230000000-abcd:failed")
    await queue.send_alert_jobs([job])
    await queue.send_alert_jobs([AlertJob("o", "s", "consent:0", attempt=1)], delay_s=600)
    await queue.close()
    [received] = await receive_all(bus.connection_string, "admin-alerts", 1)
    assert received.message_id == job.message_id and len(job.message_id) <= 128
    assert AlertJob.from_json(b"".join(received.body)) == job
    stats = bus.stats()["queues"]
    assert stats["admin-alerts"]["scheduled"] == 1 and stats["group-sync"]["sent"] == stats["enrollment-email"]["sent"] == 0


async def test_a_requeued_invitation_is_delivered_where_its_first_id_is_dropped(bus):
    queue = ServiceBusQueue.from_connection_string(bus.connection_string, "group-sync", "enrollment-email")
    first = EnrollmentJob("org-a", "user-1", "run-1")
    await queue.send_enrollment_jobs([first])
    [message] = await receive_all(bus.connection_string, "enrollment-email", 1)  # the mailer took it (and died)
    await queue.send_enrollment_jobs([EnrollmentJob("org-a", "user-1", "run-2")])  # the old re-queue: dropped
    requeued = EnrollmentJob("org-a", "user-1", "run-2", tag="requeue:run-2")
    await queue.send_enrollment_jobs([requeued], delay_s=0)
    await queue.send_enrollment_jobs([EnrollmentJob("org-a", "user-1", "run-2", attempt=1)], delay_s=600)  # a retry
    await queue.close()
    [again] = await receive_all(bus.connection_string, "enrollment-email", 1)
    assert (message.message_id, again.message_id) == ("enroll:org-a:user-1", "enroll:org-a:user-1:requeue:run-2")
    assert EnrollmentJob.from_json(b"".join(again.body)) == requeued
    stats = bus.stats()["queues"]["enrollment-email"]
    assert (stats["sent"], stats["duplicates"], stats["scheduled"]) == (4, 1, 1)


async def test_an_undeclared_queue_is_a_settings_error_not_a_transient_one(bus):
    queue = ServiceBusQueue.from_connection_string(bus.connection_string, "group-sync", "enrollment-mail", retry_total=0)
    with pytest.raises(SettingsError, match="enrollment-mail"):
        await queue.send_enrollment_jobs([EnrollmentJob("org-a", "user-1", "run-1")])
    await queue.close()
