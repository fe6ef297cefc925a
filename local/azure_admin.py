"""Change the local fake tenant the way an Azure admin changes a real one, through its Graph writes (so Graph's change
notifications reach the running app, as they would in Azure). For trying near-real-time sync by hand:

    python -m local.azure_admin block david.cohen@contoso.example
    python -m local.azure_admin unblock david.cohen@contoso.example
    python -m local.azure_admin remove-member "Engineering" david.cohen@contoso.example
    python -m local.azure_admin add-member "Engineering" megan.bowen@contoso.example
    python -m local.azure_admin delete david.cohen@contoso.example

Users are named by userPrincipalName, groups by display name; the tenant is the demo tenant unless ``--tenant``.
It reads the fake Graph's address from ``.local/ready.json``, which ``make run`` writes (or pass ``--graph``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .client import FakeTenantAdmin

ROOT = Path(__file__).resolve().parents[1]
READY = ROOT / ".local" / "ready.json"


def _one(admin: FakeTenantAdmin, collection: str, prop: str, value: str) -> str:
    quoted = value.replace("'", "''")
    found = admin._graph("GET", f"/{collection}", params={"$filter": f"{prop} eq '{quoted}'", "$select": "id"}).json()
    ids = [item["id"] for item in found.get("value", [])]
    if len(ids) != 1:
        raise SystemExit(f"{len(ids)} {collection} have {prop} {value!r}")
    return ids[0]


def main(argv: list[str] | None = None) -> int:
    from .fake_graph import DEMO_TENANT

    parser = argparse.ArgumentParser(prog="python -m local.azure_admin", description=__doc__.splitlines()[0])
    parser.add_argument("--graph", help="the fake Graph's base URL (…/v1.0); default: from .local/ready.json")
    parser.add_argument("--tenant", help="tenant id; default: the demo tenant")
    parser.add_argument("action", choices=["block", "unblock", "delete", "add-member", "remove-member"])
    parser.add_argument("names", nargs="+", help="a user's userPrincipalName (after the group's name for members)")
    args = parser.parse_args(argv)
    graph = args.graph
    if graph is None:
        if not READY.exists():
            print("start the local stack first (`make run`), or pass --graph", file=sys.stderr)
            return 2
        graph = json.loads(READY.read_text())["graph"]
    tenant = args.tenant or json.loads(Path(DEMO_TENANT).read_text())["tenantId"]
    admin = FakeTenantAdmin(graph, tenant)
    if args.action in ("add-member", "remove-member"):
        if len(args.names) != 2:
            parser.error(f"{args.action} takes a group's display name and a user's userPrincipalName")
        group = _one(admin, "groups", "displayName", args.names[0])
        user = _one(admin, "users", "userPrincipalName", args.names[1])
        (admin.add_member if args.action == "add-member" else admin.remove_member)(group, user)
    else:
        for name in args.names:
            user = _one(admin, "users", "userPrincipalName", name)
            if args.action == "delete":
                admin.delete_user(user)
            else:
                admin.block(user, args.action == "block")
    print(f"{args.action} {' '.join(args.names)}: done; the app hears of it from Graph within seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
