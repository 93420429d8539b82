"""IKEv2 messages: the IKE header (RFC 7296 §3.1) and the payload chain (§3.2).

``parse_message`` and ``parse_payload_chain`` raise nothing but
:class:`CodecError`, whatever the bytes. Serializing a message built with wrong
values (an SK payload not last, a length over 65535) raises
:class:`LocalProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from mpa_ike.constants import (
    IKE_MAJOR_VERSION,
    IKE_MINOR_VERSION,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from mpa_ike.errors import CodecError, LocalProtocolError
from mpa_ike.records import quick_init
from mpa_ike.wire.buffer import Buffer
from mpa_ike.wire.payloads import (
    BODY_DECODERS,
    FRAGMENT_HEADER_LENGTH,
    NotifyPayload,
    Payload,
    ProtectedPayload,
    UnknownPayload,
    pull_protected,
    push_payload_body,
    push_protected_header,
    syntax_error,
)

HEADER_LENGTH = 28
GENERIC_HEADER_LENGTH = 4
CRITICAL_FLAG = 0x80  # §3.2: the only defined bit of the generic header's flags octet

_HEADER = struct.Struct("!8s8sBBBBII")
_U16 = struct.Struct("!H")
_GENERIC_HEADER = struct.Struct("!BBH")
_PROTECTED_TYPES = (PayloadType.SK, PayloadType.SKF)


@quick_init
@dataclass(frozen=True, slots=True)
class IkeHeader:
    """The IKE header (§3.1). ``flags`` is kept raw, reserved bits included.

    ``next_payload`` and ``length`` are what was received; serialization
    computes them from the payloads, so builders may leave the defaults.
    """

    spi_i: bytes
    spi_r: bytes
    exchange_type: ExchangeType
    flags: int
    message_id: int
    next_payload: PayloadType = PayloadType.NONE
    length: int = 0
    major_version: int = IKE_MAJOR_VERSION
    minor_version: int = IKE_MINOR_VERSION

    @property
    def is_initiator(self) -> bool:
        """Sent by the original initiator of the IKE SA."""
        return bool(self.flags & HeaderFlag.INITIATOR)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)


P = TypeVar("P")


@quick_init
@dataclass(frozen=True, slots=True)
class Message:
    header: IkeHeader
    payloads: tuple[Payload, ...]

    def find(self, kind: type[P]) -> P | None:
        """The first payload of class ``kind``, or None."""
        for payload in self.payloads:
            if isinstance(payload, kind):
                return payload
        return None

    def find_all(self, kind: type[P]) -> list[P]:
        return [payload for payload in self.payloads if isinstance(payload, kind)]

    def notify(self, notify_type: NotifyType) -> NotifyPayload | None:
        """The first Notify payload of ``notify_type``, or None."""
        for payload in self.payloads:
            if isinstance(payload, NotifyPayload) and payload.notify_type == notify_type:
                return payload
        return None


# ---------------------------------------------------------------------------
# Parsing


def parse_header(data: bytes) -> IkeHeader:
    """Decode the fixed 28-byte IKE header.

    Checks neither the version nor the Length field, so that a caller can still
    read the SPIs and Message ID to answer INVALID_MAJOR_VERSION (§2.5).
    """
    if len(data) < HEADER_LENGTH:
        raise syntax_error(f"{len(data)} bytes, shorter than an IKE header")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(
        data
    )
    return IkeHeader(
        spi_i,
        spi_r,
        ExchangeType.of(exchange),
        flags,
        message_id,
        PayloadType.of(next_payload),
        length,
        version >> 4,
        version & 0x0F,
    )


def parse_message(data: bytes) -> Message:
    """Decode a whole IKE message (one UDP datagram, non-ESP marker removed)."""
    try:
        return _parse_message(bytes(data))
    except CodecError:
        raise
    except Exception as exc:  # a parser bug must still reach the peer as INVALID_SYNTAX
        raise syntax_error(f"unparseable message: {exc!r}") from exc


def parse_payload_chain(first_type: PayloadType, data: bytes) -> list[Payload]:
    """Decode a chain of payloads that starts with ``first_type`` and fills ``data``.

    Used for a message body and for the decrypted contents of an SK payload.
    """
    try:
        buf = Buffer(bytes(data))
        return _pull_chain(buf, first_type)
    except CodecError:
        raise
    except Exception as exc:
        raise syntax_error(f"unparseable payloads: {exc!r}") from exc


def _parse_message(data: bytes) -> Message:
    header = parse_header(data)
    if header.major_version != IKE_MAJOR_VERSION:
        # §2.5: the caller answers with INVALID_MAJOR_VERSION, using parse_header.
        raise CodecError(
            f"IKE major version {header.major_version}", NotifyType.INVALID_MAJOR_VERSION
        )
    if header.length != len(data):
        raise syntax_error(f"header says {header.length} bytes, got {len(data)}")
    buf = Buffer(data)
    buf.skip(HEADER_LENGTH)
    return Message(header, tuple(_pull_chain(buf, header.next_payload)))


def _pull_chain(buf: Buffer, first_type: PayloadType) -> list[Payload]:
    payloads: list[Payload] = []
    payload_type = first_type
    while payload_type != PayloadType.NONE:
        payload, next_type = _pull_payload(buf, payload_type)
        payloads.append(payload)
        # §3.14: SK is the last payload; its Next Payload names the first inner one.
        payload_type = PayloadType.NONE if payload_type in _PROTECTED_TYPES else next_type
    if not buf.eof():
        raise syntax_error(f"{buf.remaining} bytes after the last payload")
    return payloads


def _pull_payload(buf: Buffer, payload_type: PayloadType) -> tuple[Payload, PayloadType]:
    """Read one payload (generic header and body); return it and the Next Payload field."""
    next_raw, flags, length = buf.pull_struct(_GENERIC_HEADER)
    next_type = PayloadType.of(next_raw)
    critical = bool(flags & CRITICAL_FLAG)
    if length < GENERIC_HEADER_LENGTH:
        raise syntax_error(f"payload length {length}")
    with buf.restrict(length - GENERIC_HEADER_LENGTH):
        payload = _pull_body(buf, payload_type, next_type, critical)
    return payload, next_type


def _pull_body(
    buf: Buffer, payload_type: PayloadType, next_type: PayloadType, critical: bool
) -> Payload:
    decoder = BODY_DECODERS.get(payload_type)
    if decoder is not None:
        return decoder(buf, critical)
    if payload_type in _PROTECTED_TYPES:
        return pull_protected(buf, payload_type, next_type, critical)
    if critical:
        # §2.5: reject the whole message, naming the payload type in the notify data.
        raise CodecError(
            f"unsupported critical payload {int(payload_type)}",
            NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
            bytes((payload_type,)),
        )
    return UnknownPayload(payload_type, buf.pull_rest(), critical)


def split_protected(data: bytes) -> tuple[bytes, bytes]:
    """Split a received message at the start of its SK or SKF body.

    Returns ``(associated, body)``: ``associated`` is everything up to and
    including the SK generic header (for SKF, also Fragment Number and Total
    Fragments, RFC 7383 §2.5), which is the AEAD associated data (RFC 5282
    §5.1); ``body`` is IV|ciphertext|ICV. For a non-AEAD integrity transform
    the ICV covers ``associated + body[:-icv_length]`` (§3.14). Integrity is
    checked on these received bytes, never on re-serialized ones.
    """
    end = len(data)
    if end < HEADER_LENGTH:
        raise syntax_error("shorter than an IKE header")
    payload_type = data[16]
    offset = HEADER_LENGTH
    while payload_type not in _PROTECTED_TYPES:
        if payload_type == PayloadType.NONE or offset + GENERIC_HEADER_LENGTH > end:
            raise syntax_error("no SK or SKF payload")
        payload_type = data[offset]
        length = _U16.unpack_from(data, offset + 2)[0]
        if length < GENERIC_HEADER_LENGTH or offset + length > end:
            raise syntax_error(f"payload length {length} at offset {offset}")
        offset += length
    if offset + GENERIC_HEADER_LENGTH > end:
        raise syntax_error("truncated SK payload header")
    length = _U16.unpack_from(data, offset + 2)[0]
    header_length = GENERIC_HEADER_LENGTH
    if payload_type == PayloadType.SKF:
        header_length += FRAGMENT_HEADER_LENGTH
    if length < header_length or offset + length != end:
        raise syntax_error("SK payload length does not reach the end of the message")
    split = offset + header_length
    return bytes(data[:split]), bytes(data[split:])


# ---------------------------------------------------------------------------
# Serialization


def serialize_message(msg: Message) -> bytes:
    """Encode ``msg``, computing Next Payload fields and every length."""
    return _encode_message(msg, None)


def protected_prefix(msg: Message, body_length: int) -> bytes:
    """The bytes before the SK/SKF body of ``msg`` once its body is ``body_length`` long.

    ``msg`` ends with an SK or SKF payload whose ``body`` is ignored. Use it to
    get the associated data before encrypting; the message is then
    ``prefix + IV|ciphertext|ICV`` and equals ``serialize_message`` of the
    message with that body.
    """
    if not msg.payloads or not isinstance(msg.payloads[-1], ProtectedPayload):
        raise LocalProtocolError("the message does not end with an SK or SKF payload")
    return _encode_message(msg, body_length)


def serialize_payload_chain(payloads: Sequence[Payload]) -> tuple[PayloadType, bytes]:
    """Encode a payload chain (e.g. the plaintext of an SK payload).

    Returns the type of the first payload (to put in the preceding Next
    Payload field) and the encoded bytes.
    """
    buf = Buffer()
    _guarded_push_chain(buf, payloads, None)
    first_type = payloads[0].payload_type if payloads else PayloadType.NONE
    return first_type, buf.data


def _encode_message(msg: Message, protected_body_length: int | None) -> bytes:
    header = msg.header
    buf = Buffer()
    buf.push_bytes(
        _HEADER.pack(
            header.spi_i,
            header.spi_r,
            msg.payloads[0].payload_type if msg.payloads else PayloadType.NONE,
            (header.major_version << 4) | header.minor_version,
            header.exchange_type,
            header.flags,
            header.message_id,
            0,  # length, patched below
        )
    )
    _guarded_push_chain(buf, msg.payloads, protected_body_length)
    buf.patch_uint32(HEADER_LENGTH - 4, buf.written + (protected_body_length or 0))
    return buf.data


def _guarded_push_chain(
    buf: Buffer, payloads: Sequence[Payload], protected_body_length: int | None
) -> None:
    try:
        _push_chain(buf, payloads, protected_body_length)
    except (struct.error, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"value out of range for its field: {exc}") from exc


def _next_type_field(payloads: Sequence[Payload], index: int) -> PayloadType:
    payload = payloads[index]
    if isinstance(payload, ProtectedPayload):
        if index != len(payloads) - 1:
            raise LocalProtocolError("an SK or SKF payload must be the last payload (§3.14)")
        return payload.inner_type
    if index + 1 < len(payloads):
        return payloads[index + 1].payload_type
    return PayloadType.NONE


def _push_chain(
    buf: Buffer, payloads: Sequence[Payload], protected_body_length: int | None
) -> None:
    for index, payload in enumerate(payloads):
        start = buf.written
        flags = CRITICAL_FLAG if payload.critical else 0
        # The length patched below.
        buf.push_struct(_GENERIC_HEADER, _next_type_field(payloads, index), flags, 0)
        if protected_body_length is not None and isinstance(payload, ProtectedPayload):
            push_protected_header(buf, payload)
            length = buf.written - start + protected_body_length
        else:
            push_payload_body(buf, payload)
            length = buf.written - start
        buf.patch_uint16(start + 2, length)
