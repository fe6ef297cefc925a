"""Existing Manual portal users linked in place (linkExistingUsers), end to end through the dev host."""
import pytest

from tests.e2e.conftest import emails_to
from tests.e2e.tenants import scenario
from tests.e2e.test_changes import poll, watches
from tests.e2e.test_full_sync import connect, grid

pytestmark = pytest.mark.e2e


def test_manual_users_are_previewed_linked_in_place_and_released(request, devhost, portal, load_tenant):
    if request.node.callspec.params.get("devhost") not in (None, "secret"):
        pytest.skip("linking does not depend on the Microsoft credential kind: once is enough")
    t = scenario()
    admin = load_tenant(t.tenant)
    d, ids = t.domain, t.ids

    def manual(username, email=None):
        return portal.call("POST", "/users", json={"username": username, **({"email": email} if email else {})},
                           expect=201)["id"]

    ann = manual(f"ANN.LEE@{d}")  # the same username, another case
    bob = manual("bstone", f"bob.stone@{d}")  # the same e-mail only
    cats = {manual("cat1", f"cat.moss@{d}"), manual("cat2", f"Cat.Moss@{d}")}  # two of one e-mail: ambiguous
    nia = manual(f"nia.long@{d}")  # joins a selected group in Azure later
    sub = connect(portal, admin, [ids["sales"]], sendEnrollmentEmail=True, linkExistingUsers="usernameOrEmail")
    assert portal.call("GET", f"/directory/subscriptions/{sub}")["linkExistingUsers"] == "usernameOrEmail"

    preview = portal.wait(sub, portal.full_sync(sub, dry_run=True), timeout=60)
    assert preview["status"] == "previewed" and preview["counts"]["linked"] == 2, preview
    assert preview["counts"]["skippedReasons"].get("link_ambiguous") == 1
    proposed = {c["userId"]: c["reason"] for c in portal.changes(sub, preview["runId"], change="linked")}
    assert proposed == {ann: "matched_username", bob: "matched_email"}
    assert grid(portal)["bstone"]["sourceType"] == "Manual"  # nothing written

    run = portal.wait(sub, portal.full_sync(sub), timeout=60)
    assert run["status"] == "succeeded" and run["counts"]["linked"] == 2, run
    ambiguous = [e for e in run["errors"] if e["code"] == "link_ambiguous"]
    assert len(ambiguous) == 1 and all(c in ambiguous[0]["message"] for c in cats)
    users = grid(portal)
    for uid, name in ((ann, f"ann.lee@{d}"), (bob, f"bob.stone@{d}")):
        assert (users[name]["id"], users[name]["sourceType"], users[name]["subscriptionId"]) == (uid, "AdSync", sub)
    assert f"cat.moss@{d}" not in users and {users["cat1"]["sourceType"], users["cat2"]["sourceType"]} == {"Manual"}
    assert [e["change"] for e in portal.history(bob)][:2] == ["linked", "created"]
    poll(lambda: any(m["X-Envelope-To"] == f"kim.blocked@{d}" for m in emails_to(devhost, d)), 20, "kim's invitation")
    assert not {f"ann.lee@{d}", f"bob.stone@{d}"} & {m["X-Envelope-To"] for m in emails_to(devhost, d)}

    # within seconds: a Manual user added to a selected group in Azure is linked by the incremental run
    poll(lambda: {w["resource"] for w in watches(devhost, admin)} == {"users", "groups"}, 10, "the subscriptions")
    new = admin.add_user({"displayName": "Nia Long", "userPrincipalName": f"nia.long@{d}", "mail": f"nia.long@{d}",
                          "accountEnabled": True, "mailNickname": "nia.long", "passwordProfile": {"password": "x-Local-1!"}})
    admin.add_member(ids["sales"], new["id"])
    poll(lambda: grid(portal)[f"nia.long@{d}"]["sourceType"] == "AdSync", 30, "nia's link")
    linked = grid(portal)[f"nia.long@{d}"]
    assert (linked["id"], linked["azureObjectId"]) == (nia, new["id"])
    poll(lambda: any(r["trigger"] == "change_notification" and r["status"] == "succeeded"
                     and r["counts"]["linked"] == 1 for r in portal.runs(sub)), 30, "the incremental run's end")

    portal.call("DELETE", f"/directory/subscriptions/{sub}")
    users = grid(portal)
    for uid, name in ((ann, f"ann.lee@{d}"), (bob, f"bob.stone@{d}"), (nia, f"nia.long@{d}")):
        assert (users[name]["id"], users[name]["sourceType"], users[name]["subscriptionId"]) == (uid, "Manual", None)
