"""The benchmark's sync process: the app's use cases and real adapters, its group workers fed by Service Bus.

Run by ``benchmarks/full_sync.py`` in a child process (so its peak RSS is the group workers' alone) with the app
settings in the environment. It connects a subscription to the fake tenant, selects the groups, then runs a Full
Sync and a re-sync: ``sync.runs.start`` sends one message per group to the local broker, and
``maxConcurrentCalls`` (host.json) deliveries at a time run ``handle_group_job`` as the group-worker trigger does
(complete on success, abandon on an exception); then a dry run of the unchanged directory (a preview on a full
portal). With ``--dry-run-only`` it runs one dry run on an empty portal instead (a preview before the first sync),
so that process's peak RSS is the dry run's own. Prints one JSON line with what each phase measured.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import inspect
import json
import logging
import os
import resource
import ssl
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from azure.core.pipeline.transport import AioHttpTransport  # noqa: E402

from local.identity.server import parse_form_post  # noqa: E402
from local.receiving import receive_into  # noqa: E402
from sync import consent, group_sync, runs, subscriptions  # noqa: E402
from sync.composition import Services, build  # noqa: E402
from sync.model import Caller, GroupJob, RunStatus  # noqa: E402
from sync.settings import Settings  # noqa: E402

ORG = "org-bench"
WRITE_METHODS = {"POST", "PUT", "PATCH", "MERGE", "DELETE"}


class CountingTransport(AioHttpTransport):
    """Counts every HTTP request the Table SDK sends, as the service sees it (retries and failed batches too)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reset()

    def reset(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    async def send(self, request: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = await super().send(request, **kwargs)
        path = urlsplit(request.url).path
        if request.method not in WRITE_METHODS:
            kind = "point_reads" if path.endswith(")") else "queries"
        elif path.endswith("/Tables"):
            kind = "table_creates"
        elif path.endswith("/$batch"):
            await response.load_body()
            body = request.body if isinstance(request.body, bytes) else b""
            self.counts["batch_entities"] += body.count(b"Content-Transfer-Encoding: binary")
            kind = "batches" if response.status_code == 202 and _inner_ok(response.body()) else "failed_batches"
        else:
            kind = "writes" if response.status_code < 300 else "failed_writes"
        self.counts[kind] += 1
        self.seconds[kind] += time.perf_counter() - started
        return response

    def summary(self) -> dict[str, Any]:
        counts = dict(self.counts)
        writes = sum(counts.get(k, 0) for k in ("batches", "failed_batches", "writes", "failed_writes"))
        return {"write_requests": writes, **counts, "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def _inner_ok(body: bytes) -> bool:
    """A changeset answers 202 even when it failed: the failure is the inner response's status."""
    statuses = [line[9:12] for line in body.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    return bool(statuses) and all(s.startswith(b"2") for s in statuses)


class Timed:
    """Wraps a port and adds up the wall time its coroutines and async iterators take (summed over workers)."""

    def __init__(self, target: Any, prefix: str, totals: dict[str, list]) -> None:
        self._target, self._prefix, self._totals = target, prefix, totals

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        label = f"{self._prefix}.{name}"
        if inspect.isasyncgenfunction(attr):
            return functools.partial(self._iterate, attr, label)
        if inspect.iscoroutinefunction(attr):
            return functools.partial(self._await, attr, label)
        return attr

    def _add(self, label: str, started: float, items: int = 1) -> None:
        entry = self._totals.setdefault(label, [0, 0.0])
        entry[0] += items
        entry[1] += time.perf_counter() - started

    async def _await(self, fn: Any, label: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            self._add(label, started)

    async def _iterate(self, fn: Any, label: str, *args: Any, **kwargs: Any) -> Any:
        iterator = fn(*args, **kwargs).__aiter__()
        while True:
            started = time.perf_counter()
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                self._add(label, started, 0)
                return
            self._add(label, started)
            yield item


def services(settings: Settings, transport: CountingTransport, totals: dict[str, list]) -> Services:
    """The app's composition, with the Table store built on a counting transport and the ports timed."""
    from azure.data.tables.aio import TableServiceClient

    from sync.adapters import tables

    svc = build(settings)
    svc.closers.remove(svc.store.close)  # replaced before it ever opened a connection
    client = TableServiceClient.from_connection_string(settings.tables_connection_string, transport=transport,
                                                       **tables._client_options())
    store = tables.TableStore(client, settings.table_prefix)
    svc.store = store
    svc.subscriptions, svc.runs, svc.groups = store.subscriptions, store.runs, store.groups
    svc.users = Timed(store.users, "users", totals)
    svc.directory = Timed(svc.directory, "graph", totals)
    svc.closers.insert(0, store.close)
    return svc


class Consumer:
    """The group-worker trigger's host side, as local/function_host.py runs it."""

    def __init__(self, svc: Services, connection: str, queue: str, concurrency: int, lock_renewal_s: float) -> None:
        self.svc, self.connection, self.queue = svc, connection, queue
        self.concurrency, self.lock_renewal_s = concurrency, lock_renewal_s
        self.stopping = asyncio.Event()
        self.running: set[asyncio.Task] = set()
        self.reset()

    def reset(self) -> None:
        self.jobs: list[float] = []
        self.spans: list[tuple[float, float]] = []  # (start, end) of each delivery, perf_counter
        self.abandoned: list[str] = []
        self.reconnects: list[str] = []

    async def run(self) -> None:
        from azure.servicebus.aio import ServiceBusClient
        from azure.servicebus.exceptions import ServiceBusError

        slots = asyncio.Semaphore(self.concurrency)
        while not self.stopping.is_set():
            try:
                async with ServiceBusClient.from_connection_string(self.connection) as client:
                    receiver = client.get_queue_receiver(self.queue, prefetch_count=0)
                    async with receiver:
                        await receive_into(receiver, slots, self.concurrency, self.stopping,
                                           functools.partial(self._deliver, receiver, slots=slots), self.running)
            except (ServiceBusError, OSError, ValueError) as exc:
                # The SDK shuts a receiver down after an unexpected error: reconnect, as the function host does.
                self.reconnects.append(type(exc).__name__)
                await asyncio.sleep(1)

    async def settled(self, timeout: float = 60) -> None:
        """Wait until every delivery in hand is completed or abandoned."""
        deadline = time.perf_counter() + timeout
        while self.running and time.perf_counter() < deadline:
            await asyncio.wait(set(self.running), timeout=deadline - time.perf_counter())

    async def _deliver(self, receiver: Any, message: Any, slots: asyncio.Semaphore) -> None:
        from azure.servicebus.aio import AutoLockRenewer

        renewer = AutoLockRenewer(max_lock_renewal_duration=self.lock_renewal_s)
        renewer.register(receiver, message)
        started = time.perf_counter()
        try:
            body = b"".join(message.body) if not isinstance(message.body, (bytes, str)) else message.body
            job = GroupJob.from_json(body)
            try:
                await group_sync.handle_group_job(self.svc, job, redelivered=(message.delivery_count or 0) >= 1)
            except Exception as exc:
                self.abandoned.append(f"{type(exc).__name__}: {exc}"[:300])
                logging.getLogger("bench").warning("group job failed; abandoned", exc_info=True)
                await _settle(receiver.abandon_message, message)
                return
            await _settle(receiver.complete_message, message)
        finally:
            self.jobs.append(time.perf_counter() - started)
            self.spans.append((started, time.perf_counter()))
            slots.release()  # as local/function_host.py: the slot is free before the renewer has wound down
            await renewer.close()


async def _settle(action: Any, message: Any) -> None:
    """A settle that fails (lock lost, receiver shut down) is left to redelivery: handlers are at-least-once."""
    from azure.servicebus.exceptions import ServiceBusError

    try:
        await action(message)
    except (ServiceBusError, ValueError):
        logging.getLogger("bench").warning("settling a message failed; the broker redelivers it")


async def grant_consent(svc: Services, caller: Caller, sub_id: str, tenant_id: str) -> None:
    """The admin's consent as the browser walks it: Microsoft's admin-consent page at the (local) authority, our
    callback, the OpenID Connect sign-in there, the signed sign-in posted back to us; then the portal's confirm."""
    cafile = os.environ.get("SSL_CERT_FILE")
    verify = ssl.create_default_context(cafile=cafile) if cafile else True
    async with httpx.AsyncClient(verify=verify, timeout=30, follow_redirects=False) as browser:
        answer = await browser.get(await consent.authorize_url(svc, caller, sub_id))
        if answer.status_code != 302:
            raise RuntimeError(f"admin consent page answered {answer.status_code}: {answer.text[:300]}")
        callback = dict(parse_qsl(urlsplit(answer.headers["location"]).query))
        if callback.get("tenant") != tenant_id:
            raise RuntimeError(f"admin consent redirected with {callback}, not for tenant {tenant_id}")
        sign_in = await consent.complete_consent(svc, callback)
        page = await browser.get(sign_in)
        if page.status_code != 200:
            raise RuntimeError(f"sign-in at {sign_in} answered {page.status_code}: {page.text[:300]}")
        _action, fields = parse_form_post(page.text)
        back = await consent.complete_sign_in(svc, fields)
    query = dict(parse_qsl(urlsplit(back).query))
    if query.get("consent") != "pending":
        raise RuntimeError(f"consent not recorded: {back}")
    await consent.confirm_consent(svc, caller, sub_id, {"consentCode": query["consentCode"]})  # the portal's confirm


async def connect(svc: Services, caller: Caller, tenant_id: str, group_ids: list[str]) -> str:
    """An authorized subscription with the groups selected, as the portal's admin would leave it."""
    sub = await subscriptions.create(svc, caller, {"name": "Benchmark"})
    await grant_consent(svc, caller, sub.id, tenant_id)
    await subscriptions.update(svc, caller, sub.id, {"deactivateBlockedUsers": True, "sendEnrollmentEmail": False,
                                                     "nightlySync": False})
    await subscriptions.select_groups(svc, caller, sub.id, {"groupIds": group_ids})
    return sub.id


async def phase(svc: Services, caller: Caller, sub_id: str, graph: httpx.AsyncClient, transport: CountingTransport,
                consumer: Consumer, totals: dict[str, list], timeout: float, store_pid: int | None = None,
                dry_run: bool = False) -> dict[str, Any]:
    """One Full Sync (or dry run) from the API's start to the run's terminal status, with everything it cost."""
    svc.store.counters.reset()
    transport.reset()
    consumer.reset()
    totals.clear()
    directory_before = svc.directory.requests
    (await graph.post("/_fake/stats/reset")).raise_for_status()
    limits_before = await _limits(graph)
    peak = {"mb": 0.0, "at_s": 0.0}
    sampling = asyncio.create_task(_sample_rss(peak, time.perf_counter()))
    store = psutil.Process(store_pid) if store_pid else None
    store_cpu = sum(store.cpu_times()[:2]) if store else 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    run = await runs.start(svc, caller, sub_id, dry_run=dry_run)
    deadline = started + timeout
    while True:
        current = await svc.runs.get(caller.org, sub_id, run.id)
        if current.status in RunStatus.TERMINAL or time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.1)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    sampling.cancel()
    store_cpu = sum(store.cpu_times()[:2]) - store_cpu if store else None
    await consumer.settled()
    view = await svc.runs.view(caller.org, sub_id, run.id)
    stats = (await graph.get("/_fake/stats")).json()
    limits = _limits_spent(limits_before, await _limits(graph))
    counters = svc.store.counters
    return {
        "seconds": round(seconds, 3),
        "status": current.status,
        "counts": view.run.final_counts.to_api() if view else {},
        "errors": [e.to_api() for e in view.run.errors][:5] if view else [],
        "unfinished_groups": [g.group_id for g in view.groups if not g.finished] if view else [],
        "deliveries_in_hand": len(consumer.running),
        # The fake also counts its authority's requests (token, sign-in): only Graph's are the sync's.
        "graph_requests": sum(n for route, n in stats["byRoute"].items() if route.split(" ", 1)[-1].startswith("/v1.0")),
        "token_requests": stats["byRoute"].get("POST /{tenant}/oauth2/v2.0/token", 0),
        "graph_by_route": stats["byRoute"],
        "directory_requests": svc.directory.requests - directory_before,
        "store": {"requests": counters.requests, "entities": counters.entities, "user_rows": counters.user_rows,
                  "membership_rows": counters.membership_rows},
        "wire": transport.summary(),
        "calls": {k: [v[0], round(v[1], 3)] for k, v in sorted(totals.items())},
        "timeline": _timeline(consumer.spans, started, started + seconds),
        "jobs": {"n": len(consumer.jobs), "seconds_sum": round(sum(consumer.jobs), 3),
                 "seconds_max": round(max(consumer.jobs, default=0), 3), "abandoned": consumer.abandoned[:5],
                 "abandoned_n": len(consumer.abandoned), "receiver_reconnects": consumer.reconnects},
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "rss_peak_mb": round(peak["mb"], 1), "rss_peak_at_s": round(peak["at_s"], 1),
        "cpu_s": round(cpu, 3),
        "store_cpu_s": None if store_cpu is None else round(store_cpu, 3),
        "limits": limits,
    }


async def _limits(graph: httpx.AsyncClient) -> dict[str, Any] | None:
    """The stand-ins' metering of Azure's limits now (``full_sync.py --azure-limits``), None without it."""
    control = os.environ.get("BENCH_TABLE_LIMITS")
    if not control:
        return None
    async with httpx.AsyncClient(timeout=30) as http:
        table = (await http.get(f"{control}/tables/limits")).json()
    return {"table": table, "graph": (await graph.get("/_fake/limits")).json()}


def _limits_spent(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """What one phase spent of the limits: throttled requests, and entities written and read (all partitions, and
    the busiest one: the org's users partition)."""
    if before is None or after is None:
        return None
    t0, t1 = before["table"], after["table"]
    busiest = t1["partitions"][0] if t1["partitions"] else {"table": None, "partitionKey": None, "written": 0, "read": 0}
    was = next((p for p in t0["partitions"] if (p["table"], p["partitionKey"]) == (busiest["table"],
                                                                                  busiest["partitionKey"])),
               {"written": 0, "read": 0})
    return {"throttled_table_requests": sum(t1["throttled"].values()) - sum(t0["throttled"].values()),
            "throttled_graph_requests": after["graph"]["throttled"] - before["graph"]["throttled"],
            "graph_resource_units": after["graph"]["resourceUnits"] - before["graph"]["resourceUnits"],
            "written": t1["written"] - t0["written"], "read": t1["read"] - t0["read"],
            "busiest_partition": {"table": busiest["table"], "written": busiest["written"] - was["written"],
                                  "read": busiest["read"] - was["read"]}}


async def seed_manual_users(svc: Services, sub_id: str, path: str) -> int:
    """Portal users made by hand before the first sync (one username a line), and linkExistingUsers on: the first
    sync links them in place. Written before the measured run, as a customer's portal already holds them."""
    import uuid

    from sync.model import SourceType, User

    names = [n for n in Path(path).read_text(encoding="utf-8").splitlines() if n]
    for i in range(0, len(names), 1000):
        await svc.users.create([User(org=ORG, id=str(uuid.uuid4()), username=n, email=None, display_name=n,
                                     source_type=SourceType.MANUAL) for n in names[i:i + 1000]])
    await subscriptions.update(svc, Caller(org=ORG, subject="bench@portal", role="Administrator"), sub_id,
                               {"linkExistingUsers": "username"})
    return len(names)


def _timeline(spans: list[tuple[float, float]], started: float, ended: float) -> dict[str, float]:
    """Where a run's wall time went: before the first delivery, deliveries, after the last one ended."""
    if not spans:
        return {}
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return {"first_delivery_s": round(first - started, 3), "last_delivery_end_s": round(last - started, 3),
            "after_last_delivery_s": round(ended - last, 3)}


def _peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM of its address space.

    Not ``ru_maxrss``: Linux carries the high-water mark of the address space a process replaced at exec into it,
    and ``subprocess`` starts children with vfork, so a child's ``ru_maxrss`` is at least its *parent's* peak (at
    100k users the benchmark's tenant generation, 261 MB, was reported as the worker's).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def _sample_rss(peak: dict[str, float], started: float, every: float = 0.2) -> None:
    """The highest RSS seen during a run, and when (seconds after its start): where a peak comes from."""
    process = psutil.Process()
    while True:
        mb = process.memory_info().rss / 2**20
        if mb > peak["mb"]:
            peak["mb"], peak["at_s"] = mb, time.perf_counter() - started
        await asyncio.sleep(every)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    transport = CountingTransport(connection_timeout=10, read_timeout=60)
    totals: dict[str, list] = {}
    svc = services(settings, transport, totals)
    caller = Caller(org=ORG, subject="bench@portal", role="Administrator")
    origin = settings.graph_base_url.rsplit("/v1.0", 1)[0]
    host_json = json.loads((ROOT / "host.json").read_text())["extensions"]["serviceBus"]
    consumer = Consumer(svc, settings.service_bus_connection_string, settings.group_sync_queue,
                        int(host_json["maxConcurrentCalls"]), 600)
    result: dict[str, Any] = {"rss_mb_ready": 0.0}
    async with httpx.AsyncClient(base_url=origin, timeout=60) as graph:
        for name in ("Subscriptions", "Runs", "Users", "Groups"):
            await svc.store.table(name)
        sub_id = await connect(svc, caller, args.tenant, args.groups.split(","))
        if args.manual_users:
            result["manual_users"] = await seed_manual_users(svc, sub_id, args.manual_users)
        consuming = asyncio.create_task(consumer.run())
        result["rss_mb_ready"] = round(psutil.Process().memory_info().rss / 2**20, 1)
        try:
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            if args.dry_run_only:
                result["dry"] = await phase(svc, caller, sub_id, graph, transport, consumer, totals, args.timeout,
                                            args.store_pid, dry_run=True)
            else:
                result["full"] = await phase(svc, caller, sub_id, graph, transport, consumer, totals, args.timeout,
                                             args.store_pid)
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
            if not args.dry_run_only and not args.skip_resync and result["full"]["status"] in RunStatus.TERMINAL:
                result["resync"] = await phase(svc, caller, sub_id, graph, transport, consumer, totals, args.timeout, args.store_pid)
                # The group workers' peak before the preview below (which reads the org's claims into memory).
                result["peak_rss_mb_before_dry_resync"] = _peak_rss_mb()
                result["dry_resync"] = await phase(svc, caller, sub_id, graph, transport, consumer, totals,
                                                   args.timeout, args.store_pid, dry_run=True)
        finally:
            consumer.stopping.set()
            await asyncio.wait_for(consuming, timeout=60)
            await svc.close()
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--groups", required=True, help="comma-separated group ids to select")
    parser.add_argument("--timeout", type=float, default=3600, help="give up waiting for a run after this long")
    parser.add_argument("--profile", help="write a cProfile of the Full Sync phase to this file")
    parser.add_argument("--skip-resync", action="store_true")
    parser.add_argument("--dry-run-only", action="store_true", help="one dry run on an empty portal, nothing else")
    parser.add_argument("--manual-users", help="a file of usernames that exist as Manual users before the first sync")
    parser.add_argument("--store-pid", type=int, help="the Table store's process (Azurite), to report its CPU per run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(asyncio.run(main(args))), flush=True)


if __name__ == "__main__":
    cli()
