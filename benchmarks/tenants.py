"""Memory of one function host serving many customer tenants: one credential and one token per tenant.

    .venv/bin/python benchmarks/tenants.py [--tenants 1000] [--cache 1000]

Loads ``--tenants`` small tenants into the fake Graph, consents each at the local identity platform, then runs a
worker process that builds the app's own Graph adapter (``sync.composition``: ClientSecretCredential per tenant,
``GRAPH_TENANT_CACHE`` = ``--cache``; ``--own-sessions``: a session per credential) and looks up one group in every tenant — one token request and one Graph call
each. The worker prints its RSS before the first tenant, after 1 and after all; this script prints a table and one
JSON line. Figures, not pass/fail: what to expect of a host with that many tenants.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENT_ID = "00000000-0000-0000-0000-00000000d5c1"


def rss_mb() -> tuple[float, float]:
    """This process's resident set and its peak (VmRSS, VmHWM), MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


async def worker(tenants: list[dict], cache: int, shared: bool) -> dict:
    from sync.adapters.credentials import TenantCredentials
    from sync.adapters.graph import GraphDirectory
    from sync.settings import Settings

    settings = Settings.from_env()
    credentials = TenantCredentials(settings, shared_transport=shared)  # as sync.composition.build does (shared)
    directory = GraphDirectory(settings.graph_base_url, credentials.for_tenant, allowed_hosts=["127.0.0.1"],
                               max_tenants=cache)
    import gc

    gc.collect()
    before = rss_mb()[0]
    started = time.perf_counter()
    found = 0
    for n, t in enumerate(tenants):
        found += len(await directory.get_groups(t["tenant"], [t["group"]]))
        if n == 0:
            gc.collect()
            after_one = rss_mb()[0]
    elapsed = time.perf_counter() - started
    gc.collect()
    after_all, peak = rss_mb()
    held = len(directory._adapters)
    await directory.close()
    await credentials.close()
    return {"tenants": len(tenants), "cache": cache, "sharedTransport": shared, "credentialsHeld": held, "groupsFound": found,
            "rssBeforeMb": round(before, 1), "rssAfterOneMb": round(after_one, 1), "rssAfterAllMb": round(after_all, 1),
            "peakMb": round(peak, 1), "perTenantKb": round((after_all - after_one) * 1024 / max(1, held - 1), 1),
            "seconds": round(elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--cache", type=int, default=1000, help="GRAPH_TENANT_CACHE of the worker")
    parser.add_argument("--own-sessions", action="store_true",
                        help="one HTTP session per tenant's credential (azure-identity's default), for comparison")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import asyncio

        plan = json.loads(Path(args.worker).read_text())
        print("RESULT " + json.dumps(asyncio.run(worker(plan, args.cache, not args.own_sessions))))
        return 0

    from local.fake_graph import FakeGraph
    from local.identity import LocalApp

    app = LocalApp.create(CLIENT_ID, ["http://127.0.0.1:7071/api/directory/consent"])
    fake = FakeGraph(registration=app.registration, managed_identity=app.managed_identity, tls=app.tls).start()
    try:
        plan = []
        for n in range(args.tenants):
            tid, gid = str(uuid.uuid4()), str(uuid.uuid4())
            fake.add_tenant({"tenantId": tid, "domain": f"t{n}.example", "users": [], "devices": [],
                             "groups": [{"id": gid, "displayName": "Engineering", "description": None,
                                                     "mail": None, "members": []}]})
            fake._call(fake.identity.consent, tid)
            plan.append({"tenant": tid, "group": gid})
        plan_file = app.tls.folder / "tenants.json"
        plan_file.write_text(json.dumps(plan))
        env = {**os.environ, **app.app_settings("secret", fake.authority), "GRAPH_BASE_URL": fake.base_url,
               "PORTAL_TOKEN_SECRET": "x" * 32, "SIGNING_SECRET": "y" * 32, "TABLES_CONNECTION_STRING": "UseDevelopmentStorage=true",
               "ServiceBusConnection": "Endpoint=sb://127.0.0.1;SharedAccessKeyName=k;SharedAccessKey=k",
               "CONSENT_REDIRECT_URI": "http://127.0.0.1:7071/api/directory/consent",
               "PORTAL_BASE_URL": "http://localhost:3000", "MAIL_SENDER": "none", "PYTHONPATH": str(ROOT)}
        fake.reset_stats()
        done = subprocess.run([sys.executable, __file__, "--worker", str(plan_file), "--cache", str(args.cache),
                               *(["--own-sessions"] if args.own_sessions else [])],
                              env=env, capture_output=True, text=True, timeout=1800)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
            return 1
        result = json.loads(line[len("RESULT "):])
        by_route = fake.stats()["byRoute"]
        result["tokenRequests"] = sum(v for k, v in by_route.items() if "oauth2/v2.0/token" in k)
        result["graphRequests"] = sum(v for k, v in by_route.items() if k.split(" ", 1)[-1].startswith("/v1.0"))
    finally:
        fake.stop()
    rows = [("tenants", result["tenants"]), ("GRAPH_TENANT_CACHE", result["cache"]),
            ("one shared HTTP session", result["sharedTransport"]),
            ("credentials held at the end", result["credentialsHeld"]), ("token requests", result["tokenRequests"]),
            ("Graph requests", result["graphRequests"]), ("RSS before (MB)", result["rssBeforeMb"]),
            ("RSS after 1 tenant (MB)", result["rssAfterOneMb"]), ("RSS after all (MB)", result["rssAfterAllMb"]),
            ("peak RSS (MB)", result["peakMb"]), ("per tenant held (KB)", result["perTenantKb"]),
            ("seconds", result["seconds"])]
    for name, value in rows:
        print(f"{name:32} {value:>10}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
