"""The seed's workflow on the local stack, printed as the portal would show it: ``python -m local.demo``.

Starts the dev host (``python -m local``) with the Contoso demo tenant, then drives the public HTTP API exactly as
the portal backend would: New Active Directory, admin consent, username attribute, group search and selection,
options, a preview (dry run) of the first sync with its proposed changes, Full Sync with a progress line, the Users
and Groups grids and the invitations in the SMTP sink; one user enrolls and the reminder timer reminds the others.
Then it changes the tenant the way an Azure admin would
(Graph writes), runs the nightly function on demand and prints what changed: the grid before and after, the
nightly run's change list, and a deactivated user's history. The dev host always stops; any failure exits non-zero naming the step and the host's log.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import httpx

from .__main__ import LOCAL_PORTAL_TOKEN_SECRET
from .client import ROOT, ApiError, DevHostProcess, FakeTenantAdmin, Portal, portal_token
from .webhook_receiver import WebhookReceiver

# The demo tenant (local/fake_graph/tenants/demo.json): the groups to select and the admin's changes afterwards.
TENANT_ID = "70295d95-50d9-528c-a139-c53233729e54"
SEARCHES = ("Sales", "Engineering", "Support")
SELECT = ("Sales Team", "Engineering", "Support Staff")  # Engineering nests Platform Team, which nests Platform On-Call
TO_BLOCK = "alex.wilber@contoso.example"  # in Sales Team
TO_REMOVE = ("joni.sherman@contoso.example", "Support Staff")  # in no other selected group
# What the portal needs of a person beyond names (tenants/demo.json gives Adele Vance these properties).
ATTRIBUTE_MAPPING = {"phone": "mobilePhone", "department": "department", "jobTitle": "jobTitle",
                     "officeLocation": "officeLocation",
                     "custom": {"costCenter": "employeeOrgData/costCenter",
                                "badge": "onPremisesExtensionAttributes/extensionAttribute1",
                                "costCode": "extension_5bfc8fdacfc943a9a6de214ea9d15fdb_costCode"}}
TO_LINK = "lynne.robbins@contoso.example"  # in Sales Team; an existing portal user, linked in place by the first sync
USERNAME_ATTRIBUTE = "mail"  # guests keep their home address; the two users without a mailbox are skipped
ENROLLS = "adele.vance@contoso.example"  # enrolls through the invitation's link: no reminder
REMINDER_DAYS = [2]  # a reminder 2 "days" after the first invitation; a day is REMINDER_DAY_SECONDS (2 s here)
DEMO_SETTINGS = {"REMINDER_DAY_SECONDS": "2", "ENROLLMENT_REMINDERS_SCHEDULE": "0 0 0 1 1 *"}  # fired on demand

REASONS = {
    "blocked_in_directory": "sign-in blocked in Entra ID",
    "removed_from_directory": "no longer in any selected group",
    "deactivated_by_admin": "deactivated in the portal",
}


class StepFailed(Exception):
    """A demo step did not give the expected result."""


class Console:
    """Headings, aligned tables and an in-place progress line (plain lines when stdout is not a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._progress_open = False
        self._last_progress = ""

    def heading(self, text: str) -> None:
        """A blank line and a heading."""
        self.end_progress()
        print(f"\n== {text}", flush=True)

    def line(self, text: str = "") -> None:
        """An indented line (or an empty one)."""
        self.end_progress()
        print(f"   {text}" if text else "", flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Print rows as columns padded to their widest cell (by display width, so accents and CJK align)."""
        self.end_progress()
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
        widths = [max(width(row[i]) for row in cells) for i in range(len(headers))]
        for n, row in enumerate(cells):
            print("   " + "  ".join(pad(c, w) for c, w in zip(row, widths)).rstrip(), flush=True)
            if n == 0:
                print("   " + "  ".join("-" * w for w in widths), flush=True)

    def progress(self, text: str, *, transient: bool = False) -> None:
        """Show a progress line: rewritten in place on a terminal, else printed when it changes (unless transient)."""
        if text == self._last_progress or (transient and not self.tty):
            return
        self._last_progress = text
        if self.tty:
            sys.stdout.write("\r\033[K   " + text)
            sys.stdout.flush()
            self._progress_open = True
        else:
            print("   " + text, flush=True)

    def end_progress(self) -> None:
        """Finish an in-place progress line so the next output starts on a fresh line."""
        if self._progress_open:
            sys.stdout.write("\n")
            self._progress_open = False
        self._last_progress = ""


def width(text: str) -> int:
    """Columns a string takes in a terminal: wide characters count two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int) -> str:
    """``text`` left-aligned in ``columns`` display columns."""
    return text + " " * (columns - width(text))


def bar(done: int, total: int, size: int = 20) -> str:
    """A text progress bar."""
    filled = size * done // total if total else size
    return "[" + "#" * filled + "." * (size - filled) + "]"


def counts_text(counts: dict[str, Any]) -> str:
    """A run's counts in one line, skipped reasons included."""
    parts = [f"{k} {counts.get(k, 0)}" for k in ("created", "linked", "updated", "reactivated", "deactivated",
                                                 "unchanged")]
    parts.append(f"e-mails queued {counts.get('emailsQueued', 0)}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("skippedReasons") or {}).items()))
    parts.append(f"skipped {counts.get('skipped', 0)}" + (f" ({reasons})" if reasons else ""))
    return " · ".join(parts)


def group_names(user: dict[str, Any]) -> str:
    """A user's selected groups as one cell."""
    return ", ".join(g["displayName"] for g in user["groups"]) or "-"


class Demo:
    """The workflow, one numbered step at a time, against a dev host it starts."""

    def __init__(self, host: DevHostProcess, console: Console, log: Path) -> None:
        self.host = host
        self.out = console
        self.log = log
        self.step_name = ""
        self.steps = 0
        self.sub_id = ""
        self.portal: Portal  # these three exist once the stack has started
        self.admin: FakeTenantAdmin
        self.outbox: Path
        self.manual: dict[str, Any] = {}  # the portal user made by hand before the first sync

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """A numbered heading; a failure inside is reported as this step's."""
        self.steps += 1
        self.step_name = title
        self.out.heading(f"{self.steps}. {title}")
        yield

    def run(self) -> None:
        """Every step of the demo, in order."""
        self.start_stack()
        self.connect()
        self.choose_groups()
        self.preview()
        first = self.full_sync()
        before = self.show_grids()
        self.show_mapped(before)
        self.show_emails(first["counts"].get("emailsQueued", 0))
        self.reminders()
        self.change_tenant(before)
        nightly = self.nightly(first["runId"])
        after = {u["id"]: u for u in self.portal.users()}
        self.show_changes(before, after)
        self.show_change_list(nightly, after)
        self.show_webhook_events()

    def start_stack(self) -> None:
        """Start ``python -m local`` on free ports, its log going to a file."""
        with self.step("Local stack: Azurite, Service Bus, fake Entra tenant (Contoso), SMTP sink, function host"):
            self.host.start(timeout=90)
            self.portal = Portal(self.host.ready["api"], portal_token(LOCAL_PORTAL_TOKEN_SECRET, org="contoso"),
                                 ca=self.host.ready["authorityCa"])
            self.admin = FakeTenantAdmin(self.host.ready["graph"], TENANT_ID)
            self.outbox = Path(self.host.ready["outbox"])
            self.out.line(f"API {self.host.ready['api']}    dev host log {display_path(self.log)}")

    def connect(self) -> None:
        """New Active Directory, Microsoft's admin consent (against the fake tenant), the username attribute."""
        with self.step("New Active Directory, admin consent, username attribute"):
            # The portal's webhook receiver (loopback: the dev host sets WEBHOOK_ALLOW_HTTP_LOOPBACK), from the start.
            self.receiver = WebhookReceiver().start()
            created = self.portal.call("POST", "/webhooks", json={"url": self.receiver.url}, expect=201)
            self.receiver.secret = created["secret"]
            self.out.line(f"POST /api/webhooks {self.receiver.url} -> 201 (a receiver verifying Standard Webhooks signatures)")
            sub = self.portal.create_subscription("Contoso (Entra ID)")
            self.sub_id = sub["id"]
            self.out.line(f"created subscription \"{sub['name']}\" ({sub['id']}): {sub['status']}")
            outcome = self.portal.authorize(self.sub_id, confirm=False)  # the tenant admin's walk through Microsoft
            if outcome.get("consent") != "pending":
                raise StepFailed(f"the consent callback redirected to the portal with {outcome}")
            shown = self.portal.pending_consent(self.sub_id, outcome["consentCode"])
            self.out.line(f"consent=pending: the portal shows tenant {shown['tenantId']} ({shown['tenantDomain']}), "
                          f"consented by {shown['consentedBy']['name']}, and its user confirms")
            outcome = self.portal.confirm_consent(self.sub_id, outcome["consentCode"])
            if outcome.get("consent") != "confirmed":
                raise StepFailed(f"the consent was not connected: {outcome}")
            sub = self.portal.call("GET", f"/directory/subscriptions/{self.sub_id}")
            self.out.line(f"admin consent granted by tenant {sub['azureTenantId']}: {sub['status']}")
            sub = self.portal.update(self.sub_id, usernameAttribute=USERNAME_ATTRIBUTE)
            self.out.line(f"usernameAttribute = {sub['usernameAttribute']}")

    def choose_groups(self) -> None:
        """Group search (too short, then real searches), the selection and the options."""
        with self.step("Group search and selection, options"):
            try:
                self.portal.search_groups(self.sub_id, SEARCHES[0][:3])
                raise StepFailed("a 3-character search was accepted")
            except ApiError as err:
                if err.status != 400 or err.body.get("code") != "search_too_short":
                    raise
                self.out.line(f'search "{SEARCHES[0][:3]}" -> {err.status} {err.body["code"]}: {err.body["message"]}')
            found: dict[str, dict[str, Any]] = {}
            for text in SEARCHES:
                groups = self.portal.search_groups(self.sub_id, text)
                found.update((g["displayName"], g) for g in groups)
                self.out.line(f'search "{text}" -> ' + (", ".join(g["displayName"] for g in groups) or "nothing"))
            missing = [name for name in SELECT if name not in found]
            if missing:
                raise StepFailed(f"the search did not find {', '.join(missing)}")
            selected = self.portal.select_groups(self.sub_id, [found[name]["id"] for name in SELECT])
            self.out.line("selected: " + ", ".join(g["displayName"] for g in selected)
                          + "  (Engineering nests Platform Team, which nests Platform On-Call)")
            sub = self.portal.update(self.sub_id, deactivateBlockedUsers=True, sendEnrollmentEmail=True,
                                     enrollmentReminders=REMINDER_DAYS, linkExistingUsers="username")
            self.out.line(f"deactivateBlockedUsers = {sub['deactivateBlockedUsers']}, "
                          f"sendEnrollmentEmail = {sub['sendEnrollmentEmail']}, nightlySync = {sub['nightlySync']}, "
                          f"enrollmentReminders = {sub['enrollmentReminders']}, "
                          f"linkExistingUsers = {sub['linkExistingUsers']}")
            mapping = self.portal.update(self.sub_id, attributeMapping=ATTRIBUTE_MAPPING)["attributeMapping"]
            self.out.line("attributeMapping: " + ", ".join(f"{k} <- {v}" for k, v in mapping.items() if k != "custom")
                          + "; custom " + ", ".join(f"{k} <- {v}" for k, v in mapping["custom"].items()))
            self.manual = self.portal.call("POST", "/users", json={"username": TO_LINK, "email": TO_LINK,
                                                                    "displayName": "Lynne (portal)"}, expect=201)
            self.out.line(f"an existing portal user, made by hand: {TO_LINK} ({self.manual['sourceType']}, "
                          f"id {self.manual['id']}); the sync links it in place instead of refusing its username")

    def preview(self) -> dict[str, Any]:
        """A dry run before the first sync: what Full Sync would do, with nothing written and no e-mail sent."""
        with self.step("Preview: a dry run of the first Full Sync (POST …/sync {\"dryRun\": true})"):
            run = self.wait(self.portal.full_sync(self.sub_id, dry_run=True), expect="previewed")
            changes = self.portal.changes(self.sub_id, run["runId"])
            kinds: dict[str, int] = {}
            for c in changes:
                kinds[c["change"]] = kinds.get(c["change"], 0) + 1
            self.out.line("proposed changes: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
            sample = sorted(changes, key=lambda c: (c["change"] != "linked", c["reason"] == "joined_selected_group",
                                                    c["username"]))[:5]
            self.out.table(("USERNAME", "CHANGE", "REASON", "STATUS"),
                           [(c["username"], c["change"], c["reason"], (c["fields"].get("status") or ["", ""])[1])
                            for c in sample])
            if [u for u in self.portal.users() if u["sourceType"] != "Manual"] or sorted(self.outbox.glob("*.eml")):
                raise StepFailed("the dry run wrote users or sent e-mails")
            self.out.line(f"synced users in the portal: 0, e-mails in the SMTP sink: 0 (the preview wrote nothing); "
                          f"{len(changes)} changes listed at …/runs/{run['runId']}/changes")
            return run

    def full_sync(self) -> dict[str, Any]:
        """Press Full Sync and follow the run."""
        with self.step("Full Sync"):
            return self.wait(self.portal.full_sync(self.sub_id))

    def wait(self, run_id: str, expect: str = "succeeded") -> dict[str, Any]:
        """Follow a run to its end with a progress line; any other end than ``expect`` fails the step."""
        started = time.monotonic()

        def show(run: dict[str, Any]) -> None:
            done, total = run["groupsDone"], run["groupsTotal"]
            self.out.progress(f"run {run_id} ({run['trigger']}) {bar(done, total)} {done}/{total} groups  {run['status']}")

        run = self.portal.wait(self.sub_id, run_id, timeout=60, progress=show)
        self.out.line(f"{run['status']} in {time.monotonic() - started:.1f} s")
        self.out.line(counts_text(run["counts"]))
        if run["status"] != expect:
            raise StepFailed(f"the run ended {run['status']}: {run['errors']}")
        return run

    def show_grids(self) -> dict[str, dict[str, Any]]:
        """Print the Users and Groups grids; returns the users by id."""
        with self.step("Users grid"):
            users = {u["id"]: u for u in self.portal.users()}
            rows = sorted(users.values(), key=lambda u: u["username"])
            self.out.table(("USERNAME", "STATUS", "REASON", "SOURCE", "GROUPS"),
                           [(u["username"], u["status"], u["statusReason"] or "", u["sourceType"], group_names(u))
                            for u in rows])
            self.out.line(f"{len(users)} users")
            linked = users.get(self.manual["id"])
            if linked is None or linked["sourceType"] != "AdSync" or linked["createdAt"] != self.manual["createdAt"]:
                raise StepFailed(f"{TO_LINK} was not linked in place: {linked}")
            self.out.line(f"linked in place: {TO_LINK} kept its id {linked['id']} and createdAt "
                          f"{linked['createdAt']}, is AdSync now and got no invitation")
        with self.step("Groups grid"):
            groups = sorted(self.portal.groups(), key=lambda g: g["displayName"])
            self.out.table(("GROUP", "USERS"), [(g["displayName"], g["userCount"]) for g in groups])
        return users

    def show_mapped(self, users: dict[str, dict[str, Any]]) -> None:
        """One user's mapped attributes: the phone in E.164 (read in the user's usageLocation), custom attributes."""
        with self.step("A user's mapped attributes (attributeMapping)"):
            adele = next(u for u in users.values() if u["username"] == "adele.vance@contoso.example")
            self.out.table(("FIELD", "VALUE"), [(name, adele[name]) for name in
                                                ("username", "phone", "department", "jobTitle", "officeLocation")]
                           + [(f"customAttributes.{k}", v) for k, v in sorted(adele["customAttributes"].items())])
            self.out.line("(Entra ID has mobilePhone \"0151 23456789\" with usageLocation DE)")

    def show_emails(self, expected: int) -> None:
        """Wait for the invitations the run queued and list what the SMTP sink received."""
        with self.step("Enrollment e-mails in the SMTP sink"):
            deadline = time.monotonic() + 30
            while len(files := sorted(self.outbox.glob("*.eml"))) < expected and time.monotonic() < deadline:
                self.out.progress(f"{len(files)}/{expected} e-mails delivered", transient=True)
                time.sleep(0.2)
            if len(files) < expected:
                raise StepFailed(f"{len(files)} of {expected} invitations arrived within 30 s")
            messages = [(f, BytesParser(policy=policy.default).parsebytes(f.read_bytes())) for f in files]
            # A long Subject is folded onto its own line, so unfold it the way a mail client shows it.
            self.out.table(("TO", "SUBJECT"), sorted((m["X-Envelope-To"], " ".join(str(m["Subject"]).split()))
                                                     for _, m in messages))
            if files:
                self.out.line()
                self.out.line(f"{len(files)} e-mails; one of them: {display_path(files[0])}")

    def reminders(self) -> None:
        """One user enrolls; the reminder timer (fired on demand) reminds the others, once each."""
        with self.step(f"A reminder to those not enrolled (enrollmentReminders {REMINDER_DAYS}, a day of 2 s here)"):
            invitations = [BytesParser(policy=policy.default).parsebytes(f.read_bytes())
                           for f in sorted(self.outbox.glob("*.eml"))]
            mine = next(m for m in invitations if m["X-Envelope-To"] == ENROLLS)
            token = re.search(r"/enroll\?token=(\S+)", mine.get_body(preferencelist=("plain",)).get_content()).group(1)
            self.portal.call("POST", "/enrollment/complete", json={"token": token})
            self.out.line(f"{ENROLLS} enrolls through the invitation's link (POST /api/enrollment/complete)")
            origin = self.host.ready["api"].rsplit("/api", 1)[0]
            expected, deadline = len(invitations) - 1, time.monotonic() + 30
            while True:  # the hourly timer, fired again and again: each user still gets one reminder
                if httpx.post(f"{origin}/admin/functions/enrollment_reminders", json={}, timeout=30).status_code != 202:
                    raise StepFailed("POST /admin/functions/enrollment_reminders was refused")
                files = sorted(self.outbox.glob("*.eml"))[len(invitations):]
                self.out.progress(f"{len(files)}/{expected} reminders delivered", transient=True)
                if len(files) >= expected or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            reminders = [BytesParser(policy=policy.default).parsebytes(f.read_bytes()) for f in files]
            if len(reminders) != expected or any(m["X-Envelope-To"] == ENROLLS for m in reminders):
                raise StepFailed(f"{len(reminders)} reminders arrived, {expected} expected (none to {ENROLLS})")
            self.out.table(("TO", "SUBJECT"), sorted((m["X-Envelope-To"], " ".join(str(m["Subject"]).split()))
                                                     for m in reminders)[:3])
            self.out.line(f"… {len(reminders)} reminders, one per user not enrolled; none to {ENROLLS}")
            pending = self.portal.users(enrollment="not_enrolled", status="Active")
            self.out.line(f"GET /api/users?enrollment=not_enrolled&status=Active -> {len(pending)} users, e.g.:")
            self.out.table(("USERNAME", "INVITATION", "REMINDERS SENT", "NEXT REMINDER"),
                           [(u["username"], u["invitation"]["status"], u["invitation"]["remindersSent"],
                             u["invitation"]["nextReminderAt"] or "none") for u in pending[:3]])

    def change_tenant(self, users: dict[str, dict[str, Any]]) -> None:
        """Block one user and remove another from a group, as an Azure admin would."""
        with self.step("An Azure admin changes the tenant (Graph writes to the fake tenant)"):
            by_name = {u["username"]: u for u in users.values()}
            groups = {g["displayName"]: g["id"] for g in self.portal.groups()}
            self.admin.block(by_name[TO_BLOCK]["azureObjectId"])
            self.out.line(f"blocked sign-in of {TO_BLOCK} (accountEnabled = false)")
            who, group = TO_REMOVE
            self.admin.remove_member(groups[group], by_name[who]["azureObjectId"])
            self.out.line(f"removed {who} from {group}")

    def nightly(self, previous_run: str) -> dict[str, Any]:
        """Run the nightly timer function now through the host's admin API and follow the run it starts."""
        with self.step("Nightly sync, triggered on demand"):
            known = {r["runId"] for r in self.portal.runs(self.sub_id)} | {previous_run}
            origin = self.host.ready["api"].rsplit("/api", 1)[0]
            response = httpx.post(f"{origin}/admin/functions/nightly_sync", json={}, timeout=30)
            if response.status_code != 202:
                raise StepFailed(f"POST /admin/functions/nightly_sync answered {response.status_code}")
            self.out.line("POST /admin/functions/nightly_sync -> 202 (the timer function runs in the background)")
            deadline = time.monotonic() + 20
            while not (new := [r for r in self.portal.runs(self.sub_id) if r["runId"] not in known]):
                if time.monotonic() > deadline:
                    raise StepFailed("the nightly function started no run within 20 s")
                time.sleep(0.2)
            if new[0]["trigger"] != "nightly":
                raise StepFailed(f"the new run has trigger {new[0]['trigger']}, not nightly")
            return self.wait(new[0]["runId"])

    def show_changes(self, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
        """The users whose status or groups differ between two readings of the grid, and why."""
        with self.step("What changed in the Users grid"):
            rows = []
            for uid, now in sorted(after.items(), key=lambda item: item[1]["username"]):
                was = before.get(uid)
                if was is None:
                    rows.append((now["username"], "-", now["status"], "new user"))
                    continue
                why = []
                if (was["status"], was["statusReason"]) != (now["status"], now["statusReason"]):
                    why.append(REASONS.get(now["statusReason"], now["statusReason"] or "reactivated"))
                left = sorted({g["displayName"] for g in was["groups"]} - {g["displayName"] for g in now["groups"]})
                joined = sorted({g["displayName"] for g in now["groups"]} - {g["displayName"] for g in was["groups"]})
                why += [f"left {g}" for g in left] + [f"joined {g}" for g in joined]
                if why:
                    rows.append((now["username"], status_text(was), status_text(now), "; ".join(why)))
            if not rows:
                raise StepFailed("the nightly run changed nobody")
            self.out.table(("USERNAME", "BEFORE", "AFTER", "WHY"), rows)


    def show_change_list(self, run: dict[str, Any], users: dict[str, dict[str, Any]]) -> None:
        """The nightly run's change list as the API pages it, and why a deactivated user is inactive (their history)."""
        with self.step("The nightly run's change list, and a user's history"):
            changes = self.portal.changes(self.sub_id, run["runId"])
            self.out.table(("USERNAME", "CHANGE", "REASON", "FIELDS"),
                           [(c["username"], c["change"], c["reason"],
                             "; ".join(f"{k} {v[0]} -> {v[1]}" for k, v in c["fields"].items())) for c in changes])
            who = next((u for u in users.values() if u["username"] == TO_REMOVE[0]), None)
            if who is None:
                raise StepFailed(f"{TO_REMOVE[0]} is not in the Users grid")
            self.out.line()
            self.out.line(f"GET /api/users/{who['id']}/history ({who['username']}: why inactive?)")
            self.out.table(("AT", "RUN", "TRIGGER", "CHANGE", "REASON"),
                           [(h["at"], h["runId"] or "-", h["trigger"], h["change"], h["reason"])
                            for h in self.portal.history(who["id"])])


    def show_webhook_events(self) -> None:
        """What the portal's webhook receiver heard, verified with the ``standardwebhooks`` library."""
        with self.step("The portal's webhook receiver: every change as a signed event"):
            expected = len(self.portal.call("GET", "/events", params={"limit": 1000})["events"])
            deadline = time.monotonic() + 15
            while len({d.id for d in self.receiver.deliveries}) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            seen: dict[str, Any] = {}
            for d in self.receiver.deliveries:
                seen.setdefault(d.id, d)
            rows = [(d.json["data"]["sequence"], d.type, d.json["data"].get("username") or d.json["data"].get("status"),
                     "verified" if d.verified else "BAD SIGNATURE") for d in seen.values()]
            self.out.table(("SEQ", "EVENT", "USER OR STATUS", "SIGNATURE"), sorted(rows)[-8:])
            self.out.line(f"{len(seen)} event(s) delivered (the last 8 shown); GET /api/events replays them all")
            self.receiver.stop()


def status_text(user: dict[str, Any]) -> str:
    """A user's status with its reason, as one cell."""
    return user["status"] + (f" ({user['statusReason']})" if user["statusReason"] else "")


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when every step gave the expected result and the local stack stopped cleanly."""
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(ROOT / ".local" / "demo"),
                        help="folder for the outbox and the dev host's log (both replaced)")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # names in the tenant are not ASCII; never fail on a console
    work = Path(args.dir)
    outbox, log = work / "outbox", work / "devhost.log"
    shutil.rmtree(outbox, ignore_errors=True)  # only what the demo itself wrote: --dir may be any folder
    log.unlink(missing_ok=True)
    outbox.mkdir(parents=True)
    console = Console()
    started = time.monotonic()
    print("Directory Sync demo: the Contoso tenant through the HTTP API, as the portal backend drives it")
    host = DevHostProcess(outbox=str(outbox), log=str(log), env=DEMO_SETTINGS)
    demo = Demo(host, console, log)
    try:
        demo.run()
    except KeyboardInterrupt:
        console.end_progress()
        print("\ninterrupted; the local stack is stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # any failure: say which step, why, and where the host's log is
        console.end_progress()
        print(f"\nDEMO FAILED at step {demo.steps} ({demo.step_name}):\n   {type(exc).__name__}: {exc}\n"
              f"   dev host log: {display_path(log)}", file=sys.stderr, flush=True)
        return 1
    finally:
        stopped = host.stop()
    if stopped != 0:
        print(f"\nDEMO FAILED: the dev host exited with {stopped} when stopped; see {display_path(log)}",
              file=sys.stderr, flush=True)
        return 1
    console.heading(f"Done in {time.monotonic() - started:.1f} s; the local stack is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
