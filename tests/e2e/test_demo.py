"""``make demo`` as CI runs it: the seed's workflow end to end, exit 0, readable output, nothing left running."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from local.client import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MARKER = "DIRSYNC_DEMO_TEST_RUN"  # every process the demo starts inherits it, so survivors can be found


@dataclass
class DemoRun:
    code: int
    stdout: str
    stderr: str
    seconds: float
    processes_seen: int
    survivors: list[psutil.Process]
    work: Path


def carries(proc: psutil.Process, marker: str) -> bool:
    """True if the process was started (directly or not) by the demo run tagged ``marker``."""
    try:
        return proc.environ().get(MARKER) == marker
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def tagged(marker: str) -> list[psutil.Process]:
    """Every live process of the demo run tagged ``marker``, but this one."""
    return [p for p in psutil.process_iter() if p.pid != os.getpid() and carries(p, marker)]


def run_demo(work: Path, **env: str) -> DemoRun:
    """``python -m local.demo`` in a subprocess (what ``make demo`` runs after bootstrapping), then its survivors."""
    marker = uuid.uuid4().hex
    started = time.monotonic()
    seen: set[int] = set()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "local.demo", "--dir", str(work)], cwd=ROOT,
                                env={**os.environ, **env, MARKER: marker}, stdout=stdout, stderr=stderr, text=True)
        while proc.poll() is None:  # watch the process tree, so the survivor check below is known to see it
            if time.monotonic() - started > 180:
                proc.kill()
            seen.update(p.pid for p in tagged(marker))
            time.sleep(0.5)
        seconds = time.monotonic() - started
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    _, alive = psutil.wait_procs(tagged(marker), timeout=5)  # a grace period for anything already exiting
    for survivor in alive:  # never leak them into the rest of the session, but still fail the test
        survivor.kill()
    return DemoRun(proc.returncode, out, err, seconds, len(seen), alive, work)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoRun:
    """One successful-path run of the demo, shared by the tests that read its output."""
    return run_demo(tmp_path_factory.mktemp("demo"))


def section(output: str, title: str) -> str:
    """The lines under the numbered heading that contains ``title``, up to the next heading."""
    return re.split(r"^== .*$", output.split(title, 1)[1], maxsplit=1, flags=re.MULTILINE)[0]


def rows(output: str, first_cell: str) -> list[list[str]]:
    """The cells (split on runs of 2+ spaces) of every table row that starts with ``first_cell``."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.splitlines() if line.strip().startswith(first_cell + " ")]


def test_demo_exits_0_quickly_and_leaves_nothing_running(demo):
    assert demo.code == 0, f"stdout:\n{demo.stdout}\nstderr:\n{demo.stderr}"
    assert demo.processes_seen >= 4  # the demo, the dev host, the function host and Azurite were visible
    assert demo.survivors == []
    assert demo.seconds < 60
    assert "DEMO FAILED" not in demo.stdout + demo.stderr
    assert "\r" not in demo.stdout  # not a terminal: plain progress lines
    assert "Traceback" not in demo.stdout + demo.stderr  # the host's logs go to its file, not the console
    assert (demo.work / "devhost.log").stat().st_size > 0


def test_demo_walks_the_workflow_through_the_api(demo):
    out = demo.stdout
    assert "admin consent granted by tenant 70295d95-50d9-528c-a139-c53233729e54: authorized" in out
    assert "usernameAttribute = mail" in out
    assert 'search "Sal" -> 400 search_too_short' in out
    assert "selected: Sales Team, Engineering, Support Staff" in out
    assert "deactivateBlockedUsers = True, sendEnrollmentEmail = True" in out
    assert "attributeMapping: " in out and "phone <- mobilePhone" in out
    assert re.search(r"\(manual\) \[#{20}\] 3/3 groups  succeeded", out)
    assert "created 29 · linked 1 · " in out and "skipped 2 (missing_username_attribute 2)" in out


def test_demo_prints_the_grids_and_the_emails(demo):
    out = demo.stdout
    users = section(out, "Users grid")  # (the preview before it lists some of the same users)
    assert rows(users, "USERNAME")[0] == ["USERNAME", "STATUS", "REASON", "SOURCE", "GROUPS"]
    assert rows(users, "adele.vance@contoso.example")[0] == ["adele.vance@contoso.example", "Active", "AdSync", "Sales Team"]
    assert rows(users, "emily.braun@contoso.example")[0] == [
        "emily.braun@contoso.example", "Inactive", "blocked_in_directory", "AdSync", "Sales Team"]
    # Platform Team and Platform On-Call are nested in Engineering: their members count as Engineering's.
    assert rows(users, "mika.virtanen@contoso.example")[0][-1] == "Engineering"
    assert rows(out, "Engineering") == [["Engineering", "14"]]
    assert rows(out, "Sales Team") == [["Sales Team", "8"]]
    assert rows(out, "Support Staff") == [["Support Staff", "8"]]
    # Every new Active user with an address is invited once; the blocked one is not.
    emails = section(out, "Enrollment e-mails in the SMTP sink")
    invitations = [re.split(r"\s{2,}", line.strip()) for line in emails.splitlines() if "activate your" in line]
    assert len(invitations) == 28  # and none for the portal user linked in place
    assert not any(r[0] == "lynne.robbins@contoso.example" for r in invitations)
    assert "linked in place: lynne.robbins@contoso.example kept its id" in users
    assert ["anna.kowalski@fabrikam.example", "Anna Kowalski (Fabrikam), activate your Contoso Identity Portal account"] \
        in invitations
    assert not any(r[0] == "emily.braun@contoso.example" for r in invitations)
    eml = re.search(r"28 e-mails; one of them: (\S+\.eml)", out)
    assert eml and (ROOT / eml.group(1)).resolve().is_file()


def test_demo_shows_a_users_phone_and_custom_attributes(demo):
    mapped = section(demo.stdout, "A user's mapped attributes")
    assert rows(mapped, "phone") == [["phone", "+4915123456789"]]
    assert rows(mapped, "customAttributes.costCenter") == [["customAttributes.costCenter", "CC-4410"]]
    assert rows(mapped, "customAttributes.costCode") == [["customAttributes.costCode", "R-17"]]


def test_demo_shows_what_the_nightly_run_changed(demo):
    out = demo.stdout
    assert "POST /admin/functions/nightly_sync -> 202" in out
    assert re.search(r"\(nightly\) \[#{20}\] 3/3 groups  succeeded", out)
    assert "deactivated 2 · unchanged 28 · e-mails queued 0" in out
    changes = section(out, "What changed in the Users grid")
    assert rows(changes, "alex.wilber@contoso.example") == [[
        "alex.wilber@contoso.example", "Active", "Inactive (blocked_in_directory)", "sign-in blocked in Entra ID"]]
    assert rows(changes, "joni.sherman@contoso.example") == [[
        "joni.sherman@contoso.example", "Active", "Inactive (removed_from_directory)",
        "no longer in any selected group; left Support Staff"]]
    assert len([line for line in changes.splitlines() if "@" in line]) == 2


def test_demo_previews_the_first_sync_and_explains_the_nightly_changes(demo):
    out = demo.stdout
    preview = section(out, "Preview: a dry run of the first Full Sync")
    assert re.search(r"\(manual\) \[#{20}\] 3/3 groups  previewed", preview)
    assert "created 29 · linked 1 · " in preview and "e-mails queued 28" in preview
    assert "proposed changes: 29 created, 1 linked" in preview
    assert rows(preview, "lynne.robbins@contoso.example")[0][:3] == [
        "lynne.robbins@contoso.example", "linked", "matched_username"]
    assert rows(preview, "emily.braun@contoso.example") == [[
        "emily.braun@contoso.example", "created", "blocked_in_directory", "Inactive"]]
    assert "synced users in the portal: 0, e-mails in the SMTP sink: 0 (the preview wrote nothing)" in preview
    listed = section(out, "The nightly run's change list, and a user's history")
    assert rows(listed, "joni.sherman@contoso.example")[0][:3] == [
        "joni.sherman@contoso.example", "deactivated", "removed_from_directory"]
    assert rows(listed, "alex.wilber@contoso.example")[0][:3] == [
        "alex.wilber@contoso.example", "deactivated", "blocked_in_directory"]
    history = [line.split() for line in listed.splitlines() if re.match(r"\s+\d{4}-\d\d-\d\dT", line)]
    assert [h[2:] for h in history] == [["nightly", "deactivated", "removed_from_directory"],
                                        ["mailer", "invited", "reminder"], ["mailer", "invited", "invitation"],
                                        ["manual", "created", "joined_selected_group"]]


def test_demo_reminds_the_users_not_enrolled_once_each(demo):
    reminded = section(demo.stdout, "A reminder to those not enrolled")
    assert "adele.vance@contoso.example enrolls through the invitation's link" in reminded
    # 28 invitations (Lynne, linked in place, gets none), Adele enrolls: 27 reminders; 28 users not enrolled (Lynne
    # among them: a linked portal user enrolls as the portal decides, not through an invitation)
    assert "… 27 reminders, one per user not enrolled; none to adele.vance@contoso.example" in reminded
    assert "Reminder: " in reminded and "-> 28 users" in reminded


def test_a_failing_step_exits_non_zero_naming_it_and_the_log(tmp_path):
    failed = run_demo(tmp_path, SIGNING_SECRET="too-short")  # the app refuses its settings: every API call fails
    assert failed.code == 1
    assert "DEMO FAILED at step 2 (New Active Directory" in failed.stderr
    assert "500" in failed.stderr and "misconfigured" in failed.stderr
    assert f"dev host log: {tmp_path / 'devhost.log'}" in failed.stderr
    assert "SIGNING_SECRET: is too short" in (tmp_path / "devhost.log").read_text()
    assert failed.survivors == []
