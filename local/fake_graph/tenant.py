"""One fake Entra tenant: users, groups, devices and memberships, with Graph-shaped reads and admin writes.

All methods run on the server's event-loop thread, so there is no locking. Reads are cached (result
lists, transitive expansions and serialized items) and every write bumps `version`, which drops them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

from . import changes as ops
from .changes import ChangeLog
from .odata import (
    GraphError,
    OrderBy,
    SearchNode,
    bad_request,
    compile_search,
    search_tokens,
    sort_key,
)

CREATED = "2024-01-15T09:00:00Z"

USER_FIELDS = ("id", "displayName", "userPrincipalName", "mail", "givenName", "surname", "accountEnabled",
               "onPremisesSamAccountName", "employeeId", "userType")
GROUP_FIELDS = ("id", "displayName", "description", "mail", "members")
DEVICE_FIELDS = ("id", "displayName")

# Graph v1.0 returns only these user properties unless $select asks for more.
USER_DEFAULT = ("id", "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
                "officeLocation", "preferredLanguage", "surname", "userPrincipalName")
USER_PROPERTIES = USER_DEFAULT + (
    "accountEnabled", "ageGroup", "city", "companyName", "country", "createdDateTime", "creationType",
    "deletedDateTime", "department", "employeeHireDate", "employeeId", "employeeType", "externalUserState",
    "externalUserStateChangeDateTime", "faxNumber", "identities", "imAddresses", "lastPasswordChangeDateTime",
    "mailNickname", "onPremisesDistinguishedName", "onPremisesDomainName", "onPremisesImmutableId",
    "onPremisesLastSyncDateTime", "onPremisesSamAccountName", "onPremisesSecurityIdentifier",
    "onPremisesSyncEnabled", "onPremisesUserPrincipalName", "otherMails", "passwordPolicies", "postalCode",
    "preferredName", "proxyAddresses", "securityIdentifier", "showInAddressList", "state", "streetAddress",
    "usageLocation", "userType", "assignedLicenses", "signInSessionsValidFromDateTime",
    # Complex properties Graph returns only when $select names them (README: "Attribute mapping").
    "employeeOrgData", "onPremisesExtensionAttributes",
)
# employeeOrgData and onPremisesExtensionAttributes: their members (a member itself cannot be selected).
COMPLEX_MEMBERS = {
    "employeeOrgData": ("costCenter", "division"),
    "onPremisesExtensionAttributes": tuple(f"extensionAttribute{i}" for i in range(1, 16)),
}
# A directory extension property: extension_{appId without hyphens}_{name} (README: "Attribute mapping").
EXTENSION_NAME = re.compile(r"extension_[0-9a-fA-F]{32}_[A-Za-z0-9_]{1,120}")
GROUP_DEFAULT = (
    "id", "deletedDateTime", "classification", "createdDateTime", "creationOptions", "description",
    "displayName", "expirationDateTime", "groupTypes", "isAssignableToRole", "mail", "mailEnabled",
    "mailNickname", "membershipRule", "membershipRuleProcessingState", "onPremisesDomainName",
    "onPremisesLastSyncDateTime", "onPremisesNetBiosName", "onPremisesSamAccountName",
    "onPremisesSecurityIdentifier", "onPremisesSyncEnabled", "preferredDataLocation", "preferredLanguage",
    "proxyAddresses", "renewedDateTime", "resourceBehaviorOptions", "resourceProvisioningOptions",
    "securityEnabled", "securityIdentifier", "theme", "visibility", "onPremisesProvisioningErrors",
    "serviceProvisioningErrors",
)
GROUP_PROPERTIES = GROUP_DEFAULT
DEVICE_DEFAULT = (
    "id", "deletedDateTime", "accountEnabled", "approximateLastSignInDateTime", "complianceExpirationDateTime",
    "createdDateTime", "deviceId", "deviceVersion", "displayName", "isCompliant", "isManaged",
    "manufacturer", "mdmAppId", "model", "onPremisesLastSyncDateTime", "onPremisesSyncEnabled",
    "operatingSystem", "operatingSystemVersion", "physicalIds", "profileType", "registrationDateTime",
    "systemLabels", "trustType", "alternativeSecurityIds",
)
DEVICE_PROPERTIES = DEVICE_DEFAULT

COLLECTION_PROPERTIES = frozenset({
    "businessPhones", "identities", "imAddresses", "otherMails", "proxyAddresses", "assignedLicenses",
    "creationOptions", "groupTypes", "resourceBehaviorOptions", "resourceProvisioningOptions",
    "onPremisesProvisioningErrors", "serviceProvisioningErrors", "physicalIds", "systemLabels",
    "alternativeSecurityIds",
})

KINDS = ("user", "group", "device")
ODATA_TYPE = {kind: f"#microsoft.graph.{kind}" for kind in KINDS}
TYPE_NAME = {kind: f"microsoft.graph.{kind}" for kind in KINDS}
RESOURCE = {"user": "User", "group": "Group", "device": "Device", None: "DirectoryObject"}
PROPERTIES = {"user": USER_PROPERTIES, "group": GROUP_PROPERTIES, "device": DEVICE_PROPERTIES}
DEFAULTS = {"user": USER_DEFAULT, "group": GROUP_DEFAULT, "device": DEVICE_DEFAULT}
READ_ONLY = frozenset({"id", "createdDateTime", "deletedDateTime", "securityIdentifier", "@odata.type"})
SORTABLE = {
    "user": {"displayname": "displayName", "userprincipalname": "userPrincipalName"},
    "group": {"displayname": "displayName"},
    "device": {"displayname": "displayName"},
    None: {"displayname": "displayName"},
}


def _lookup(names: Iterable[str]) -> dict[str, str]:
    return {name.lower(): name for name in names}


PROPERTY_LOOKUP = {kind: _lookup(PROPERTIES[kind]) for kind in KINDS}
PROPERTY_LOOKUP[None] = _lookup(p for kind in KINDS for p in PROPERTIES[kind])
PROPERTY_SETS = {kind: frozenset(PROPERTIES[kind]) for kind in KINDS}


def _local_part(address: str | None) -> str | None:
    return address.split("@", 1)[0] if address else None


def _derived_user(user: dict, prop: str) -> Any:
    if prop == "mailNickname":
        return _local_part(user.get("userPrincipalName")).replace("#EXT#", "")
    if prop == "proxyAddresses":
        return [f"SMTP:{user['mail']}"] if user.get("mail") else []
    if prop == "onPremisesSyncEnabled":
        return True if user.get("onPremisesSamAccountName") else None
    if prop == "createdDateTime":
        return CREATED
    if prop == "creationType":
        return "Invitation" if user.get("userType") == "Guest" else None
    if prop == "externalUserState":
        return "Accepted" if user.get("userType") == "Guest" else None
    if prop == "showInAddressList":
        return None
    if prop == "onPremisesExtensionAttributes":  # all fifteen members, null when not set
        stored = user.get(prop) or {}
        return {name: stored.get(name) for name in COMPLEX_MEMBERS[prop]}
    return _MISSING


def _derived_group(group: dict, prop: str) -> Any:
    if prop == "mailEnabled":
        return bool(group.get("mail"))
    if prop == "securityEnabled":
        return True
    if prop == "mailNickname":
        return _local_part(group.get("mail")) or "".join(
            ch for ch in group.get("displayName", "") if ch.isalnum()
        ).lower() or "group"
    if prop == "proxyAddresses":
        return [f"SMTP:{group['mail']}"] if group.get("mail") else []
    if prop in ("createdDateTime", "renewedDateTime"):
        return CREATED
    return _MISSING


def _derived_device(device: dict, prop: str) -> Any:
    if prop == "deviceId":
        return device["id"]
    if prop == "accountEnabled":
        return True
    if prop in ("createdDateTime", "registrationDateTime"):
        return CREATED
    if prop == "operatingSystem":
        return "Windows"
    if prop == "trustType":
        return "AzureAd"
    return _MISSING


_MISSING = object()
_DERIVED: dict[str, Callable[[dict, str], Any]] = {
    "user": _derived_user, "group": _derived_group, "device": _derived_device,
}


def expand_members(group_id: str, members_of: Callable[[str], Iterable[str]], is_group: Callable[[str], bool]) -> list[str]:
    """Transitive members of a group in depth-first order, each object once; cycles are cut."""
    seen = {group_id}
    out: list[str] = []
    stack = [iter(members_of(group_id))]
    while stack:
        for member in stack[-1]:
            if member in seen:
                continue
            seen.add(member)
            out.append(member)
            if is_group(member):
                stack.append(iter(members_of(member)))
                break
        else:
            stack.pop()
    return out


def load_tenant(source: dict | str | Path) -> dict:
    """Read a tenant (dict, JSON file path) and check it has the documented shape; returns the dict."""
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8") as fh:
            data = json.load(fh)
    elif isinstance(source, dict):
        data = source
    else:
        raise TypeError(f"a tenant is a dict or a JSON file path, not {type(source).__name__}")
    validate_tenant(data)
    return data


def validate_tenant(data: Any) -> None:
    """Raise ValueError naming the first problem in a tenant document."""
    if not isinstance(data, dict):
        raise ValueError("tenant must be a JSON object")
    for key in ("tenantId", "domain"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"tenant.{key} must be a non-empty string")
    ids: dict[str, str] = {}
    for collection, required in (("users", USER_FIELDS), ("groups", GROUP_FIELDS), ("devices", DEVICE_FIELDS)):
        items = data.get(collection, [])
        if not isinstance(items, list):
            raise ValueError(f"tenant.{collection} must be a list")
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f"{collection}[{n}] must be an object")
            missing = [f for f in required if f not in item]
            if missing:
                raise ValueError(f"{collection}[{n}] lacks {', '.join(missing)}")
            if not isinstance(item["id"], str) or not item["id"]:
                raise ValueError(f"{collection}[{n}].id must be a non-empty string")
            if item["id"] in ids:
                raise ValueError(f"duplicate id {item['id']!r} in {collection} and {ids[item['id']]}")
            ids[item["id"]] = collection
    extensions = data.get("extensionProperties", [])
    if not isinstance(extensions, list) or not all(isinstance(n, str) and EXTENSION_NAME.fullmatch(n)
                                                   for n in extensions):
        raise ValueError("tenant.extensionProperties must be a list of extension_<appId without hyphens>_<name>")
    registered = {n.lower() for n in extensions}
    upns: set[str] = set()
    for user in data.get("users", []):
        for name, value in user.items():
            if name.lower().startswith("extension_") and name.lower() not in registered:
                raise ValueError(f"user {user['id']}: {name} is not in tenant.extensionProperties")
            if name in COMPLEX_MEMBERS:
                try:
                    _check_complex(name, value)
                except GraphError:
                    raise ValueError(f"user {user['id']}: {name} must be an object of its string members") from None
        if not isinstance(user["accountEnabled"], bool):
            raise ValueError(f"user {user['id']}: accountEnabled must be a boolean")
        if user["userType"] not in ("Member", "Guest"):
            raise ValueError(f"user {user['id']}: userType must be Member or Guest")
        upn = str(user["userPrincipalName"]).lower()
        if upn in upns:
            raise ValueError(f"duplicate userPrincipalName {user['userPrincipalName']!r}")
        upns.add(upn)
    admins = data.get("admins", [])
    if not isinstance(admins, list):
        raise ValueError("tenant.admins must be a list")
    for n, admin in enumerate(admins):
        if not isinstance(admin, dict) or not all(isinstance(admin.get(k), str) and admin[k]
                                                  for k in ("userPrincipalName", "password")):
            raise ValueError(f"admins[{n}] needs userPrincipalName and password (strings)")
        if not isinstance(admin.get("roles", []), list):
            raise ValueError(f"admins[{n}].roles must be a list of directory role names or template ids")
    for group in data.get("groups", []):
        if not isinstance(group["members"], list):
            raise ValueError(f"group {group['id']}: members must be a list")
        for member in group["members"]:
            if member not in ids:
                raise ValueError(f"group {group['id']}: unknown member {member!r}")


def _check_complex(name: str, value: Any) -> None:
    """employeeOrgData / onPremisesExtensionAttributes: an object of its own string members (or null)."""
    if value is None:
        return
    if not isinstance(value, dict) or any(k not in COMPLEX_MEMBERS[name] or not (v is None or isinstance(v, str))
                                          for k, v in value.items()):
        raise bad_request(f"Invalid value specified for property '{name}' of resource 'User'.")


class Result:
    """An ordered id list for one query, with a lazily built position index for skiptokens."""

    __slots__ = ("ids", "_pos")

    def __init__(self, ids: list[str]):
        self.ids = ids
        self._pos: dict[str, int] | None = None

    def position_after(self, offset: int, last_id: str) -> int:
        """Where the next page starts: after last_id if it is still there, else at offset."""
        if self._pos is None:
            self._pos = {oid: i for i, oid in enumerate(self.ids)}
        index = self._pos.get(last_id)
        return index + 1 if index is not None else min(offset, len(self.ids))


class Tenant:
    """The live state of one tenant plus the caches that make paging large groups cheap."""

    RESULT_CACHE_SIZE = 128
    FRAGMENT_VARIANTS = 16

    def __init__(self, data: dict):
        validate_tenant(data)
        self.tenant_id: str = data["tenantId"]
        self.domain: str = data["domain"]
        self.display_name: str = data.get("displayName") or self.domain.split(".")[0].capitalize()
        # Who may sign in on the interactive pages (README, "Interactive sign-in"); none listed: admin@domain / admin.
        self.admins: list[dict] = [dict(a) for a in data.get("admins", [])]
        self.objects: dict[str, dict] = {}
        self._lower_ids: dict[str, str] = {}
        self.kind: dict[str, str] = {}
        self.users: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.devices: dict[str, dict] = {}
        self.members: dict[str, list[str]] = {}
        self._member_sets: dict[str, set[str]] = {}
        # The directory extension properties registered for users: selectable (and settable) by name.
        self.extensions: tuple[str, ...] = tuple(data.get("extensionProperties", []))
        self._lookups = {kind: {**PROPERTY_LOOKUP[kind], **{n.lower(): n for n in self.extensions}}
                         for kind in ("user", None)}
        for user in data.get("users", []):
            self._put("user", dict(user))
        for device in data.get("devices", []):
            self._put("device", dict(device))
        for group in data.get("groups", []):
            stored = {k: v for k, v in group.items() if k != "members"}
            self._put("group", stored)
            self.members[stored["id"]] = list(dict.fromkeys(group["members"]))
            self._member_sets[stored["id"]] = set(self.members[stored["id"]])
        self.version = 0
        self.indexed_at: dict[str, float] = {}  # objects created or changed: when $search's index catches up
        self._results: OrderedDict[tuple, Result] = OrderedDict()
        self._fragments: OrderedDict[tuple, dict[str, str]] = OrderedDict()
        self._tokens: dict[tuple[str, str], list[str]] = {}
        self.changes = ChangeLog()  # every write to a user, group or membership (delta queries, notifications)

    # --- state ---------------------------------------------------------------------------------

    def _put(self, kind: str, obj: dict) -> None:
        oid = obj["id"]
        self.objects[oid] = obj
        self.kind[oid] = kind
        {"user": self.users, "group": self.groups, "device": self.devices}[kind][oid] = obj
        self._lower_ids[oid.lower()] = oid

    def resolve_id(self, oid: str) -> str | None:
        """The stored id for oid (GUIDs compare case-insensitively in Graph)."""
        if oid in self.objects:
            return oid
        return self._lower_ids.get(oid.lower())

    def get(self, kind: str, oid: str) -> dict:
        """The stored object of that kind, or a Graph 404."""
        real = self.resolve_id(oid)
        if real is None or self.kind[real] != kind:
            raise not_found(oid)
        return self.objects[real]

    def _reindex(self, oid: str) -> None:
        """The object is new or changed: $search finds it only once the lagging index has caught up."""
        self.indexed_at[oid] = time.monotonic() + self.search_lag_s

    search_lag_s = 0.0  # set by the server (POST /_fake/search {"lagSeconds"})

    def _changed(self, *oids: str) -> None:
        self.version += 1
        self._results.clear()
        for oid in oids:
            for fragments in self._fragments.values():
                fragments.pop(oid, None)
            self._tokens.pop((oid, "displayName"), None)
            self._tokens.pop((oid, "description"), None)

    def to_dict(self) -> dict:
        """The current state in the tenant file format."""
        return {
            "tenantId": self.tenant_id,
            "domain": self.domain,
            **({"extensionProperties": list(self.extensions)} if self.extensions else {}),
            "users": [dict(u) for u in self.users.values()],
            "groups": [{**g, "members": list(self.members[g["id"]])} for g in self.groups.values()],
            "devices": [dict(d) for d in self.devices.values()],
            **({"admins": [dict(a) for a in self.admins]} if self.admins else {}),
        }

    # --- property access -----------------------------------------------------------------------

    def value(self, oid: str, prop: str) -> Any:
        """A property of an object as Graph would return it (stored, derived, or null/empty)."""
        obj = self.objects[oid]
        if prop in obj and prop != "onPremisesExtensionAttributes":  # that one always shows its fifteen members
            return obj[prop]
        derived = _DERIVED[self.kind[oid]](obj, prop)
        if derived is not _MISSING:
            return derived
        return [] if prop in COLLECTION_PROPERTIES else None

    def tokens(self, oid: str, prop: str) -> list[str]:
        """Cached $search tokens of a tokenized property."""
        key = (oid, prop)
        cached = self._tokens.get(key)
        if cached is None:
            value = self.value(oid, prop)
            cached = search_tokens(value if isinstance(value, str) else None)
            self._tokens[key] = cached
        return cached

    def lookup(self, kind: str | None) -> dict[str, str]:
        """The property names $select may name for ``kind``: the type's, and for users this tenant's directory
        extensions (an extension not registered is an unknown property, a 400)."""
        return self._lookups.get(kind, PROPERTY_LOOKUP[kind])

    def represent(self, oid: str, select: tuple[str, ...] | None, typed: bool) -> dict:
        """The JSON object for one item: @odata.type, id and the default or selected properties."""
        kind = self.kind[oid]
        out: dict[str, Any] = {"@odata.type": ODATA_TYPE[kind], "id": oid}
        if select is None:
            names: Iterable[str] = DEFAULTS[kind]
        elif typed:
            names = select
        else:
            names = [p for p in select if p in PROPERTY_SETS[kind] or p in self.objects[oid]]
        for prop in names:
            if prop == "id":
                continue
            if prop.startswith("extension_") and prop not in self.objects[oid]:
                continue  # a directory extension not set on the object is left out, not null
            out[prop] = self.value(oid, prop)
        return out

    def item_json(self, oid: str, select: tuple[str, ...] | None, typed: bool) -> str:
        """Serialized item, cached per $select variant until the object changes."""
        key = (select, typed)
        fragments = self._fragments.get(key)
        if fragments is None:
            if len(self._fragments) >= self.FRAGMENT_VARIANTS:
                self._fragments.popitem(last=False)
            fragments = self._fragments[key] = {}
        else:
            self._fragments.move_to_end(key)
        text = fragments.get(oid)
        if text is None:
            text = fragments[oid] = json.dumps(self.represent(oid, select, typed), ensure_ascii=False,
                                                separators=(",", ":"))
        return text

    # --- queries -------------------------------------------------------------------------------

    def transitive(self, group_id: str) -> list[str]:
        """All transitive members of a group (users, groups, devices), cached until the next write."""
        key = ("transitive", group_id)
        cached = self._results.get(key)
        if cached is None:
            ids = expand_members(group_id, lambda g: self.members.get(g, ()), lambda o: self.kind.get(o) == "group")
            cached = self._remember(key, Result(ids))
        return cached.ids

    def _remember(self, key: tuple, result: Result) -> Result:
        self._results[key] = result
        if len(self._results) > self.RESULT_CACHE_SIZE:
            self._results.popitem(last=False)
        return result

    def query(
        self,
        source: tuple,
        filter_text: str | None = None,
        predicate: Callable | None = None,
        search_text: str | None = None,
        search: SearchNode | None = None,
        orderby: OrderBy | None = None,
    ) -> Result:
        """The ordered ids for a collection source ("users",), ("groups",) or ("members", gid, transitive, cast)."""
        key = (source, filter_text, search_text, orderby)
        cached = self._results.get(key)
        if cached is not None:
            self._results.move_to_end(key)
            return cached
        if source[0] == "users":
            ids = list(self.users)
        elif source[0] == "groups":
            ids = list(self.groups)
        elif source[0] == "memberOf":
            _, oid, transitive, see_hidden = source
            ids = [g for g in self.groups
                   if oid in (self.transitive(g) if transitive else self.members.get(g, ()))
                   and (see_hidden or str(self.groups[g].get("visibility") or "").lower() != "hiddenmembership")]
        else:
            _, group_id, transitive, cast = source
            if group_id is None:  # a listing the caller may not see (hidden membership): nothing
                ids = []
            else:
                ids = self.transitive(group_id) if transitive else list(self.members[group_id])
            if cast is not None:
                ids = [oid for oid in ids if self.kind[oid] == cast]
        if predicate is not None:
            ids = [oid for oid in ids if predicate(lambda prop, _oid=oid: self.value(_oid, prop))]
        lagging = False
        if search is not None:
            matches = compile_search(search, self.value, self.tokens)
            now = time.monotonic()
            lagging = any(t > now for t in self.indexed_at.values())
            ids = [oid for oid in ids if matches(oid) and self.indexed_at.get(oid, 0.0) <= now]
        if orderby is not None:
            ids.sort(key=lambda oid: sort_key(self.value(oid, orderby.prop)), reverse=orderby.descending)
        if lagging:  # the answer changes as the index catches up: not cached
            return Result(ids)
        return self._remember(key, Result(ids))

    # --- writes (what an admin does in the Entra portal) ---------------------------------------

    def _check_properties(self, kind: str, body: dict) -> dict:
        clean: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata.") or "@odata.bind" in name:
                continue
            canonical = self.lookup(kind).get(name.lower())
            if canonical is None:
                raise bad_request(f"Property '{name}' does not exist on type '{TYPE_NAME[kind]}'.")
            if canonical in COMPLEX_MEMBERS:
                _check_complex(canonical, value)
            if canonical in READ_ONLY:
                raise bad_request(f"Property '{canonical}' is read-only and cannot be set.")
            if canonical in ("accountEnabled", "mailEnabled", "securityEnabled") and not isinstance(value, bool):
                raise bad_request(f"Invalid value for property '{canonical}': a boolean is expected.")
            if canonical == "displayName" and (not isinstance(value, str) or not value.strip()):
                raise bad_request(f"Invalid value specified for property 'displayName' of resource '{RESOURCE[kind]}'.")
            if canonical == "userType" and value not in ("Member", "Guest"):
                raise bad_request("Invalid value specified for property 'userType'.")
            clean[canonical] = value
        return clean

    def _check_upn(self, upn: Any, except_id: str | None = None) -> None:
        if not isinstance(upn, str) or "@" not in upn:
            raise bad_request("Invalid value specified for property 'userPrincipalName' of resource 'User'.")
        for user in self.users.values():
            if user["id"] != except_id and str(user["userPrincipalName"]).lower() == upn.lower():
                raise bad_request(
                    "Another object with the same value for property userPrincipalName already exists."
                )

    def create_user(self, body: dict) -> dict:
        """POST /users: displayName and userPrincipalName are required; an id is generated if absent."""
        oid = body.get("id") or str(uuid.uuid4())
        body = {k: v for k, v in body.items() if k not in ("id", "passwordProfile")}
        props = self._check_properties("user", body)
        for required in ("displayName", "userPrincipalName"):
            if required not in props:
                raise bad_request(f"Property '{required}' is required when creating the user.")
        self._check_upn(props["userPrincipalName"])
        if self.resolve_id(oid) is not None:
            raise bad_request("Another object with the same value for property id already exists.")
        user = {
            "id": oid, "displayName": None, "userPrincipalName": None, "mail": None, "givenName": None,
            "surname": None, "accountEnabled": True, "onPremisesSamAccountName": None, "employeeId": None,
            "userType": "Member",
        }
        user.update(props)
        self._put("user", user)
        self._changed(oid)
        self._reindex(oid)
        self.changes.record("user", oid, ops.CREATED)
        return user

    def update(self, kind: str, oid: str, body: dict) -> None:
        """PATCH a user, group or device."""
        obj = self.get(kind, oid)
        props = self._check_properties(kind, body)
        if kind == "user" and "userPrincipalName" in props:
            self._check_upn(props["userPrincipalName"], except_id=obj["id"])
        obj.update(props)
        self._changed(obj["id"])
        self._reindex(obj["id"])
        if kind in ("user", "group") and props:
            self.changes.record(kind, obj["id"], ops.UPDATED, props=frozenset(props))

    def delete(self, kind: str, oid: str) -> None:
        """DELETE a user, group or device: it also leaves every group it was a member of."""
        obj = self.get(kind, oid)
        real = obj["id"]
        left: list[str] = []
        for group_id, members in self.members.items():
            if real in self._member_sets[group_id]:
                members.remove(real)
                self._member_sets[group_id].discard(real)
                left.append(group_id)
        if kind == "group":
            del self.members[real]
            del self._member_sets[real]
        del self.objects[real]
        del self.kind[real]
        {"user": self.users, "group": self.groups, "device": self.devices}[kind].pop(real)
        self._lower_ids.pop(real.lower(), None)
        self._changed(real)
        for group_id in left:  # the memberships the deleted object had end with it
            self.changes.record("group", group_id, ops.REMOVED, member=real, member_kind=kind, cascade=True)
        if kind in ("user", "group"):
            self.changes.record(kind, real, ops.DELETED, reason=deletion_reason(kind, obj))

    def create_group(self, body: dict) -> dict:
        """POST /groups, honouring members@odata.bind."""
        oid = body.get("id") or str(uuid.uuid4())
        binds = body.get("members@odata.bind", [])
        if not isinstance(binds, list):
            raise bad_request("members@odata.bind must be an array of directory object URLs.")
        member_ids = [self._ref_target(url) for url in binds]
        props = self._check_properties("group", {k: v for k, v in body.items() if k != "id"})
        if "displayName" not in props:
            raise bad_request("Property 'displayName' is required when creating the group.")
        if self.resolve_id(oid) is not None:
            raise bad_request("Another object with the same value for property id already exists.")
        group = {"id": oid, "displayName": None, "description": None, "mail": None}
        group.update(props)
        self._put("group", group)
        self.members[oid] = list(dict.fromkeys(member_ids))
        self._member_sets[oid] = set(self.members[oid])
        self._changed(oid)
        self._reindex(oid)
        self.changes.record("group", oid, ops.CREATED)
        return group

    def _ref_target(self, url: Any) -> str:
        if not isinstance(url, str) or not url.strip("/"):
            raise bad_request("Invalid object reference: an '@odata.id' URL is expected.")
        oid = url.rstrip("/").rsplit("/", 1)[-1]
        real = self.resolve_id(oid)
        if real is None:
            raise not_found(oid)
        return real

    def add_member(self, group_id: str, ref: Any) -> None:
        """POST /groups/{id}/members/$ref; adding an existing member is a 400 like Graph."""
        group = self.get("group", group_id)
        member = self._ref_target(ref)
        if member == group["id"]:
            raise bad_request("A group cannot be a member of itself.")
        if member in self._member_sets[group["id"]]:
            raise bad_request(
                "One or more added object references already exist for the following modified properties: 'members'."
            )
        self.members[group["id"]].append(member)
        self._member_sets[group["id"]].add(member)
        self._changed()
        self.changes.record("group", group["id"], ops.ADDED, member=member, member_kind=self.kind[member])

    def remove_member(self, group_id: str, member_id: str) -> None:
        """DELETE /groups/{id}/members/{memberId}/$ref; a non-member is a 404."""
        group = self.get("group", group_id)
        member = self.resolve_id(member_id)
        if member is None or member not in self._member_sets[group["id"]]:
            raise not_found(member_id)
        self.members[group["id"]].remove(member)
        self._member_sets[group["id"]].discard(member)
        self._changed()
        self.changes.record("group", group["id"], ops.REMOVED, member=member, member_kind=self.kind[member])


def deletion_reason(kind: str, obj: dict) -> str:
    """How Entra deletes: users and Microsoft 365 groups go to deleted items for 30 days ("changed", restorable);
    every other group is deleted permanently ("deleted") (user-delete, group-delete, delta-query-overview)."""
    if kind == "group" and "Unified" not in (obj.get("groupTypes") or []):
        return "deleted"
    return "changed"


def not_found(oid: str) -> GraphError:
    """Graph's 404 for a directory object that does not exist."""
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{oid}' does not exist or one of its queried reference-property objects are not present.",
    )
