"""Issue 22, 3: an invitation link outlives a change of address. A user invited at a wrong address, which the Azure
admin then corrects, must not be enrollable through the old link; the corrected address is invited, once, even with
every Service Bus message delivered twice."""
import re

import pytest

from local.client import ApiError
from tests.faults import figures
from tests.faults.helpers import connect, emails_of_org, poll, settle, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults


def _token(message) -> str:
    return re.search(r"/enroll\?token=(\S+)", message.get_body(preferencelist=("plain",)).get_content()).group(1)


def test_an_old_invitation_link_answers_address_changed_and_the_new_address_is_invited_once(devhost, portal,
                                                                                            load_tenant):
    t = with_large_group(0)
    d = t.domain
    t.user("typo", mail=f"tpyo@{d}")
    t.group("invited", "Invited", ["typo"])
    admin = load_tenant(t.tenant)
    sub = connect(portal, [t.ids["invited"]], sendEnrollmentEmail=True)
    assert sync(portal, sub)["status"] == "succeeded"
    [first] = poll(lambda: emails_of_org(devhost, portal.org), 30, "the first invitation")
    assert first["X-Envelope-To"] == f"tpyo@{d}"
    settle(devhost)
    admin.update_user(t.ids["typo"], mail=f"typo@{d}")  # the Azure admin corrects the address
    devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": True})
    try:
        assert sync(portal, sub)["status"] == "succeeded"
        poll(lambda: len(emails_of_org(devhost, portal.org)) >= 2, 30, "the corrected address's invitation")
        settle(devhost)
    finally:
        devhost.control("POST", "/servicebus/faults", json={"duplicateDeliveries": False})
    mails = emails_of_org(devhost, portal.org)
    assert [m["X-Envelope-To"] for m in mails] == [f"tpyo@{d}", f"typo@{d}"]  # one each, none twice
    with pytest.raises(ApiError) as refused:
        portal.call("POST", "/enrollment/complete", json={"token": _token(first)})
    assert (refused.value.status, refused.value.body["code"]) == (410, "address_changed")
    enrolled = portal.call("POST", "/enrollment/complete", json={"token": _token(mails[1])})
    assert enrolled["email"] == f"typo@{d}" and enrolled["enrolledAt"]
    figures.tried("an invitation link after a change of address", 1)
