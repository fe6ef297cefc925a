"""The anonymous link of a notifyEmails confirmation e-mail: answers a small HTML page (the person is in a browser)."""
from __future__ import annotations

import html
import time

import azure.functions as func

from .. import alert_recipients, composition
from ..errors import SyncError
from ..logs import get_logger
from .http import NO_STORE, log_request, query

log = get_logger(__name__)
bp = func.Blueprint()
PAGE_HEADERS = {**NO_STORE, "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


@bp.function_name("confirm_notify_email")
@bp.route(route="directory/notify-emails/confirm", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def confirm_notify_email(req: func.HttpRequest) -> func.HttpResponse:
    """``?token=`` from the confirmation e-mail: the address it was sent to gets the directory's alerts from now on."""
    started = time.perf_counter()
    code = None
    try:
        svc = await composition.services()
        done = await alert_recipients.confirm(svc, query(req).get("token"))
        status, title = 200, "Alerts confirmed"
        text = (f"{done.address} now gets the alerts of the directory named “{done.subscription_name}” in "
                f"{svc.settings.portal_name}. You can close this page.")
    except SyncError as exc:
        status, title, text, code = exc.status, "This link cannot be used", exc.message, exc.code
    except Exception:
        log.exception("a notifyEmails confirmation failed")
        status, title, text, code = 500, "Something went wrong", "Try the link again later.", "internal_error"
    log_request(req, status, started, code=code)
    return func.HttpResponse(page(title, text, code), status_code=status, mimetype="text/html", charset="utf-8",
                             headers=PAGE_HEADERS)


def page(title: str, text: str, code: str | None) -> str:
    """A minimal page; every value escaped (a subscription's name is whatever its org typed)."""
    detail = f'<p style="color:#6b7280;font-size:13px">Code: <code>{html.escape(code)}</code></p>' if code else ""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title></head>"
            '<body style="font-family:Segoe UI,Helvetica,Arial,sans-serif;max-width:560px;margin:48px auto;'
            f'padding:0 16px;color:#111827"><h1 style="font-size:20px">{html.escape(title)}</h1>'
            f"<p>{html.escape(text)}</p>{detail}</body></html>")
