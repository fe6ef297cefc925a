"""Attribute mapping on fakes: the option's validation, what a sync reads and writes with it, phones in E.164."""
import pytest

from sync import subscriptions
from sync.attribute_mapping import DEFAULT_MAPPING, flatten, parse_mapping
from sync.errors import InvalidInput
from sync.phones import e164
from tests.fakes import make_services
from tests.unit.syncdsl import ENG, SALES, TENANT, caller, changes_of, connect, dry_run, full_sync, users_of

EXT = "extension_5bfc8fdacfc943a9a6de214ea9d15fdb_costCode"
MAPPING = {"phone": "mobilePhone", "department": "department", "jobTitle": "jobTitle",
           "custom": {"costCenter": "employeeOrgData/costCenter", "badge": "onPremisesExtensionAttributes/extensionAttribute1",
                      "costCode": EXT, "altMail": "otherMails", "desk": "businessPhones"}}


@pytest.fixture
def tenant(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(SALES, "Sales Team")
    t.add_group(ENG, "Engineering")
    t.add_user("ann", groups=[SALES], properties={
        "mobilePhone": "0151 23456789", "usageLocation": "DE", "department": " Retail ", "jobTitle": "Manager",
        "employeeOrgData/costCenter": "CC-1", "onPremisesExtensionAttributes/extensionAttribute1": "B-7",
        EXT: "R-17", "otherMails": "ann@home.example", "businessPhones": "+1 425 555 0109"})
    t.add_user("bob", groups=[SALES, ENG], properties={"mobilePhone": "(425) 555-0100", "department": "IT"})
    t.add_user("cat", groups=[ENG], properties={"mobilePhone": "12345", "usageLocation": "US"})
    return t


@pytest.mark.parametrize("body, key", [
    ({"fax": "faxNumber"}, "attributeMapping.fax"),
    ({"phone": "nosuchProperty"}, "attributeMapping.phone"),
    ({"phone": "onPremisesExtensionAttributes/extensionAttribute16"}, "attributeMapping.phone"),
    ({"department": "extension_123_costCode"}, "attributeMapping.department"),
    ({"department": "extension_5bfc8fdacfc943a9a6de214ea9d15fdb_"}, "attributeMapping.department"),
    ({"email": None}, "attributeMapping.email"),
    ({"jobTitle": 7}, "attributeMapping.jobTitle"),
    ({"custom": {f"c{n}": "city" for n in range(11)}}, "attributeMapping.custom"),
    ({"custom": {"": "city"}}, "attributeMapping.custom"),
    ({"custom": {"   ": "city"}}, "attributeMapping.custom"),
    ({"custom": {"site": ["city"]}}, "attributeMapping.custom.site"),
    ({"custom": {"site": "nosuch"}}, "attributeMapping.custom.site"),
    ({"custom": ["city"]}, "attributeMapping.custom"),
])
async def test_a_bad_mapping_is_a_400_naming_the_key_and_changes_nothing(svc, body, key):
    sub = await connect(svc, groups=())
    await subscriptions.update(svc, caller(), sub.id, {"attributeMapping": {"department": "department"}})
    before = await subscriptions.get(svc, caller(), sub.id)
    with pytest.raises(InvalidInput) as caught:
        await subscriptions.update(svc, caller(), sub.id, {"attributeMapping": body, "name": "Renamed"})
    assert caught.value.code == "invalid_attribute_mapping" and key in str(caught.value)
    after = await subscriptions.get(svc, caller(), sub.id)
    assert (after.name, after.attribute_mapping) == (before.name, before.attribute_mapping)


def test_a_mapping_keeps_the_defaults_it_does_not_name_and_selects_what_it_reads():
    mapping = parse_mapping(MAPPING)
    shown = mapping.to_api()
    assert shown["email"] == "mail" and shown["displayName"] == "displayName" and shown["phone"] == "mobilePhone"
    assert len(shown["custom"]) == 5
    assert set(mapping.graph_select()) == {"mail", "displayName", "givenName", "surname", "mobilePhone",
                                           "usageLocation", "department", "jobTitle", "employeeOrgData",
                                           "onPremisesExtensionAttributes", EXT, "otherMails", "businessPhones"}
    assert parse_mapping({}) == DEFAULT_MAPPING and DEFAULT_MAPPING.tag() == "" and mapping.tag()


def test_graph_json_is_flattened_into_sources():
    flat = flatten({"@odata.type": "#microsoft.graph.user", "otherMails": ["", "a@b.example"], "businessPhones": [],
                    "employeeOrgData": {"costCenter": "CC-1", "division": None},
                    "onPremisesExtensionAttributes": {"extensionAttribute1": "B-7", "extensionAttribute2": None},
                    EXT: "R-17", "department": "IT"})
    assert flat == {"otherMails": "a@b.example", "employeeOrgData/costCenter": "CC-1",
                    "onPremisesExtensionAttributes/extensionAttribute1": "B-7", EXT: "R-17", "department": "IT"}


def test_mapped_names_and_e_mail_are_trimmed_and_a_guests_external_upn_is_no_address():
    from dataclasses import replace

    from sync.decisions import desired_user
    from sync.model import DirectoryUser, Subscription

    sub = Subscription(org="o", id="s", name="n", attribute_mapping=parse_mapping(
        {"email": "userPrincipalName", "displayName": "mailNickname", "givenName": "employeeType", "department": "city"}))
    guest = DirectoryUser(id="g", display_name=" Eve ", user_principal_name="eve_home.example#EXT#@t.example",
                          mail="eve@home.example", given_name=" Eve ",
                          properties={"mailNickname": "  eve.h ", "employeeType": " Contractor ", "city": "   "})
    d = desired_user(guest, sub)
    assert (d.email, d.display_name, d.given_name, d.surname, d.department) == (None, "eve.h", "Contractor", None, None)
    member = desired_user(replace(guest, user_principal_name=" eve@t.example ", properties={}), sub)
    assert (member.email, member.display_name, member.given_name) == ("eve@t.example", "eve@t.example", None)
    # The default mapping keeps the names exactly as Graph has them (as they were stored before mappings existed).
    plain = desired_user(guest, Subscription(org="o", id="s", name="n"))
    assert (plain.email, plain.display_name, plain.given_name) == ("eve@home.example", "Eve", " Eve ")


@pytest.mark.parametrize("raw, region, expected", [
    ("+1 425 555 0109", None, ("+14255550109", False)),
    ("0151 23456789", "DE", ("+4915123456789", False)),
    ("0151 23456789", "de", ("+4915123456789", False)),
    ("(425) 555-0109", "US", ("+14255550109", False)),
    ("0151 23456789", None, (None, True)),  # national, and no region to read it in
    ("12345", "US", (None, True)),
    ("call me", "US", (None, True)),
    ("  ", "US", (None, False)),
    (None, None, (None, False)),
])
def test_phones_are_stored_in_e164(raw, region, expected):
    assert e164(raw, region) == expected


async def test_a_mapped_sync_writes_e164_phones_and_custom_attributes_and_reports_a_bad_phone(tenant):
    svc = make_services(DEFAULT_PHONE_REGION="US")
    svc.directory.tenants[TENANT] = tenant
    from sync import composition
    composition.override(svc)
    try:
        sub = await connect(svc, groups=(SALES, ENG), attributeMapping=MAPPING)
        view = await full_sync(svc, sub)
    finally:
        composition.override(None)
    assert view.run.status == "succeeded" and view.counts.created == 3
    users = users_of(svc)
    ann, bob, cat = (users[f"{n}@contoso.example"] for n in ("ann", "bob", "cat"))
    assert (ann.phone, ann.department, ann.job_title) == ("+4915123456789", "Retail", "Manager")  # usageLocation DE
    assert ann.custom_attributes == {"costCenter": "CC-1", "badge": "B-7", "costCode": "R-17",
                                     "altMail": "ann@home.example", "desk": "+1 425 555 0109"}
    assert (bob.phone, bob.custom_attributes) == ("+14255550100", {})  # no usageLocation: the default region
    assert cat.phone is None and cat.status == "Active"  # synced without it
    bad = [e for e in view.errors if e.code == "invalid_phone"]
    assert [e.user_id for e in bad] == [cat.id] and "cat" in bad[0].message and "12345" not in bad[0].message
    assert ann.to_api({})["customAttributes"]["costCode"] == "R-17" and ann.to_api({})["phone"] == "+4915123456789"
    assert all(set(s) >= {"mobilePhone", "usageLocation", EXT, "employeeOrgData"} for s in svc.directory.selects)


async def test_a_mapping_change_is_previewed_then_applied_to_every_user_it_changes_and_then_writes_nothing(svc, tenant):
    sub = await connect(svc, groups=(SALES, ENG))
    await full_sync(svc, sub)
    assert users_of(svc)["ann@contoso.example"].phone is None
    # the default mapping reads only what the sync selects anyway
    assert all(set(s) <= {"mail", "displayName", "givenName", "surname"} for s in svc.directory.selects)
    writes = svc.users.writes
    await subscriptions.update(svc, caller(), sub.id, {"attributeMapping": {"phone": "mobilePhone",
                                                                            "department": "department"}})
    preview = await dry_run(svc, sub)
    assert svc.users.writes == writes and users_of(svc)["ann@contoso.example"].phone is None
    proposed = {c["username"]: c for c in await changes_of(svc, sub, preview.run.id)}
    assert set(proposed) == {"ann@contoso.example", "bob@contoso.example"}  # cat's phone is refused: unchanged
    assert proposed["ann@contoso.example"]["fields"] == {"phone": [None, "+4915123456789"],
                                                         "department": [None, "Retail"]}
    assert proposed["bob@contoso.example"]["fields"] == {"department": [None, "IT"]}  # a national number, no region
    assert {e.code for e in preview.errors} == {"invalid_phone"}

    view = await full_sync(svc, sub)
    applied = {c["username"]: c for c in await changes_of(svc, sub, view.run.id)}
    assert {k: (v["change"], v["fields"]) for k, v in applied.items()} == \
        {k: (v["change"], v["fields"]) for k, v in proposed.items()}
    ann = users_of(svc)["ann@contoso.example"]
    assert ann.history[0].fields == {"phone": [None, "+4915123456789"], "department": [None, "Retail"]}

    writes = svc.users.writes
    again = await full_sync(svc, sub)
    assert svc.users.writes == writes and again.counts.updated == 0 and again.counts.unchanged == 3
