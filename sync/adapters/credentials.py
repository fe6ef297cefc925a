"""azure-identity adapter: the app-only credential of each customer tenant, as the settings choose.

Every tenant needs a credential of its own (the tenant is part of the token request and of the token cache), but
they need not each hold a connection: one aiohttp session (a bounded keep-alive pool) carries every tenant's token
requests, and one managed-identity credential provides the federated assertion for all of them. With a session
per credential, each kept an idle TLS connection to the authority: about 340 KB per tenant, 400 MB for 1,000
tenants; shared, about 33.5 KB per tenant, 101 MB for 1,000 (benchmarks/tenants.py, figures in benchmarks/README.md).
"""
from __future__ import annotations

from typing import Any

from ..settings import Settings

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


class TenantCredentials:
    """``for_tenant(tenant_id)`` gives a credential for Graph in that tenant; ``close()`` frees what they share."""

    def __init__(self, settings: Settings, *, shared_transport: bool = True) -> None:
        self._settings = settings
        self._shared = shared_transport
        self._session: Any = None
        self._transport: Any = None
        self._managed: Any = None

    def _transport_kwargs(self) -> dict[str, Any]:
        if not self._shared:
            return {}
        if self._transport is None:  # created on first use, inside the running loop: building connects nothing
            import aiohttp
            from azure.core.pipeline.transport import AioHttpTransport

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, limit_per_host=8, keepalive_timeout=30),
                trust_env=True, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
            self._transport = AioHttpTransport(session=self._session, session_owner=False)
        return {"transport": self._transport}

    def for_tenant(self, tenant_id: str) -> Any:
        s = self._settings
        if s.graph_credential == "secret":
            from azure.identity.aio import ClientSecretCredential

            return ClientSecretCredential(tenant_id, s.graph_client_id, s.graph_client_secret,
                                          authority=s.authority_host, **self._transport_kwargs())
        if s.graph_credential == "certificate":
            from azure.identity.aio import CertificateCredential

            return CertificateCredential(tenant_id, s.graph_client_id, s.graph_certificate_path,
                                         authority=s.authority_host, **self._transport_kwargs())
        # managed_identity: a federated credential on the app registration trusts our managed identity, so no
        # secret is stored anywhere. The assertion is the identity's token for the token-exchange audience.
        if self._managed is None:
            from azure.identity.aio import ManagedIdentityCredential

            self._managed = ManagedIdentityCredential(client_id=s.managed_identity_client_id)
        return FederatedIdentityCredential(tenant_id, s.graph_client_id, s.authority_host, self._managed,
                                           **self._transport_kwargs())

    async def close(self) -> None:
        if self._managed is not None:
            await self._managed.close()
            self._managed = None
        if self._session is not None:
            await self._session.close()
            self._session = self._transport = None


class FederatedIdentityCredential:
    """App-only tokens for a customer tenant, proven by our managed identity instead of a stored secret."""

    EXCHANGE_SCOPE = "api://AzureADTokenExchange/.default"

    def __init__(self, tenant_id: str, client_id: str, authority: str, managed: Any, **kwargs: Any) -> None:
        from azure.identity.aio import ClientAssertionCredential

        self._managed = managed  # shared by every tenant's credential; closed by TenantCredentials
        self._assertion = ""
        # ClientAssertionCredential calls its function synchronously; get_token refreshes the assertion first.
        self._inner = ClientAssertionCredential(tenant_id, client_id, lambda: self._assertion, authority=authority,
                                                **kwargs)

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self._assertion = (await self._managed.get_token(self.EXCHANGE_SCOPE)).token
        return await self._inner.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        await self._inner.close()
