"""Renders e-mails from the jinja2 templates in ``templates/``: subject, HTML (autoescaped) and plain text."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@lru_cache(maxsize=1)
def _environments() -> tuple[Any, Any]:
    import jinja2

    loader = jinja2.FileSystemLoader(str(TEMPLATES))
    html = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    text = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return html, text


def render_invitation(*, portal_name: str, portal_url: str, display_name: str, username: str, link: str,
                      expires_at: datetime, reminder: bool = False) -> RenderedEmail:
    """The enrollment invitation for one newly synced user (or its reminder, which says so)."""
    html_env, text_env = _environments()
    context = {
        "reminder": reminder,
        "portal_name": portal_name,
        "portal_url": portal_url,
        "display_name": display_name,
        "username": username,
        "link": link,
        "expires": expires_at.strftime("%d %B %Y, %H:%M UTC"),
    }
    # A subject is one header line: nothing in a name may start a new header, hide behind a control character or
    # turn the text around (the same cleaning as an alert's subject).
    subject = header_text(text_env.get_template("invitation_subject.txt").render(context), SUBJECT_LIMIT)
    return RenderedEmail(
        subject=subject,
        html=html_env.get_template("invitation.html").render(context),
        text=text_env.get_template("invitation.txt").render(context),
    )


# What an admin can do about a run that failed with these codes (the run's errors name them); others get the default.
FAILURE_HINTS = {
    "consent_revoked": "A Global Administrator or Privileged Role Administrator of the tenant must authorize the "
                       "directory again: Authorize on the directory's page in the portal.",
    "credential_invalid": "The service's own Microsoft credential is invalid or expired: tell the portal's operator. "
                          "Nothing in your tenant needs to change.",
    "permission_missing": "Grant the app the Microsoft Graph permission the error names (authorize again after adding "
                          "it), or deselect the group.",
    "hidden_membership": "The group hides its membership: grant the app Member.Read.Hidden, or deselect the group.",
    "group_not_found": "The group no longer exists in Azure: deselect it on the directory's page.",
    "group_sync_failed": "Check the failing group in Azure and start a Full Sync again; if it keeps failing, "
                         "contact support with the run id.",
    "page_token_expired": "Microsoft Graph kept expiring the group's listing: start a Full Sync again.",
    "run_timed_out": "The run stopped making progress: start a Full Sync again.",
    "queue_unavailable": "The service was briefly unavailable: start a Full Sync again.",
    "storage_unavailable": "The service was briefly unavailable: start a Full Sync again.",
}
DEFAULT_FAILURE_HINT = "Open the run in the portal, read each failed group's error, fix it and start a Full Sync again."
BODY_NAME = 200  # characters of the subscription's name in an alert's body (never in its subject)
SUBJECT_LIMIT = 200  # characters of a subject
NAME_LIMIT = 200  # characters of a recipient's display name in To
# Direction marks, embeddings, overrides and isolates (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069): dropped.
_INVISIBLE = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def header_text(value: str, limit: int) -> str:
    """Directory or user text fit for a header (Subject, a To display name): one line (every line break and control
    character — C0 with NUL and ESC, DEL, C1 — is a space), no direction marks or overrides that could disguise it,
    at most ``limit`` characters. The one cleaning of header text: alerts, invitations and the SMTP adapter use it."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value
                      if ord(c) not in _INVISIBLE)
    text = " ".join(cleaned.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def render_alert(*, portal_name: str, portal_url: str, kind: str, subscription_name: str, run_id: str | None,
                 facts: dict[str, Any], link: str) -> RenderedEmail:
    """The admin alert of one event (``sync.alert_model.AlertKind``): what happened and what to do."""
    html_env, text_env = _environments()
    codes = [code for code, _ in facts.get("errorCodes", [])]
    hints = list(dict.fromkeys(FAILURE_HINTS[c] for c in codes if c in FAILURE_HINTS)) or [DEFAULT_FAILURE_HINT]
    context = {
        "portal_name": portal_name,
        "portal_url": portal_url,
        "kind": kind,
        # The name is whatever the org typed: only ever in the body, labelled as the directory's name, one line.
        "subscription_name": header_text(subscription_name, BODY_NAME),
        "run_id": run_id,
        "facts": facts,
        "hints": hints,
        "link": link,
        "started": _when(facts.get("startedAt")),
        "finished": _when(facts.get("finishedAt")),
        "consented": _when(facts.get("consentedAt")),
        "detected": _when(facts.get("detectedAt")),
    }
    name = "webhook_alert" if kind == "webhook_failing" else "alert"  # a portal endpoint, not a directory
    subject = header_text(text_env.get_template(f"{name}_subject.txt").render(context), SUBJECT_LIMIT)
    return RenderedEmail(
        subject=subject,
        html=html_env.get_template(f"{name}.html").render(context),
        text=text_env.get_template(f"{name}.txt").render(context),
    )


CONFIRMATION_SUBJECT = "Confirm that you want Directory Sync alerts"
DIGEST_SUBJECT = "Directory Sync: alerts held back in the last hour"
DIGEST_LABELS = {"run_failed": "a Full Sync failed", "run_needs_review": "a Full Sync needs your review",
                 "consent_lost": "Microsoft no longer lets the portal read the directory"}


def render_confirmation(*, portal_name: str, portal_url: str, subscription_name: str, address: str, link: str,
                        expires_at: datetime) -> RenderedEmail:
    """The e-mail asking an address added to ``notifyEmails`` whether it wants the alerts (fixed subject)."""
    html_env, text_env = _environments()
    context = {"portal_name": portal_name, "portal_url": portal_url, "address": address, "link": link,
               "subscription_name": header_text(subscription_name, BODY_NAME),
               "expires": expires_at.strftime("%d %B %Y, %H:%M UTC")}
    return RenderedEmail(subject=CONFIRMATION_SUBJECT,
                         html=html_env.get_template("notify_confirm.html").render(context),
                         text=text_env.get_template("notify_confirm.txt").render(context))


def render_digest(*, portal_name: str, portal_url: str, subscription_name: str, items: list[dict[str, Any]],
                  more: int, per_hour: int, link: str) -> RenderedEmail:
    """The digest of the alerts a subscription had beyond ALERTS_PER_HOUR (fixed subject)."""
    html_env, text_env = _environments()
    shown = [{**item, "when": _when(item.get("at")) or "?"} for item in items]
    context = {"portal_name": portal_name, "portal_url": portal_url, "items": shown, "more": more,
               "per_hour": per_hour, "labels": DIGEST_LABELS, "link": link,
               "subscription_name": header_text(subscription_name, BODY_NAME)}
    return RenderedEmail(subject=DIGEST_SUBJECT, html=html_env.get_template("digest.html").render(context),
                         text=text_env.get_template("digest.txt").render(context))


def _when(value: str | None) -> str | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%d %B %Y, %H:%M UTC")
