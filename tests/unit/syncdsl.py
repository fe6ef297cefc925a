"""A small vocabulary for logic tests: connect a subscription, run a sync through the queue, read the results."""
from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

from sync import consent, group_sync, runs, subscriptions
from sync.composition import Services
from sync.model import Caller, GroupJob, RunView, Subscription, User

TENANT = "11111111-2222-3333-4444-555555555555"
SALES, ENG, PLATFORM, OPS = "g-sales", "g-eng", "g-platform", "g-ops"


def four_groups(svc: Services):
    """The tenant most logic tests sync: four groups, a user in three of them, one blocked, one guest without mail."""
    t = svc.directory.tenant(TENANT)
    for gid, name in [(SALES, "Sales Team"), (ENG, "Engineering"), (PLATFORM, "Platform Team"), (OPS, "Operations")]:
        t.add_group(gid, name)
    t.add_user("ann", groups=[SALES])
    t.add_user("bob", groups=[SALES, ENG])
    t.add_user("cat", groups=[ENG, PLATFORM, OPS])
    t.add_user("dan", groups=[PLATFORM], account_enabled=False)
    t.add_user("eve", groups=[OPS], mail=None, user_principal_name="eve_gmail.com#EXT#@contoso.onmicrosoft.com",
               user_type="Guest")
    return t


def caller(org: str = "org-a") -> Caller:
    return Caller(org=org, subject="admin@portal", role="Administrator")


async def connect(svc: Services, *, org: str = "org-a", tenant: str = TENANT, groups: tuple[str, ...] = (),
                  **options) -> Subscription:
    """An authorized subscription with ``groups`` selected and ``options`` (API field names) set."""
    who = caller(org)
    sub = await subscriptions.create(svc, who, {"name": "Contoso"})
    location = await consent_as(svc, who, sub.id, tenant)
    await confirm(svc, who, sub.id, location)
    if options:
        await subscriptions.update(svc, who, sub.id, options)
    if options.get("notifyEmails"):
        await confirm_notify_emails(svc)
    if groups:
        await subscriptions.select_groups(svc, who, sub.id, {"groupIds": list(groups)})
    return await subscriptions.get(svc, who, sub.id)


async def confirm_notify_emails(svc: Services) -> list:
    """Every address asked to confirm ``notifyEmails`` follows the link in its confirmation e-mail, as a real
    recipient would; the confirmation e-mails (taken out of the sender's record) are returned."""
    from notifications.alert_mailer import send_alert
    from sync import alert_recipients
    from sync.alert_model import AlertKind

    pairs = list(zip(svc.queue.alert_jobs, svc.queue.alert_delays))
    jobs = [j for j, _ in pairs if j.alert_id.startswith("confirm:")]
    svc.queue.alert_jobs = [j for j, _ in pairs if j not in jobs]
    svc.queue.alert_delays = [d for j, d in pairs if j not in jobs]
    for job in jobs:
        await send_alert(svc, job)
    mails = [e for e in svc.mail_sender.sent if "/notify-emails/confirm?token=" in e.text]
    for email in mails:
        link = next(w for w in email.text.split() if "/notify-emails/confirm?token=" in w)
        await alert_recipients.confirm(svc, parse_qs(urlsplit(link).query)["token"][0])
    svc.mail_sender.sent[:] = [e for e in svc.mail_sender.sent if e not in mails]
    assert all(a.kind != AlertKind.CONFIRMATION or a.state == "sent" for a in svc.alerts.rows.values())
    return mails


async def consent_as(svc: Services, who: Caller, sub_id: str, tenant: str, *, signed_in_tenant: str | None = None,
                     roles: tuple[str, ...] | None = None) -> str:
    """Admin consent for ``tenant`` and the admin's sign-in (of ``signed_in_tenant``, default the same): the portal URL."""
    url = await consent.authorize_url(svc, who, sub_id)
    state = parse_qs(urlsplit(url).query)["state"][0]
    signin = await consent.complete_consent(svc, {"admin_consent": "True", "tenant": tenant, "state": state})
    if "/oauth2/v2.0/authorize?" not in signin:
        return signin
    query = {k: v[0] for k, v in parse_qs(urlsplit(signin).query).items()}
    extra = {} if roles is None else {"roles": roles}
    id_token = svc.sign_ins.issue(signed_in_tenant or tenant, nonce=query["nonce"], **extra)
    return await consent.complete_sign_in(svc, {"id_token": id_token, "state": query["state"]})


async def confirm(svc: Services, who: Caller, sub_id: str, location: str) -> Subscription:
    """The portal's side of a consent that came back ``consent=pending``: its user confirms the code."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query.get("consent") == "pending", location
    return await consent.confirm_consent(svc, who, sub_id, {"consentCode": query["consentCode"]})


async def deliver(svc: Services, *, times: int = 1, limit: int = 10_000) -> int:
    """Process queued group jobs (each delivered ``times`` times, as at-least-once delivery may) until none are left."""
    handled = 0
    while svc.queue.group_jobs:
        for job in svc.queue.take_group_jobs():
            for attempt in range(times):
                await group_sync.handle_group_job(svc, job, redelivered=attempt > 0)
            handled += 1
            assert handled < limit
    return handled


async def full_sync(svc: Services, sub: Subscription, *, times: int = 1, dry_run: bool = False,
                    trigger: str = "manual") -> RunView:
    run = await runs.start(svc, caller(sub.org), sub.id, trigger, dry_run=dry_run)
    await deliver(svc, times=times)
    return await runs.get(svc, caller(sub.org), sub.id, run.id)


async def dry_run(svc: Services, sub: Subscription, *, times: int = 1) -> RunView:
    return await full_sync(svc, sub, times=times, dry_run=True)


async def changes_of(svc: Services, sub: Subscription, run_id: str, *, page_size: int = 500,
                     **params: str) -> list[dict]:
    """Every page of a run's change list, as the API answers it."""
    out: list[dict] = []
    token = None
    while True:
        query = {"pageSize": str(page_size), **params, **({"continuationToken": token} if token else {})}
        page = await runs.changes(svc, caller(sub.org), sub.id, run_id, query)
        out += page["changes"]
        token = page["continuationToken"]
        if not token:
            return out


def users_of(svc: Services, org: str = "org-a") -> dict[str, User]:
    """Users by username."""
    return {u.username: u for (o, _), u in svc.users.rows.items() if o == org}


async def deliver_job(svc: Services, job: GroupJob) -> None:
    await group_sync.handle_group_job(svc, job)


def with_options(sub: Subscription, **changes) -> Subscription:
    return replace(sub, **changes)
