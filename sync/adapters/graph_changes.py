"""Microsoft Graph's change feed (delta queries and change-notification subscriptions), over GraphDirectory's
transport: the same SDK middleware, credentials, fair-share pools, retries and error mapping.

- Delta (https://learn.microsoft.com/graph/delta-query-overview): ``$deltatoken=latest`` gives a link to the current
  state without reading it ("sync from now"); following a link pages (``@odata.nextLink``) until a new
  ``@odata.deltaLink``. Users come back with at least their changed properties (so a changed user is read again by
  id before it is applied); a deleted user as ``{"id", "@removed"}``. A group's member changes come in
  ``members@delta``, a removed member with ``@removed``
  (https://learn.microsoft.com/graph/api/group-delta).
- Subscriptions (https://learn.microsoft.com/graph/api/subscription-post-subscriptions): ``users`` and ``groups`` with
  changeType ``updated,deleted``; Graph validates the notification URL before it answers, so creation is never
  retried here (a retry could leave a second subscription behind).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Sequence
from urllib.parse import quote

from ..errors import NotFound
from ..model import DeltaLinks, DirectoryChanges, DirectoryUser, GroupChange, is_guid
from ..ports import DirectoryChangeFeed
from .graph import GROUP_TYPE, IDS_PER_FILTER, USER_TYPE, GraphDirectory, _user, id_filters, of_type, user_select
from .graph_links import is_graph_link

CHANGE_TYPES = "updated,deleted"


class GraphChangeFeed(DirectoryChangeFeed):
    def __init__(self, directory: GraphDirectory, base_url: str) -> None:
        self._graph = directory
        self._base_url = base_url.rstrip("/")

    # ------------------------------------------------------------------ delta

    async def delta_links(self, tenant_id: str, *, select: Sequence[str] = ()) -> DeltaLinks:
        users = await self._graph.request_json(
            tenant_id, _get(f"{self._base_url}/users/delta?$select={','.join(user_select(select))}&$deltatoken=latest"))
        groups = await self._graph.request_json(
            tenant_id, _get(f"{self._base_url}/groups/delta?$select=members&$deltatoken=latest"))
        return DeltaLinks(users_link=self._delta_link(users, "users/delta"),
                          groups_link=self._delta_link(groups, "groups/delta"))

    async def read_changes(self, tenant_id: str, links: DeltaLinks, max_objects: int) -> DirectoryChanges | None:
        changed: set[str] = set()
        removed: set[str] = set()
        groups: dict[str, GroupChange] = {}

        def on_user(item: dict[str, Any]) -> None:
            (removed if "@removed" in item else changed).add(str(item["id"]))

        def on_group(item: dict[str, Any]) -> None:
            gid = str(item["id"])
            before = groups.get(gid) or GroupChange(gid)
            added_users, removed_users, nested = set(before.users_added), set(before.users_removed), set(before.groups_changed)
            for member in item.get("members@delta") or []:
                mid, kind = str(member.get("id")), member.get("@odata.type")
                if kind == GROUP_TYPE:
                    nested.add(mid)
                elif kind == USER_TYPE:
                    # the latest word wins: a user added and then removed within one delta is removed
                    (removed_users if "@removed" in member else added_users).add(mid)
                    (added_users if "@removed" in member else removed_users).discard(mid)
            groups[gid] = GroupChange(gid, removed=before.removed or "@removed" in item,
                                      users_added=frozenset(added_users), users_removed=frozenset(removed_users),
                                      groups_changed=frozenset(nested))

        users_link = await self._follow(tenant_id, links.users_link, "users/delta", on_user, lambda: len(changed) + len(removed), max_objects)
        if users_link is None:
            return None
        groups_link = await self._follow(tenant_id, links.groups_link, "groups/delta", on_group, lambda: len(groups), max_objects)
        if groups_link is None:
            return None
        return DirectoryChanges(users_changed=frozenset(changed - removed), users_removed=frozenset(removed),
                                groups=groups, links=DeltaLinks(users_link, groups_link))

    async def _follow(self, tenant_id: str, link: str, under: str, on_item: Callable[[dict[str, Any]], None],
                      count: Callable[[], int], max_objects: int) -> str | None:
        """Read pages from ``link`` to the next delta link; None as soon as more than ``max_objects`` changed."""
        url = self._checked(link, under)
        while True:
            page = await self._graph.request_json(tenant_id, _get(url))
            for item in page.get("value") or []:
                if isinstance(item, dict) and item.get("id"):
                    on_item(item)
            if count() > max_objects:
                return None
            if page.get("@odata.nextLink"):
                url = self._checked(page["@odata.nextLink"], under)
                continue
            return self._delta_link(page, under)

    def _delta_link(self, page: dict[str, Any], under: str) -> str:
        link = page.get("@odata.deltaLink")
        if not isinstance(link, str) or not link:
            raise ValueError("Microsoft Graph answered a delta request without a delta link")
        return self._checked(link, under)

    def _checked(self, link: str, under: str) -> str:
        """A link must point at the Graph we use, under the path asked for (it is stored, then sent with a token)."""
        if not is_graph_link(link, self._base_url, under):
            raise ValueError("a link points outside the Microsoft Graph collection it continues")
        return link

    # ------------------------------------------------------------------ look-ups

    async def get_users(self, tenant_id: str, user_ids: list[str], *,
                        select: Sequence[str] = ()) -> dict[str, DirectoryUser]:
        # Every page of each look-up: Graph may answer 15 ids with fewer users and a nextLink
        # (https://learn.microsoft.com/graph/paging), and a user missing here is taken for deleted.
        found: dict[str, DirectoryUser] = {}
        for id_filter in id_filters(sorted(set(user_ids))):
            url: str | None = (f"{self._base_url}/users?$filter={quote(id_filter, safe='')}"
                               f"&$select={','.join(user_select(select))}&$top={IDS_PER_FILTER}")
            while url:
                page = await self._graph.request_json(tenant_id, _get(url))
                for item in page.get("value") or []:
                    found[str(item["id"])] = _user(item)
                url = self._checked(page["@odata.nextLink"], "users") if page.get("@odata.nextLink") else None
        return found

    async def member_of(self, tenant_id: str, object_id: str, *, kind: str = "users") -> frozenset[str]:
        if not is_guid(object_id) or kind not in ("users", "groups"):
            raise NotFound("no such directory object", code="directory_object_not_found")
        # Untyped, groups kept by their @odata.type: a cast (/microsoft.graph.group) needs the advanced query
        # parameters, whose index lags membership changes (user-list-transitivememberof), and a user just added to a
        # group that its index does not show yet would leave the portal.
        url: str | None = f"{self._base_url}/{kind}/{object_id}/transitiveMemberOf?$select=id&$top=999"
        groups: set[str] = set()
        while url:
            page = await self._graph.request_json(tenant_id, _get(url))
            groups.update(str(item["id"]) for item in of_type(page.get("value") or [], GROUP_TYPE) if item.get("id"))
            url = (self._checked(page["@odata.nextLink"], f"{kind}/{object_id}/transitiveMemberOf")
                   if page.get("@odata.nextLink") else None)
        return frozenset(groups)

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, tenant_id: str, resource: str, notification_url: str, client_state: str,
                        expires_at: datetime) -> tuple[str, datetime]:
        body = {"changeType": CHANGE_TYPES, "notificationUrl": notification_url,
                "lifecycleNotificationUrl": notification_url, "resource": resource,
                "expirationDateTime": _iso(expires_at), "clientState": client_state}
        created = await self._graph.request_json(tenant_id, _send("POST", f"{self._base_url}/subscriptions", body),
                                                 retry=False)
        return str(created["id"]), _parse(created.get("expirationDateTime")) or expires_at

    async def renew(self, tenant_id: str, watch_id: str, expires_at: datetime,
                    notification_url: str | None = None) -> datetime:
        # Graph's PATCH takes expirationDateTime and notificationUrl (learn.microsoft.com/graph/api/subscription-update);
        # a new notificationUrl is validated like at creation, so a failed handshake is a 400 and nothing changes.
        body = {"expirationDateTime": _iso(expires_at)}
        if notification_url is not None:
            body["notificationUrl"] = notification_url
        renewed = await self._graph.request_json(
            tenant_id, _send("PATCH", f"{self._base_url}/subscriptions/{quote(watch_id, safe='')}", body))
        return _parse(renewed.get("expirationDateTime")) or expires_at

    async def unsubscribe(self, tenant_id: str, watch_id: str) -> None:
        try:
            await self._graph.request_json(
                tenant_id, _send("DELETE", f"{self._base_url}/subscriptions/{quote(watch_id, safe='')}", None))
        except NotFound:
            return


def _get(url: str) -> Callable[[Any], Any]:
    return _send("GET", url, None)


def _send(method: str, url: str, body: dict[str, Any] | None) -> Callable[[Any], Any]:
    def build(adapter: Any) -> Any:
        import json

        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation

        info = RequestInformation(Method[method])
        info.url = url
        info.headers.try_add("Accept", "application/json")
        if body is not None:
            info.set_stream_content(json.dumps(body).encode(), "application/json")
        return info
    return build


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
