"""Issue 18 end to end: a dry run writes nothing (the raw tables say so), then a real run's change list and a user's
history, through the dev host's HTTP API."""
import time

import jwt
import pytest

from local.client import ApiError
from sync.adapters.table_text import key
from tests.e2e.conftest import emails_to
from tests.e2e.tenants import scenario
from tests.e2e.test_full_sync import connect, grid, sync, wait_for_emails

pytestmark = pytest.mark.e2e


def raw_rows(devhost, portal, sub_id):
    """The org's rows of every table a run writes to, except the run's own (Runs), with their ETags."""
    from azure.data.tables import TableServiceClient

    org = jwt.decode(portal.token, options={"verify_signature": False})["org"]
    service = TableServiceClient.from_connection_string(devhost.ready["tables"])

    def rows(table, query, **parameters):
        from azure.core.exceptions import ResourceNotFoundError

        client = service.get_table_client(table)
        try:
            found = [(e["RowKey"], dict(e), e.metadata["etag"]) for e in client.query_entities(query, parameters=parameters)]
        except ResourceNotFoundError:  # a table nothing has used yet (the dev host's first test)
            return []
        return sorted(found, key=lambda row: row[0])

    users = rows("dirsyncUsers", "PartitionKey eq @pk", pk=key(org))
    groups = rows("dirsyncGroups", "PartitionKey eq @pk", pk=key(org))
    [(_, sub, _)] = rows("dirsyncSubscriptions", "PartitionKey eq @pk and RowKey eq @rk", pk=key(org), rk=key(sub_id))
    for moving in ("activeRunId", "updatedAt"):  # held and released by the dry run: the only fields it may touch
        sub.pop(moving, None)
    return users, groups, sub


def lines(changes):
    return sorted((c["userId"], c["change"], c["reason"], str(sorted(c["fields"].items()))) for c in changes)


def test_a_dry_run_writes_nothing_then_a_real_run_lists_its_changes_and_the_history_says_why(devhost, portal, load_tenant):
    t = scenario()
    admin = load_tenant(t.tenant)
    ids, d = t.ids, t.domain
    sub = connect(portal, admin, [ids["eng"], ids["sales"], ids["support"]],
                  deactivateBlockedUsers=True, sendEnrollmentEmail=True)

    # A preview before the first sync: it reads the whole directory and writes nothing outside its run.
    before = raw_rows(devhost, portal, sub)
    preview_id = portal.full_sync(sub, dry_run=True)
    preview = portal.wait(sub, preview_id, timeout=180)
    assert preview["status"] == "previewed" and preview["dryRun"] is True, preview
    assert preview["counts"]["created"] == 13 and preview["counts"]["emailsQueued"] == 11
    time.sleep(1)  # an invitation it wrongly queued would arrive by now
    assert raw_rows(devhost, portal, sub) == before and before[0] == [] and before[1] == []
    assert emails_to(devhost, d) == [] and portal.users() == []
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["lastRun"] is None  # not the portal's last sync
    proposed = portal.changes(sub, preview_id)
    assert len(proposed) == 13 and {c["change"] for c in proposed} == {"created"}
    kim = next(c for c in proposed if c["username"] == f"kim.blocked@{d}")
    assert kim["reason"] == "blocked_in_directory" and kim["fields"]["status"] == [None, "Inactive"]

    first = sync(portal, sub)
    assert first["status"] == "succeeded" and first["counts"] == preview["counts"]
    assert lines(portal.changes(sub, first["runId"])) == lines(proposed)
    assert len(wait_for_emails(devhost, d, 11)) == 11

    # The Azure admin changes the tenant; a second preview, on a portal full of users, writes nothing either.
    admin.block(ids["bob.stone"])
    admin.remove_member(ids["sales"], ids["cat.moss"])  # cat is in no other selected group: deprovisioned
    admin.update_user(ids["fay.wong"], displayName="Fay Wong-Li")
    time.sleep(1)  # the mailer's records of the first run's invitations have landed
    before = raw_rows(devhost, portal, sub)
    second_preview = portal.wait(sub, portal.full_sync(sub, dry_run=True), timeout=180)
    assert second_preview["status"] == "previewed"
    assert raw_rows(devhost, portal, sub) == before
    proposed = portal.changes(sub, second_preview["runId"])

    second = sync(portal, sub)
    assert second["status"] == "succeeded" and second["counts"] == second_preview["counts"]
    applied = portal.changes(sub, second["runId"])
    assert lines(applied) == lines(proposed)
    by_name = {c["username"].split("@")[0]: c for c in applied}
    assert set(by_name) == {"bob.stone", "cat.moss", "fay.wong"}
    assert (by_name["bob.stone"]["change"], by_name["bob.stone"]["reason"]) == ("deactivated", "blocked_in_directory")
    assert (by_name["cat.moss"]["change"], by_name["cat.moss"]["reason"]) == ("deactivated", "removed_from_directory")
    assert by_name["fay.wong"]["fields"] == {"displayName": ["Fay Wong", "Fay Wong-Li"]}
    only = portal.changes(sub, second["runId"], change="deactivated")
    assert {c["username"] for c in only} == {f"bob.stone@{d}", f"cat.moss@{d}"}

    # "Why is cat inactive?"
    cat = grid(portal)[f"cat.moss@{d}"]
    history = [h for h in portal.history(cat["id"]) if h["change"] != "invited"]  # the mailer's: not the sync's
    assert [(h["change"], h["reason"], h["runId"]) for h in history] == [
        ("deactivated", "removed_from_directory", second["runId"]), ("created", "joined_selected_group", first["runId"])]
    assert history[0]["fields"]["statusReason"] == [None, "removed_from_directory"] and history[0]["trigger"] == "manual"

    # Another org sees neither the run's changes nor the user's history.
    from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
    from local.client import Portal, portal_token
    other = Portal(devhost.ready["api"], portal_token(LOCAL_PORTAL_TOKEN_SECRET, org="org-other"))
    for path in (f"/directory/subscriptions/{sub}/runs/{second['runId']}/changes", f"/users/{cat['id']}/history"):
        with pytest.raises(ApiError) as err:
            other.call("GET", path)
        assert err.value.status == 404
