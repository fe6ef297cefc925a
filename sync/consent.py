"""Admin consent, with the consenting tenant proven by a signed Microsoft sign-in.

Microsoft's admin-consent redirect carries ``tenant`` as a plain query parameter, which anybody can write
(https://learn.microsoft.com/entra/identity-platform/v2-admin-consent: "sign the user into your app" to identify
the organization). So the callback never records it. The sequence:

1. ``POST …/authorize`` → ``{AUTHORITY_HOST}/organizations/v2.0/adminconsent?…&state=S1``; S1 is HMAC-signed
   (org, subscription, nonce n, expiry 10 minutes) and n is stored on the subscription.
2. Microsoft → ``GET /api/directory/consent?admin_consent=True&tenant=T&state=S1``: S1 is checked (and n still
   current), nothing is written, and the browser goes on to the OpenID Connect sign-in at tenant T
   (``response_type=id_token``, ``response_mode=form_post``) with state S2 = S1's claims + T, and a nonce derived
   from n with the signing secret (so only our server can know it, and it binds the sign-in to this link).
3. Microsoft → ``POST /api/directory/consent`` with ``id_token`` and S2: the id_token is verified (signature,
   ``aud``, ``iss`` = ``{authority}/{tid}/v2.0``, ``exp``, ``nonce``), its ``tid`` must be T, and the account must
   hold a role that can grant Microsoft Graph application permissions; only then is n consumed, and the proven
   consent is held on the subscription (``authorization_pending``) behind a single-use code C (HMAC-signed: org,
   subscription, nonce c, a tag of the requesting portal user, expiry 10 minutes). The browser goes to the portal
   with ``consent=pending&consentCode=C`` and nothing of the tenant.
4. The portal, for its signed-in user, shows ``GET …/consent?consentCode=C`` (tenant id, domain, consenting admin)
   and sends ``POST …/consent/confirm {"consentCode": C}``: only a caller of the same org and the same ``sub`` that
   called ``authorize`` gets an answer (anyone else: 404); a used or expired code is 410. Only the confirm makes
   the subscription ``authorized`` for the tenant.

Without step 4, Microsoft's callback would connect whichever tenant's admin opened the link: org A could send its
genuine consent URL to another company's Global Administrator and, once accepted, read that company's directory
(consent phishing, issue 22). The confirm binds the connection to the portal user who asked for it. A tenant already
connected to another org is refused (409 ``tenant_connected_elsewhere``) unless ``ALLOW_SHARED_TENANTS``; that
org's admins are alerted either way.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from . import alerts, signing
from .composition import Services
from .errors import Conflict, Gone, InvalidInput, NotFound, SyncError, Transient
from .logs import get_logger
from .model import Caller, PendingConsent, SignIn, Subscription, SubscriptionStatus, is_guid, iso
from .subscriptions import get, modify

log = get_logger(__name__)

CONSENT_STATE_PURPOSE = "consent-state"
SIGNIN_STATE_PURPOSE = "consent-signin"
CONSENT_CODE_PURPOSE = "consent-code"
CONSENT_STATE_TTL = timedelta(minutes=10)
CONSENT_CODE_TTL = timedelta(minutes=10)
GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
# Only these directory roles can grant tenant-wide consent to Microsoft Graph *application* permissions
# (https://learn.microsoft.com/entra/identity/enterprise-apps/grant-admin-consent#prerequisites); Cloud Application
# and Application Administrators can consent to other APIs' permissions but not to Graph app roles.
CONSENTING_ROLES = {
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "e8611ab8-c189-46e8-94e1-60213ab1f814": "Privileged Role Administrator",
}


async def authorize_url(svc: Services, caller: Caller, sub_id: str) -> str:
    """The Microsoft admin-consent URL a Global Admin of the customer's tenant must open."""
    nonce = secrets.token_urlsafe(16)

    async def remember(sub: Subscription) -> Subscription:
        return replace(sub, consent_nonce=nonce, consent_requested_by=caller.subject, updated_at=svc.clock())

    sub = await modify(svc, caller, sub_id, remember)
    s = svc.settings
    expires = int((svc.clock() + CONSENT_STATE_TTL).timestamp())
    state = signing.sign(s.signing_secret, CONSENT_STATE_PURPOSE, {"org": sub.org, "sub": sub.id, "n": nonce, "exp": expires})
    query = urlencode({"client_id": s.graph_client_id, "scope": GRAPH_DEFAULT_SCOPE,
                       "redirect_uri": s.consent_redirect_uri, "state": state})
    return f"{s.authority_host}/organizations/v2.0/adminconsent?{query}"


async def complete_consent(svc: Services, params: dict[str, str]) -> str:
    """Microsoft's admin-consent redirect (step 2): where the browser goes next — the sign-in, or the portal."""
    back = _portal(svc)
    try:
        claims = _claims(svc, CONSENT_STATE_PURPOSE, params.get("state", ""))
    except SyncError as exc:
        log.warning("consent callback refused", extra={"reason": exc.code})
        return f"{back}?{urlencode({'consent': 'error', 'error': exc.code})}"
    outcome = {"subscriptionId": claims["sub"]}
    if params.get("error"):
        try:  # consumes the state too, so the same link cannot be replayed later
            await _consume(svc, claims)
        except SyncError:  # already used (a reload of Microsoft's error page) or the subscription is gone
            pass
        return f"{back}?{urlencode({**outcome, 'consent': 'error', 'error': _safe_code(params['error'])})}"
    tenant = (params.get("tenant") or "").strip()
    if params.get("admin_consent", "").lower() != "true" or not is_guid(tenant):
        return f"{back}?{urlencode({**outcome, 'consent': 'error', 'error': 'consent_not_granted'})}"
    try:
        await _current(svc, claims)
    except SyncError as exc:
        return f"{back}?{urlencode({**outcome, 'consent': 'error', 'error': exc.code})}"
    s = svc.settings
    state = signing.sign(s.signing_secret, SIGNIN_STATE_PURPOSE, {**claims, "t": tenant.lower()})
    # prompt=select_account: Microsoft shows the account picker even to an admin already signed in, so the person
    # approving sees which account (and so which tenant) they connect (learn.microsoft.com/entra/identity-platform/
    # v2-protocols-oidc#send-the-sign-in-request).
    query = urlencode({"client_id": s.graph_client_id, "response_type": "id_token", "response_mode": "form_post",
                       "redirect_uri": s.consent_redirect_uri, "scope": "openid profile", "state": state,
                       "nonce": sign_in_nonce(s.signing_secret, claims["n"]), "prompt": "select_account"})
    return f"{s.authority_host}/{tenant.lower()}/oauth2/v2.0/authorize?{query}"


async def complete_sign_in(svc: Services, form: dict[str, str]) -> str:
    """The admin's signed sign-in (step 3): hold the consent of the proven tenant for the portal user's confirm;
    always back to the portal (``consent=pending&consentCode=…`` or ``consent=error&error=…``)."""
    back = _portal(svc)
    try:
        claims = _claims(svc, SIGNIN_STATE_PURPOSE, form.get("state", ""))
        if not isinstance(claims.get("t"), str):
            raise InvalidInput("the sign-in state names no tenant", code="invalid_state")
    except SyncError as exc:
        log.warning("consent sign-in refused", extra={"reason": exc.code})
        return f"{back}?{urlencode({'consent': 'error', 'error': exc.code})}"
    outcome = {"subscriptionId": claims["sub"]}
    try:
        if form.get("error"):
            raise InvalidInput("the sign-in failed at Microsoft", code="signin_failed")
        await _current(svc, claims)
        sign_in = await svc.sign_ins.verify(form.get("id_token", ""),
                                            nonce=sign_in_nonce(svc.settings.signing_secret, claims["n"]))
        check_sign_in(sign_in, claims["t"])
        sub, code = await _hold(svc, claims, sign_in)
    except Transient as exc:
        log.warning("consent sign-in could not be verified now", extra={"reason": exc.code})
        return f"{back}?{urlencode({**outcome, 'consent': 'error', 'error': exc.code})}"
    except SyncError as exc:
        log.warning("consent sign-in refused", extra={"reason": exc.code, "subscription": claims["sub"]})
        return f"{back}?{urlencode({**outcome, 'consent': 'error', 'error': exc.code})}"
    log.info("admin consent proven, waiting for the portal's confirm", extra={"org": sub.org, "subscription": sub.id})
    return f"{back}?{urlencode({**outcome, 'consent': 'pending', 'consentCode': code})}"


async def pending_consent(svc: Services, caller: Caller, sub_id: str, code: str | None) -> dict[str, Any]:
    """What confirming ``code`` would connect: the tenant, its domain, the admin who consented (step 4)."""
    sub, held = await _pending(svc, caller, sub_id, code)
    return {"subscriptionId": sub.id, "tenantId": held.tenant_id, "tenantDomain": held.tenant_domain,
            "consentedBy": {"name": held.admin_name, "username": held.admin_username},
            "signedInAt": iso(held.signed_in_at), "expiresAt": iso(held.expires_at)}


async def confirm_consent(svc: Services, caller: Caller, sub_id: str, body: dict[str, Any]) -> Subscription:
    """The portal user who asked for the consent confirms it: the subscription becomes ``authorized`` (step 4)."""
    unknown = sorted(set(body) - {"consentCode"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}; allowed: consentCode", code="unknown_field")
    code = body.get("consentCode")
    _, held = await _pending(svc, caller, sub_id, code if isinstance(code, str) else None)
    others = [s for s in await svc.subscriptions.connected_to(held.tenant_id) if s.org != caller.org and not s.deleting]
    if others and not svc.settings.allow_shared_tenants:
        for other in others:
            await alerts.tenant_claimed(svc, other, held, claimed_by=caller.org, connected=False)
        log.warning("consent refused: tenant connected to another org",
                    extra={"org": caller.org, "subscription": sub_id, "orgs": len(others)})
        raise Conflict("this Entra tenant is already connected to another organisation of the portal; its "
                       "administrators have been told", code="tenant_connected_elsewhere")

    async def apply(sub: Subscription) -> Subscription:
        current = sub.pending_consent
        if current is None or not secrets.compare_digest(current.code_nonce, held.code_nonce):
            raise Gone("this consent was already confirmed or replaced by a newer one", code="consent_code_used")
        if sub.azure_tenant_id and sub.azure_tenant_id.lower() != held.tenant_id:
            raise Conflict("consent came from a different tenant than this directory is connected to",
                           code="tenant_mismatch")
        now = svc.clock()
        return replace(sub, pending_consent=None, azure_tenant_id=held.tenant_id, status=SubscriptionStatus.AUTHORIZED,
                       consented_at=now, consented_by=held.admin_object_id, updated_at=now)

    sub = await modify(svc, caller, sub_id, apply)
    for other in others:  # connected while another org is too (ALLOW_SHARED_TENANTS): they are told
        await alerts.tenant_claimed(svc, other, held, claimed_by=caller.org, connected=True)
    log.info("admin consent confirmed", extra={"org": sub.org, "subscription": sub.id, "shared": bool(others)})
    return sub


def check_sign_in(sign_in: SignIn, tenant: str) -> None:
    """The verified sign-in must be of the tenant that consented, by an account allowed to consent for it."""
    if sign_in.tenant_id.lower() != tenant.lower():
        raise InvalidInput("the signed-in account is not of the tenant named in Microsoft's consent redirect",
                           code="tenant_unverified")
    if not set(sign_in.directory_roles) & set(CONSENTING_ROLES):
        raise InvalidInput(f"only a {' or '.join(CONSENTING_ROLES.values())} can connect a directory",
                           code="admin_role_required")


def sign_in_nonce(signing_secret: str, consent_nonce: str) -> str:
    """The OpenID Connect nonce of a consent link: derived from its stored nonce, known only to the server."""
    mac = hmac.new(signing_secret.encode(), f"oidc-nonce:{consent_nonce}".encode(), hashlib.sha256).digest()
    return signing._b64(mac)


def _claims(svc: Services, purpose: str, state: str) -> dict[str, Any]:
    if not state:
        raise InvalidInput("the consent callback carried no state", code="missing_state")
    claims = signing.verify(svc.settings.signing_secret, purpose, state)
    if not all(isinstance(claims.get(k), str) for k in ("org", "sub", "n")) or not isinstance(claims.get("exp"), int):
        raise InvalidInput("the consent state is malformed", code="invalid_state")
    if claims["exp"] < int(svc.clock().timestamp()):
        raise InvalidInput("the consent link has expired; start again from the portal", code="state_expired")
    return claims


async def _current(svc: Services, claims: dict[str, Any]) -> Subscription:
    """The subscription, if the state's nonce is still its current one (read only)."""
    sub = await svc.subscriptions.get(claims["org"], claims["sub"])
    if sub is None or sub.deleting:
        raise InvalidInput("the subscription no longer exists", code="subscription_not_found")
    if sub.consent_nonce is None or not secrets.compare_digest(sub.consent_nonce, claims["n"]):
        raise InvalidInput("this consent link was already used or replaced by a newer one", code="state_used")
    return sub


async def _consume(svc: Services, claims: dict[str, Any]) -> Subscription:
    """Use the state's nonce once (a consent Microsoft reported as failed), recording nothing."""
    caller = Caller(org=claims["org"], subject="microsoft-consent", role="Owner")

    async def apply(sub: Subscription) -> Subscription:
        if sub.consent_nonce is None or not secrets.compare_digest(sub.consent_nonce, claims["n"]):
            raise InvalidInput("this consent link was already used or replaced by a newer one", code="state_used")
        return replace(sub, consent_nonce=None, updated_at=svc.clock())

    try:
        return await modify(svc, caller, claims["sub"], apply)
    except NotFound:
        raise InvalidInput("the subscription no longer exists", code="subscription_not_found") from None


async def _hold(svc: Services, claims: dict[str, Any], sign_in: SignIn) -> tuple[Subscription, str]:
    """Use the state's nonce once and hold the proven consent for the confirm of whoever asked for it; its code."""
    caller = Caller(org=claims["org"], subject="microsoft-consent", role="Owner")
    code_nonce = secrets.token_urlsafe(16)
    expires = svc.clock() + CONSENT_CODE_TTL
    requested_by = ""

    async def apply(sub: Subscription) -> Subscription:
        nonlocal requested_by
        if sub.consent_nonce is None or not secrets.compare_digest(sub.consent_nonce, claims["n"]):
            raise InvalidInput("this consent link was already used or replaced by a newer one", code="state_used")
        tenant = sign_in.tenant_id.lower()
        if sub.azure_tenant_id and sub.azure_tenant_id.lower() != tenant:
            raise Conflict("consent came from a different tenant than this directory is connected to",
                           code="tenant_mismatch")
        requested_by = sub.consent_requested_by or ""
        held = PendingConsent(tenant_id=tenant, admin_object_id=sign_in.object_id, requested_by=requested_by,
                              code_nonce=code_nonce, expires_at=expires, signed_in_at=svc.clock(),
                              admin_name=sign_in.display_name, admin_username=sign_in.username)
        # A directory already connected to this very tenant keeps syncing while the new consent waits.
        status = sub.status if sub.status == SubscriptionStatus.AUTHORIZED else SubscriptionStatus.AUTHORIZATION_PENDING
        return replace(sub, consent_nonce=None, pending_consent=held, status=status, updated_at=svc.clock())

    try:
        sub = await modify(svc, caller, claims["sub"], apply)
    except NotFound:
        raise InvalidInput("the subscription no longer exists", code="subscription_not_found") from None
    code = signing.sign(svc.settings.signing_secret, CONSENT_CODE_PURPOSE,
                        {"org": sub.org, "sub": sub.id, "c": code_nonce, "u": _subject_tag(svc, requested_by),
                         "exp": int(expires.timestamp())})
    return sub, code


async def _pending(svc: Services, caller: Caller, sub_id: str, code: str | None) -> tuple[Subscription, PendingConsent]:
    """The consent ``code`` holds, for the portal user who asked for it; 404 for anyone else, 410 once used or expired."""
    not_found = NotFound("no consent waits for you with this code", code="consent_not_found")
    try:
        sub = await get(svc, caller, sub_id)  # another org's subscription: 404 whatever else is sent
    except NotFound:
        raise not_found from None
    if not code:
        raise InvalidInput("consentCode is required: the code the consent redirect brought to the portal",
                           code="missing_consent_code")
    try:
        claims = signing.verify(svc.settings.signing_secret, CONSENT_CODE_PURPOSE, code)
    except InvalidInput:
        raise InvalidInput("consentCode is not a code this service issued", code="invalid_consent_code") from None
    if not all(isinstance(claims.get(k), str) for k in ("org", "sub", "c", "u")) or not isinstance(claims.get("exp"), int):
        raise InvalidInput("consentCode is not a code this service issued", code="invalid_consent_code")
    # Another org, another subscription or another portal user than the one who asked: as if no such code existed.
    if claims["org"] != caller.org or claims["sub"] != sub_id \
            or not secrets.compare_digest(claims["u"], _subject_tag(svc, caller.subject)):
        raise not_found
    if claims["exp"] < int(svc.clock().timestamp()):
        raise Gone("the consent code has expired; authorize the directory again", code="consent_code_expired")
    held = sub.pending_consent
    if held is None or not secrets.compare_digest(held.code_nonce, claims["c"]):
        raise Gone("this consent was already confirmed or replaced by a newer one", code="consent_code_used")
    if not held.requested_by or not secrets.compare_digest(held.requested_by, caller.subject):
        raise not_found
    return sub, held


def _subject_tag(svc: Services, subject: str) -> str:
    """The requesting portal user, in the code without naming them (the code passes through the admin's browser)."""
    mac = hmac.new(svc.settings.signing_secret.encode(), f"consent-requester:{subject}".encode(), hashlib.sha256)
    return signing._b64(mac.digest()[:16])


def _portal(svc: Services) -> str:
    return f"{svc.settings.portal_base_url}{svc.settings.portal_consent_return_path}"


def _safe_code(text: str) -> str:
    """Microsoft's error code, reduced to characters that cannot smuggle anything into the portal URL."""
    cleaned = "".join(c for c in text if c.isalnum() or c == "_")[:64]
    return cleaned or "consent_error"
