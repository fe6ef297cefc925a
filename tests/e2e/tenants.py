"""Tenants for end-to-end tests, built in code with fresh ids so every test has a directory of its own."""
from __future__ import annotations

import uuid
from typing import Any


def _id() -> str:
    return str(uuid.uuid4())


class TenantBuilder:
    """Builds the fake tenant JSON format; returns ids by short names for the test to refer to."""

    def __init__(self, domain: str | None = None) -> None:
        domain = domain or f"t{uuid.uuid4().hex[:8]}.example"  # e-mails of different tests never mix
        self.domain = domain
        self.tenant: dict[str, Any] = {"tenantId": _id(), "domain": domain, "users": [], "groups": [], "devices": []}
        self.ids: dict[str, str] = {}

    def user(self, name: str, *, mail: str | None = "", enabled: bool = True, guest: bool = False,
             display: str | None = None, employee_id: str | None = None, sam: str | None = None,
             extra: dict[str, Any] | None = None) -> str:
        uid = self.ids[name] = _id()
        upn = f"{name}_ext#EXT#@{self.domain}" if guest else f"{name}@{self.domain}"
        self.tenant["users"].append({
            "id": uid, "displayName": display or name.replace(".", " ").title(), "userPrincipalName": upn,
            "mail": (f"{name}@{self.domain}" if mail == "" else mail), "givenName": name.split(".")[0].title(),
            "surname": name.split(".")[-1].title(), "accountEnabled": enabled, "onPremisesSamAccountName": sam,
            "employeeId": employee_id, "userType": "Guest" if guest else "Member", **(extra or {})})
        return uid

    def extension(self, name: str) -> str:
        """Register a directory extension property for users (extension_<appId without hyphens>_<name>)."""
        full = f"extension_5bfc8fdacfc943a9a6de214ea9d15fdb_{name}"
        self.tenant.setdefault("extensionProperties", []).append(full)
        return full

    def group(self, name: str, display: str, members: list[str]) -> str:
        gid = self.ids[name] = _id()
        self.tenant["groups"].append({"id": gid, "displayName": display, "description": f"{display} group",
                                      "mail": None, "members": [self.ids[m] for m in members]})
        return gid

    def device(self, name: str) -> str:
        did = self.ids[name] = _id()
        self.tenant["devices"].append({"id": did, "displayName": name})
        return did


def scenario() -> TenantBuilder:
    """Nested groups three deep, a user in several selected groups, blocked users, a guest, a device, a group member."""
    t = TenantBuilder()
    for name in ("ann.lee", "bob.stone", "cat.moss", "dan.pike", "eve.ruiz", "fay.wong", "gus.hart", "hal.reed",
                 "ivy.nash", "jon.cole"):
        t.user(name)
    t.user("kim.blocked", enabled=False)
    t.user("lou.guest", guest=True, mail=None)
    t.user("max.nomail", mail=None)
    t.device("kiosk-01")
    t.group("level3", "Platform On-Call", ["ivy.nash", "jon.cole", "kiosk-01"])
    t.group("level2", "Platform Team", ["hal.reed", "level3"])
    t.group("eng", "Engineering Department", ["gus.hart", "level2", "ann.lee"])
    t.group("sales", "Sales Department", ["ann.lee", "bob.stone", "cat.moss", "kim.blocked", "lou.guest"])
    t.group("support", "Support Department", ["dan.pike", "eve.ruiz", "fay.wong", "ann.lee", "max.nomail"])
    return t


def big(users: int = 2500) -> TenantBuilder:
    """A group of ``users`` members, half of them through a nested group."""
    t = TenantBuilder()
    names = [f"user{i:05d}" for i in range(users)]
    for n in names:
        t.user(n)
    t.group("inner", "Big Inner Group", names[: users // 2])
    t.group("outer", "Big Company Group", names[users // 2 :] + ["inner"])
    return t


STAFF = [f"staff{i:02d}" for i in range(30)]


def staff_and_engineering(engineering: str = "Engineering") -> TenantBuilder:
    """The STAFF in "All Staff" and one engineer in a group of their own: removing most staff trips the guard."""
    t = TenantBuilder()
    for n in STAFF:
        t.user(n)
    t.user("eng.one")
    t.group("all", "All Staff", STAFF)
    t.group("eng", engineering, ["eng.one"])
    return t
