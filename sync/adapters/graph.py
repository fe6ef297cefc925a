"""Microsoft Graph adapter (msgraph-sdk, imported lazily): the only module that talks to customer tenants.

Pages are fetched through msgraph-sdk's request builders and middleware (auth, Retry-After aware retries,
redirects), but read as raw JSON rather than deserialized into generated models: at 100,000 users the model
layer dominated the worker's CPU (see README, Performance).
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import OrderedDict
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator, Callable, Sequence

from ..attribute_mapping import flatten
from ..errors import (
    AuthorizationLost,
    CredentialInvalid,
    DeltaExpired,
    InvalidInput,
    NotFound,
    PageTokenExpired,
    PermissionMissing,
    Transient,
)
from ..logs import get_logger
from ..model import DirectoryGroup, DirectoryUser, UserPage, is_guid
from ..ports import Directory
from .graph_links import is_graph_link

log = get_logger(__name__)

USER_SELECT = [
    "id", "displayName", "userPrincipalName", "mail", "givenName", "surname", "accountEnabled",
    "onPremisesSamAccountName", "employeeId", "userType",
]


def user_select(extra: Sequence[str] = ()) -> list[str]:
    """The user properties a sync reads, and those an attribute mapping adds (each once, in a stable order): Graph
    returns exactly what ``$select`` names, and directory extensions and onPremisesExtensionAttributes only then."""
    return USER_SELECT + sorted(set(extra) - set(USER_SELECT))


GROUP_SELECT = ["id", "displayName", "description", "mail", "visibility"]
PAGE_SIZE = 999  # Graph's maximum for membership listings
RETIRED_GRACE_S = 120.0  # a dropped or evicted credential is closed this much later (requests may still use it)
INTERACTIVE_WAIT_S = 2.0  # a person waiting: one short wait, else 503 with Retry-After at once
WORKER_WAIT_S = 5.0  # a worker waits this long in-process; a longer Retry-After reschedules its message
WORKER_RETRIES = 3
IDS_PER_FILTER = 15  # Graph refuses an `in` list longer than this ("Too many child clauses … Max allowed: 15")
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
# What kiota's AzureIdentityAuthenticationProvider passes to get_token (CAE on by default): asking with the same
# options reads the token the SDK sends from the same cache entry.
KIOTA_TOKEN_OPTIONS = {"claims": None, "enable_cae": True}
# A delta link Graph no longer knows: older than its lifetime (seven days for directory objects) answers 400
# syncStateNotFound; a reset of the tenant's sync state 410 Gone (https://learn.microsoft.com/graph/delta-query-overview).
DELTA_EXPIRED_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
# The token endpoint's error_codes (https://learn.microsoft.com/entra/identity-platform/reference-error-codes):
# the tenant does not grant us access — 7000229 no service principal (the app was deleted from the tenant),
# 7000112 app disabled, 90002 tenant not found, 500011 Graph's principal missing in the tenant; and two that
# Microsoft also answers for a while right after a consent, before it has replicated: 65001 not consented and
# 700016 app not found in the directory.
CONSENT_LOST_CODES = frozenset({7000229, 7000112, 90002, 500011, 65001, 700016})
PROPAGATION_CODES = frozenset({65001, 700016})
# Our own credential is refused: 7000215 invalid secret, 7000222 expired secret, 700027 / 700024 bad certificate
# assertion, 70021 no matching federated credential, 7000218 no credential sent.
CREDENTIAL_CODES = frozenset({7000215, 7000222, 700027, 700024, 70021, 7000218, 700023})


def escape_filter_string(text: str) -> str:
    """Text safe inside an OData string literal ('…'): a single quote is doubled, as OData requires."""
    return text.replace("'", "''")


def id_filters(object_ids: list[str]) -> list[str]:
    """``id in (…)`` filters naming ``object_ids``, IDS_PER_FILTER a filter (Graph's limit). Only a GUID can be an
    object id; Graph answers a filter naming anything else with 400 ("Invalid object identifier"), which would refuse
    every id of the request instead of leaving the unknown ones out, so anything else is dropped here."""
    ids = list(dict.fromkeys(i for i in object_ids if is_guid(i)))
    return [f"id in ({','.join(odata_literal(i) for i in ids[n:n + IDS_PER_FILTER])})"
            for n in range(0, len(ids), IDS_PER_FILTER)]


def odata_literal(text: str) -> str:
    """An OData string literal."""
    return f"'{escape_filter_string(text)}'"


def escape_search(text: str) -> str:
    """Text safe inside ``$search="displayName:…"``: quotes and backslashes escaped as Graph expects."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


class GraphDirectory(Directory):
    """Reads groups and their transitive user members of any consented tenant."""

    def __init__(self, base_url: str, credential_for: Callable[[str], Any], *, timeout_s: float = 60.0,
                 allowed_hosts: list[str] | None = None, concurrency: int = 4, tenant_concurrency: int | None = None,
                 max_tenants: int = 1000) -> None:
        self._base_url = base_url.rstrip("/")
        self._credential_for = credential_for
        self._timeout_s = timeout_s
        self._allowed_hosts = allowed_hosts
        # One credential (and its token cache) per customer tenant, least recently used evicted beyond max_tenants.
        self._adapters: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._max_tenants = max_tenants
        self._closing: set[asyncio.Task] = set()
        self._retired: list[tuple[float, Any]] = []
        self._credential_error_logged = False
        self._http: Any = None
        self.requests = 0
        # Fair share: workers and people get separate pools of `concurrency` requests, and within each pool one
        # tenant holds at most `tenant_concurrency` (default half), so one org's 200 group look-ups never queue another
        # org's search, nor one org's 100,000-member syncs another org's sync, behind them. A tenant waits for its own
        # share before it takes a pool slot, and a request waiting out a Retry-After holds no slot (see _get_json).
        self._worker_pool = asyncio.Semaphore(concurrency)
        self._interactive_pool = asyncio.Semaphore(concurrency)
        self._per_tenant = min(concurrency, tenant_concurrency or max(1, concurrency // 2))
        self._tenant_slots: dict[tuple[bool, str], asyncio.Semaphore] = {}

    def forget(self, tenant_id: str) -> None:
        """Drop the tenant's credential and cached token, so the next call asks the authority for a fresh one."""
        entry = self._adapters.pop(tenant_id, None)
        if entry is not None:
            self._close_later(entry[1])

    def _close_later(self, credential: Any) -> None:
        """Retire a credential: requests already under way may still use it, so it is closed a while later."""
        self._retired.append((time.monotonic(), credential))
        while self._retired and time.monotonic() - self._retired[0][0] > RETIRED_GRACE_S:
            self._close_now(self._retired.pop(0)[1])

    def _close_now(self, credential: Any) -> None:
        closer = getattr(credential, "close", None)
        if closer is not None:
            task = asyncio.ensure_future(closer())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _adapter(self, tenant_id: str) -> Any:
        entry = self._adapters.get(tenant_id)
        if entry is not None:
            self._adapters.move_to_end(tenant_id)
            return entry[0]
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
        credential = _OneTokenRequestAtATime(self._credential_for(tenant_id))
        auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=self._allowed_hosts or [])
        adapter = GraphRequestAdapter(auth, client=self._http)
        GraphServiceClient(request_adapter=adapter)  # registers the JSON (de)serializers, so error bodies parse
        adapter.base_url = self._base_url
        self._adapters[tenant_id] = (adapter, credential)
        while len(self._adapters) > self._max_tenants:
            _, (_, oldest) = self._adapters.popitem(last=False)
            self._close_later(oldest)
        return adapter

    async def search_groups(self, tenant_id: str, text: str, limit: int) -> list[DirectoryGroup]:
        """Groups whose name has a word starting with ``text`` ($search), or that start with it ($filter).

        $search reads an index that is only eventually consistent (https://learn.microsoft.com/graph/aad-advanced-queries),
        so a group created a moment ago is missing from it; ``startswith(displayName, …)`` without advanced query
        parameters is strongly consistent. Both are asked at once and merged.
        """
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder

        def searched(adapter: Any) -> Any:
            # `$count=true` beside the header, as the docs' examples of `$search` with `$orderby` send it
            # (https://learn.microsoft.com/graph/api/group-list); `$search` alone needs only the header.
            params = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
                search=f'"displayName:{escape_search(text)}"', select=GROUP_SELECT, top=limit, orderby=["displayName"],
                count=True,
            )
            config = RequestConfiguration(query_parameters=params)
            config.headers.add("ConsistencyLevel", "eventual")
            return GroupsRequestBuilder(adapter, {}).to_get_request_information(config)

        def filtered(adapter: Any) -> Any:
            params = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
                filter=f"startswith(displayName,'{escape_filter_string(text)}')", select=GROUP_SELECT, top=limit)
            return GroupsRequestBuilder(adapter, {}).to_get_request_information(
                RequestConfiguration(query_parameters=params))

        # Each query reads on while a page came back short with a nextLink, until it has `limit` groups (what is shown).
        # The first failure cancels the other query (and waits for it): nothing is left running behind the caller.
        asked = [asyncio.ensure_future(self._collect(tenant_id, build, interactive=True, enough=limit,
                                                     eventual=build is searched))
                 for build in (searched, filtered)]
        try:
            found = await asyncio.gather(*asked)
        except BaseException:
            for task in asked:
                task.cancel()
            await asyncio.gather(*asked, return_exceptions=True)
            raise
        merged = {item["id"]: _group(item) for items in found for item in items}
        return sorted(merged.values(), key=lambda g: (g.display_name.casefold(), g.id))[:limit]

    async def get_groups(self, tenant_id: str, group_ids: list[str], *,
                         interactive: bool = True) -> dict[str, DirectoryGroup]:
        """The groups that exist among ``group_ids``: ``$filter=id in (…)``, 15 ids a request (Graph's limit)."""
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder

        def chunk_request(id_filter: str) -> Callable[[Any], Any]:
            def request(adapter: Any) -> Any:
                params = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
                    filter=id_filter, select=GROUP_SELECT, top=IDS_PER_FILTER)
                return GroupsRequestBuilder(adapter, {}).to_get_request_information(
                    RequestConfiguration(query_parameters=params))
            return request

        filters = id_filters(group_ids)
        found = await asyncio.gather(*(self._collect(tenant_id, chunk_request(f), interactive=interactive)
                                       for f in filters))
        return {g.id: g for g in (_group(item) for items in found for item in items)}

    async def group_user_pages(self, tenant_id: str, group_id: str, next_link: str | None = None, *,
                               select: Sequence[str] = ()) -> AsyncIterator[UserPage]:
        """Transitive members listed untyped, users kept by their ``@odata.type``. A cast (``/microsoft.graph.user``)
        filters on the OData type, which needs the advanced query parameters (group-list-transitivemembers): their
        index is only eventually consistent, and a member list read from it lags the directory."""
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.groups.item.transitive_members.transitive_members_request_builder import (
            TransitiveMembersRequestBuilder,
        )

        def first(adapter: Any) -> Any:
            params = TransitiveMembersRequestBuilder.TransitiveMembersRequestBuilderGetQueryParameters(
                select=user_select(select), top=PAGE_SIZE)
            builder = TransitiveMembersRequestBuilder(adapter, {"group%2Did": group_id})
            return builder.to_get_request_information(RequestConfiguration(query_parameters=params))

        def following(link: str) -> Callable[[Any], Any]:
            return lambda adapter: TransitiveMembersRequestBuilder(adapter, link).to_get_request_information()

        def checked(link: Any) -> str:
            # The link came from a queue message or a Graph answer, and is sent with the tenant's token.
            if not is_graph_link(link, self._base_url, f"groups/{group_id}/transitiveMembers"):
                raise InvalidInput("the group's next page link is not under its transitiveMembers in Microsoft Graph",
                                   code="invalid_next_link")
            return link

        request = following(checked(next_link)) if next_link else first
        while True:
            data = await self._get_json(tenant_id, request)
            link = checked(data["@odata.nextLink"]) if data.get("@odata.nextLink") else None
            items = users_only(data.get("value", []))
            if any(_limited(item) for item in items):
                # Without User.Read.All Graph still lists user members, with only id and @odata.type
                # (https://learn.microsoft.com/graph/permissions-overview#limited-information-returned-for-inaccessible-member-objects):
                # writing them would blank every user, skipping them would deprovision them.
                raise PermissionMissing("Microsoft Graph returned the group's members without their properties: the "
                                        "tenant's consent lacks User.Read.All; ask a Global Admin to consent again")
            yield UserPage([_user(item) for item in items], link)
            if not link:
                return
            request = following(link)

    async def granted_permissions(self, tenant_id: str) -> frozenset[str]:
        """The ``roles`` claim of the tenant's access token: the application permissions Graph reads it with.

        The token is the one the SDK sends (the same credential and cache: no token request when one is cached), read
        without verification: it comes straight from the authority, and Graph decides on exactly these roles. A token
        whose claims cannot be read grants nothing as far as the caller is concerned (the cautious answer).
        """
        return token_roles(await self._token(tenant_id))

    async def _token(self, tenant_id: str) -> str:
        """The tenant's access token as the SDK will send it: the same credential and cache entry (a token request
        only when none is cached). Asked for before a request takes its slots, so a token request the authority is
        slow to answer, or that azure-identity retries with a sleep, holds no Graph slot."""
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        self._adapter(tenant_id)
        credential = self._adapters[tenant_id][1]
        try:
            return (await credential.get_token(GRAPH_SCOPE, **KIOTA_TOKEN_OPTIONS)).token
        except ClientAuthenticationError as exc:
            raise self._map_token_error(exc) from None
        except AzureError as exc:
            raise Transient(f"could not obtain a token for Microsoft Graph: {type(exc).__name__}",
                            code="token_unavailable") from None

    async def _collect(self, tenant_id: str, request: Callable[[Any], Any], *, interactive: bool,
                       enough: int | None = None, eventual: bool = False) -> list[dict[str, Any]]:
        """Every item of a collection: Graph may answer any page with fewer items than asked and a nextLink
        (https://learn.microsoft.com/graph/paging), so one page is never taken for all of them; ``enough`` stops
        once that many were read."""
        items: list[dict[str, Any]] = []
        while True:
            data = await self._get_json(tenant_id, request, interactive=interactive)
            items.extend(data.get("value", []))
            link = data.get("@odata.nextLink")
            if not link or (enough is not None and len(items) >= enough):
                return items
            request = next_page(link, eventual=eventual)

    async def request_json(self, tenant_id: str, request: Callable[[Any], Any], *, interactive: bool = False,
                           retry: bool = True) -> dict[str, Any]:
        """One request built by ``request(adapter)`` (a kiota RequestInformation), sent as every call here is: for
        the change feed (sync/adapters/graph_changes.py), which shares this transport, its pools and credentials.
        ``retry=False`` for a request that must not be sent twice (creating a subscription)."""
        return await self._get_json(tenant_id, request, interactive=interactive, retry=retry)

    async def _get_json(self, tenant_id: str, request: Callable[[Any], Any], *,
                        interactive: bool = False, retry: bool = True) -> dict[str, Any]:
        """One GET through the SDK's middleware, errors mapped onto our tree.

        A 401 means Graph refused the token itself (expired, e.g. by clock skew, or invalid): the tenant's cached
        token is dropped and the call is tried once more with a fresh one. A 403 or a consent error also drops it,
        so a token issued before the consent's roles had propagated is not used again.

        Throttling (429/503 with Retry-After) and transient failures are retried here rather than in the SDK's
        RetryHandler, which would sleep up to 180 s holding the request's slot: a person waits at most
        INTERACTIVE_WAIT_S once, a worker at most WORKER_WAIT_S a few times; anything longer is raised as Transient
        with its Retry-After (an HTTP 503 for the portal; a rescheduled message for a worker).
        """
        token_retried = False
        waits = 0
        while True:
            try:
                return await self._send(tenant_id, request, interactive)
            except _TokenRejected:
                self.forget(tenant_id)
                if token_retried:
                    raise Transient("Microsoft Graph refused two fresh tokens (401); try again later",
                                    code="token_rejected") from None
                token_retried = True
            except AuthorizationLost:
                self.forget(tenant_id)
                raise
            except Transient as exc:
                wait = exc.retry_after if exc.retry_after is not None else min(8.0, 0.5 * 2 ** waits)
                allowed = (1, INTERACTIVE_WAIT_S) if interactive else (WORKER_RETRIES, WORKER_WAIT_S)
                if not retry or waits >= allowed[0] or wait > allowed[1]:
                    raise
                waits += 1
                await asyncio.sleep(wait)  # outside every slot

    def _slots(self, tenant_id: str, interactive: bool) -> tuple[asyncio.Semaphore, ...]:
        """The tenant's share of its pool, then the pool: taken in that order, released in reverse."""
        key = (interactive, tenant_id)
        mine = self._tenant_slots.get(key)
        if mine is None:
            if len(self._tenant_slots) > 8 * self._max_tenants:
                self._tenant_slots = {k: s for k, s in self._tenant_slots.items() if s.locked()}
            mine = self._tenant_slots[key] = asyncio.Semaphore(self._per_tenant)
        return (mine, self._interactive_pool if interactive else self._worker_pool)

    async def _send(self, tenant_id: str, request: Callable[[Any], Any], interactive: bool) -> dict[str, Any]:
        from azure.core.exceptions import ClientAuthenticationError
        from kiota_abstractions.api_error import APIError
        from kiota_http.middleware.options import RetryHandlerOption
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        adapter = self._adapter(tenant_id)
        info = request(adapter)
        info.add_request_options([RetryHandlerOption(max_retries=0)])  # retried by _get_json, holding no slot
        await self._token(tenant_id)  # outside the slots: the SDK then finds it cached
        try:
            async with AsyncExitStack() as held:
                for slot in self._slots(tenant_id, interactive):
                    await held.enter_async_context(slot)
                self.requests += 1
                raw = await adapter.send_primitive_async(info, "bytes", {"XXX": ODataError})
        except APIError as exc:
            raise _map_api_error(exc) from None
        except ClientAuthenticationError as exc:
            raise self._map_token_error(exc) from None
        except Exception as exc:  # httpx transport errors arrive under many names; all mean "try again"
            import httpx

            if isinstance(exc, (httpx.TransportError, asyncio.TimeoutError)):
                raise Transient(f"Microsoft Graph unreachable: {type(exc).__name__}") from None
            raise
        return json.loads(raw) if raw else {}

    def _map_token_error(self, exc: Exception) -> Exception:
        codes = token_error_codes(exc)
        if codes & CONSENT_LOST_CODES:
            return AuthorizationLost("the tenant does not grant this app access (admin consent missing, revoked or the "
                                     f"app removed: AADSTS{min(codes & CONSENT_LOST_CODES)})",
                                     may_be_propagating=bool(codes & PROPAGATION_CODES))
        if codes & CREDENTIAL_CODES:
            # An operator problem, the same for every tenant: logged at error level once per process, not per group.
            if not self._credential_error_logged:
                self._credential_error_logged = True
                log.error("the app's Microsoft credential was refused; renew it (secret, certificate or federated "
                          "credential of the app registration)", extra={"error_codes": sorted(codes)})
            return CredentialInvalid("the app's own Microsoft credential is invalid or expired; the operator must renew "
                                     f"it (AADSTS{min(codes & CREDENTIAL_CODES)})")
        log.warning("token request failed", extra={"error_type": type(exc).__name__, "error_codes": sorted(codes)})
        return Transient("could not obtain a token for Microsoft Graph", code="token_unavailable")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        for credential in [c for _, c in self._adapters.values()] + [c for _, c in self._retired]:
            self._close_now(credential)
        self._adapters.clear()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


USER_TYPE = "#microsoft.graph.user"
GROUP_TYPE = "#microsoft.graph.group"


def of_type(items: list[dict[str, Any]], odata_type: str) -> list[dict[str, Any]]:
    """The items of an untyped directoryObject collection that are of ``odata_type``. Graph types every item of such a
    collection; one without a type cannot be told from a user, so the whole page is refused rather than guessed."""
    if any(not isinstance(item.get("@odata.type"), str) for item in items):
        raise InvalidInput("Microsoft Graph listed a directory object without its @odata.type",
                           code="directory_bad_request")
    return [item for item in items if item["@odata.type"].lower() == odata_type.lower()]


def users_only(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_type(items, USER_TYPE)


def next_page(link: str, *, eventual: bool = False) -> Callable[[Any], Any]:
    """The request for an ``@odata.nextLink``: a GET of that URL as Graph gave it (an advanced query's link needs
    its ``ConsistencyLevel`` header again: the link carries only the query string)."""
    def build(adapter: Any) -> Any:
        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation

        info = RequestInformation(Method.GET)
        info.url = link
        info.headers.try_add("Accept", "application/json")
        if eventual:
            info.headers.try_add("ConsistencyLevel", "eventual")
        return info
    return build


class _OneTokenRequestAtATime:
    """A tenant's credential whose concurrent callers share one token request (azure-identity would send one each)."""

    def __init__(self, credential: Any) -> None:
        self._credential = credential
        self._lock = asyncio.Lock()

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        async with self._lock:  # the first caller fetches; the others then read azure-identity's cache
            return await self._credential.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        closer = getattr(self._credential, "close", None)
        if closer is not None:
            await closer()


class _TokenRejected(Exception):
    """Graph answered 401: the token itself was refused."""


def token_error_codes(exc: Exception) -> frozenset[int]:
    """The ``error_codes`` of the token endpoint's JSON answer carried by azure-identity's error (not its text)."""
    response = getattr(exc, "response", None)
    try:
        body = json.loads(response.text()) if response is not None else {}
        codes = body.get("error_codes") if isinstance(body, dict) else None
        return frozenset(int(c) for c in codes) if isinstance(codes, list) else frozenset()
    except (ValueError, TypeError, AttributeError):
        return frozenset()


def token_roles(token: str) -> frozenset[str]:
    """The ``roles`` claim of a JWT access token (not verified); empty when the token is not a readable JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        roles = claims.get("roles") if isinstance(claims, dict) else None
    except (IndexError, ValueError, TypeError):
        return frozenset()
    return frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else frozenset()


def _map_api_error(exc: Any) -> Exception:
    status = getattr(exc, "response_status_code", None) or 0
    code = ""
    error = getattr(exc, "error", None)
    if error is not None:
        code = getattr(error, "code", "") or ""
    headers = getattr(exc, "response_headers", None) or {}
    if status == 401:
        return _TokenRejected(code)
    if status == 403:
        return AuthorizationLost(f"Microsoft Graph refused access (403 {code}); the app lacks the permissions it needs "
                                 "in this tenant", may_be_propagating=True)
    if status == 404:
        return NotFound(f"Microsoft Graph has no such object ({code or 'Request_ResourceNotFound'})", code="directory_object_not_found")
    if status == 400 and code == "Directory_ExpiredPageToken":
        return PageTokenExpired("Microsoft Graph's page token expired before the next page was read")
    if status == 410 or code.lower() in DELTA_EXPIRED_CODES:
        return DeltaExpired(f"Microsoft Graph no longer knows the delta link ({status} {code or 'Gone'})")
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


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_OWN = frozenset(USER_SELECT)  # kept in DirectoryUser's own fields


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
        properties=flatten({k: v for k, v in item.items() if k not in _OWN}),  # what a mapping reads besides
    )


def _group(item: dict[str, Any]) -> DirectoryGroup:
    return DirectoryGroup(
        id=item["id"],
        display_name=_str(item.get("displayName")) or "",
        description=_str(item.get("description")),
        mail=_str(item.get("mail")),
        visibility=_str(item.get("visibility")),
    )


def _limited(item: dict[str, Any]) -> bool:
    """A member Graph returned with limited information: every user has a userPrincipalName and a displayName."""
    return item.get("userPrincipalName") is None and item.get("displayName") is None
