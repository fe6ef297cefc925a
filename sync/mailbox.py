"""Is a directory value exactly one e-mail address? (Pure: no SDK, no I/O.)

A synced ``mail`` becomes an SMTP recipient and the ``To`` header of a message that carries the user's enrollment
link, so anything that could name a second recipient — separators (``,`` ``;``), quoting, comments, angle brackets,
whitespace, control or line-break characters (CR, LF, NEL U+0085, U+2028/U+2029), a display name — makes the value
unusable. Accepted: one RFC 5321 addr-spec, ``local@domain``: a dot-atom local part of at most 64 characters (ASCII
atext, or letters and digits of any script, as SMTPUTF8 allows) and a domain of at most 253 characters, at least two
labels of letters, digits and hyphens (any script, IDNA-encodable), none starting or ending with a hyphen.
"""
from __future__ import annotations

import unicodedata

ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
MAX_ADDRESS = 254


def _word_char(c: str) -> bool:
    """A letter, mark or digit of any script (non-ASCII), which SMTPUTF8 allows in local parts and IDN labels."""
    return ord(c) > 127 and unicodedata.category(c)[0] in "LMN"


def is_single_address(value: str | None) -> bool:
    """True only for exactly one plain addr-spec."""
    if not isinstance(value, str) or not value or len(value) > MAX_ADDRESS or value.count("@") != 1:
        return False
    local, domain = value.split("@")
    if not 1 <= len(local) <= 64 or local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    if not all(c in ATEXT or c == "." or _word_char(c) for c in local):
        return False
    if len(domain) > 253:
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    for label in labels:
        if not 1 <= len(label) <= 63 or label.startswith("-") or label.endswith("-"):
            return False
        if not all(c.isascii() and (c.isalnum() or c == "-") or _word_char(c) for c in label):
            return False
    try:
        domain.encode("idna")
    except UnicodeError:
        return False
    return True
