"""Tenants of the fault suite, built on the end-to-end tests' builder (fresh ids and domain per call)."""
from __future__ import annotations

from tests.e2e.tenants import TenantBuilder, scenario


def with_large_group(members: int = 1200, *, blocked: bool = True) -> TenantBuilder:
    """The e2e scenario (nested groups, blocked user, guest, device) plus a group over one Graph page.

    The large group's members are blocked in Azure by default, so with ``deactivateBlockedUsers`` they are synced
    as Inactive and get no invitation: the e-mails of a run stay those of the scenario's users.
    """
    t = scenario()
    names = [f"staff{i:05d}" for i in range(members)]
    for n in names:
        t.user(n, enabled=not blocked)
    t.group("large", "Large Department", names + ["level2", "ann.lee"])
    return t


def many_small_groups(groups: int = 32, per_group: int = 3) -> TenantBuilder:
    """``groups`` small groups whose workers all finish at about the same time; each shares a user with the next."""
    t = TenantBuilder()
    for g in range(groups):
        for m in range(per_group):
            t.user(f"u{g:02d}.{m}")
    for g in range(groups):
        t.group(f"g{g:02d}", f"Team {g:02d}", [f"u{g:02d}.{m}" for m in range(per_group)] + [f"u{(g + 1) % groups:02d}.0"])
    return t
