"""Phone numbers in E.164, read with Google's libphonenumber metadata (the ``phonenumbers`` package)."""
from __future__ import annotations

import phonenumbers


def known_region(code: str) -> bool:
    """Is ``code`` a region (ISO 3166-1 alpha-2, as Graph's ``usageLocation``) whose numbering plan is known?"""
    return isinstance(code, str) and code.upper() in phonenumbers.SUPPORTED_REGIONS


def e164(raw: str | None, region: str | None) -> tuple[str | None, bool]:
    """``(number in E.164, refused)``: a number in international format reads alone, a national one with ``region``.
    Nothing there is ``(None, False)``; something that is no valid number of a known plan is ``(None, True)``."""
    text = (raw or "").strip()
    if not text:
        return None, False
    region = region.strip().upper() if isinstance(region, str) and known_region(region.strip()) else None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None, True
    if not phonenumbers.is_valid_number(number):
        return None, True
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), False
