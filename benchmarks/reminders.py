"""The reminder timer over many pending users (issue 26): it reads the reminder index's rows due, not the org.

    .venv/bin/python benchmarks/reminders.py                        # 100,000 pending users, 1,000 due
    .venv/bin/python benchmarks/reminders.py --users 5000 --due 100

Loads ``--users`` synced users into one org through the app's Table adapter (on in-memory Azurite with
``local/azurite_speedups.js``), every one invited and not enrolled, and indexes each in ``{prefix}Reminders`` as the
mailer does: ``--due`` of them with their first reminder due now, the others days later. Then, each in a fresh
process (so its peak RSS is its own), it measures:

- ``timer``: ``invitation_lifecycle.send_due_reminders`` as the timer function runs it (the queue a counter);
- ``scan``: what a timer without an index would have to do: read the subscription's users (the partition) and pick
  the ones due (reads only: the writes of the due users' reminders would come on top).

Storage requests are counted on the wire (a transport around the Table SDK's, as ``users_grid.py`` does). Prints a
table and, last, one JSON object ``{"users", "due", "timer": {...}, "scan": {...}}``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.users_grid import RequestCounter, counting_store  # noqa: E402
from sync.model import EmailState, EnrollmentJob, SourceType, Subscription, User  # noqa: E402

ORG, SUB = "org-reminders", "sub-reminders"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
DAYS = (2, 10)


def pending_user(i: int, due: bool) -> User:
    invited = NOW - timedelta(days=DAYS[0], minutes=1) if due else NOW - timedelta(hours=i % 24)
    return User(org=ORG, id=f"00000000-0000-4000-8000-{i:012d}", username=f"user{i:06d}@contoso.example",
                email=f"user{i:06d}@contoso.example", display_name=f"User {i}", source_type=SourceType.AD_SYNC,
                subscription_id=SUB, azure_object_id=f"obj-{i}", enrollment_email=EmailState.SENT,
                enrollment_email_sent_at=invited, invited_at=invited, next_reminder_at=invited + timedelta(days=DAYS[0]),
                created_at=invited, updated_at=invited)


async def load(connection_string: str, prefix: str, users: int, due: int) -> None:
    from sync.adapters.table_reminders import TableReminders

    store, _ = counting_store(connection_string, prefix)
    try:
        await store.subscriptions.add(Subscription(org=ORG, id=SUB, name="Contoso", status="authorized",
                                                   send_enrollment_email=True, enrollment_reminders=DAYS,
                                                   created_at=NOW, updated_at=NOW))
        index = TableReminders(store)
        for start in range(0, users, 2000):
            chunk = [pending_user(i, i < due) for i in range(start, min(start + 2000, users))]
            await asyncio.gather(*(store.users.create(chunk[j:j + 50]) for j in range(0, len(chunk), 50)))
            by_due: dict[datetime, list[str]] = {}
            for u in chunk:
                by_due.setdefault(u.next_reminder_at, []).append(u.id)
            await asyncio.gather(*(index.expect(ORG, ids, at) for at, ids in by_due.items()))
    finally:
        await store.close()


class ReadCounter(RequestCounter):
    """Counts every request, and the reads (GET) among them."""

    reads = 0

    async def send(self, request: Any, **kwargs: Any) -> Any:
        if request.method == "GET":
            self.reads += 1
        return await super().send(request, **kwargs)


class CountingQueue:
    """The mailer queue, counted (the messages are what the timer would send to Service Bus)."""

    def __init__(self) -> None:
        self.enrollment = 0

    async def send_enrollment_jobs(self, jobs: list[EnrollmentJob], *, delay_s: float = 0) -> None:
        self.enrollment += len(jobs)


async def measure(kind: str, connection_string: str, prefix: str) -> dict[str, Any]:
    from azure.data.tables.aio import TableServiceClient

    from sync import invitation_lifecycle
    from sync.adapters import tables
    from sync.adapters.table_invitations import TableInvitations
    from sync.adapters.table_reminders import TableReminders
    from sync.composition import Services
    from sync.settings import Settings

    counter = ReadCounter(connection_timeout=10, read_timeout=60)
    store = tables.TableStore(TableServiceClient.from_connection_string(
        connection_string, transport=counter, **tables._client_options()), prefix)
    try:
        for name in ("Users", "Reminders", "Invitations", "Subscriptions"):  # table creation is not the timer's
            await store.table(name)
        before, reads, started = counter.requests, counter.reads, time.perf_counter()
        if kind == "timer":
            env = {"PORTAL_TOKEN_SECRET": "b" * 40, "SIGNING_SECRET": "s" * 40,
                   "TABLES_CONNECTION_STRING": connection_string, "ServiceBusConnection": "Endpoint=sb://x/;a=b",
                   "GRAPH_CLIENT_ID": "c", "GRAPH_CLIENT_SECRET": "x", "CONSENT_REDIRECT_URI": "https://x/c",
                   "PORTAL_BASE_URL": "https://portal.example", "MAIL_SENDER": "none"}
            queue = CountingQueue()
            svc = Services(settings=Settings.from_env(env), subscriptions=store.subscriptions, runs=store.runs,
                           users=store.users, groups=store.groups, directory=None, queue=queue,  # type: ignore[arg-type]
                           invitations=TableInvitations(store), reminders=TableReminders(store), clock=lambda: NOW)
            summary = await invitation_lifecycle.send_due_reminders(svc)
            found, queued = summary.sent, queue.enrollment
        else:
            found = queued = 0
            async for user in store.users.subscription_users(ORG, SUB):
                if user.next_reminder_at is not None and user.next_reminder_at <= NOW and user.enrolled_at is None:
                    found += 1
        seconds = time.perf_counter() - started
        requests, reads = counter.requests - before, counter.reads - reads
    finally:
        await store.close()
    return {"requests": requests, "reads": reads, "seconds": round(seconds, 2), "due_found": found, "queued": queued,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--measure", choices=("timer", "scan"), help=argparse.SUPPRESS)
    parser.add_argument("--connection-string", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # a child: one measurement, its JSON on the last line
        print(json.dumps(asyncio.run(measure(args.measure, args.connection_string, args.prefix))))
        return
    from local.azurite import Azurite

    azurite = Azurite().start()
    try:
        prefix = "rem" + secrets.token_hex(4)
        started = time.perf_counter()
        asyncio.run(load(azurite.connection_string, prefix, args.users, args.due))
        loaded = time.perf_counter() - started
        result: dict[str, Any] = {"users": args.users, "due": args.due, "load_s": round(loaded, 1)}
        for kind in ("scan", "timer"):  # the scan first: the timer moves the due users on
            done = subprocess.run([sys.executable, __file__, "--measure", kind, "--connection-string",
                                   azurite.connection_string, "--prefix", prefix],
                                  capture_output=True, text=True, check=True)
            result[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        azurite.stop()
    print(f"Reminder timer over {args.users:,} pending users, {args.due:,} due (loaded in {loaded:.0f} s):")
    for kind, label in (("timer", "timer (index rows due, then those users)"), ("scan", "partition scan")):
        r = result[kind]
        print(f"  {label:<42} {r['reads']:>6} reads {r['requests']:>6} requests  {r['seconds']:>7.2f} s  {r['peak_rss_mb']:>7.1f} MB peak RSS"
              f"  {r['due_found']:>6} due found")
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
