"""How the Runs table keeps a run's change list, and a user row its history (schemas: ``table_runs``, ``table_users``).

A run's change list is stored a Graph page at a time, never a user at a time: the changes one segment of a group
recorded go into rows ``<run>|x|<group>|<segment>|<page>|<part>`` (a part holds at most CHANGES_PER_PART changes and
PART_UNITS of JSON, so a page of 999 users is one row, rarely two), written in the same transaction as the segment's
progress row; the deactivations of the run's end go into ``<run>|y|<part>``. Both sort after the run's own rows
(``|g|`` progress, ``|s|`` seen users), so reading a run never reads its change list, and a page of the list is
one or two row reads. A change is a JSON array ``[userId, username, displayName, change, reason, fields, groupId,
emailQueued]``; a history entry ``[at, runId, trigger, change, reason, fields, groupId]``.
"""
from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from ..errors import InvalidInput
from ..model import HistoryEntry, SegmentChanges, UserChange, iso
from .table_text import TEXT_PART_UNITS, key, long_text, read_long_text

KIND = "changes"
CHANGES_PER_PART = 1000
# An entity holds 1 MiB by Microsoft's formula (2 bytes a UTF-16 unit), and Azurite also refuses one whose JSON in
# the request (non-ASCII escaped, as the SDK sends it) passes 1 MiB: a part stays under both.
PART_UNITS = 12 * TEXT_PART_UNITS
PART_BYTES = 900_000
HISTORY_BYTES = 256 * 1024  # a user row's history, as sent; the oldest entries beyond it go (after the 50 cap)
TRANSACTION_BYTES = 3 * 1024 * 1024  # a batch may carry 4 MiB
TRANSACTION_OPERATIONS = 100


def _row_prefix(run_id: str) -> str:
    return f"{key(run_id)}|"


def list_range(run_id: str) -> tuple[str, str]:
    """The RowKey range [lo, hi) of a run's whole change list (the groups' rows, then the run end's)."""
    prefix = _row_prefix(run_id)
    return f"{prefix}x|", f"{prefix}y}}"


def final_range(run_id: str) -> tuple[str, str]:
    prefix = _row_prefix(run_id)
    return f"{prefix}y|", f"{prefix}y}}"


def _change_json(c: UserChange) -> str:
    return json.dumps([c.user_id, c.username, c.display_name, c.change, c.reason, c.fields, c.group_id,
                       1 if c.email_queued else 0], ensure_ascii=False, separators=(",", ":"))


def _change_from(x: list) -> UserChange:
    return UserChange(user_id=x[0], username=x[1], display_name=x[2], change=x[3], reason=x[4], fields=x[5] or {},
                      group_id=x[6], email_queued=bool(x[7]))


def _parts(changes: Iterable[UserChange]) -> list[list[str]]:
    """The changes' JSON, cut into parts that each fit one entity."""
    parts: list[list[str]] = []
    current: list[str] = []
    units = sent = 0
    for c in changes:
        text = _change_json(c)
        size, escaped = len(text.encode("utf-16-le")) // 2 + 1, len(json.dumps(text))
        if current and (units + size > PART_UNITS or sent + escaped > PART_BYTES or len(current) >= CHANGES_PER_PART):
            parts.append(current)
            current, units, sent = [], 0, 0
        current.append(text)
        units += size
        sent += escaped
    if current:
        parts.append(current)
    return parts


def _entity(pk: str, row_key: str, part: list[str]) -> dict[str, Any]:
    return {"PartitionKey": pk, "RowKey": row_key, "kind": KIND, "n": len(part),
            **long_text("changes", "[" + ",".join(part) + "]")}


def segment_entities(pk: str, run_id: str, changes: SegmentChanges) -> list[dict[str, Any]]:
    """The rows of one segment's changes, a page (or part of one) a row."""
    base = f"{_row_prefix(run_id)}x|{key(changes.group_id)}|{changes.segment:05d}"
    return [_entity(pk, f"{base}|{page:04d}|{n:02d}", part)
            for page in sorted(changes.pages) for n, part in enumerate(_parts(changes.pages[page]))]


def final_entities(pk: str, run_id: str, changes: Sequence[UserChange]) -> list[dict[str, Any]]:
    """The rows of the changes at the run's end (sorted by user, so the same changes give the same rows)."""
    ordered = sorted(changes, key=lambda c: c.user_id)
    return [_entity(pk, f"{_row_prefix(run_id)}y|{n:05d}", part) for n, part in enumerate(_parts(ordered))]


def row_entity(pk: str, row_key: str, changes: Sequence[UserChange]) -> dict[str, Any]:
    """One row rewritten (the caller keeps it to one part's worth)."""
    return _entity(pk, row_key, [_change_json(c) for c in changes])


def changes_of(entity: Any) -> list[UserChange]:
    return [_change_from(x) for x in json.loads(read_long_text(entity, "changes") or "[]")]


def _bytes(entity: dict[str, Any]) -> int:
    """About what the entity takes in a batch body (its JSON is ASCII-escaped, as the SDK sends it)."""
    return 600 + sum(len(json.dumps(v)) for v in entity.values() if isinstance(v, str))


def transactions(entities: list[dict[str, Any]], reserve: int = 0) -> list[list[dict[str, Any]]]:
    """``entities`` in transactions of at most 100 operations and TRANSACTION_BYTES; the last leaves room for
    ``reserve`` more operations (the progress row that goes with them)."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for e in entities:
        n = _bytes(e)
        if current and (size + n > TRANSACTION_BYTES or len(current) + 1 > TRANSACTION_OPERATIONS - reserve):
            out.append(current)
            current, size = [], 0
        current.append(e)
        size += n
    if current:
        out.append(current)
    return out


def cursor_after(row_key: str, index: int, size: int) -> str:
    """The token of the change at ``index`` of a row of ``size``; past its end, of the next row (whatever its key:
    every key character sorts after a space), so a page that ends with a row never makes the next one read it."""
    return encode_cursor(row_key + " ", 0) if index >= size else encode_cursor(row_key, index)


def encode_cursor(row_key: str, index: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"row": row_key, "at": index}).encode()).decode().rstrip("=")


def decode_cursor(token: str | None, run_id: str) -> tuple[str, int]:
    """(row key, index of the first change to return in it); the start of the list for no token."""
    lo, hi = list_range(run_id)
    if not token:
        return lo, 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        row, at = data["row"], data["at"]
        if not isinstance(row, str) or not lo <= row < hi or isinstance(at, bool) or not isinstance(at, int) \
                or not 0 <= at <= 10**6:
            raise ValueError
        row.encode("utf-8")
        return row, at
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidInput("continuationToken is not one this API returned", code="invalid_continuation_token") from None


# ---------------------------------------------------------------- a user's history


def history_properties(entries: Sequence[HistoryEntry]) -> dict[str, Any]:
    """The user row's ``history`` (newest first) and ``historyOldest``, the date the nightly's retention filters on."""
    if not entries:
        return {}
    texts = [json.dumps([iso(e.at), e.run_id, e.trigger, e.change, e.reason, e.fields, e.group_id],
                        ensure_ascii=False, separators=(",", ":")) for e in entries]
    kept = texts
    if 6 * sum(len(t) + 1 for t in texts) > HISTORY_BYTES:  # (escaped, a character takes at most 6 bytes)
        kept, sent = [], 0
        for text in texts:
            sent += len(json.dumps(text)) + 1
            if kept and sent > HISTORY_BYTES:
                break
            kept.append(text)
    oldest = min(e.at for e in entries[: len(kept)])
    return {**long_text("history", "[" + ",".join(kept) + "]"), "historyOldest": oldest}


def history_of(entity: Any) -> tuple[HistoryEntry, ...]:
    text = read_long_text(entity, "history")
    if not text:
        return ()
    return tuple(HistoryEntry(at=_at(x[0]), run_id=x[1], trigger=x[2], change=x[3], reason=x[4], fields=x[5] or {},
                              group_id=x[6]) for x in json.loads(text))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
