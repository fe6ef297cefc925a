"""Table Storage for the change feed: the Graph subscriptions we hold and each sync subscription's delta links.

``{prefix}Watches``:
- PK ``watch``, RK the Graph subscription id: a watch (looked up by id when a notification arrives; the one
  partition is small: two rows per connected tenant).
- PK ``delta|<org>``, RK subscription id: the subscription's delta links.

Delta rows were kept at PK ``<org>`` until issue 22: an org whose id is ``watch`` then shared the watches' partition
(its delta row was read as a watch, so its runs, its deletion and every org's renewal failed). A key part never holds
``|`` (it is percent-encoded), so ``delta|…`` is a key space of its own. Rows of the old layout are moved when first
read (``get_delta``: copied, then the old row deleted), ``with_delta`` lists both, ``delete_delta`` deletes both: no
migration step is needed, and a row of either layout keeps working.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..errors import PreconditionFailed
from ..model import DeltaState, Watch
from ..ports import Watches
from .table_repository import _conditional, _dt, _etag, _Repository, call, collect
from .table_text import key, long_text, read_long_text

WATCH_PK = "watch"
DELTA_PK = "delta|"


def _delta_pk(org: str) -> str:
    return DELTA_PK + key(org)


class TableWatches(_Repository, Watches):
    TABLE = "Watches"

    async def get(self, watch_id: str) -> Watch | None:
        table = await self._table()
        try:
            entity = await call(table.get_entity(WATCH_PK, key(watch_id)))
        except ResourceNotFoundError:
            return None
        return _watch_from(entity) if entity.get("kind") == "watch" else None  # an old-layout delta row of org "watch"

    async def save(self, watch: Watch) -> None:
        table = await self._table()
        entity = {"PartitionKey": WATCH_PK, "RowKey": key(watch.id), "kind": "watch", "id": watch.id,
                  "org": watch.org, "subscriptionId": watch.subscription_id, "tenantId": watch.tenant_id,
                  "resource": watch.resource, "clientStateHash": watch.client_state_hash,
                  "expiresAt": watch.expires_at, "urlHash": watch.url_hash or ""}
        await call(table.upsert_entity(entity, mode=UpdateMode.REPLACE))
        self._store.count_write(1)

    async def delete(self, watch_id: str) -> None:
        table = await self._table()
        try:
            await call(table.delete_entity(WATCH_PK, key(watch_id)))
        except ResourceNotFoundError:
            return
        self._store.count_write(1)

    async def of_subscription(self, org: str, subscription_id: str) -> list[Watch]:
        table = await self._table()
        rows = await collect(table.query_entities(
            "PartitionKey eq @pk and kind eq 'watch' and org eq @org and subscriptionId eq @sub",
            parameters={"pk": WATCH_PK, "org": org, "sub": subscription_id}))
        return [_watch_from(e) for e in rows]

    async def expiring(self, before: Any) -> list[Watch]:
        table = await self._table()
        rows = await collect(table.query_entities("PartitionKey eq @pk and kind eq 'watch' and expiresAt lt @before",
                                                  parameters={"pk": WATCH_PK, "before": before}))
        return [_watch_from(e) for e in rows]

    async def elsewhere(self, url_hash: str) -> list[Watch]:
        # Filtered here, not in the query: a row written before URLs were recorded has no urlHash property, and a
        # filter on a missing property matches nothing. The partition holds two rows per connected tenant.
        table = await self._table()
        rows = await collect(table.query_entities("PartitionKey eq @pk", parameters={"pk": WATCH_PK}))
        return [w for w in map(_watch_from, rows) if w.url_hash != url_hash]

    async def get_delta(self, org: str, subscription_id: str) -> DeltaState | None:
        table = await self._table()
        try:
            return _delta_from(await call(table.get_entity(_delta_pk(org), key(subscription_id))))
        except ResourceNotFoundError:
            pass
        try:  # the layout before issue 22: moved to its own key space on this first read
            old = await call(table.get_entity(key(org), key(subscription_id)))
        except ResourceNotFoundError:
            return None
        if old.get("kind") != "delta":
            return None
        moved = {**old, "PartitionKey": _delta_pk(org)}
        try:
            await call(table.create_entity(moved))
            self._store.count_write(1)
        except ResourceExistsError:
            pass  # another reader moved it first
        try:
            await call(table.delete_entity(key(org), key(subscription_id), **_conditional(_etag(old))))
            self._store.count_write(1)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass
        return await self.get_delta(org, subscription_id)

    async def save_delta(self, state: DeltaState) -> DeltaState:
        table = await self._table()
        entity = {"PartitionKey": _delta_pk(state.org), "RowKey": key(state.subscription_id), "kind": "delta",
                  "org": state.org, "subscriptionId": state.subscription_id,
                  **long_text("usersLink", state.users_link), **long_text("groupsLink", state.groups_link),
                  **long_text("groupIds", json.dumps(list(state.group_ids))), "takenAt": state.taken_at,
                  "mappingTag": state.mapping_tag}
        try:
            if state.etag is None:
                meta = await call(table.create_entity(entity))
            else:
                meta = await call(table.update_entity(entity, mode=UpdateMode.REPLACE, **_conditional(state.etag)))
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise PreconditionFailed("the delta state changed meanwhile") from None
        self._store.count_write(1)
        return replace(state, etag=meta.get("etag"))

    async def delete_delta(self, org: str, subscription_id: str) -> None:
        table = await self._table()
        try:
            await call(table.delete_entity(_delta_pk(org), key(subscription_id)))
            self._store.count_write(1)
        except ResourceNotFoundError:
            pass
        try:  # the old layout's row, if any (see the module's docstring); for org "watch" never a watch
            old = await call(table.get_entity(key(org), key(subscription_id)))
            if old.get("kind") == "delta":
                await call(table.delete_entity(key(org), key(subscription_id), **_conditional(_etag(old))))
                self._store.count_write(1)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass

    async def with_delta(self) -> list[DeltaState]:
        table = await self._table()
        rows = await collect(table.query_entities("kind eq 'delta'"))
        states: dict[tuple[str, str], DeltaState] = {}
        for e in sorted(rows, key=lambda e: e["PartitionKey"].startswith(DELTA_PK)):  # the new layout's row wins
            state = _delta_from(e)
            states[(state.org, state.subscription_id)] = state
        return list(states.values())


def _watch_from(e: Any) -> Watch:
    return Watch(id=e["id"], org=e["org"], subscription_id=e["subscriptionId"], tenant_id=e["tenantId"],
                 resource=e["resource"], client_state_hash=e["clientStateHash"], expires_at=_dt(e["expiresAt"]),
                 etag=_etag(e), url_hash=e.get("urlHash") or None)


def _delta_from(e: Any) -> DeltaState:
    return DeltaState(org=e["org"], subscription_id=e["subscriptionId"], users_link=read_long_text(e, "usersLink"),
                      groups_link=read_long_text(e, "groupsLink"),
                      group_ids=tuple(json.loads(read_long_text(e, "groupIds") or "[]")),
                      taken_at=_dt(e["takenAt"]), etag=_etag(e), mapping_tag=e.get("mappingTag") or "")
