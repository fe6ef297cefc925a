"""AMQP 1.0 message-level encoding helpers for the local broker.

The broker keeps every message as the raw bytes of its sections, exactly as
the sender encoded them, and only rewrites what a broker owns: the header
(delivery count) and the message annotations (sequence number, enqueue time,
lock). Everything else -- properties, application properties, body, footer --
goes back out byte for byte, so the client sees its own encoding.

proton's Python API hides a transfer's message-format, so a batch
(message-format 0x80013700, one data section per encoded message) is
recognised by content; see :func:`unpack_transfer`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from proton import Array, Data, DataException, Described, symbol, timestamp, uint, ulong

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78

BODY_SECTIONS = frozenset({DATA, AMQP_SEQUENCE, AMQP_VALUE})

_SYMBOLIC_DESCRIPTORS = {
    b"amqp:header:list": HEADER,
    b"amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    b"amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
    b"amqp:properties:list": PROPERTIES,
    b"amqp:application-properties:map": APPLICATION_PROPERTIES,
    b"amqp:data:binary": DATA,
    b"amqp:amqp-sequence:list": AMQP_SEQUENCE,
    b"amqp:amqp-value:*": AMQP_VALUE,
    b"amqp:footer:map": FOOTER,
}

# Width of the fixed-size encodings, by the constructor's high nibble.
_FIXED_WIDTH = {0x40: 0, 0x50: 1, 0x60: 2, 0x70: 4, 0x80: 8, 0x90: 16}


class MessageFormatError(ValueError):
    """The bytes are not a well-formed AMQP 1.0 message."""


def _value_end(buf: bytes, pos: int) -> int:
    """Return the offset just past the encoded AMQP value starting at ``pos``."""
    if pos >= len(buf):
        raise MessageFormatError("truncated value")
    constructor = buf[pos]
    if constructor == 0x00:  # described: a descriptor value, then the value
        return _value_end(buf, _value_end(buf, pos + 1))
    category = constructor & 0xF0
    if category in _FIXED_WIDTH:
        end = pos + 1 + _FIXED_WIDTH[category]
    elif category in (0xA0, 0xC0, 0xE0):  # one-byte size
        if pos + 2 > len(buf):
            raise MessageFormatError("truncated size")
        end = pos + 2 + buf[pos + 1]
    elif category in (0xB0, 0xD0, 0xF0):  # four-byte size
        if pos + 5 > len(buf):
            raise MessageFormatError("truncated size")
        end = pos + 5 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
    else:
        raise MessageFormatError(f"unknown constructor 0x{constructor:02x}")
    if end > len(buf):
        raise MessageFormatError("value runs past the end of the buffer")
    return end


def _section_code(buf: bytes, pos: int) -> int:
    """Return the descriptor code of the section starting at ``pos``."""
    if buf[pos] != 0x00:
        raise MessageFormatError("a message section must be a described type")
    constructor = buf[pos + 1] if pos + 1 < len(buf) else None
    if constructor == 0x53:  # smallulong
        return buf[pos + 2]
    if constructor == 0x80:  # ulong
        return int.from_bytes(buf[pos + 2 : pos + 10], "big")
    if constructor in (0xA3, 0xB3):  # symbol
        start = pos + 3 if constructor == 0xA3 else pos + 6
        name = bytes(buf[start : _value_end(buf, pos + 1)])
        if name in _SYMBOLIC_DESCRIPTORS:
            return _SYMBOLIC_DESCRIPTORS[name]
    raise MessageFormatError("unknown section descriptor")


def split_sections(payload: bytes) -> list[tuple[int, bytes]]:
    """Split an encoded message into ``(section code, raw section bytes)`` pairs."""
    sections = []
    pos = 0
    while pos < len(payload):
        code = _section_code(payload, pos)
        if not HEADER <= code <= FOOTER:
            raise MessageFormatError(f"not a message section: 0x{code:x}")
        end = _value_end(payload, pos)
        sections.append((code, bytes(payload[pos:end])))
        pos = end
    return sections


def _data_section_payload(raw: bytes) -> bytes:
    """Return the binary carried by a raw data section."""
    value_pos = _value_end(raw, 1)  # skip the 0x00 and the descriptor
    constructor = raw[value_pos]
    if constructor == 0xA0:
        return raw[value_pos + 2 :]
    if constructor == 0xB0:
        return raw[value_pos + 5 :]
    raise MessageFormatError("a data section must hold a binary")


def plain(value: Any) -> Any:
    """Deep-copy a value decoded by proton into plain, independent Python objects.

    proton hands out binaries as memoryviews into a buffer it reuses, and
    arrays as :class:`proton.Array`; both must be copied before the buffer
    moves on.
    """
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, Array):
        return [plain(v) for v in value.elements]
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Described):
        return Described(plain(value.descriptor), plain(value.value))
    return value


def decode_value(raw: bytes) -> Any:
    """Decode one encoded AMQP value (for a section: its :class:`Described`)."""
    data = Data()
    data.decode(raw)
    data.rewind()
    data.next()
    return plain(data.get_object())


def encode_value(value: Any) -> bytes:
    """Encode one Python/proton value as AMQP."""
    data = Data()
    data.put_object(value)
    return bytes(data.encode())


def _encode_section(code: int, value: Any) -> bytes:
    return encode_value(Described(ulong(code), value))


@dataclass(frozen=True)
class EncodedMessage:
    """One message as raw sections. Delivery annotations are dropped on ingest (they are per hop)."""

    header: bytes | None = None
    message_annotations: bytes | None = None
    properties: bytes | None = None
    application_properties: bytes | None = None
    body: tuple[bytes, ...] = ()
    body_codes: tuple[int, ...] = ()
    footer: bytes | None = None

    @classmethod
    def decode(cls, payload: bytes) -> "EncodedMessage":
        """Parse and validate an encoded message; raises :class:`MessageFormatError`."""
        fields: dict[str, Any] = {}
        body: list[bytes] = []
        codes: list[int] = []
        for code, raw in split_sections(payload):
            if code in BODY_SECTIONS:
                body.append(raw)
                codes.append(code)
            elif code == HEADER:
                fields["header"] = raw
            elif code == MESSAGE_ANNOTATIONS:
                fields["message_annotations"] = raw
            elif code == PROPERTIES:
                fields["properties"] = raw
            elif code == APPLICATION_PROPERTIES:
                fields["application_properties"] = raw
            elif code == FOOTER:
                fields["footer"] = raw
        message = cls(body=tuple(body), body_codes=tuple(codes), **fields)
        try:  # decode what the broker reads or rewrites now, so a bad message is refused at send time
            _ = (message.annotations, message.application_properties_map, message._header_fields,
                 message._properties_fields)
        except (DataException, AttributeError, TypeError, ValueError) as error:
            raise MessageFormatError(f"undecodable message section: {error}") from error
        return message

    @functools.cached_property
    def annotations(self) -> dict:
        """The sender's message annotations (symbol keys)."""
        if self.message_annotations is None:
            return {}
        return dict(decode_value(self.message_annotations).value or {})

    @functools.cached_property
    def application_properties_map(self) -> dict:
        """The application properties (string keys)."""
        if self.application_properties is None:
            return {}
        return dict(decode_value(self.application_properties).value or {})

    @functools.cached_property
    def _header_fields(self) -> list:
        fields = []
        if self.header is not None:
            fields = list(decode_value(self.header).value or [])
        return (fields + [None] * 5)[:5]

    @functools.cached_property
    def _properties_fields(self) -> list:
        fields = []
        if self.properties is not None:
            fields = list(decode_value(self.properties).value or [])
        return (fields + [None] * 13)[:13]

    @property
    def message_id(self) -> str | None:
        """The MessageId (properties.message-id) as text, or None: what duplicate detection compares."""
        value = self._properties_fields[0]
        if value is None:
            return None
        return value.hex() if isinstance(value, bytes) else str(value)

    @property
    def ttl_ms(self) -> int | None:
        """The sender's time to live (header.ttl, milliseconds), or None."""
        ttl = self._header_fields[2]
        return int(ttl) if ttl else None

    @property
    def scheduled_enqueue_time_ms(self) -> int | None:
        """The ``x-opt-scheduled-enqueue-time`` annotation in epoch milliseconds, if any."""
        value = self.annotations.get(symbol("x-opt-scheduled-enqueue-time"))
        return int(value) if isinstance(value, int) else None

    def with_application_properties(self, updates: dict[str, Any]) -> "EncodedMessage":
        """Return a copy whose application properties include ``updates``."""
        merged = dict(self.application_properties_map)
        merged.update(updates)
        return replace(self, application_properties=_encode_section(APPLICATION_PROPERTIES, merged))

    def render(self, delivery_count: int, annotations: dict[str, Any], ttl_ms: int | None = None) -> bytes:
        """Encode the message for delivery, with a fresh header (``ttl_ms``: the effective time to live) and merged
        broker annotations."""
        durable, priority, ttl, _, _ = self._header_fields
        if ttl_ms is not None:
            ttl = uint(min(ttl_ms, 0xFFFFFFFF))
        header = [durable, priority, ttl, delivery_count == 0, uint(delivery_count)]
        merged = dict(self.annotations)
        merged.update((symbol(k), v) for k, v in annotations.items())
        parts = [
            _encode_section(HEADER, header),
            _encode_section(MESSAGE_ANNOTATIONS, merged),
            self.properties,
            self.application_properties,
            *self.body,
            self.footer,
        ]
        return b"".join(p for p in parts if p)


def unpack_transfer(payload: bytes) -> list[EncodedMessage]:
    """Turn one received transfer into the messages it carries.

    A batch is an envelope whose body is only data sections, each holding a
    complete encoded message. A plain message whose single data section
    happens to be an encoded AMQP message would be taken for a batch of one;
    that does not happen with Service Bus payloads (JSON, text, bytes).
    """
    envelope = EncodedMessage.decode(payload)
    if not envelope.body or any(code != DATA for code in envelope.body_codes):
        return [envelope]
    try:
        inner = [EncodedMessage.decode(_data_section_payload(raw)) for raw in envelope.body]
    except (MessageFormatError, IndexError):
        return [envelope]
    if all(message.body for message in inner):
        return inner
    return [envelope]


def timestamp_ms(epoch_seconds: float) -> timestamp:
    """An AMQP timestamp for a wall-clock time in seconds."""
    return timestamp(int(epoch_seconds * 1000))


__all__ = [
    "EncodedMessage",
    "MessageFormatError",
    "decode_value",
    "encode_value",
    "plain",
    "split_sections",
    "timestamp_ms",
    "unpack_transfer",
]
