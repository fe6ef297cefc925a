"""Who agreed to get a subscription's admin alerts: the confirmation e-mail of each address added to ``notifyEmails``
and the anonymous link in it (``GET /api/directory/notify-emails/confirm?token=``). Until its owner follows that link
an address gets no alert: ``notifyEmails`` names recipients, it does not make them willing ones (issue 22, 2).

The decisions are pure (``alert_model``: ``with_notify_emails``, ``confirmed``); the confirmation e-mail is an alert
row of its own (kind ``notify_confirmation``, one per link), so it is queued, claimed and sent like any alert.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from . import signing
from .alert_model import CONFIRM_PURPOSE, CONFIRM_TTL, confirmation_alert, confirmed
from .alerts import tell
from .composition import Services
from .concurrency import optimistic
from .errors import Conflict, Gone, InvalidInput, PreconditionFailed
from .logs import get_logger
from .model import NotifyAddress, Subscription

log = get_logger(__name__)


async def ask(svc: Services, sub: Subscription, asks: list[NotifyAddress]) -> None:
    """Queue the confirmation e-mail of each address in ``asks`` (just put on ``sub``'s list). A failure is logged:
    the address stays pending and saving the list again after CONFIRM_AGAIN_AFTER asks again."""
    for entry in asks:
        try:
            await tell(svc, confirmation_alert(sub, entry, svc.clock()), sub)
        except Exception:
            log.warning("a notifyEmails confirmation could not be queued", exc_info=True,
                        extra={"org": sub.org, "subscription": sub.id})


def confirmation_token(secret: str, alert_org: str, sub_id: str, nonce: str, asked_at: datetime) -> str:
    """The signed token of a confirmation link: names the subscription and the link's nonce (not the address),
    valid CONFIRM_TTL from when it was asked for (the same link however often its e-mail is redelivered)."""
    return signing.sign(secret, CONFIRM_PURPOSE, {"org": alert_org, "sid": sub_id, "n": nonce,
                                                  "exp": int((asked_at + CONFIRM_TTL).timestamp())})


@dataclass(frozen=True)
class Confirmed:
    address: str
    subscription_name: str


async def confirm(svc: Services, token: str | None) -> Confirmed:
    """Follow a confirmation link: the address it was sent to is confirmed (once). 400 ``invalid_token``; 410
    ``token_expired``, ``token_used`` (confirmed already) or ``confirmation_withdrawn`` (the address was removed, a
    newer link replaced this one, or the subscription is gone)."""
    if not isinstance(token, str) or not token:
        raise InvalidInput("the link has no token", code="invalid_token")
    claims = signing.verify(svc.settings.signing_secret, CONFIRM_PURPOSE, token)
    org, sid, nonce, exp = claims.get("org"), claims.get("sid"), claims.get("n"), claims.get("exp")
    if not (isinstance(org, str) and isinstance(sid, str) and isinstance(nonce, str) and isinstance(exp, int)):
        raise InvalidInput("the token is not a confirmation link's", code="invalid_token")
    if exp < int(svc.clock().timestamp()):
        raise Gone("the confirmation link has expired; ask the portal's administrators to add the address again",
                   code="token_expired")
    outcome: dict[str, str] = {}

    async def read() -> Subscription | None:
        sub = await svc.subscriptions.get(org, sid)
        return None if sub is None or sub.deleting else sub

    async def change(sub: Subscription) -> Subscription | None:
        new, what = confirmed(sub, nonce)
        outcome.update(what=what, name=sub.name)
        return new

    try:
        await optimistic(read, change, svc.subscriptions.save)
    except PreconditionFailed:
        raise Conflict("the directory is being changed; open the link again", code="concurrent_update") from None
    what = outcome.get("what", "withdrawn")
    if what == "used":
        raise Gone("this link was already used: the address gets the directory's alerts", code="token_used")
    if what == "withdrawn":
        raise Gone("this link was withdrawn: the address is no longer on the directory's alert list, or a newer "
                   "link replaced it", code="confirmation_withdrawn")
    log.info("notifyEmails address confirmed", extra={"org": org, "subscription": sid})
    return Confirmed(what, outcome["name"])
