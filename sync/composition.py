"""The one place that builds adapters from settings. Nothing here runs at import; adapters are built on first use."""
from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from .concurrency import KeyedLocks
from .model import utcnow
from .ports import (
    Alerts,
    Directory,
    DirectoryChangeFeed,
    DueReminders,
    EventLog,
    Groups,
    JobQueue,
    PendingInvitations,
    Runs,
    SignIns,
    Subscriptions,
    Users,
    Watches,
    Webhooks,
    WebhookSender,
)
from .preview import PreviewLedgers
from .recent import RecentUsers
from .settings import Settings


@dataclass
class Services:
    """Everything a use case may need, already wired."""

    settings: Settings
    subscriptions: Subscriptions
    runs: Runs
    users: Users
    groups: Groups
    directory: Directory
    queue: JobQueue
    changes: DirectoryChangeFeed | None = None
    watches: Watches | None = None
    sign_ins: SignIns | None = None
    mail_sender: Any = None
    alerts: Alerts | None = None
    invitations: PendingInvitations | None = None
    events: EventLog | None = None
    webhooks: Webhooks | None = None
    webhook_sender: WebhookSender | None = None
    reminders: DueReminders | None = None
    clock: Callable[[], datetime] = utcnow
    recent: RecentUsers = field(default_factory=RecentUsers)
    previews: PreviewLedgers = field(default_factory=PreviewLedgers)
    finalizing: KeyedLocks = field(default_factory=KeyedLocks)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


def build(settings: Settings) -> Services:
    """Real adapters for these settings (Table Storage, Microsoft Graph, Service Bus, the mail sender)."""
    from .adapters.alert_table import TableAlerts
    from .adapters.graph import GraphDirectory
    from .adapters.identity import OidcSignIns
    from .adapters.servicebus import ServiceBusQueue
    from .adapters.tables import TableStore

    identity = _identity(settings)
    if settings.tables_connection_string:
        store = TableStore.from_connection_string(settings.tables_connection_string, settings.table_prefix)
    else:
        store = TableStore.from_endpoint(settings.tables_endpoint, identity(), settings.table_prefix)
    if settings.service_bus_connection_string:
        queue = ServiceBusQueue.from_connection_string(
            settings.service_bus_connection_string, settings.group_sync_queue, settings.enrollment_queue,
            settings.change_queue, settings.alert_queue, settings.webhook_queue)
    else:
        queue = ServiceBusQueue.from_namespace(
            settings.service_bus_namespace, identity(), settings.group_sync_queue, settings.enrollment_queue,
            settings.change_queue, settings.alert_queue, settings.webhook_queue)
    from .adapters.credentials import TenantCredentials

    credentials = TenantCredentials(settings)
    directory = GraphDirectory(settings.graph_base_url, credentials.for_tenant,
                               allowed_hosts=_graph_hosts(settings), concurrency=settings.graph_concurrency,
                               tenant_concurrency=settings.graph_tenant_concurrency,
                               max_tenants=settings.graph_tenant_cache)
    from .adapters.graph_changes import GraphChangeFeed
    from .adapters.table_events import TableEvents
    from .adapters.table_invitations import TableInvitations
    from .adapters.table_reminders import TableReminders
    from .adapters.table_watches import TableWatches
    from .adapters.table_webhooks import TableWebhooks
    from .adapters.webhook_http import HttpWebhookSender
    from .events import EventedUsers

    services = Services(
        settings=settings,
        subscriptions=store.subscriptions,
        runs=store.runs,
        users=store.users,
        groups=store.groups,
        directory=directory,
        queue=queue,
        changes=GraphChangeFeed(directory, settings.graph_base_url),
        watches=TableWatches(store),
        sign_ins=OidcSignIns(settings.authority_host, settings.graph_client_id),
        mail_sender=_mail_sender(settings),
        alerts=TableAlerts(store),
        invitations=TableInvitations(store),
        events=TableEvents(store),
        webhooks=TableWebhooks(store),
        webhook_sender=HttpWebhookSender(),
        reminders=TableReminders(store),
    )
    services.users = EventedUsers(store.users, services)  # type: ignore[assignment]  # one event per accepted write
    services.store = store  # type: ignore[attr-defined]  # benchmarks read its write counters
    services.closers += [store.close, queue.close, credentials.close, directory.close]
    return services


def _identity(settings: Settings) -> Callable[[], Any]:
    def make() -> Any:
        from azure.identity.aio import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)

    return make


def _graph_hosts(settings: Settings) -> list[str]:
    from urllib.parse import urlsplit

    return [urlsplit(settings.graph_base_url).hostname or "graph.microsoft.com"]


def graph_credential_factory(settings: Settings) -> Callable[[str], Any]:
    """A function giving an app-only credential for a customer tenant id, as the settings choose (one connection
    each; ``build`` shares one among all tenants instead, see ``adapters/credentials.py``)."""
    from .adapters.credentials import TenantCredentials

    return TenantCredentials(settings, shared_transport=False).for_tenant


def _mail_sender(settings: Settings) -> Any:
    if settings.mail is None:
        return None
    from notifications.senders import build_sender

    return build_sender(settings.mail)


_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Services]" = weakref.WeakKeyDictionary()
_override: Services | None = None


async def services() -> Services:
    """The services of this event loop, built from the environment on first use (async clients are loop-bound)."""
    if _override is not None:
        return _override
    loop = asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = build(Settings.from_env())
    return found


def override(replacement: Services | None) -> None:
    """Make every trigger use ``replacement`` (tests, the dev host); None restores building from settings."""
    global _override
    _override = replacement


async def reset() -> None:
    """Close and forget the services of the current loop (tests that change settings between cases)."""
    loop = asyncio.get_running_loop()
    found = _by_loop.pop(loop, None)
    if found is not None:
        await found.close()
