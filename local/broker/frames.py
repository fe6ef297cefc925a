"""Incoming frame filter: renumbers the delivery-ids of transfers a client sent concurrently.

The aio azure-servicebus client (its pure-Python AMQP stack, ``_pyamqp/aio/_session_async.py``
``_outgoing_transfer``) copies the session's ``next_outgoing_id`` into a transfer frame, *awaits*
the socket write -- which waits for the socket lock while another coroutine holds it, listening
for frames -- and only then increments ``next_outgoing_id``. Coroutines sending transfers on one
session at the same time -- several ``AutoLockRenewer`` renewals (one renewer per message in the
function host), renewals next to management-link settlements, a receive in progress holding the
socket lock meanwhile -- therefore send transfers with the *same* delivery-id, followed by a
skipped id (the counter is still incremented once per transfer). Each continuation frame of a
multi-frame delivery carries the counter as read at its own send, so it can be off as well.

proton takes a delivery-id other than the one it expects for a session sequencing error and closes
the whole connection (``amqp:session:invalid-field``, "sequencing error, expected delivery-id N+1,
got N"). The client then fails every operation in flight on it: lock renewals and management
settlements raise "Management Operation error occurred.", the receiver's handler shuts down, and
the next calls fail on the dismantled handler (``AttributeError``/``ValueError``). The SDK is used
this way against Service Bus (the AutoLockRenewer is its documented way to keep locks), so the
local broker has to take it too.

Since the client's counter always ends at "first id + deliveries sent", only the ids written into
single frames are wrong, never the sequence as a whole. :class:`IncomingFrames` sits between the
socket and proton's transport, mirrors proton's per-session incoming delivery-id, and rewrites a
transfer's delivery-id to the one proton expects (for a continuation frame, the id of the delivery
in progress). It also drops frames for a session the client has already ended (its close races the
same way: a management link's detach can follow the session's end). Everything else passes byte
for byte.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .codec import MessageFormatError, _value_end

_log = logging.getLogger("local.broker")

PROTOCOL_HEADER = b"AMQP"
FRAME_HEADER_SIZE = 8
AMQP_FRAME = 0x00
MAX_BUFFERED_FRAME = 16 * 1024 * 1024  # beyond this, let proton refuse the frame itself

# Performative descriptor codes (AMQP 1.0 section 2.7).
BEGIN, ATTACH, TRANSFER, DETACH, END = 0x11, 0x12, 0x14, 0x16, 0x17
_SYMBOLIC = {
    b"amqp:begin:list": BEGIN,
    b"amqp:attach:list": ATTACH,
    b"amqp:transfer:list": TRANSFER,
    b"amqp:detach:list": DETACH,
    b"amqp:end:list": END,
}

# Fields of the transfer performative.
_HANDLE, _DELIVERY_ID, _MORE, _ABORTED = 0, 1, 5, 9
_NULL = b"\x40"
_SEQUENCE_MODULUS = 1 << 32


class _Unparsable(Exception):
    """A frame this filter does not understand; it goes to proton unchanged."""


@dataclass
class _Session:
    """What proton knows about one session's incoming deliveries."""

    next_id: int | None = None  # the delivery-id proton expects for the next new delivery
    in_progress: dict[int, int] = field(default_factory=dict)  # handle -> id of its unfinished delivery
    tracking: bool = True  # False once a transfer could not be read: the mirror may be off, rewrite nothing


def _descriptor(body: bytes) -> tuple[int | None, int]:
    """The performative code of a frame body and the offset of its field list."""
    if not body or body[0] != 0x00:
        raise _Unparsable("not a described performative")
    end = _value_end(body, 1)
    constructor = body[1]
    if constructor == 0x53:
        return body[2], end
    if constructor == 0x80:
        return int.from_bytes(body[2:10], "big"), end
    if constructor in (0xA3, 0xB3):
        name = body[3 if constructor == 0xA3 else 6 : end]
        return _SYMBOLIC.get(bytes(name)), end
    raise _Unparsable("unknown descriptor encoding")


def _fields(body: bytes, start: int) -> tuple[list[bytes], int, int]:
    """The raw encoded fields of the list at ``start``, its constructor and the offset past it."""
    constructor = body[start]
    if constructor == 0x45:
        return [], constructor, start + 1
    if constructor == 0xC0:
        count, pos = body[start + 2], start + 3
    elif constructor == 0xD0:
        count, pos = int.from_bytes(body[start + 5 : start + 9], "big"), start + 9
    else:
        raise _Unparsable("the performative is not a list")
    end = _value_end(body, start)
    items = []
    for _ in range(count):
        item_end = _value_end(body, pos)
        if item_end > end:
            raise _Unparsable("a field runs past its list")
        items.append(body[pos:item_end])
        pos = item_end
    return items, constructor, end


def _scalar(raw: bytes | None) -> int | bool | None:
    """Decode a uint, bool or null field (an absent field is null)."""
    if raw is None or raw == _NULL:
        return None
    code = raw[0]
    if code in (0x43, 0x44):  # uint0, ulong0
        return 0
    if code in (0x52, 0x53):  # smalluint, smallulong
        return raw[1]
    if code in (0x70, 0x80):  # uint, ulong
        return int.from_bytes(raw[1:], "big")
    if code in (0x41, 0x42):
        return code == 0x41
    if code == 0x56:
        return raw[1] != 0
    raise _Unparsable(f"unexpected field encoding 0x{code:02x}")


def _uint(value: int) -> bytes:
    if value == 0:
        return b"\x43"
    if value < 256:
        return bytes((0x52, value))
    return b"\x70" + value.to_bytes(4, "big")


def _list(items: list[bytes], constructor: int) -> bytes:
    payload = b"".join(items)
    if constructor == 0xC0 and len(payload) + 1 <= 255 and len(items) <= 255:
        return bytes((0xC0, len(payload) + 1, len(items))) + payload
    return b"\xd0" + (len(payload) + 4).to_bytes(4, "big") + len(items).to_bytes(4, "big") + payload


class IncomingFrames:
    """Split a client's byte stream into frames and fix the delivery-ids of its transfers.

    :meth:`feed` takes bytes as read from the socket; :meth:`take` hands out what is ready for
    proton: protocol headers and whole frames. Only the delivery-id of a transfer is ever changed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ready = bytearray()
        self._sessions: dict[int, _Session] = {}
        self._ended: set[int] = set()  # channels whose session the client ended
        self._passthrough = False
        self.renumbered = 0  # transfers whose delivery-id was rewritten

    @property
    def pending(self) -> int:
        """Bytes ready for proton."""
        return len(self._ready)

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket."""
        if self._passthrough:
            self._ready += data
            return
        self._buffer += data
        self._split()

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` ready bytes, removed from the filter."""
        chunk = bytes(self._ready[:limit])
        del self._ready[:limit]
        return chunk

    def _split(self) -> None:
        buffer = self._buffer
        pos = 0
        while len(buffer) - pos >= FRAME_HEADER_SIZE:
            if buffer[pos : pos + 4] == PROTOCOL_HEADER:
                self._ready += buffer[pos : pos + FRAME_HEADER_SIZE]
                pos += FRAME_HEADER_SIZE
                continue
            size = int.from_bytes(buffer[pos : pos + 4], "big")
            if size < FRAME_HEADER_SIZE or size > MAX_BUFFERED_FRAME:
                self._passthrough = True  # malformed or oversized: proton reports it
                break
            if len(buffer) - pos < size:
                break
            self._ready += self._frame(bytes(buffer[pos : pos + size]))
            pos += size
        if self._passthrough:
            self._ready += buffer[pos:]
            pos = len(buffer)
        del buffer[:pos]

    def _frame(self, frame: bytes) -> bytes:
        doff, kind = frame[4], frame[5]
        if kind != AMQP_FRAME or len(frame) <= doff * 4 or doff < 2:
            return frame  # SASL frames, heartbeats (empty frames) and oddities go through as they are
        channel = int.from_bytes(frame[6:8], "big")
        body = frame[doff * 4 :]
        try:
            code, list_start = _descriptor(body)
            if channel in self._ended and code != BEGIN:
                # The aio client may detach a link after it ended the link's session (a coroutine still
                # closing a management link). proton would close the connection ("no such channel").
                _log.debug("dropping a frame (performative 0x%x) on ended channel %d", code or 0, channel)
                return b""
            if code == TRANSFER:
                try:
                    new_body = self._transfer(channel, body, list_start)
                except (_Unparsable, MessageFormatError, IndexError):
                    self._sessions.setdefault(channel, _Session()).tracking = False
                    raise
                if new_body is not None:
                    return (doff * 4 + len(new_body)).to_bytes(4, "big") + frame[4 : doff * 4] + new_body
            elif code == BEGIN:
                self._sessions[channel] = _Session()
                self._ended.discard(channel)
            elif code == END:
                self._sessions.pop(channel, None)
                self._ended.add(channel)
            elif code in (ATTACH, DETACH):
                # A handle (re)attached or detached has no delivery in progress.
                items, _, _ = _fields(body, list_start)
                index = 1 if code == ATTACH else 0
                handle = _scalar(items[index]) if index < len(items) else None
                session = self._sessions.get(channel)
                if session is not None and handle is not None:
                    session.in_progress.pop(handle, None)
        except (_Unparsable, MessageFormatError, IndexError) as error:
            _log.debug("passing an unparsable frame on channel %d to proton: %s", channel, error)
        return frame

    def _transfer(self, channel: int, body: bytes, list_start: int) -> bytes | None:
        """Track one transfer; returns its rewritten body, or None when it can go as it is."""
        items, constructor, list_end = _fields(body, list_start)
        field_at = lambda i: items[i] if i < len(items) else None  # noqa: E731 - trailing fields may be omitted
        handle = _scalar(field_at(_HANDLE))
        sent_id = _scalar(field_at(_DELIVERY_ID))
        more = bool(_scalar(field_at(_MORE)))
        aborted = bool(_scalar(field_at(_ABORTED)))
        session = self._sessions.setdefault(channel, _Session())
        if handle is None or not session.tracking:
            return None
        if handle in session.in_progress:  # a continuation of the delivery in progress on this link
            expected = session.in_progress[handle]
            if not more or aborted:
                del session.in_progress[handle]
        else:
            if session.next_id is None:  # proton takes the first transfer's id as the start
                session.next_id = sent_id if sent_id is not None else 0
            expected = session.next_id
            session.next_id = (expected + 1) % _SEQUENCE_MODULUS
            if more and not aborted:
                session.in_progress[handle] = expected
        if sent_id is None or sent_id == expected:
            return None
        self.renumbered += 1
        _log.debug("transfer on channel %d, handle %d: delivery-id %d renumbered to %d (sent concurrently)",
                   channel, handle, sent_id, expected)
        new_items = list(items)
        new_items[_DELIVERY_ID] = _uint(expected)
        # Keep the frame within the size the client measured it against (it may fill max-frame-size):
        # trailing null fields may be omitted (AMQP 1.0 section 1.4), which makes up for a wider id.
        original_size = list_end - list_start
        while len(_list(new_items, constructor)) > original_size and len(new_items) > 2 and new_items[-1] == _NULL:
            new_items.pop()
        return body[:list_start] + _list(new_items, constructor) + body[list_end:]
