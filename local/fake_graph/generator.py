"""Deterministic generator of large, realistic-looking fake tenants.

    python -m local.fake_graph.generator --users 100000 --groups 20 --seed 1 --out big.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import unicodedata
import uuid
from collections import Counter

from .tenant import expand_members

FIRST_NAMES = (
    "Adele", "Alex", "Allan", "Amira", "Ana", "Anders", "Andrés", "Aoife", "Arjun", "Astrid", "Aylin", "Beatriz",
    "Bianca", "Björn", "Bongani", "Carlos", "Catalina", "Chen", "Chiara", "Chloé", "Christie", "Daniel", "Dmitri",
    "Diego", "Ebony", "Elif", "Elena", "Emeka", "Emma", "Enzo", "Erik", "Fatima", "Felipe", "Fiona", "François",
    "Gabriel", "Grace", "Hannah", "Hana", "Hiroshi", "Ines", "Ingrid", "Isaac", "Isabela", "Ivan", "Jamal", "James",
    "Jana", "Javier", "Jia", "Johanna", "José", "Julia", "Kai", "Karim", "Katarzyna", "Kenji", "Khalid", "Lars",
    "Laura", "Layla", "Leila", "Leon", "Liam", "Lidia", "Lucas", "Lucía", "Łukasz", "Lynne", "Maja", "Malik",
    "Maria", "Mateo", "Megan", "Mei", "Miguel", "Mika", "Miriam", "Mohammed", "Nadia", "Nestor", "Ngozi", "Nikolai",
    "Noah", "Nora", "Olga", "Oliver", "Omar", "Patti", "Pedro", "Pradeep", "Priya", "Rafael", "Raj", "Rania",
    "Renée", "Rosa", "Saanvi", "Sakura", "Samuel", "Sara", "Sebastián", "Sipho", "Sofia", "Søren", "Tamar",
    "Thabo", "Theo", "Tomás", "Uma", "Valentina", "Victor", "Wei", "Yara", "Yusuf", "Zainab", "Zoë",
)
LAST_NAMES = (
    "Abbott", "Adeyemi", "Ahmed", "Andersen", "Ángel", "Bauer", "Becker", "Bergström", "Brown", "Castillo", "Chen",
    "Costa", "Dąbrowski", "Da Silva", "Dubois", "Dvořák", "Eriksen", "Fernández", "Fischer", "Fujita", "García",
    "Gonzalez", "Gupta", "Haddad", "Hansen", "Hernández", "Hoffmann", "Horvat", "Ibrahim", "Ivanova", "Jansen",
    "Johnson", "Kaplan", "Kato", "Khan", "Kim", "Kowalski", "Kumar", "Larsen", "Lee", "Lefebvre", "Li", "López",
    "Mahlangu", "Martin", "Martínez", "Mensah", "Meyer", "Moreau", "Müller", "Murphy", "Nakamura", "Nguyen",
    "Novak", "Nowak", "Núñez", "O'Brien", "Okafor", "Olsen", "Papadopoulos", "Park", "Patel", "Pereira", "Petrov",
    "Popescu", "Quinn", "Rahman", "Ramírez", "Rossi", "Russo", "Sánchez", "Santos", "Sato", "Schmidt", "Schneider",
    "Silva", "Singh", "Smith", "Sørensen", "Suzuki", "Tanaka", "Taylor", "Thompson", "Van der Berg", "Vargas",
    "Wagner", "Walker", "Wang", "Weber", "Williams", "Wilson", "Wójcik", "Yamamoto", "Yilmaz", "Zhang", "Zimmermann",
)
DEPARTMENTS = (
    "Sales", "Engineering", "Finance", "Marketing", "Support", "Human Resources", "Legal", "Operations", "Product",
    "Research", "Procurement", "Facilities", "IT", "Security", "Customer Success", "Logistics", "Quality",
    "Training", "Design", "Data",
)
QUALIFIERS = ("Team", "Staff", "Managers", "EMEA", "Americas", "APAC", "Contractors", "Leads", "North", "South")
GUEST_DOMAINS = ("fabrikam.example", "northwind.example", "tailspin.example", "adatum.example")
DEVICE_PREFIXES = ("DESKTOP", "LAPTOP", "SURFACE", "KIOSK")
_FOLD = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "æ": "ae", "Æ": "AE", "ß": "ss", "đ": "d", "Đ": "D"})


def ascii_slug(text: str) -> str:
    """Lower-case ASCII letters and digits only, e.g. "Søren O'Brien" -> "sorenobrien"."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_FOLD))
    return "".join(ch for ch in decomposed.lower() if ch.isascii() and ch.isalnum())


def _group_name(index: int) -> str:
    department = DEPARTMENTS[index % len(DEPARTMENTS)]
    qualifier = QUALIFIERS[(index // len(DEPARTMENTS)) % len(QUALIFIERS)]
    round_ = index // (len(DEPARTMENTS) * len(QUALIFIERS))
    return f"{department} {qualifier}" + (f" {round_ + 1}" if round_ else "")


def generate_tenant(users: int = 20000, groups: int = 20, seed: int = 1, nesting_depth: int = 1,
                    overlap: float = 0.5, blocked_share: float = 0.05, guest_share: float = 0.02,
                    devices: int = 10, domain: str = "contoso.example") -> dict:
    """A tenant dict in the fake's file format; the same arguments always give the same tenant."""
    if users < 0 or groups < 1 or devices < 0 or nesting_depth < 0:
        raise ValueError("users, devices and nesting_depth must be >= 0 and groups >= 1")
    for name, share in (("overlap", overlap), ("blocked_share", blocked_share), ("guest_share", guest_share)):
        if not 0 <= share <= 1:
            raise ValueError(f"{name} must be between 0 and 1")
    if overlap >= 1 and groups > 1:
        overlap = 0.999  # geometric membership below must terminate
    rng = random.Random(seed)

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    tenant_id = new_id()
    guests = set(rng.sample(range(users), round(users * guest_share)))
    blocked = set(rng.sample(range(users), round(users * blocked_share)))
    members = [i for i in range(users) if i not in guests]
    without_mail = set(rng.sample(members, min(len(members), max(1 if users >= 20 else 0, users // 100))))

    user_list = []
    used_locals: Counter[str] = Counter()
    used_sams: Counter[str] = Counter()
    for i in range(users):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        base = f"{ascii_slug(first)}.{ascii_slug(last)}"
        used_locals[base] += 1
        local = base if used_locals[base] == 1 else f"{base}{used_locals[base]}"
        guest = i in guests
        if guest:
            home = rng.choice(GUEST_DOMAINS)
            mail = f"{local}@{home}"
            upn = f"{local}_{home}#EXT#@{domain}"
        else:
            upn = f"{local}@{domain}"
            mail = None if i in without_mail else upn
        sam = employee_id = None
        if not guest and rng.random() < 0.75:
            sam_base = (ascii_slug(first)[:1] + ascii_slug(last))[:16]
            used_sams[sam_base] += 1
            sam = sam_base if used_sams[sam_base] == 1 else f"{sam_base}{used_sams[sam_base]}"
        if not guest and rng.random() < 0.65:
            employee_id = f"E{100000 + i}"
        user_list.append({
            "id": new_id(),
            "displayName": f"{first} {last}",
            "userPrincipalName": upn,
            "mail": mail,
            "givenName": first,
            "surname": last,
            "accountEnabled": i not in blocked,
            "onPremisesSamAccountName": sam,
            "employeeId": employee_id,
            "userType": "Guest" if guest else "Member",
        })

    group_ids = [new_id() for _ in range(groups)]
    direct: list[list[str]] = [[] for _ in range(groups)]
    for user in user_list:
        chosen = {rng.randrange(groups)}
        while len(chosen) < groups and rng.random() < overlap:
            chosen.add(rng.randrange(groups))
        for g in sorted(chosen):
            direct[g].append(user["id"])

    # Chains of nesting_depth+1 groups: the first contains the second, which contains the third, ...
    chain = nesting_depth + 1
    chains = max(1, groups // (3 * chain)) if nesting_depth and groups >= chain else 0
    for c in range(chains):
        for level in range(nesting_depth):
            parent = c * chain + level
            direct[parent].insert(rng.randrange(len(direct[parent]) + 1), group_ids[parent + 1])

    device_list = []
    for _ in range(devices):
        device = {"id": new_id(), "displayName": f"{rng.choice(DEVICE_PREFIXES)}-{rng.getrandbits(28):07X}"}
        device_list.append(device)
        target = direct[rng.randrange(groups)]
        target.insert(rng.randrange(len(target) + 1), device["id"])

    group_list = []
    for g in range(groups):
        name = _group_name(g)
        slug = ascii_slug(name)
        group_list.append({
            "id": group_ids[g],
            "displayName": name,
            "description": f"Everyone in {name}",
            "mail": None if g % 4 == 3 else f"{slug}@{domain}",
            "members": direct[g],
        })
    return {"tenantId": tenant_id, "domain": domain, "users": user_list, "groups": group_list, "devices": device_list}


def transitive_user_members(tenant: dict, group_id: str) -> list[str]:
    """Ids of the distinct users in a group, nested groups included, in the order the fake pages them."""
    members = {g["id"]: g["members"] for g in tenant["groups"]}
    if group_id not in members:
        raise KeyError(group_id)
    users = {u["id"] for u in tenant["users"]}
    expanded = expand_members(group_id, lambda g: members.get(g, ()), lambda oid: oid in members)
    return [oid for oid in expanded if oid in users]


def main(argv: list[str] | None = None) -> None:
    """CLI: write a generated tenant to --out (or stdout)."""
    parser = argparse.ArgumentParser(prog="python -m local.fake_graph.generator", description=__doc__.strip())
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nesting-depth", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--blocked-share", type=float, default=0.05)
    parser.add_argument("--guest-share", type=float, default=0.02)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--domain", default="contoso.example")
    parser.add_argument("--out", help="output file (default: stdout)")
    args = parser.parse_args(argv)
    tenant = generate_tenant(users=args.users, groups=args.groups, seed=args.seed, nesting_depth=args.nesting_depth,
                             overlap=args.overlap, blocked_share=args.blocked_share, guest_share=args.guest_share,
                             devices=args.devices, domain=args.domain)
    text = json.dumps(tenant, ensure_ascii=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.out}: tenant {tenant['tenantId']}, {len(tenant['users'])} users, "
              f"{len(tenant['groups'])} groups, {len(tenant['devices'])} devices", file=sys.stderr)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
