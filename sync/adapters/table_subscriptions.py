"""Table Storage adapter of the subscriptions: ``{prefix}Subscriptions``, PK org, RK subscription id."""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from ..attribute_mapping import mapping_from_json, mapping_to_json
from ..errors import PreconditionFailed
from ..model import GroupRef, NotifyAddress, PendingConsent, Subscription
from ..ports import Subscriptions
from .table_repository import _conditional, _dt, _etag, _Repository, call, collect
from .table_text import key
from .table_text import long_text as _long_text
from .table_text import read_long_text as _read_long_text


class TableSubscriptions(_Repository, Subscriptions):
    TABLE = "Subscriptions"

    async def add(self, sub: Subscription) -> Subscription:
        table = await self._table()
        meta = await call(table.create_entity(_sub_entity(sub)))
        self._store.count_write(1)
        return replace(sub, etag=meta.get("etag"))

    async def get(self, org: str, sub_id: str) -> Subscription | None:
        table = await self._table()
        try:
            entity = await call(table.get_entity(key(org), key(sub_id)))
        except ResourceNotFoundError:
            return None
        return _sub_from(entity)

    async def list(self, org: str) -> list[Subscription]:
        table = await self._table()
        rows = await collect(table.query_entities("PartitionKey eq @pk", parameters={"pk": key(org)}))
        return sorted((_sub_from(e) for e in rows), key=lambda s: s.created_at)

    async def save(self, sub: Subscription) -> Subscription:
        table = await self._table()
        try:
            meta = await call(table.update_entity(_sub_entity(sub), mode=UpdateMode.REPLACE, **_conditional(sub.etag)))
        except (ResourceModifiedError, ResourceNotFoundError):
            raise PreconditionFailed("the subscription changed meanwhile") from None
        self._store.count_write(1)
        return replace(sub, etag=meta.get("etag"))

    async def delete(self, sub: Subscription) -> None:
        table = await self._table()
        try:
            await call(table.delete_entity(key(sub.org), key(sub.id), **_conditional(sub.etag)))
        except ResourceModifiedError:
            raise PreconditionFailed("the subscription changed meanwhile") from None
        self._store.count_write(1)

    async def connected_to(self, tenant_id: str) -> list[Subscription]:
        table = await self._table()
        rows = await collect(table.query_entities("azureTenantId eq @tid", parameters={"tid": tenant_id.lower()}))
        return [_sub_from(e) for e in rows]

    async def nightly_candidates(self) -> list[Subscription]:
        table = await self._table()
        rows = await collect(
            table.query_entities("nightlySync eq true and status eq @status", parameters={"status": "authorized"})
        )
        return [_sub_from(e) for e in rows]

    async def with_active_run(self) -> list[Subscription]:
        table = await self._table()
        rows = await collect(table.query_entities("activeRunId gt ''"))
        return [_sub_from(e) for e in rows]


def _sub_entity(sub: Subscription) -> dict[str, Any]:
    return {
        "PartitionKey": key(sub.org),
        "RowKey": key(sub.id),
        "org": sub.org,
        "id": sub.id,
        "name": sub.name,
        "status": sub.status,
        "azureTenantId": sub.azure_tenant_id,
        "usernameAttribute": sub.username_attribute,
        "deactivateBlockedUsers": sub.deactivate_blocked_users,
        "sendEnrollmentEmail": sub.send_enrollment_email,
        "enrollmentReminders": json.dumps(list(sub.enrollment_reminders)),
        "nightlySync": sub.nightly_sync,
        "linkExistingUsers": sub.link_existing_users,
        **_long_text("groups", json.dumps([[g.id, g.display_name, *([] if g.hidden_membership is None else
                                                                    [g.hidden_membership])]
                                           for g in sub.groups], ensure_ascii=False)),
        "createdAt": sub.created_at,
        "updatedAt": sub.updated_at,
        "activeRunId": sub.active_run_id,
        "lastRunId": sub.last_run_id,
        "consentNonce": sub.consent_nonce,
        "consentRequestedBy": sub.consent_requested_by,
        "pendingConsent": json.dumps(sub.pending_consent.to_json(), ensure_ascii=False) if sub.pending_consent else None,
        "consentedAt": sub.consented_at,
        "consentedBy": sub.consented_by,
        "deleting": sub.deleting,
        "notifyEmails": json.dumps(list(sub.notify_emails), ensure_ascii=False),
        # Bounded: at most alert_model.MAX_NOTIFY_KEPT addresses of 254 characters (well under 64 KiB).
        "notifyAddresses": json.dumps([a.to_json() for a in sub.notify_addresses], ensure_ascii=False),
        "attributeMapping": mapping_to_json(sub.attribute_mapping),  # None (no property) for the default
    }


def _sub_from(e: Any) -> Subscription:
    return Subscription(
        org=e["org"],
        id=e["id"],
        name=e.get("name") or "",
        status=e["status"],
        azure_tenant_id=e.get("azureTenantId"),
        username_attribute=e.get("usernameAttribute") or "userPrincipalName",
        deactivate_blocked_users=bool(e.get("deactivateBlockedUsers")),
        send_enrollment_email=bool(e.get("sendEnrollmentEmail")),
        enrollment_reminders=tuple(int(d) for d in json.loads(e.get("enrollmentReminders") or "[]")),
        nightly_sync=bool(e.get("nightlySync")),
        link_existing_users=e.get("linkExistingUsers") or "off",
        groups=tuple(GroupRef(*ref[:3]) for ref in json.loads(_read_long_text(e, "groups") or "[]")),
        created_at=_dt(e.get("createdAt")),
        updated_at=_dt(e.get("updatedAt")),
        active_run_id=e.get("activeRunId"),
        last_run_id=e.get("lastRunId"),
        consent_nonce=e.get("consentNonce"),
        consent_requested_by=e.get("consentRequestedBy"),
        pending_consent=PendingConsent.from_json(json.loads(e["pendingConsent"])) if e.get("pendingConsent") else None,
        consented_at=_dt(e["consentedAt"]) if e.get("consentedAt") else None,
        consented_by=e.get("consentedBy"),
        deleting=bool(e.get("deleting")),
        notify_emails=tuple(json.loads(e.get("notifyEmails") or "[]")),
        notify_addresses=tuple(NotifyAddress.from_json(a) for a in json.loads(e.get("notifyAddresses") or "[]")),
        attribute_mapping=mapping_from_json(e.get("attributeMapping")),
        etag=_etag(e),
    )
