"""Admin consent proves the tenant with a verified sign-in; a fresh consent may still propagate; our credential may break."""
import dataclasses
from urllib.parse import parse_qs, urlencode, urlsplit

from sync import group_sync, runs, signing
from sync.errors import AuthorizationLost, CredentialInvalid
from sync.model import GroupJob
from tests.helpers import call, token
from tests.unit.syncdsl import TENANT, caller, connect, deliver, full_sync, users_of
from tests.unit.test_directory_api import consent, new_sub, outcome, sign_in

OTHER = "99999999-8888-7777-6666-555555555555"  # another customer's tenant, which consented to the app before
ENG = "g-eng"


def query_of(location):
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def subscription(sub_id):
    _, body, _ = await call("get_subscription", route={"subscriptionId": sub_id})
    return body


async def start(sub_id, tenant=TENANT):
    """Microsoft's admin-consent redirect for ``tenant``: where our callback sends the browser."""
    _, body, _ = await call("authorize_subscription", route={"subscriptionId": sub_id})
    state = query_of(body["authorizeUrl"])["state"]
    _, _, headers = await call("consent_callback", params={"admin_consent": "True", "tenant": tenant, "state": state},
                               auth=None)
    return state, headers["Location"]


async def test_the_callback_records_nothing_and_sends_the_admin_to_sign_in_at_that_tenant(svc):
    sub = await new_sub()
    state, location = await start(sub["id"])
    parts = urlsplit(location)
    q = query_of(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/authorize"
    assert (q["response_type"], q["response_mode"], q["client_id"]) == ("id_token", "form_post", svc.settings.graph_client_id)
    assert q["redirect_uri"] == svc.settings.consent_redirect_uri and "openid" in q["scope"].split()
    assert q["nonce"] and q["state"] != state
    assert (await subscription(sub["id"]))["status"] == "authorization_required"


async def test_a_forged_tenant_is_refused_by_the_sign_in_of_the_real_one(svc):
    """The attack: my own valid state, another customer's tenant id; my sign-in proves my own tenant, not theirs."""
    sub = await new_sub()
    _, location = await start(sub["id"], tenant=OTHER)
    back = await sign_in(location, TENANT)
    assert outcome(back) == ("https://portal.example/directory-sync",
                             {"subscriptionId": sub["id"], "consent": "error", "error": "tenant_unverified"})
    after = await subscription(sub["id"])
    assert (after["status"], after["azureTenantId"]) == ("authorization_required", None)
    # and the honest walk with the same link still works afterwards: nothing was consumed
    _, _, location = await consent(sub["id"])
    assert query_of(location)["consent"] == "pending"
    assert (await subscription(sub["id"]))["azureTenantId"] == TENANT


async def test_a_sign_in_without_a_consenting_role_is_refused(svc):
    sub = await new_sub()
    _, location = await start(sub["id"], tenant=OTHER)
    cloud_app_admin = "158c047a-c907-4556-b7ef-446551a6b5f7"  # may not grant Graph application permissions
    for roles in ((), (cloud_app_admin,)):
        back = await sign_in(location, OTHER, roles=roles)
        assert query_of(back)["error"] == "admin_role_required"
    assert (await subscription(sub["id"]))["status"] == "authorization_required"
    back = await sign_in(location, OTHER, roles=("e8611ab8-c189-46e8-94e1-60213ab1f814",))  # Privileged Role Admin
    assert query_of(back)["consent"] == "pending"


async def test_skipped_forged_replayed_or_failed_sign_ins_change_nothing(svc):
    sub = await new_sub()
    consent_state, location = await start(sub["id"])
    signin_state = query_of(location)["state"]

    async def post(fields):
        raw = urlencode(fields).encode()
        status, _, headers = await call("consent_callback", method="POST", raw=raw, auth=None,
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 302
        return query_of(headers["Location"])

    token_for_other_nonce = svc.sign_ins.issue(TENANT, nonce="not-ours")
    assert (await post({"state": signin_state}))["error"] == "tenant_unverified"  # no id_token at all
    assert (await post({"state": signin_state, "id_token": "eyJhbGciOi.forged.x"}))["error"] == "tenant_unverified"
    assert (await post({"state": signin_state, "id_token": token_for_other_nonce}))["error"] == "tenant_unverified"
    assert (await post({"state": consent_state, "id_token": token_for_other_nonce}))["error"] == "invalid_token"
    assert (await post({"state": signin_state, "error": "access_denied"}))["error"] == "signin_failed"
    assert (await post({"id_token": token_for_other_nonce}))["error"] == "missing_state"
    assert (await subscription(sub["id"]))["status"] == "authorization_required"
    good = svc.sign_ins.issue(TENANT, nonce=query_of(location)["nonce"])
    assert (await post({"state": signin_state, "id_token": good}))["consent"] == "pending"
    assert (await post({"state": signin_state, "id_token": good}))["error"] == "state_used"  # single use


async def test_a_tenant_that_is_not_a_guid_never_reaches_a_url(svc):
    sub = await new_sub()
    for tenant in ("../../evil", "contoso.example", "x?redirect_uri=https://evil", ""):
        _, location = await start(sub["id"], tenant=tenant)
        assert location.startswith("https://portal.example/directory-sync?") and "evil" not in location
        assert query_of(location)["error"] == "consent_not_granted"


async def test_a_fresh_consent_may_still_propagate_then_it_counts_as_lost(svc):
    svc.directory.tenant(TENANT).add_group(ENG, "Engineering")
    sub = await new_sub()
    await consent(sub["id"])
    svc.directory.fail["search"] = AuthorizationLost("403", may_be_propagating=True)
    status, body, headers = await call("search_directory_groups", route={"subscriptionId": sub["id"]},
                                       params={"search": "Engi"})
    assert (status, body["code"]) == (503, "consent_propagating") and 1 <= int(headers["Retry-After"]) <= 5
    assert (await subscription(sub["id"]))["status"] == "authorized"
    svc.clock.advance(seconds=svc.settings.consent_propagation_grace_s + 1)
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "Engi"})
    assert (status, body["code"]) == (409, "consent_revoked")
    assert (await subscription(sub["id"]))["status"] == "consent_revoked"


async def test_a_group_waiting_for_propagation_is_retried_later_not_failed(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(ENG, "Engineering")
    t.add_user("u1", groups=(ENG,))
    sub = await connect(svc, groups=(ENG,))
    svc.directory.fail[ENG] = AuthorizationLost("403", may_be_propagating=True)
    run_id = (await runs.start(svc, caller(), sub.id)).id
    [job] = svc.queue.take_group_jobs()
    await group_sync.handle_group_job(svc, job)
    [later] = svc.queue.take_group_jobs()
    assert later == GroupJob(job.org, job.subscription_id, job.run_id, job.group_id, attempt=1)
    assert later.message_id != job.message_id and svc.queue.group_delays[-1] > 0
    assert (await svc.subscriptions.get(sub.org, sub.id)).status == "authorized"
    del svc.directory.fail[ENG]
    svc.queue.group_jobs.append(later)
    await deliver(svc)
    view = await runs.get(svc, caller(), sub.id, run_id)
    assert view.run.status == "succeeded" and view.counts.created == 1


async def test_propagation_waits_last_the_whole_window_and_only_then_count_as_consent_lost(svc):
    """Microsoft may answer as if the consent were missing for minutes: the group keeps waiting (5 s, 10 s, ... at
    most 60 s a copy) until the window has passed, however many copies that takes, and only then is consent lost."""
    t = svc.directory.tenant(TENANT)
    t.add_group(ENG, "Engineering")
    t.add_user("u1", groups=(ENG,))
    sub = await connect(svc, groups=(ENG,))
    assert (await full_sync(svc, sub)).run.status == "succeeded"
    svc.directory.fail[ENG] = AuthorizationLost("403", may_be_propagating=True)
    run_id = (await runs.start(svc, caller(), sub.id)).id
    consented = (await svc.subscriptions.get(sub.org, sub.id)).consented_at
    waits = []
    while svc.queue.group_jobs:
        [job] = svc.queue.take_group_jobs()
        await group_sync.handle_group_job(svc, job)
        if not svc.queue.group_jobs:
            break
        waits.append(svc.queue.group_delays[-1])
        assert (await svc.subscriptions.get(sub.org, sub.id)).status == "authorized"
        assert (await runs.get(svc, caller(), sub.id, run_id)).run.status in ("queued", "running")
        svc.clock.advance(seconds=waits[-1])
    grace = svc.settings.consent_propagation_grace_s
    assert grace == 600 and waits[:5] == [5, 10, 20, 40, 60] and max(waits) == 60
    assert sum(waits) == grace and len(waits) == 13  # the whole window, not 20 copies of 5 s (100 s)
    assert (svc.clock() - consented).total_seconds() == grace
    assert (await svc.subscriptions.get(sub.org, sub.id)).status == "consent_revoked"
    view = await runs.get(svc, caller(), sub.id, run_id)
    assert view.run.status == "failed" and [e["code"] for e in view.to_api()["errors"]] == ["consent_revoked"]
    assert [(u.username, u.status) for u in users_of(svc).values()] == [("u1@contoso.example", "Active")]


async def test_a_broken_app_credential_fails_the_run_at_once_without_blaming_the_customer(svc):
    t = svc.directory.tenant(TENANT)
    t.add_group(ENG, "Engineering")
    sub = await connect(svc, groups=(ENG,))
    svc.directory.fail[ENG] = CredentialInvalid("AADSTS7000222")
    run_id = (await runs.start(svc, caller(), sub.id)).id
    await deliver(svc)
    view = await runs.get(svc, caller(), sub.id, run_id)
    codes = [e["code"] for e in view.to_api()["errors"]]
    assert view.run.status == "failed" and codes == ["credential_invalid"]
    assert (await svc.subscriptions.get(sub.org, sub.id)).status == "authorized"
    svc.directory.fail["search"] = CredentialInvalid("AADSTS7000215")
    status, body, _ = await call("search_directory_groups", route={"subscriptionId": sub.id}, params={"search": "Engi"})
    assert (status, body["code"]) == (503, "credential_invalid") and "AADSTS" not in body["message"]
    assert caller().org == sub.org


# ---------------------------------------------------------------- the portal user's confirm (issue 22, finding 1)


async def pending_code(sub_id, tenant=TENANT):
    """Consent and sign-in completed, not confirmed: the portal's redirect query."""
    _, _, location = await consent(sub_id, tenant=tenant, confirm=False)
    return query_of(location)


async def confirm_as(sub_id, code, **who):
    return await call("confirm_consent", route={"subscriptionId": sub_id}, body={"consentCode": code},
                      auth=f"Bearer {token(**who)}" if who else "default")


async def preview_as(sub_id, code, **who):
    return await call("get_pending_consent", route={"subscriptionId": sub_id}, params={"consentCode": code},
                      auth=f"Bearer {token(**who)}" if who else "default")


async def test_a_completed_consent_waits_for_the_portal_user_and_the_redirect_tells_nothing_of_the_tenant(svc):
    sub = await new_sub()
    _, location = await start(sub["id"])
    assert query_of(location)["prompt"] == "select_account"  # the admin sees which account approves
    back = query_of(await sign_in(location, TENANT, name="Ada Admin", username="ada@contoso.example"))
    assert set(back) == {"subscriptionId", "consent", "consentCode"} and back["consent"] == "pending"
    code = back["consentCode"]
    assert TENANT not in code and TENANT not in signing._unb64(code.split(".")[0]).decode()
    after = await subscription(sub["id"])
    assert (after["status"], after["azureTenantId"]) == ("authorization_pending", None)
    status, _, _ = await call("search_directory_groups", route={"subscriptionId": sub["id"]}, params={"search": "Engi"})
    assert status == 409  # not connected yet

    status, body, _ = await preview_as(sub["id"], code)
    assert status == 200 and body["tenantId"] == TENANT and body["tenantDomain"] == "contoso.example"
    assert body["consentedBy"] == {"name": "Ada Admin", "username": "ada@contoso.example"}
    status, body, _ = await confirm_as(sub["id"], code)
    assert (status, body["status"], body["azureTenantId"]) == (200, "authorized", TENANT)
    for again in (confirm_as, preview_as):
        status, body, _ = await again(sub["id"], code)
        assert (status, body["code"]) == (410, "consent_code_used")


async def test_only_the_org_and_portal_user_who_asked_can_see_or_confirm_the_consent(svc):
    sub = await new_sub()
    other_sub = await new_sub("another of org-a")
    code = (await pending_code(sub["id"]))["consentCode"]
    for who, sub_id in (({"org": "org-b"}, sub["id"]), ({"sub": "colleague@portal"}, sub["id"]),
                        ({"org": "org-b", "sub": "admin@portal"}, sub["id"]), ({}, other_sub["id"]),
                        ({"org": "org-b"}, "no-such-subscription")):
        for attempt in (confirm_as, preview_as):
            status, body, _ = await attempt(sub_id, code, **who)
            assert (status, body["code"]) == (404, "consent_not_found"), (who, attempt.__name__)
    assert (await subscription(sub["id"]))["status"] == "authorization_pending"
    for bad, why in (("", "missing_consent_code"), ("garbage", "invalid_consent_code"), (code + "!", "invalid_consent_code")):
        status, body, _ = await confirm_as(sub["id"], bad)
        assert (status, body["code"]) == (400, why)
    status, body, _ = await call("confirm_consent", route={"subscriptionId": sub["id"]},
                                 body={"consentCode": code, "tenantId": OTHER})
    assert (status, body["code"]) == (400, "unknown_field")
    status, body, _ = await confirm_as(sub["id"], code)
    assert (status, body["status"]) == (200, "authorized")


async def test_a_consent_code_lasts_ten_minutes_and_a_newer_authorize_replaces_it(svc):
    sub = await new_sub()
    code = (await pending_code(sub["id"]))["consentCode"]
    svc.clock.advance(minutes=10, seconds=1)
    status, body, _ = await confirm_as(sub["id"], code)
    assert (status, body["code"]) == (410, "consent_code_expired")
    status, body, _ = await confirm_as(sub["id"], code, sub="colleague@portal")
    assert status == 404  # expired or not, another user learns nothing
    newer = (await pending_code(sub["id"]))["consentCode"]
    svc.clock.advance(minutes=1)
    first = (await pending_code(sub["id"]))["consentCode"]  # a second walk replaces the first code
    status, body, _ = await confirm_as(sub["id"], newer)
    assert (status, body["code"]) == (410, "consent_code_used")
    status, body, _ = await confirm_as(sub["id"], first)
    assert (status, body["status"]) == (200, "authorized")


async def test_a_tenant_connected_to_another_org_is_refused_and_that_orgs_admins_are_told(svc):
    from sync.alert_model import AlertKind
    from tests.unit.syncdsl import connect

    theirs = await connect(svc, org="org-b", notifyEmails=["it@b.example"])
    sub = await new_sub()
    code = (await pending_code(sub["id"]))["consentCode"]
    for _ in range(2):  # a retry tells them once
        status, body, _ = await confirm_as(sub["id"], code)
        assert (status, body["code"]) == (409, "tenant_connected_elsewhere")
    assert (await subscription(sub["id"]))["azureTenantId"] is None
    [told] = [a for a in svc.alerts.rows.values() if a.org == "org-b" and a.kind == AlertKind.TENANT_CLAIMED]
    assert (told.kind, told.subscription_id, told.recipients) == (AlertKind.TENANT_CLAIMED, theirs.id, ("it@b.example",))
    assert told.facts["outcome"] == "refused" and told.facts["claimingOrg"] == "org-a"

    svc.settings = dataclasses.replace(svc.settings, allow_shared_tenants=True)
    status, body, _ = await confirm_as(sub["id"], code)
    assert (status, body["status"], body["azureTenantId"]) == (200, "authorized", TENANT)
    outcomes = sorted(a.facts["outcome"] for a in svc.alerts.rows.values()
                      if a.org == "org-b" and a.kind == AlertKind.TENANT_CLAIMED)
    assert outcomes == ["connected", "refused"]


async def test_the_other_orgs_alert_renders_what_happened_and_what_to_do():
    from notifications.render import render_alert

    facts = {"tenantId": TENANT, "claimingOrg": "org-a", "outcome": "refused", "adminName": "Ada <b>Admin</b>",
             "adminUsername": "ada@contoso.example", "consentedAt": "2026-01-01T10:00:00.000Z",
             "detectedAt": "2026-01-01T10:01:00.000Z"}
    rendered = render_alert(portal_name="Portal", portal_url="https://portal.example", kind="tenant_claimed",
                            subscription_name="Contoso", run_id=None, facts=facts, link="https://portal.example/d")
    assert "tried to connect" in rendered.subject and "\n" not in rendered.subject
    assert "org-a" in rendered.text and "consent phishing" in rendered.text and TENANT in rendered.text
    assert "Ada &lt;b&gt;Admin&lt;/b&gt;" in rendered.html and "Started" not in rendered.text
