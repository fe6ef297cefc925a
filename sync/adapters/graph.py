"""Microsoft Graph adapter (msgraph-sdk, imported lazily): the only module that talks to customer tenants.

Pages are fetched through msgraph-sdk's request builders and middleware (auth, Retry-After aware retries,
redirects), but read as raw JSON rather than deserialized into generated models: at 100,000 users the model
layer dominated the worker's CPU (see README, Performance).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

from ..errors import AuthorizationLost, InvalidInput, NotFound, Transient
from ..logs import get_logger
from ..model import DirectoryGroup, DirectoryUser, UserPage
from ..ports import Directory

log = get_logger(__name__)

USER_SELECT = [
    "id", "displayName", "userPrincipalName", "mail", "givenName", "surname", "accountEnabled",
    "onPremisesSamAccountName", "employeeId", "userType",
]
GROUP_SELECT = ["id", "displayName", "description", "mail"]
PAGE_SIZE = 999  # Graph's maximum for membership listings
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
# Token errors that mean the tenant no longer grants us access (rather than our own credential being wrong).
CONSENT_LOST_CODES = ("AADSTS65001", "AADSTS700016", "AADSTS7000112", "AADSTS90002", "AADSTS90072", "AADSTS50020", "AADSTS500011")


def escape_search(text: str) -> str:
    """Text safe inside ``$search="displayName:…"``: quotes and backslashes escaped as Graph expects."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


class StaticTokenCredential:
    """A credential that presents a fixed bearer token; settings accept it only for a loopback Graph URL."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> "StaticTokenCredential":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None


class GraphDirectory(Directory):
    """Reads groups and their transitive user members of any consented tenant."""

    def __init__(self, base_url: str, credential_for: Callable[[str], Any], *, timeout_s: float = 60.0,
                 allowed_hosts: list[str] | None = None, concurrency: int = 4) -> None:
        self._base_url = base_url.rstrip("/")
        self._credential_for = credential_for
        self._timeout_s = timeout_s
        self._allowed_hosts = allowed_hosts
        self._adapters: dict[str, Any] = {}
        self._credentials: list[Any] = []
        self._http: Any = None
        self.requests = 0
        self._limit = asyncio.Semaphore(concurrency)

    def _adapter(self, tenant_id: str) -> Any:
        adapter = self._adapters.get(tenant_id)
        if adapter is None:
            import httpx
            from kiota_authentication_azure.azure_identity_authentication_provider import (
                AzureIdentityAuthenticationProvider,
            )
            from msgraph import GraphRequestAdapter, GraphServiceClient
            from msgraph_core import GraphClientFactory

            if self._http is None:
                self._http = GraphClientFactory.create_with_default_middleware(
                    client=httpx.AsyncClient(timeout=httpx.Timeout(self._timeout_s, connect=10.0),
                                             limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))
                )
            credential = self._credential_for(tenant_id)
            self._credentials.append(credential)
            auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=self._allowed_hosts or [])
            adapter = GraphRequestAdapter(auth, client=self._http)
            GraphServiceClient(request_adapter=adapter)  # registers the JSON (de)serializers, so error bodies parse
            adapter.base_url = self._base_url
            self._adapters[tenant_id] = adapter
        return adapter

    async def search_groups(self, tenant_id: str, text: str, limit: int) -> list[DirectoryGroup]:
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder

        adapter = self._adapter(tenant_id)
        params = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
            search=f'"displayName:{escape_search(text)}"', select=GROUP_SELECT, top=limit, orderby=["displayName"],
        )
        config = RequestConfiguration(query_parameters=params)
        config.headers.add("ConsistencyLevel", "eventual")
        info = GroupsRequestBuilder(adapter, {}).to_get_request_information(config)
        data = await self._get_json(adapter, info, interactive=True)
        return [_group(item) for item in data.get("value", [])]

    async def get_groups(self, tenant_id: str, group_ids: list[str]) -> dict[str, DirectoryGroup]:
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.groups.item.group_item_request_builder import (
            GroupItemRequestBuilder,
        )

        adapter = self._adapter(tenant_id)

        async def one(gid: str) -> DirectoryGroup | None:
            params = GroupItemRequestBuilder.GroupItemRequestBuilderGetQueryParameters(select=GROUP_SELECT)
            info = GroupItemRequestBuilder(adapter, {"group%2Did": gid}).to_get_request_information(
                RequestConfiguration(query_parameters=params))
            try:
                return _group(await self._get_json(adapter, info, interactive=True))
            except (NotFound, InvalidInput):
                return None

        found = await asyncio.gather(*(one(gid) for gid in group_ids))
        return {g.id: g for g in found if g is not None}

    async def group_user_pages(self, tenant_id: str, group_id: str, next_link: str | None = None) -> AsyncIterator[UserPage]:
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.groups.item.transitive_members.graph_user.graph_user_request_builder import (
            GraphUserRequestBuilder,
        )

        adapter = self._adapter(tenant_id)
        if next_link:
            builder = GraphUserRequestBuilder(adapter, next_link)
            info = builder.to_get_request_information()
        else:
            params = GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(select=USER_SELECT, top=PAGE_SIZE)
            builder = GraphUserRequestBuilder(adapter, {"group%2Did": group_id})
            info = builder.to_get_request_information(RequestConfiguration(query_parameters=params))
        while True:
            data = await self._get_json(adapter, info)
            link = data.get("@odata.nextLink")
            yield UserPage([_user(item) for item in data.get("value", [])], link)
            if not link:
                return
            info = GraphUserRequestBuilder(adapter, link).to_get_request_information()

    async def _get_json(self, adapter: Any, info: Any, *, interactive: bool = False) -> dict[str, Any]:
        """One GET through the SDK's middleware; errors mapped onto our tree."""
        from azure.core.exceptions import ClientAuthenticationError
        from kiota_abstractions.api_error import APIError
        from kiota_http.middleware.options import RetryHandlerOption
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        if interactive:  # a person is waiting: fail fast with 503 rather than retry for a minute
            info.add_request_options([RetryHandlerOption(delay=1.0, max_retries=1)])
        try:
            async with self._limit:
                self.requests += 1
                raw = await adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
        except APIError as exc:
            raise _map_api_error(exc) from None
        except ClientAuthenticationError as exc:
            raise _map_token_error(exc) from None
        except Exception as exc:  # httpx transport errors arrive under many names; all mean "try again"
            import httpx

            if isinstance(exc, (httpx.TransportError, asyncio.TimeoutError)):
                raise Transient(f"Microsoft Graph unreachable: {type(exc).__name__}") from None
            raise
        return json.loads(raw) if raw else {}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        for credential in self._credentials:
            closer = getattr(credential, "close", None)
            if closer:
                await closer()


def _map_api_error(exc: Any) -> Exception:
    status = getattr(exc, "response_status_code", None) or 0
    code = ""
    error = getattr(exc, "error", None)
    if error is not None:
        code = getattr(error, "code", "") or ""
    headers = getattr(exc, "response_headers", None) or {}
    if status in (401, 403):
        return AuthorizationLost(f"Microsoft Graph refused access ({status} {code}); the tenant's admin consent was revoked")
    if status == 404:
        return NotFound(f"Microsoft Graph has no such object ({code or 'Request_ResourceNotFound'})", code="directory_object_not_found")
    if status == 400:
        return InvalidInput(f"Microsoft Graph rejected the query ({code})", code="directory_bad_request")
    if status == 429 or status >= 500:
        return Transient(f"Microsoft Graph answered {status}", retry_after=_retry_after(headers))
    return Transient(f"Microsoft Graph answered {status} {code}")


def _retry_after(headers: Any) -> float | None:
    try:
        for name, value in dict(headers).items():
            if str(name).lower() == "retry-after":
                return float(value[0] if isinstance(value, (list, tuple, set)) else value)
    except (TypeError, ValueError):
        return None
    return None


def _map_token_error(exc: Exception) -> Exception:
    text = str(exc)
    if any(code in text for code in CONSENT_LOST_CODES):
        return AuthorizationLost("the tenant no longer grants this app access (admin consent revoked or app removed)")
    # Our own credential is wrong or expired: an operator problem, not the customer's. Retry and alert.
    log.error("token acquisition failed for a tenant", extra={"error_type": type(exc).__name__})
    return Transient("could not obtain a token for Microsoft Graph", code="token_unavailable")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _user(item: dict[str, Any]) -> DirectoryUser:
    enabled = item.get("accountEnabled")
    return DirectoryUser(
        id=item["id"],
        display_name=_str(item.get("displayName")),
        user_principal_name=_str(item.get("userPrincipalName")),
        mail=_str(item.get("mail")),
        given_name=_str(item.get("givenName")),
        surname=_str(item.get("surname")),
        account_enabled=enabled if isinstance(enabled, bool) else None,
        on_premises_sam_account_name=_str(item.get("onPremisesSamAccountName")),
        employee_id=_str(item.get("employeeId")),
        user_type=_str(item.get("userType")),
    )


def _group(item: dict[str, Any]) -> DirectoryGroup:
    return DirectoryGroup(
        id=item["id"],
        display_name=_str(item.get("displayName")) or "",
        description=_str(item.get("description")),
        mail=_str(item.get("mail")),
    )
