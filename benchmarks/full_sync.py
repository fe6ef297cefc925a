"""Full sync and re-sync at scale, measured against the floor of this machine in the same run (``make bench``).

    python benchmarks/full_sync.py [--users 20000] [--groups 20] [--seed 1] [--latency-ms 0] [--profile FILE]

Generates a tenant deterministically, serves it from the fake Graph, and runs four things one after the other,
each in its own process: the floor (``benchmarks/floor.py``: raw paging and raw batch writes), then a Full Sync, a
re-sync and a dry run of the unchanged directory with the app's use cases and real adapters
(``benchmarks/worker.py``), then a dry run before the first sync on an empty store (``worker.py --dry-run-only``,
so its peak RSS is its own). The fake tenant, the local
Service Bus and Azurite run out of process, so the worker's peak RSS is the group workers' own. Prints a human
table and, as its last line, one JSON object (see benchmarks/README.md for what each number means).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from aiohttp import web  # noqa: E402

from local.azurite import Azurite, connection_string  # noqa: E402
from local.fake_graph import generate_tenant, transitive_user_members  # noqa: E402
from local.fault_proxy import FaultProxy, control_routes  # noqa: E402
from local.server_thread import ServerThread  # noqa: E402
from local.table_limits import TableLimits  # noqa: E402

PAGE_SIZE = 999
MAX_TRANSACTION = 100
KEYS = ("users", "groups", "memberships", "graph_requests", "graph_floor", "table_writes", "table_write_floor",
        "full_sync_s", "floor_s", "resync_s", "resync_user_writes", "resync_membership_writes", "peak_rss_mb",
        "import_function_app_s", "import_azure_functions_s", "dry_run_s", "dry_run_peak_rss_mb", "dry_run_user_writes",
        "dry_run_table_writes", "dry_resync_s", "dry_resync_user_writes", "azure_floor_s", "throttled_table_requests",
        "throttled_graph_requests", "synced_users")
# Azure's scalability targets (--azure-limits): Table Storage's entities per second per partition and per account
# (learn.microsoft.com/azure/storage/tables/scalability-targets), Graph's resource units per 10 s of a large tenant
# and the cost of a page of a group's transitive members with $select (learn.microsoft.com/graph/throttling-limits).
ORG = "org-bench"  # benchmarks/worker.py's
PARTITION_PER_S, ACCOUNT_PER_S, GRAPH_UNITS_PER_S, MEMBERS_PAGE_UNITS = 2000, 20000, 8000 / 10, 4
CLIENT_ID = "00000000-0000-0000-0000-00000000d5c1"  # the app registration the fake's identity platform holds
CONSENT_REDIRECT_URI = "http://127.0.0.1:7071/api/directory/consent"
# Local-only secrets (the dev host's defaults); never used in Azure. The Graph credential's settings come from the
# fake's identity platform (see graph_settings).
APP_SETTINGS = {
    "PORTAL_TOKEN_SECRET": "local-dev-portal-token-secret-not-for-production",
    "SIGNING_SECRET": "local-dev-signing-secret-not-for-production-00",
    "GROUP_SYNC_QUEUE": "group-sync",
    "ENROLLMENT_QUEUE": "enrollment-email",
    "CONSENT_REDIRECT_URI": CONSENT_REDIRECT_URI,
    "PORTAL_BASE_URL": "http://localhost:3000",
    "MAIL_SENDER": "none",
    "TABLE_PREFIX": "bench",
}


class Child:
    """A stand-in in its own process that prints ``READY {json}`` once it listens."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, *args], cwd=str(ROOT), stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=_env())
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{' '.join(args)} did not start: {line!r}")
        self.ready = json.loads(line[6:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LimitsControl(ServerThread):
    """The table proxy's control routes (``/tables/limits``) on a loopback port, for the sync worker to read."""

    thread_name = "bench-limits-control"

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.port: int | None = None
        super().__init__()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        app = web.Application()
        app.add_routes(control_routes(lambda: self.proxy))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def _close(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def count_users(connection_string: str, table: str, org: str) -> int:
    """User rows of ``org`` in the store (RowKeys below '|'; the username claims sort after), read from Azurite."""
    from azure.data.tables import TableClient

    with TableClient.from_connection_string(connection_string, table) as client:
        rows = client.query_entities(f"PartitionKey eq '{org}' and RowKey lt '|'", select=["RowKey"])
        return sum(1 for _ in rows)


def azure_floor(writes_floor: dict[str, int], graph_floor: int, spent: dict[str, Any] | None) -> float | None:
    """Seconds Azure's limits alone impose on a Full Sync: the users partition's entities (the write floor's, and the
    reads the run made of it) at 2,000/s, every entity written and read at 20,000/s per account, and the member pages
    at a large tenant's resource units; the largest of the three. Each meter starts with one window's credit (a
    second of entities, ten seconds of units: local/table_limits.py, local/fake_graph/throttling.py), which is
    taken off. None without the limits' metering."""
    if spent is None:
        return None
    partition = (writes_floor["user_entities"] + spent["busiest_partition"]["read"]) / PARTITION_PER_S - 1
    other_writes = max(0, spent["written"] - spent["busiest_partition"]["written"])
    account = (writes_floor["user_entities"] + other_writes + spent["read"]) / ACCOUNT_PER_S - 1
    graph = graph_floor * MEMBERS_PAGE_UNITS / GRAPH_UNITS_PER_S - 10
    return round(max(partition, account, graph, 0.0), 2)


# A re-sync is skipped when the Full Sync did not end (its numbers are then null in the JSON).
_NOT_RUN: dict[str, Any] = {"seconds": None, "status": "not run", "counts": {}, "store": {"user_rows": None,
                            "membership_rows": None}, "wire": {"seconds": {}}, "calls": {},
                            "jobs": {"n": 0, "seconds_sum": 0, "abandoned": []}, "rss_mb": None}


def _progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def graph_settings(ready: dict[str, str]) -> dict[str, str]:
    """The worker's Graph credential settings: ``LocalApp.app_settings("secret", authority)`` of the fake's app.

    ``python -m local.fake_graph`` creates that LocalApp (registration ``CLIENT_ID`` with the consent redirect URI,
    a client secret, its CA) and prints what the settings need. SSL_CERT_FILE is in the worker's environment from
    its start, so aiohttp (azure-identity's transport) trusts the local authority's CA when it is imported.
    """
    return {"GRAPH_CLIENT_ID": CLIENT_ID, "GRAPH_CREDENTIAL": "secret", "AUTHORITY_HOST": ready["authority"],
            "SSL_CERT_FILE": ready["authorityCa"], "GRAPH_CLIENT_SECRET": ready["clientSecret"]}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _last_json(text: str, what: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{what} printed no result")
    return json.loads(lines[-1])


def run_script(args: list[str], what: str, env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run one of the benchmark's scripts in its own process and return the JSON it printed last."""
    done = subprocess.run([sys.executable, *args], cwd=str(ROOT), env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return _last_json(done.stdout, what)


def import_time(module: str, runs: int) -> float:
    """Median wall time of ``python -c "import <module>"`` in a fresh interpreter, from the repo root."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=str(ROOT), env=_env(), check=True)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def write_floor(group_users: dict[str, list[str]]) -> dict[str, int]:
    """Write requests the design cannot avoid, Σ over partitions of ⌈entities / 100⌉ (see README)."""
    memberships = sum(len(u) for u in group_users.values())
    users = len(set().union(*group_users.values())) if group_users else 0
    groups = len(group_users)
    # Users partition: a new user's row and its username claim; a user in k groups gets k-1 membership merges.
    user_entities = 2 * users + (memberships - users)
    # Bookkeeping, written at different moments by different workers, so one request each: reserve and release
    # the subscription, create the run with its progress rows, end the run; per group its progress and grid row.
    bookkeeping = 3 + math.ceil((groups + 1) / MAX_TRANSACTION) + 2 * groups
    return {"user_entities": user_entities, "users_partition": math.ceil(user_entities / MAX_TRANSACTION),
            "bookkeeping": bookkeeping, "total": math.ceil(user_entities / MAX_TRANSACTION) + bookkeeping}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0, help="the fake tenant answers each request this late")
    parser.add_argument("--profile", help="cProfile the worker's Full Sync into this file (pstats format)")
    parser.add_argument("--import-runs", type=int, default=5, help="interpreters started per import measurement")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take before giving up")
    parser.add_argument("--azure-limits", action="store_true",
                        help="run the Full Sync and re-sync under Azure's scalability targets: a proxy metering Table "
                             "Storage's entities per partition and account (503 ServerBusy) and the fake's Graph "
                             "resource units (429 Retry-After)")
    parser.add_argument("--manual-share", type=float, default=0,
                        help="this share of the users already exists as Manual portal users, linked by the first sync")
    parser.add_argument("--stock-azurite", action="store_true",
                        help="run Azurite without local/azurite_speedups.js (lookups and query pages scan the table)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the stand-ins are stopped on the way out

    tenant = generate_tenant(users=args.users, groups=args.groups, seed=args.seed, nesting_depth=1, overlap=0.5,
                             blocked_share=0.05, guest_share=0.02, devices=10)
    group_ids = [g["id"] for g in tenant["groups"]]
    group_users = {g: transitive_user_members(tenant, g) for g in group_ids}
    memberships = sum(len(u) for u in group_users.values())
    users = len(set().union(*group_users.values()))
    graph_floor = sum(max(1, math.ceil(len(u) / PAGE_SIZE)) for u in group_users.values())
    # A link costs what a creation does in the floor: one replace of the existing row plus its index entry (the
    # creation: the row plus its username claim), so the write floor is the same with or without Manual users.
    writes_floor = write_floor(group_users)
    synced = sorted(set().union(*group_users.values()))
    step = round(1 / args.manual_share) if args.manual_share > 0 else 0
    upn = {u["id"]: u["userPrincipalName"] for u in tenant["users"]}
    manual = [upn[uid] for uid in synced[::step]] if step else []
    host = json.loads((ROOT / "host.json").read_text())["extensions"]["serviceBus"]
    concurrency = ["--group-concurrency", str(host["maxConcurrentCalls"]), "--graph-concurrency", "4",
                   "--write-concurrency", "8"]

    children: list[Any] = []
    azurite_cpu_floor: float | None = None
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tenant_file = Path(tmp) / "tenant.json"
        tenant_file.write_text(json.dumps(tenant, ensure_ascii=False), encoding="utf-8")
        manual_file = Path(tmp) / "manual.txt"
        manual_file.write_text("\n".join(manual), encoding="utf-8")
        tenant_id = tenant["tenantId"]
        del tenant
        try:
            graph = Child("-m", "local.fake_graph", "--tenant", str(tenant_file), "--port", "0",
                          "--client-id", CLIENT_ID, "--redirect-uri", CONSENT_REDIRECT_URI)
            children.append(graph)
            bus = Child("-m", "local.broker", "--port", "0", "--queue", "group-sync", "--queue", "enrollment-email")
            children.append(bus)
            base_url, origin = graph.ready["graph"], graph.ready["graph"].rsplit("/v1.0", 1)[0]
            common = ["--graph", base_url, "--tenant", tenant_id, "--groups", ",".join(group_ids)]
            # Warm the fake's caches first, so neither the floor nor the sync pays for them.
            _progress(f"tenant: {users} users, {len(group_ids)} groups, {memberships} memberships; warming up the fake")
            run_script(["benchmarks/floor.py", *common], "graph warm-up")
            httpx.post(f"{origin}/_fake/latency", json={"ms": args.latency_ms}).raise_for_status()

            with Azurite(speedups=not args.stock_azurite) as azurite:
                floor = run_script(["benchmarks/floor.py", *common, *concurrency, "--tables", azurite.connection_string],
                                   "floor", timeout=args.timeout)
                azurite_cpu_floor = _cpu_seconds(azurite.pid)
            _progress(f"floor: {floor['seconds']} s, {floor['write_requests']} transactions")
            with Azurite(speedups=not args.stock_azurite) as azurite:
                tables, limited = azurite.connection_string, {}
                if args.azure_limits:  # the sync's store behind the metering proxy, Graph metered too
                    proxy = FaultProxy(azurite.host, azurite.port, limits=TableLimits(enabled=True)).start()
                    children.append(proxy)
                    control = LimitsControl(proxy).start()
                    children.append(control)
                    tables = connection_string(proxy.host, proxy.port)
                    limited = {"BENCH_TABLE_LIMITS": control.url}
                    httpx.post(f"{origin}/_fake/limits", json={"enabled": True}).raise_for_status()
                env = _env(**APP_SETTINGS, **graph_settings(graph.ready), GRAPH_BASE_URL=base_url,
                           TABLES_CONNECTION_STRING=tables, ServiceBusConnection=bus.ready["serviceBus"], **limited)
                worker_args = ["benchmarks/worker.py", "--tenant", tenant_id, "--groups", ",".join(group_ids),
                               "--timeout", str(args.timeout), "--store-pid", str(azurite.pid)]
                if args.profile:
                    worker_args += ["--profile", str(Path(args.profile).resolve())]
                if manual:
                    worker_args += ["--manual-users", str(manual_file)]
                sync = run_script(worker_args, "sync worker", env=env, timeout=3 * args.timeout + 120)
                httpx.post(f"{origin}/_fake/limits", json={"enabled": False}).raise_for_status()
                synced_users = count_users(azurite.connection_string, f"{APP_SETTINGS['TABLE_PREFIX']}Users", ORG)
            _progress(f"sync: full {sync['full']['seconds']} s ({sync['full']['status']}), "
                      f"re-sync {sync.get('resync', {}).get('seconds')} s, "
                      f"dry re-sync {sync.get('dry_resync', {}).get('seconds')} s")
            with Azurite(speedups=not args.stock_azurite) as azurite:  # an empty store: a preview before any sync
                env = _env(**APP_SETTINGS, **graph_settings(graph.ready), GRAPH_BASE_URL=base_url,
                           TABLES_CONNECTION_STRING=azurite.connection_string, ServiceBusConnection=bus.ready["serviceBus"])
                dry = run_script(["benchmarks/worker.py", "--tenant", tenant_id, "--groups", ",".join(group_ids),
                                  "--timeout", str(args.timeout), "--store-pid", str(azurite.pid), "--dry-run-only"],
                                 "dry-run worker", env=env, timeout=args.timeout + 120)
            _progress(f"dry run: {dry['dry']['seconds']} s ({dry['dry']['status']}), peak RSS {dry['peak_rss_mb']} MB")
        finally:
            for child in reversed(children):
                child.stop()

    full = sync["full"]
    resync = sync.get("resync") or _NOT_RUN
    dry_resync = sync.get("dry_resync") or _NOT_RUN
    preview = dry["dry"]
    result = {
        "users": users,
        "groups": len(group_ids),
        "memberships": memberships,
        "graph_requests": full["graph_requests"],
        "graph_floor": graph_floor,
        "table_writes": full["wire"]["write_requests"],
        "table_write_floor": writes_floor["total"],
        "full_sync_s": full["seconds"],
        "floor_s": floor["seconds"],
        "resync_s": resync["seconds"],
        "resync_user_writes": resync["store"]["user_rows"],
        "resync_membership_writes": resync["store"]["membership_rows"],
        "peak_rss_mb": sync.get("peak_rss_mb_before_dry_resync", sync["peak_rss_mb"]),
        "import_function_app_s": import_time("function_app", args.import_runs),
        "import_azure_functions_s": import_time("azure.functions", args.import_runs),
        "dry_run_s": preview["seconds"],
        "dry_run_peak_rss_mb": dry["peak_rss_mb"],
        "dry_run_user_writes": preview["store"]["user_rows"] + preview["store"]["membership_rows"],
        "dry_run_table_writes": preview["wire"]["write_requests"],
        "dry_resync_s": dry_resync["seconds"],
        "dry_resync_user_writes": _sum(dry_resync["store"]["user_rows"], dry_resync["store"]["membership_rows"]),
        "azure_floor_s": azure_floor(writes_floor, graph_floor, full.get("limits")),
        "throttled_table_requests": _limited(full, resync, key="throttled_table_requests"),
        "throttled_graph_requests": _limited(full, resync, key="throttled_graph_requests"),
        "synced_users": synced_users,
    }
    report(args, {**result, "azurite_cpu_floor_s": azurite_cpu_floor}, floor, {**sync, "dry": preview}, writes_floor)
    print(json.dumps({k: result[k] for k in KEYS}), flush=True)
    return result


def _limited(*phases: dict[str, Any], key: str) -> int | None:
    """``key`` of the limits' metering summed over the phases run under them; None without --azure-limits."""
    spent = [p["limits"] for p in phases if p.get("limits")]
    return sum(s[key] for s in spent) if spent else None


def _sum(*values: int | None) -> int | None:
    return None if any(v is None for v in values) else sum(values)


def _ratio(value: float | None, floor: float) -> str:
    return f"{value / floor:.2f}x" if floor and value is not None else "-"


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) a process has used so far: where the other side of the work went."""
    if pid is None:
        return None
    times = psutil.Process(pid).cpu_times()
    return round(times.user + times.system + times.children_user + times.children_system, 1)


def report(args: argparse.Namespace, r: dict[str, Any], floor: dict, sync: dict, writes_floor: dict) -> None:
    """The human table: each target with PASS/MISS, then where the requests and the time went."""
    full, resync = sync["full"], sync.get("resync") or _NOT_RUN
    mark = {True: "PASS", False: "MISS"}
    imports = r["import_function_app_s"] / r["import_azure_functions_s"] if r["import_azure_functions_s"] else 0
    print(f"Full sync benchmark: {r['users']} users, {r['groups']} groups, {r['memberships']} memberships, "
          f"seed {args.seed}, Graph latency {args.latency_ms:g} ms")
    print(f"run status: full sync {full['status']} {full['counts']}; re-sync {resync['status']} {resync['counts']}")
    if sync.get("manual_users"):
        print(f"existing Manual users before the first sync: {sync['manual_users']} "
              f"(linked in place: {full['counts'].get('linked')})")
    if full["unfinished_groups"]:
        print(f"UNFINISHED after {args.timeout:g} s: groups {full['unfinished_groups']}, "
              f"{full['deliveries_in_hand']} deliveries in hand")
    rows = [
        ("graph requests", r["graph_requests"], r["graph_floor"], "<= 1.05x floor",
         r["graph_requests"] <= 1.05 * r["graph_floor"]),
        ("table write requests", r["table_writes"], r["table_write_floor"], "<= 1.15x floor",
         r["table_writes"] <= 1.15 * r["table_write_floor"]),
        ("full sync seconds", r["full_sync_s"], r["floor_s"], "<= 1.5x floor", r["full_sync_s"] <= 1.5 * r["floor_s"]),
        ("re-sync user writes", r["resync_user_writes"], 0, "= 0", r["resync_user_writes"] == 0),
        ("re-sync membership writes", r["resync_membership_writes"], 0, "= 0", r["resync_membership_writes"] == 0),
        ("peak RSS MB (worker)", r["peak_rss_mb"], 300, "<= 300 (at 100k users)", r["peak_rss_mb"] <= 300),
        ("import function_app s", r["import_function_app_s"], r["import_azure_functions_s"], "<= 2x azure.functions",
         imports <= 2),
    ]
    print(f"\n{'measure':<28}{'value':>12}{'floor/ref':>12}{'ratio':>9}  {'target':<26}")
    for name, value, ref, target, ok in rows:
        print(f"{name:<28}{value!s:>12}{ref!s:>12}{_ratio(value, ref):>9}  {target:<26}{mark[ok]}")
    print(f"{'re-sync seconds':<28}{r['resync_s']!s:>12}")
    if r.get("azure_floor_s") is not None:
        ok = r["full_sync_s"] is not None and r["full_sync_s"] <= 1.25 * r["azure_floor_s"]
        print(f"{'full sync s (Azure limits)':<28}{r['full_sync_s']!s:>12}{r['azure_floor_s']!s:>12}"
              f"{_ratio(r['full_sync_s'], r['azure_floor_s']):>9}  {'<= 1.25x azure_floor_s':<26}{mark[ok]}")
        spent = full.get("limits") or {}
        print(f"  under the limits: throttled table requests {r['throttled_table_requests']}, Graph"
              f" {r['throttled_graph_requests']}; full sync wrote {spent.get('written')} and read {spent.get('read')}"
              f" entities (users partition {spent.get('busiest_partition')}), {spent.get('graph_resource_units')}"
              f" Graph resource units; users in the store {r['synced_users']}")
        again = resync.get("limits") or {}
        print(f"  re-sync: wrote {again.get('written')} and read {again.get('read')} entities (users partition"
              f" {again.get('busiest_partition')}), {again.get('throttled_table_requests')} throttled table requests")
    preview = sync["dry"]
    print("\ndry runs (previews; they write no user, membership, invitation or grid row)")
    print(f"  before the first sync: {preview['status']} in {r['dry_run_s']} s (full sync {r['full_sync_s']} s),"
          f" peak RSS {r['dry_run_peak_rss_mb']} MB (full sync's workers {r['peak_rss_mb']} MB),"
          f" user and membership writes {r['dry_run_user_writes']}, table write requests {r['dry_run_table_writes']}"
          f" (the run's own rows), counts {preview['counts']}")
    print(f"  of the unchanged directory after the sync: {r['dry_resync_s']} s (re-sync {r['resync_s']} s),"
          f" user and membership writes {r['dry_resync_user_writes']}")

    print("\nwhere the requests went (full sync | re-sync)")
    for name in ("write_requests", "batches", "failed_batches", "writes", "failed_writes", "batch_entities",
                 "point_reads", "queries"):
        print(f"  table {name:<22}{full['wire'].get(name, 0):>10} | {resync['wire'].get(name, 0):<10}")
    print(f"  store counter requests      {full['store']['requests']:>10} | {resync['store']['requests']:<10}"
          f" (successful writes only; entities {full['store']['entities']} | {resync['store']['entities']})")
    print(f"  write floor: users partition {writes_floor['users_partition']} ({writes_floor['user_entities']} entities)"
          f" + bookkeeping {writes_floor['bookkeeping']}")
    print(f"  floor script: {floor['write_requests']} transactions, {floor['entities']} entities, "
          f"{floor['graph_requests']} Graph requests")
    print(f"  token requests to the authority {full.get('token_requests', 0):>6} | {resync.get('token_requests', 0):<10}"
          " (not in graph requests; the tenant's token is cached from selecting the groups)")

    print("\nwhere the worker's time went (seconds summed over concurrent jobs)")
    print(f"  group jobs {full['jobs']['n']}, sum {full['jobs']['seconds_sum']} s, longest {full['jobs']['seconds_max']} s,"
          f" abandoned {full['jobs']['abandoned_n']} | re-sync jobs {resync['jobs']['n']},"
          f" sum {resync['jobs']['seconds_sum']} s")
    reconnects = full["jobs"].get("receiver_reconnects", []) + resync["jobs"].get("receiver_reconnects", [])
    if reconnects:
        print(f"  Service Bus receiver reconnects: {len(reconnects)} ({', '.join(sorted(set(reconnects)))})")
    for reason in full["jobs"]["abandoned"] + resync["jobs"]["abandoned"]:
        print(f"  abandoned delivery: {reason}")
    names = sorted(set(full["calls"]) | set(resync["calls"]))
    for name in names:
        a, b = full["calls"].get(name, [0, 0]), resync["calls"].get(name, [0, 0])
        print(f"  {name:<28}{a[0]:>8} items {a[1]:>9.2f} s | {b[0]:>8} items {b[1]:>9.2f} s")
    wire = full["wire"]["seconds"]
    print("  table HTTP round trips      " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(wire.items())))
    print(f"  timeline (full sync | re-sync): {full.get('timeline')} | {resync.get('timeline')}")
    print(f"  CPU s (full sync | re-sync): worker {full.get('cpu_s')} | {resync.get('cpu_s')}, Azurite"
          f" {full.get('store_cpu_s')} | {resync.get('store_cpu_s')}; Azurite during the floor {r.get('azurite_cpu_floor_s')}")
    print(f"  worker RSS MB: ready {sync['rss_mb_ready']}, after full sync {full['rss_mb']},"
          f" after re-sync {resync['rss_mb']}, peak {sync['peak_rss_mb']}; highest sampled (every 0.2 s):"
          f" full sync {full.get('rss_peak_mb')} at {full.get('rss_peak_at_s')} s, re-sync {resync.get('rss_peak_mb')}"
          f" at {resync.get('rss_peak_at_s')} s")
    print()


if __name__ == "__main__":
    main()
