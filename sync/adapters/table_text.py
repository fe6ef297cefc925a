"""Keys and long texts in Table Storage. Key parts are percent-encoded; a String property holds at most 64 KiB (32K
UTF-16 code units), so a long JSON text is spread over the properties ``name``, ``name_2``, … (entities written with
it are always replaced, never merged)."""
from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

# Table Storage keys (PartitionKey, RowKey) hold at most 1 KiB: 512 UTF-16 units; '/', '\\', '#', '?' and control
# characters are not allowed (learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model).
# A key is at most two parts and a short fixed tail (``<run>|s|<group>|00000|0000``), so a part stays within 240.
KEY_MAX_UNITS = 512
KEY_PART_MAX = 240
_HASHED_HEAD = KEY_PART_MAX - 2 - 48


def key(text: str) -> str:
    """A key part safe for PartitionKey/RowKey and unambiguous: percent-encoded (so only ``A-Z a-z 0-9 _ . - ~ %``),
    and, when that is longer than 240 characters (a 256-character non-ASCII org id encodes to 2,304), its first
    characters, ``%~`` and a SHA-256 of the text (``%~`` never occurs in an encoding, so no short key equals it)."""
    encoded = quote(text.encode("utf-8", "surrogatepass"), safe="")
    if len(encoded) <= KEY_PART_MAX:
        return encoded
    head = encoded[:_HASHED_HEAD]
    cut = head.rfind("%", len(head) - 2)  # never end inside a %XX
    head = head[:cut] if cut != -1 else head
    return f"{head}%~{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:48]}"


TEXT_PART_UNITS = 32 * 1024  # a String property holds 64 KiB: 32K UTF-16 code units


def long_text(name: str, text: str) -> dict[str, str]:
    """``text`` as the properties ``name``, ``name_2``, … of at most 32K UTF-16 units each (Table Storage's limit for
    one String), cut between code points. Entities written with it are always replaced, never merged."""
    if len(text) <= TEXT_PART_UNITS // 2:  # every code point is at most 2 units
        return {name: text}
    data = text.encode("utf-16-le", "surrogatepass")
    limit = 2 * TEXT_PART_UNITS
    parts: dict[str, str] = {}
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        if end < len(data) and 0xD8 <= data[end - 1] <= 0xDB:  # the last unit is a high surrogate: keep the pair
            end -= 2
        parts[_part_name(name, len(parts))] = data[start:end].decode("utf-16-le", "surrogatepass")
        start = end
    return parts


def read_long_text(e: Any, name: str) -> str | None:
    first = e.get(name)
    if first is None:
        return None
    parts, n = [first], 1
    while (part := e.get(_part_name(name, n))) is not None:
        parts.append(part)
        n += 1
    return "".join(parts)


def _part_name(name: str, n: int) -> str:
    return name if n == 0 else f"{name}_{n + 1}"
