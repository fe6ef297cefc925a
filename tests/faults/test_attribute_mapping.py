"""Attribute mapping through the dev host (issue 24, section 2), once per suite rather than per credential kind:
a bad mapping refused whole, a mapping change previewed by a dry run and then applied exactly so, phones in E.164,
custom attributes from the fake tenant's complex properties and directory extensions, a re-sync that writes
nothing, and a mapped property changed in Azure arriving by an incremental run."""
import pytest

from tests.e2e.tenants import TenantBuilder
from tests.faults.helpers import connect, expect_error, poll, sync

pytestmark = pytest.mark.faults


def test_a_mapping_change_is_previewed_then_applied_with_e164_phones_and_custom_attributes(portal, load_tenant):
    t = TenantBuilder()
    code = t.extension("costCode")
    t.user("ann", extra={"mobilePhone": "0151 23456789", "usageLocation": "DE", "department": " Retail ",
                         "employeeOrgData": {"costCenter": "CC-4410"}, code: "R-17",
                         "onPremisesExtensionAttributes": {"extensionAttribute1": "Badge 7731"}})
    t.user("bob", extra={"businessPhones": ["+1 425 555 0109"], "department": "IT"})
    t.user("cat", extra={"mobilePhone": "12345", "usageLocation": "US"})
    t.group("team", "Team", ["ann", "bob", "cat"])
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["team"]])
    assert sync(portal, sub)["status"] == "succeeded"
    before = {u["username"].split("@")[0]: u for u in portal.users()}
    assert before["ann"]["phone"] is None and before["ann"]["customAttributes"] == {}

    bad = {"phone": "mobilePhone", "custom": {"badge": "onPremisesExtensionAttributes/extensionAttribute16"}}
    body = expect_error(lambda: portal.update(sub, attributeMapping=bad, name="Renamed"), 400,
                        "invalid_attribute_mapping")
    assert "attributeMapping.custom.badge" in body["message"]
    unchanged = portal.call("GET", f"/directory/subscriptions/{sub}")
    assert unchanged["name"] != "Renamed" and unchanged["attributeMapping"]["custom"] == {}

    mapping = {"phone": "mobilePhone", "department": "department",
               "custom": {"costCenter": "employeeOrgData/costCenter", "badge":
                          "onPremisesExtensionAttributes/extensionAttribute1", "costCode": code}}
    shown = portal.update(sub, attributeMapping=mapping)["attributeMapping"]
    assert shown["email"] == "mail" and shown["custom"]["costCode"] == code

    preview = portal.wait(sub, portal.full_sync(sub, dry_run=True))
    assert preview["status"] == "previewed" and preview["counts"]["updated"] == 2
    assert [(e["code"], e.get("userId")) for e in preview["errors"]] == [("invalid_phone", before["cat"]["id"])]
    proposed = {c["username"].split("@")[0]: c for c in portal.changes(sub, preview["runId"])}
    assert proposed["ann"]["fields"] == {
        "phone": [None, "+4915123456789"], "department": [None, "Retail"],
        "customAttributes": [None, {"costCenter": "CC-4410", "badge": "Badge 7731", "costCode": "R-17"}]}
    assert proposed["bob"]["fields"] == {"department": [None, "IT"]}  # businessPhones is not mapped
    assert {u["id"]: u for u in portal.users()}[before["ann"]["id"]]["phone"] is None  # a preview writes nothing

    applied = sync(portal, sub)
    assert applied["status"] == "succeeded" and applied["counts"]["updated"] == 2
    assert {c["username"].split("@")[0]: c["fields"] for c in portal.changes(sub, applied["runId"])} == \
        {k: c["fields"] for k, c in proposed.items()}
    after = {u["username"].split("@")[0]: u for u in portal.users()}
    assert (after["ann"]["phone"], after["ann"]["department"]) == ("+4915123456789", "Retail")
    assert after["ann"]["customAttributes"] == {"costCenter": "CC-4410", "badge": "Badge 7731", "costCode": "R-17"}
    assert after["cat"]["phone"] is None and after["cat"]["status"] == "Active"
    assert portal.history(after["ann"]["id"])[0]["fields"]["phone"] == [None, "+4915123456789"]

    again = sync(portal, sub)
    assert again["counts"]["updated"] == 0 and again["counts"]["unchanged"] == 3
    assert portal.changes(sub, again["runId"]) == []

    # The delta links now track the mapping's properties: a department changed in Azure arrives incrementally.
    admin.update_user(t.ids["ann"], department="Sales")
    arrived = poll(lambda: next((u for u in portal.users() if u["id"] == after["ann"]["id"]
                                 and u["department"] == "Sales"), None), 30, "the incremental department change")
    latest = portal.runs(sub)[0]
    assert latest["trigger"] == "change_notification" and latest["errors"] == []  # incremental, no Full Sync
    assert arrived["phone"] == "+4915123456789"
