"""Bad input: OData text in filters and searches, hostile bodies, and hostile directory data flowing into e-mails."""

import pytest

from tests.faults import figures
from tests.faults.abuse import assert_error
from tests.faults.helpers import connect, emails_of_org, poll, settle, sync
from tests.faults.tenants import with_large_group

pytestmark = pytest.mark.faults

ODATA = ["' or PartitionKey ne '", "Active' or 'a' eq 'a", "Active or true", "x') or (RowKey ne '", "$filter=",
         "PartitionKey eq 'victim'", "*", "%", "\\", '"', "'", "eq", "\u202eevil", "Zoë Ærøskøbing", "名前", "🙂"]


def call(portal, method, path, headers=None, **kw):
    headers = {"Authorization": f"Bearer {portal.token}", **(headers or {})}
    return portal.http.request(method, portal.api + path, headers=headers, **kw)


def test_odata_text_in_the_users_grid_filters_is_data_not_a_query(devhost, victim, portal):
    portal.call("POST", "/users", json={"username": "alice@own.example", "displayName": "Alice Own"})
    tried = 0
    for text in ODATA + ["a" * 256, "a" * 257, "tab\there", "nul\x00"]:
        for param in ("status", "sourceType", "search"):
            response = call(portal, "GET", "/users", params={param: text})
            tried += 1
            if response.status_code == 200:
                users = response.json()["users"]
                assert param == "search" and all(u["username"] == "alice@own.example" for u in users), users
            else:
                assert_error(response, 400)
    for token in ("!!!", "e30", "eyJhZnRlciI6ICJ8In0", "W10", "x" * 4000, "eyJhZnRlciI6IDV9"):
        response = call(portal, "GET", "/users", params={"continuationToken": token})
        tried += 1
        if response.status_code == 200:  # a well-formed token only moves within the caller's own rows
            assert response.json()["users"] in ([], portal.users())
        else:
            assert_error(response, 400, "invalid_continuation_token")
    for size in ("0", "-1", "501", "1e3", "abc", "9" * 30, " 5"):
        tried += 1
        assert_error(call(portal, "GET", "/users", params={"pageSize": size}), 400, "invalid_page_size")
    tried += 1
    assert_error(call(portal, "GET", "/users", params={"$filter": "PartitionKey ne ''"}), 400, "unknown_parameter")
    figures.tried("OData and odd text in grid filters", tried)
    assert victim.manual_user not in call(portal, "GET", "/users", params={"search": "' or 1 eq 1 or '"}).text


def test_quotes_backslashes_and_wildcards_in_group_search_find_only_what_they_say(devhost, portal, load_tenant):
    t = with_large_group(3)
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["eng"]])
    tried = 0
    # Text that would widen the query if it escaped its quotes: it must find nothing beyond what it names.
    widening = {'Sales" OR displayName:"Eng': {"Sales Department"}, 'x" OR "1"="1': set(),
                'Sal\\" OR displayName:"Support': set(), "Sales OR Engineering": {"Sales Department"},
                '\\" OR "a': set()}
    odd = ["Sales\\", "Sales*", "****", "Sal'es", "(Sales)", "Sales%", "Département", "\u202eselaS", "s" * 256,
           "$filter=displayName eq 'Sales'", "Sales&$top=999", "Sales#x", "Sales/../groups"]
    for text in [*widening, *odd]:
        response = call(portal, "GET", f"/directory/subscriptions/{sub}/directory-groups", params={"search": text})
        tried += 1
        if response.status_code == 200:
            names = {g["displayName"] for g in response.json()["groups"]}
            assert names <= widening.get(text, {"Sales Department"}), (text, names)
        else:
            assert_error(response, 400)
    for text in ("abc", "   abcd   "[:5], "a" * 257, "line\nbreak"):
        tried += 1
        assert_error(call(portal, "GET", f"/directory/subscriptions/{sub}/directory-groups", params={"search": text}),
                     400)
    figures.tried("quotes, backslashes and wildcards in group search", tried)


def test_hostile_bodies_are_refused_with_400_or_413(devhost, portal):
    sub = portal.create_subscription("Target")["id"]
    user = portal.call("POST", "/users", json={"username": "bob@own.example"})["id"]
    endpoints = [("POST", "/directory/subscriptions"), ("PATCH", f"/directory/subscriptions/{sub}"),
                 ("POST", f"/directory/subscriptions/{sub}/authorize"), ("PUT", f"/directory/subscriptions/{sub}/groups"),
                 ("POST", f"/directory/subscriptions/{sub}/sync"), ("POST", "/users"),
                 ("POST", f"/users/{user}/deactivate"), ("POST", f"/users/{user}/activate"),
                 ("POST", "/enrollment/complete")]
    hostile = {
        "10 MB": b'{"name": "' + b"a" * (10 * 1024 * 1024) + b'"}',
        "malformed": b'{"name": ',
        "not UTF-8": b'{"name": "\xff\xfe"}',
        "an array": b"[]",
        "a string": b'"name"',
        "null": b"null",
        "deeply nested": b"[" * 100_000 + b"]" * 100_000,
        "deeply nested object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    }
    odd_but_json = {"NaN": b'{"name": NaN}', "duplicate keys": b'{"name": "a", "name": {"x": 1}}'}
    tried = 0
    before = portal.call("GET", "/directory/subscriptions")
    for method, path in endpoints:
        for what, body in hostile.items():
            response = call(portal, method, path, content=body, headers={"Content-Type": "application/json"})
            tried += 1
            if what == "10 MB":
                assert_error(response, 413, "payload_too_large")
            else:
                assert_error(response, 400)
        for what, body in odd_but_json.items():  # objects Python's parser accepts: refused field by field, or unused
            response = call(portal, method, path, content=body, headers={"Content-Type": "application/json"})
            tried += 1
            assert response.status_code < 500
            if response.status_code >= 400:
                assert_error(response, (400, 404, 409))
    figures.tried("hostile bodies", tried)
    assert portal.call("GET", "/directory/subscriptions") == before


def test_wrong_types_unknown_fields_and_long_strings_are_refused_field_by_field(devhost, portal):
    sub = portal.create_subscription("Target")["id"]
    cases = [
        ("POST", "/directory/subscriptions", {"name": 5}),
        ("POST", "/directory/subscriptions", {"name": ""}),
        ("POST", "/directory/subscriptions", {"name": "x" * 201}),
        ("POST", "/directory/subscriptions", {"name": "two\r\nlines"}),
        ("POST", "/directory/subscriptions", {"name": "ok", "org": "victim"}),
        ("PATCH", f"/directory/subscriptions/{sub}", {"nightlySync": "yes"}),
        ("PATCH", f"/directory/subscriptions/{sub}", {"sendEnrollmentEmail": 1}),
        ("PATCH", f"/directory/subscriptions/{sub}", {"usernameAttribute": "password"}),
        ("PATCH", f"/directory/subscriptions/{sub}", {"status": "authorized"}),
        ("PATCH", f"/directory/subscriptions/{sub}", {"azureTenantId": "00000000-0000-0000-0000-000000000000"}),
        ("PUT", f"/directory/subscriptions/{sub}/groups", {"groupIds": "abc"}),
        ("PUT", f"/directory/subscriptions/{sub}/groups", {"groupIds": [1, 2]}),
        ("PUT", f"/directory/subscriptions/{sub}/groups", {"groupIds": ["../../users"]}),
        ("POST", "/users", {"username": ["a"]}),
        ("POST", "/users", {"username": "u" * 257}),
        ("POST", "/users", {"username": "eve@own.example", "email": "eve@own.example\r\nBcc: x@evil.example"}),
        ("POST", "/users", {"username": "eve@own.example", "email": "not an address"}),
        ("POST", "/users", {"username": "eve@own.example", "sourceType": "AdSync"}),
        ("POST", "/users", {"username": "eve@own.example", "status": "Active", "id": "chosen"}),
        ("POST", "/enrollment/complete", {"token": 123}),
        ("POST", "/enrollment/complete", {"token": "a.b"}),
        ("POST", "/enrollment/complete", {"token": "x" * 5000}),
    ]
    for method, path, body in cases:
        response = call(portal, method, path, json=body)
        assert_error(response, (400, 409))  # 409: selecting groups needs consent first
    figures.tried("wrong types, unknown fields, long strings", len(cases))
    assert [s["name"] for s in portal.call("GET", "/directory/subscriptions")["subscriptions"]] == ["Target"]
    assert portal.users() == []
    # Unicode and right-to-left text are data like any other.
    for name in ("\u202eevil.exe", "مدير الدليل", "יומן", "Zoë 🙂 名前"):
        created = portal.call("POST", "/directory/subscriptions", json={"name": name})
        assert portal.call("GET", f"/directory/subscriptions/{created['id']}")["name"] == name
        user = portal.call("POST", "/users", json={"username": f"{name}@own.example", "displayName": name})
        assert portal.call("GET", f"/users/{user['id']}")["displayName"] == name
    figures.tried("unicode and right-to-left names", 16)


def test_html_and_header_injection_in_directory_data_stays_text_in_the_emails(devhost, portal, load_tenant):
    t = with_large_group(0)
    d = t.domain
    t.user("xss", display="<script>alert('x')</script><img src=x onerror=alert(1)> & \"Co\"")
    t.user("crlf", display="Mallory\r\nBcc: attacker@evil.example\r\nSubject: pwned")
    t.user("mailcrlf", mail=f"mailcrlf@{d}\r\nBcc: attacker@evil.example")
    t.user("rtl", display="\u202egnp.exe Rashid مدير")
    t.user("ctl", display="Eve\x00\x1b[2J\x9b\u2066\u202eexe.txt\u2069 Smith")
    t.user("upncrlf", display="UPN CRLF")
    t.tenant["users"][-1]["userPrincipalName"] = f"upn\r\ncrlf@{d}"
    t.group("hostile", "Hostile Names", ["xss", "crlf", "mailcrlf", "rtl", "ctl", "upncrlf"])
    load_tenant(t.tenant)
    sub = connect(portal, [t.ids["hostile"]], sendEnrollmentEmail=True)
    run = sync(portal, sub)
    settle(devhost)
    assert run["status"] == "succeeded", run
    assert run["counts"]["skippedReasons"].get("invalid_username") == 1  # a UPN with CR/LF is no username
    mails = poll(lambda: len(emails_of_org(devhost, portal.org)) >= 4 and emails_of_org(devhost, portal.org), 30,
                 "the invitations")
    settle(devhost)
    mails = emails_of_org(devhost, portal.org)
    assert sorted(m["X-Envelope-To"] for m in mails) == sorted(f"{n}@{d}" for n in ("xss", "crlf", "rtl", "ctl"))
    for message in mails:
        # One recipient, one subject, no header smuggled in through a name (its text stays on the Subject line).
        assert message.get_all("Bcc") is None and len(message.get_all("Subject")) == 1
        assert len(message["To"].addresses) == 1 and message["To"].addresses[0].domain == d
        html = message.get_body(preferencelist=("html",)).get_content()
        assert "<script" not in html and "<img" not in html and "onerror=alert(1)>" not in html
    xss = next(m for m in mails if m["X-Envelope-To"] == f"xss@{d}")
    assert "&lt;script&gt;" in xss.get_body(preferencelist=("html",)).get_content()
    rtl = next(m for m in mails if m["X-Envelope-To"] == f"rtl@{d}")
    assert "Rashid مدير" in rtl.get_body(preferencelist=("plain",)).get_content()
    # NUL, ESC, C1 controls and direction overrides or isolates reach neither To nor Subject (as in alert subjects).
    hidden = {chr(c) for c in (*range(32), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
    for message in mails:
        assert not hidden & set(message["Subject"] + message["To"].addresses[0].display_name), message["Subject"]
    ctl = next(m for m in mails if m["X-Envelope-To"] == f"ctl@{d}")
    assert ctl["To"].addresses[0].display_name == "Eve [2J exe.txt Smith" and ctl["Subject"].startswith("Eve [2J exe")
    # The address with a CR/LF in it received nothing (and nor did the address it tried to smuggle in).
    users = {u["username"]: u for u in portal.users()}
    assert users[f"mailcrlf@{d}"]["enrollmentEmailSentAt"] is None
    figures.tried("hostile directory names into e-mails", 6)


def test_unicode_digits_huge_numbers_lone_surrogates_and_deep_json_are_400_not_500(devhost, victim):
    """Issue 22 #5: each of these was a 500."""
    import httpx

    p, tried = victim.portal, 0
    for size in ("²", "①", "٣", "9" * 5000):
        for path in ("/users", f"/directory/subscriptions/{victim.sub}/runs/{victim.run}/changes"):
            assert_error(call(p, "GET", path, params={"pageSize": size}), 400, "invalid_page_size")
            tried += 1
    hook = devhost.ready["api"] + "/directory/notifications"
    lone = b'{"value": [{"subscriptionId": "\\ud800", "clientState": "x", "changeType": "updated"}]}'
    deep = b'{"value": [' + b"[" * 1000 + b"]" * 1000 + b"]}"
    many = {"value": [{"subscriptionId": f"00000000-0000-0000-0000-{i:012d}", "clientState": "x"} for i in range(1000)]}
    for body in (lone, deep, httpx.Request("POST", hook, json=many).read()):
        answer = httpx.post(hook, content=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert_error(answer, 400, "invalid_notification")
        tried += 1
    figures.tried("unicode digits, lone surrogates and deep JSON", tried)


HOSTILE_ORGS = ["watch", "|", "%", "名" * 256]  # "watch": the Watches table's own partition; 名 * 256: 2,304 encoded


def test_org_ids_named_like_a_partition_or_too_long_for_a_key_sync_renew_and_delete(devhost, load_tenant):
    """Issue 22 #6, #7, #11: an org named ``watch`` shared the watches' partition (its run failed at the end, its
    DELETE answered 500, every org's renewal failed); a 256-character non-ASCII org made 2,304-character keys; and
    the renewal timer failed on its own log line (its summary's ``created``)."""
    from pathlib import Path
    from urllib.parse import urlsplit

    import httpx

    from local.__main__ import LOCAL_PORTAL_TOKEN_SECRET
    from local.client import Portal, portal_token
    from tests.faults.conftest import SESSION_TOKENS

    portals = []
    for org in HOSTILE_ORGS:
        token = portal_token(LOCAL_PORTAL_TOKEN_SECRET, org=org)
        SESSION_TOKENS.append(token)
        portal = Portal(devhost.ready["api"], token, ca=devhost.ready["authorityCa"])
        t = with_large_group(3)
        load_tenant(t.tenant)
        sub = connect(portal, [t.ids["eng"]])
        run = sync(portal, sub)
        assert run["status"] == "succeeded", (org[:10], run)
        assert {u["username"].split("@")[0] for u in portal.users()} >= {"gus.hart"}, org[:10]
        portals.append((portal, sub))
    settle(devhost)
    log = Path(devhost.log)
    start = log.stat().st_size
    api = urlsplit(devhost.ready["api"])
    assert httpx.post(f"{api.scheme}://{api.netloc}/admin/functions/watch_renewal", timeout=10).status_code == 202

    def renewal_ended() -> str | None:
        with log.open("rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
        return next((line for line in text.splitlines() if "Executed 'Functions.watch_renewal'" in line), None)
    assert "(Succeeded" in poll(renewal_ended, 30, "the renewal timer's end")
    for portal, sub in portals:
        portal.call("DELETE", f"/directory/subscriptions/{sub}", expect=204)
        assert_error(call(portal, "GET", f"/directory/subscriptions/{sub}"), 404)
    figures.tried("org ids named like a partition or too long for a key", 4 * len(HOSTILE_ORGS))
