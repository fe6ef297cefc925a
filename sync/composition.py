"""The one place that builds adapters from settings. Nothing here runs at import; adapters are built on first use."""
from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from .concurrency import KeyedLocks
from .model import utcnow
from .ports import Directory, Groups, JobQueue, Runs, SignIns, Subscriptions, Users
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
    sign_ins: SignIns | None = None
    mail_sender: Any = None
    clock: Callable[[], datetime] = utcnow
    recent: RecentUsers = field(default_factory=RecentUsers)
    finalizing: KeyedLocks = field(default_factory=KeyedLocks)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


def build(settings: Settings) -> Services:
    """Real adapters for these settings (Table Storage, Microsoft Graph, Service Bus, the mail sender)."""
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
            settings.service_bus_connection_string, settings.group_sync_queue, settings.enrollment_queue)
    else:
        queue = ServiceBusQueue.from_namespace(
            settings.service_bus_namespace, identity(), settings.group_sync_queue, settings.enrollment_queue)
    directory = GraphDirectory(settings.graph_base_url, graph_credential_factory(settings),
                               allowed_hosts=_graph_hosts(settings), concurrency=settings.graph_concurrency,
                               max_tenants=settings.graph_tenant_cache)
    services = Services(
        settings=settings,
        subscriptions=store.subscriptions,
        runs=store.runs,
        users=store.users,
        groups=store.groups,
        directory=directory,
        queue=queue,
        sign_ins=OidcSignIns(settings.authority_host, settings.graph_client_id),
        mail_sender=_mail_sender(settings),
    )
    services.store = store  # type: ignore[attr-defined]  # benchmarks read its write counters
    services.closers += [store.close, queue.close, directory.close]
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
    """A function giving an app-only credential for a customer tenant id, as the settings choose."""

    def for_tenant(tenant_id: str) -> Any:
        if settings.graph_credential == "secret":
            from azure.identity.aio import ClientSecretCredential

            return ClientSecretCredential(tenant_id, settings.graph_client_id, settings.graph_client_secret,
                                          authority=settings.authority_host)
        if settings.graph_credential == "certificate":
            from azure.identity.aio import CertificateCredential

            return CertificateCredential(tenant_id, settings.graph_client_id, settings.graph_certificate_path,
                                         authority=settings.authority_host)
        # managed_identity: a federated credential on the app registration trusts our managed identity, so no
        # secret is stored anywhere. The assertion is the identity's token for the token-exchange audience.
        return FederatedIdentityCredential(tenant_id, settings.graph_client_id, settings.authority_host,
                                           settings.managed_identity_client_id)

    return for_tenant


class FederatedIdentityCredential:
    """App-only tokens for a customer tenant, proven by our managed identity instead of a stored secret."""

    EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"

    def __init__(self, tenant_id: str, client_id: str, authority: str, identity_client_id: str | None) -> None:
        from azure.identity.aio import (
            ClientAssertionCredential,
            ManagedIdentityCredential,
        )

        self._managed = ManagedIdentityCredential(client_id=identity_client_id)
        self._assertion = ""
        # ClientAssertionCredential calls its function synchronously; get_token refreshes the assertion first.
        self._inner = ClientAssertionCredential(tenant_id, client_id, lambda: self._assertion, authority=authority)

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self._assertion = (await self._managed.get_token(self.EXCHANGE_SCOPE)).token
        return await self._inner.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        await self._inner.close()
        await self._managed.close()


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
