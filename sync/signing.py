"""Compact HMAC-signed tokens (consent state, enrollment links): payload readable, tamper-evident, purpose-bound."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import Any

from .errors import InvalidInput


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _unb64(text: str) -> bytes:
    """Strict base64url (RFC 4648 §5, unpadded): ValueError for any text ``_b64`` would not have written.

    Python's decoder drops characters outside the alphabet and ignores the unused low bits of the last character, so
    ``mac!``, ``m*ac`` or a last character with other trailing bits would decode to the same bytes and verify.
    """
    if not isinstance(text, str) or not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # non-zero trailing bits: another spelling of the same bytes
        raise ValueError("not canonical base64url")
    return data


def _mac(secret: str, purpose: str, body: str) -> bytes:
    # The purpose is part of the MAC so a consent state can never pass as an enrollment token.
    return hmac.new(secret.encode(), f"{purpose}.{body}".encode(), hashlib.sha256).digest()


def sign(secret: str, purpose: str, payload: dict[str, Any]) -> str:
    """``payload`` as a URL-safe token that only holders of ``secret`` can produce."""
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_b64(_mac(secret, purpose, body))}"


def verify(secret: str, purpose: str, token: str) -> dict[str, Any]:
    """The payload of a token signed for ``purpose``; InvalidInput if forged, truncated, for another purpose, or not
    exactly as ``sign`` wrote it (one token, one spelling)."""
    if not isinstance(token, str) or len(token) > 4096 or token.count(".") != 1:
        raise InvalidInput("the token is malformed", code="invalid_token")
    body, mac = token.split(".")
    try:
        given = _unb64(mac)
        payload = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the token is malformed", code="invalid_token") from None
    if not hmac.compare_digest(given, _mac(secret, purpose, body)) or not isinstance(payload, dict):
        raise InvalidInput("the token's signature is not valid", code="invalid_token")
    return payload
