"""The seed's workflow clicked in a real browser (headless Chromium): the console, Microsoft's sign-in and consent pages.

One dev host of its own (``--console-port 0 --interactive-sign-in``), started once for this module whatever
E2E_CREDENTIALS says: the browser path does not depend on the app's Graph credential. Set CONSOLE_SCREENSHOTS=docs
to refresh the screenshots the README shows.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil

import pytest

from local.client import ROOT, DevHostProcess
from local.fake_graph.tenant import Tenant

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEMO = json.loads((ROOT / "local" / "fake_graph" / "tenants" / "demo.json").read_text())
GROUPS = ("Engineering", "Sales Team")
EXPECTED_409 = "the server responded with a status of 409"  # the Full Sync pressed on purpose before Authorize


@pytest.fixture(scope="module")
def console_host(tmp_path_factory):
    outbox = tmp_path_factory.mktemp("console-outbox")
    host = DevHostProcess("--console-port", "0", "--interactive-sign-in", env={"GRAPH_CREDENTIAL": "secret"},
                          outbox=str(outbox), log=str(outbox.parent / "console-devhost.log"))
    host.start()
    yield host
    assert host.stop() == 0


@pytest.fixture
def page():
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: `make bootstrap` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # The local identity platform's certificate comes from a CA made at start, which this browser does not know.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        tab = context.new_page()
        tab.problems = []  # every error the browser's console shows, and every uncaught exception
        tab.on("console", lambda m: tab.problems.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: tab.problems.append(f"uncaught: {e}"))
        yield tab
        browser.close()


def shoot(page, name: str) -> None:
    folder = os.environ.get("CONSOLE_SCREENSHOTS")
    if folder:
        path = (ROOT / folder / f"console-{name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)


def directory_users(group_names: tuple[str, ...]) -> dict[str, dict]:
    """The directory's users in the named groups (transitively), by their mail: what the grid must show."""
    tenant = Tenant(DEMO)
    ids = {g["id"] for g in tenant.groups.values() if g["displayName"] in group_names}
    members = {m for gid in ids for m in tenant.transitive(gid) if tenant.kind.get(m) == "user"}
    return {tenant.users[m]["mail"].lower(): tenant.users[m] for m in members if tenant.users[m].get("mail")}


def test_the_seed_workflow_in_a_browser(console_host, page):
    from playwright.sync_api import expect

    console = console_host.ready["console"]
    api_messages: list[str] = []
    page.on("request", lambda r: api_messages.append(r.url) if "/api/directory/consent" in r.url else None)

    # The portal's sign-in (development only): Organisation, Role, Sign in.
    page.goto(console)
    expect(page).to_have_url(re.compile(r"/signin"))
    page.get_by_label("Organisation").fill("org-" + secrets.token_hex(4))
    page.get_by_label("Role").select_option("Administrator")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Directory Sync")).to_be_visible()

    page.get_by_role("button", name="New Active Directory").click()
    expect(page.locator("#subscription-status")).to_have_text("Not authorized")

    # An API error is shown by its message: Full Sync before the directory is authorized.
    page.get_by_role("button", name="Full Sync").click()
    expect(page.get_by_role("alert")).to_contain_text("uthoriz")

    # Authorize: Microsoft's sign-in page, a wrong password first.
    page.get_by_role("button", name="Authorize").click()
    expect(page).to_have_title("Sign in to your account")
    page.locator("input[name=loginfmt]").fill("admin@contoso.example")
    page.locator("input[name=passwd]").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Your account or password is incorrect.")
    shoot(page, "sign-in")
    page.locator("input[name=passwd]").fill("admin")
    page.get_by_role("button", name="Sign in").click()

    # The consent page: Cancel once (Microsoft answers error=access_denied; the console says so).
    expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()
    expect(page.get_by_text("Directory Sync (local)")).to_be_visible()
    for permission in ("User.Read.All", "GroupMember.Read.All", "Group.Read.All"):
        expect(page.get_by_text(permission)).to_be_visible()
    shoot(page, "consent")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#error")).to_contain_text("did not complete")
    assert any("error=access_denied" in url for url in api_messages), api_messages
    expect(page.locator("#subscription-status")).to_have_text("Not authorized")

    # Authorize again: the browser is signed in now, so the consent page comes at once; Accept, pick the account.
    page.get_by_role("button", name="Authorize").click()
    page.get_by_role("button", name="Accept").click()
    expect(page).to_have_title("Pick an account")
    page.get_by_role("button", name=re.compile("admin@contoso.example")).click()
    # Back in the console, which started this consent and so confirms it without another click.
    expect(page.locator("#subscription-status")).to_have_text("Authorized")
    expect(page.locator("#tenant")).to_contain_text(DEMO["tenantId"])
    expect(page.get_by_role("status")).to_contain_text("contoso.example")

    # AD attribute and Is Sign in Blocked on AD, Save → Saved.
    page.get_by_label("AD attribute").select_option("mail")
    page.get_by_label("Is Sign in Blocked on AD").check()
    options = page.locator("section", has=page.get_by_role("heading", name="Options"))
    options.get_by_role("button", name="Save").click()
    expect(options.get_by_role("button", name="Saved")).to_be_visible()

    # Edit Group Status → Send Enrollment Email to the Newly Synced Users, Save → Saved.
    page.get_by_role("button", name="Edit Group Status").click()
    page.get_by_label("Send Enrollment Email to the Newly Synced Users").check()
    page.locator("#group-status").get_by_role("button", name="Save").click()
    expect(page.locator("#group-status").get_by_role("button", name="Saved")).to_be_visible()

    # Selected Groups: under four characters it says so; from four it searches; click names to pick several.
    search = page.get_by_label("Selected Groups", exact=True)
    search.fill("Eng")
    expect(page.locator("#group-hint")).to_contain_text("at least 4 characters")
    for name in GROUPS:
        search.fill(name[:5])
        page.get_by_role("list", name="Groups found").get_by_role("button", name=name, exact=True).click()
        expect(page.get_by_role("button", name=f"Remove {name}")).to_be_visible()

    # Preview: the dry run's proposals as a table, nothing written.
    expected = directory_users(GROUPS)
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#run-status")).to_have_text("Previewed")
    expect(page.locator("[data-testid=preview] tbody tr")).to_have_count(len(expected))

    # Full Sync with its progress bar, ending Succeeded; the runs list shows both runs.
    page.get_by_role("button", name="Full Sync").click()
    expect(page.locator("progress#sync-progress")).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("Succeeded", timeout=45_000)
    assert page.locator("progress#sync-progress").evaluate("p => p.value === p.max")
    expect(page.locator("[data-testid=runs] tbody tr")).to_have_count(2)
    shoot(page, "full-sync")

    # The Users grid against the directory: every member by mail, Active unless blocked in Azure, AdSync.
    page.get_by_role("link", name="Users").click()
    grid = page.get_by_test_id("users-grid")
    expect(grid.locator("tbody tr")).to_have_count(len(expected))
    rows = grid.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))")
    shown = {r[0].lower(): r for r in rows}
    assert set(shown) == set(expected)
    for mail, user in expected.items():
        username, display, status, source, _groups = shown[mail]
        assert display == user["displayName"] and source == "AdSync"
        assert status == ("Active" if user["accountEnabled"] else "Inactive (blocked in the directory)"), (mail, status)
    shoot(page, "users")

    # Status filter and paging by continuation token (10 a page here).
    page.get_by_label("Status").select_option("Inactive")
    page.get_by_role("button", name="Apply").click()
    blocked = {m for m, u in expected.items() if not u["accountEnabled"]}
    expect(grid.locator("tbody tr")).to_have_count(len(blocked))
    page.goto(f"{console}/users?pageSize=10")
    seen: list[str] = []
    while True:
        expect(grid).to_be_visible()
        seen += grid.locator("tbody tr td:first-child").all_inner_texts()
        following = page.get_by_role("link", name="Next page")
        if not following.count():
            break
        with page.expect_navigation():  # a new document: its grid is drawn anew
            following.click()
    assert sorted(s.lower() for s in seen) == sorted(expected)

    # A synced user's details: History, and no enabled Deactivate (managed by the directory).
    grid.get_by_role("link").first.click()  # the first of the last page
    expect(page.get_by_role("heading", name="History")).to_be_visible()
    # newest first: the invitation the mailer sent (``invited``), then the sync's ``created``
    expect(page.get_by_test_id("history").locator("tbody tr").last).to_contain_text("created")
    expect(page.get_by_role("button", name="Deactivate")).to_be_disabled()
    expect(page.get_by_text("Managed by the directory")).to_be_visible()
    shoot(page, "user")

    # The Groups grid: each selected group with its user count.
    page.get_by_role("link", name="Groups").click()
    groups = page.get_by_test_id("groups-grid")
    for name in GROUPS:
        count = len(directory_users((name,)))
        expect(groups.locator("tr", has_text=name)).to_contain_text(str(count))
    shoot(page, "groups")

    unexpected = [p for p in page.problems if EXPECTED_409 not in p]
    assert unexpected == [], unexpected
    assert any(EXPECTED_409 in p for p in page.problems)
