"""Service Bus adapter (azure-servicebus, async): the only module that sends messages between the functions."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusConnectionError,
    ServiceBusError,
)

from ..alert_model import AlertJob
from ..errors import SettingsError, Transient
from ..event_model import WebhookJob
from ..logs import get_logger
from ..model import ChangeJob, EnrollmentJob, GroupJob
from ..ports import JobQueue

log = get_logger(__name__)


class ServiceBusQueue(JobQueue):
    """Sends group jobs, enrollment jobs and admin alerts, each batch as few AMQP transfers as fit."""

    def __init__(self, client: ServiceBusClient, group_queue: str, enrollment_queue: str,
                 change_queue: str = "directory-changes", alert_queue: str = "admin-alerts",
                 webhook_queue: str = "webhook-deliveries") -> None:
        self._client = client
        self._group_queue = group_queue
        self._enrollment_queue = enrollment_queue
        self._change_queue = change_queue
        self._alert_queue = alert_queue
        self._webhook_queue = webhook_queue
        self._senders: dict[str, ServiceBusSender] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.sent = 0

    @classmethod
    def from_connection_string(cls, connection_string: str, group_queue: str, enrollment_queue: str,
                               change_queue: str = "directory-changes", alert_queue: str = "admin-alerts",
                               webhook_queue: str = "webhook-deliveries", **client_options: Any) -> "ServiceBusQueue":
        return cls(ServiceBusClient.from_connection_string(connection_string, **client_options), group_queue,
                   enrollment_queue, change_queue, alert_queue, webhook_queue)

    @classmethod
    def from_namespace(cls, namespace: str, credential: Any, group_queue: str, enrollment_queue: str,
                       change_queue: str = "directory-changes", alert_queue: str = "admin-alerts",
                       webhook_queue: str = "webhook-deliveries") -> "ServiceBusQueue":
        return cls(ServiceBusClient(namespace, credential), group_queue, enrollment_queue, change_queue, alert_queue,
                   webhook_queue)

    async def send_group_jobs(self, jobs: list[GroupJob], *, delay_s: float = 0) -> None:
        await self._post(self._group_queue, "group-sync", jobs, delay_s,
                         lambda job: {"runId": job.run_id})

    async def send_enrollment_jobs(self, jobs: list[EnrollmentJob], *, delay_s: float = 0) -> None:
        await self._post(self._enrollment_queue, "enrollment-email", jobs, delay_s)

    async def send_change_jobs(self, jobs: list[ChangeJob], *, delay_s: float = 0) -> None:
        await self._post(self._change_queue, "directory-changes", jobs, delay_s)

    async def send_alert_jobs(self, jobs: list[AlertJob], *, delay_s: float = 0) -> None:
        await self._post(self._alert_queue, "admin-alert", jobs, delay_s)

    async def send_webhook_jobs(self, jobs: list[WebhookJob], *, delay_s: float = 0) -> None:
        await self._post(self._webhook_queue, "webhook-delivery", jobs, delay_s)

    async def _post(self, queue: str, subject: str, jobs: list[Any], delay_s: float,
                    properties: Callable[[Any], dict[str, str]] | None = None) -> None:
        """One message per job (its JSON), now or ``delay_s`` later. ``message_id`` is the job's: the queues detect
        duplicates, so a job re-queued or rescheduled must carry an id of its own (see infra/README.md)."""
        messages = [ServiceBusMessage(job.to_json(), message_id=job.message_id, content_type="application/json",
                                      subject=subject, application_properties=properties(job) if properties else None)
                    for job in jobs]
        if delay_s > 0:
            await self._schedule(queue, messages, delay_s)
        else:
            await self._send(queue, messages)

    async def _send(self, queue: str, messages: list[ServiceBusMessage]) -> None:
        if not messages:
            return
        async with self._sending(queue) as sender:
            batch = await sender.create_message_batch()
            for message in messages:
                try:
                    batch.add_message(message)
                except MessageSizeExceededError:
                    await sender.send_messages(batch)
                    batch = await sender.create_message_batch()
                    batch.add_message(message)
            await sender.send_messages(batch)
        self.sent += len(messages)

    async def _schedule(self, queue: str, messages: list[ServiceBusMessage], delay_s: float) -> None:
        at = datetime.now(timezone.utc) + timedelta(seconds=delay_s)
        async with self._sending(queue) as sender:
            await sender.schedule_messages(messages, at)
        self.sent += len(messages)

    @asynccontextmanager
    async def _sending(self, queue: str) -> AsyncIterator[ServiceBusSender]:
        """The queue's sender, one operation at a time (the async sender is not safe to open concurrently)."""
        async with self._locks.setdefault(queue, asyncio.Lock()):
            sender = self._senders.get(queue)
            if sender is None:
                sender = self._senders[queue] = self._client.get_queue_sender(queue)
            try:
                yield sender
            except MessagingEntityNotFoundError as exc:
                # Service Bus creates no queue on first use: a name the deployment did not declare is a setting
                # to fix, not a failure to retry.
                self._senders.pop(queue, None)
                await _quietly_close(sender)
                raise SettingsError(f"the Service Bus queue '{queue}' does not exist in the namespace; the queue "
                                    "settings must name the queues of infra/queues.json") from exc
            except (ServiceBusConnectionError, ServiceBusError, asyncio.TimeoutError) as exc:
                # The sender may be broken now; the next call opens a fresh link.
                self._senders.pop(queue, None)
                await _quietly_close(sender)
                raise Transient(f"Service Bus send to {queue} failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        for sender in list(self._senders.values()):
            await _quietly_close(sender)
        self._senders.clear()
        await self._client.close()


async def _quietly_close(sender: ServiceBusSender) -> None:
    try:
        await sender.close()
    except (ServiceBusError, OSError, asyncio.TimeoutError):
        log.warning("closing a Service Bus sender failed", exc_info=True)
