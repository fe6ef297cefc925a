"""Renders e-mails from the jinja2 templates in ``templates/``: subject, HTML (autoescaped) and plain text."""
from __future__ import annotations

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
                      expires_at: datetime) -> RenderedEmail:
    """The enrollment invitation for one newly synced user."""
    html_env, text_env = _environments()
    context = {
        "portal_name": portal_name,
        "portal_url": portal_url,
        "display_name": display_name,
        "username": username,
        "link": link,
        "expires": expires_at.strftime("%d %B %Y, %H:%M UTC"),
    }
    subject = text_env.get_template("invitation_subject.txt").render(context)
    # A subject is one header line: nothing in a name may start a new header.
    subject = " ".join(subject.split())
    return RenderedEmail(
        subject=subject,
        html=html_env.get_template("invitation.html").render(context),
        text=text_env.get_template("invitation.txt").render(context),
    )
