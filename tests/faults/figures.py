"""The fault suite's figures: faults injected per kind and requests tried, counted by the tests as they run.

The tests call ``fault(kind, n)`` with what the stand-ins report as actually injected (never with what was only
asked for), and ``tried(kind, n)`` for every request they send on purpose. At the end of the session the figures
are printed in pytest's summary and, with ``FAULT_FIGURES=path``, written there as Markdown (the committed
``tests/faults/FIGURES.md`` is one such run).
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

FAULTS: Counter[str] = Counter()
TRIED: Counter[str] = Counter()
MEASURED: dict[str, float] = {}  # timings the tests measured (seconds), by what they measure
STARTED = time.monotonic()

# Failures the suite found in the app and that were fixed (one commit each), oldest first.
FOUND_AND_FIXED: list[tuple[str, str]] = [
    ("7da25ef", "a Table Storage failure while writing a new run: the next sync got 409 for 2 minutes, and a write "
                "that landed with its answer lost left the run queued forever (test_table_faults)"),
    ("9bd5d9c", "the run's final write landed but its answer was lost (or the worker died before releasing): the "
                "subscription stayed busy and approving the run answered 409 forever (test_table_faults)"),
    ("2c06ac7", "DELETE of a subscription whose sync was starting was accepted (204) under the run (test_races)"),
    ("8fc7482", "a deeply nested JSON body answered 500 (RecursionError) instead of 400 (test_abuse_input)"),
    ("bad93f5", "reloading Microsoft's consent error redirect answered 500 JSON instead of redirecting to the "
                "portal (test_abuse_consent)"),
    ("22be800", "the local function host answered plain-text 404 for API paths with an encoded newline "
                "(test_abuse_schemathesis)"),
    ("4a347bf", "a redelivered segment lost the report (skipped invitation) of users an earlier attempt created "
                "(test_table_faults, test_crash)"),
    ("1462cad", "the local function host's queue consumer died for good when the Service Bus SDK shut its receiver "
                "down, so the queue was never consumed again (intermittent; seen by settle() in several tests)"),
    ("4dc75ca", "the local function host kept renewing the lock of a message it could not settle for 10 minutes, "
                "so the queue stalled instead of redelivering it (intermittent; seen by settle())"),
    ("06f4c37", "a host killed mid incremental run left it running for RUN_STALE_AFTER_MINUTES (every sync 409), its "
                "new users uninvited and its changes in no change list; a Full Sync request killed between writing "
                "its run and sending it left the run queued with no message; a killed mailer's invitation waited for "
                "a manual Full Sync (test_crash_recovery, test_crash)"),
    ("d75b4fa", "another company's admin completing an org's consent URL connected that tenant to the org (consent phishing; test_abuse_consent)"),
    ("04b4d3d", "notifyEmails took any ten addresses and alert subjects carried the subscription's name, with no limit on alerts or subscriptions: an open mail relay (test_abuse_alerts)"),
    ("87e3db9", "an invitation link still enrolled after the directory corrected the address it was sent to (test_abuse_invitations)"),
    ("6d31945", "an unparsable dead-lettered message looped in its dead-letter trigger for ever (test_servicebus_faults)"),
    ("be795f4", "pageSize '²', '①' or 5,000 digits, a lone surrogate or 1,000-deep JSON in Graph's webhook answered 500 (test_abuse_input)"),
    ("fe2239d", "an org named 'watch' shared the watches' partition (runs failed at the end, DELETE answered 500, renewals failed for every org) and a 256-character non-ASCII org made keys over 1 KiB (test_abuse_input)"),
    ("dc57ca8", "an unresolved Key Vault reference became the signing key: a token signed with its literal text was accepted (tests/unit/test_settings.py)"),
    ("13a7691", "the local broker accepted repeated MessageIds, so an invitation's recovery re-queue that Azure drops inside the duplicate-detection window passed locally (test_crash)"),
]


def fault(kind: str, n: int = 1) -> None:
    if n:
        FAULTS[kind] += n


def measure(what: str, seconds: float) -> None:
    """Record a timing (the last one measured of ``what`` is kept)."""
    MEASURED[what] = seconds


def tried(kind: str, n: int = 1) -> None:
    if n:
        TRIED[kind] += n


def markdown(outcome: str) -> str:
    lines = ["# Fault and abuse suite: figures", "",
             f"Outcome: {outcome}; the suite took {time.monotonic() - STARTED:.0f} s.", "",
             "## Faults injected (as counted by the stand-ins)", "", "| kind | injected |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(FAULTS.items())]
    lines += [f"| **total** | **{sum(FAULTS.values())}** |", "",
              "## Requests tried", "", "| kind | requests |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(TRIED.items())]
    lines += [f"| **total** | **{sum(TRIED.values())}** |", ""]
    if MEASURED:
        lines += ["## Measured", "", "| what | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in sorted(MEASURED.items())] + [""]
    lines += ["## Failures found and fixed", ""]
    lines += [f"- {what} ({commit})" for commit, what in FOUND_AND_FIXED] or ["- none"]
    return "\n".join(lines) + "\n"


def write(outcome: str) -> str | None:
    target = os.environ.get("FAULT_FIGURES")
    if not target or not (FAULTS or TRIED):
        return None
    Path(target).write_text(markdown(outcome), encoding="utf-8")
    return target
