"""Untrusted input parsed strictly: numbers in query strings, JSON bodies."""
from __future__ import annotations

import json
from typing import Any

from .errors import InvalidInput


def loads_json(raw: bytes | str) -> Any:
    """``raw`` parsed as JSON, or ValueError: also when nested deeper than Python parses (RecursionError) and when a
    string holds a lone surrogate (``"\\ud800"``: valid JSON escapes, but no UTF-8 text, so no table key or e-mail)."""
    try:
        value = json.loads(raw)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, RecursionError) as exc:
        raise ValueError(str(exc)[:100]) from None
    return value


def page_size(text: str | None, *, default: int, maximum: int, name: str = "pageSize",
              code: str = "invalid_page_size") -> int:
    """``text`` as a whole number from 1 to ``maximum`` (``default`` when absent), else 400 ``invalid_page_size``.

    ``str.isdigit`` accepts ``²`` and ``①``, which ``int`` refuses, and ``int`` refuses more than 4,300 digits: only
    ASCII ``0``-``9`` pass here, and only as many digits as ``maximum`` has (leading zeros aside)."""
    if text is None or text == "":
        return default
    digits = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdecimal()) or len(digits) > len(str(maximum)) or not 1 <= int(digits) <= maximum:
        raise InvalidInput(f"{name} must be a whole number from 1 to {maximum}", code=code)
    return int(digits)
