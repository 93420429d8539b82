"""IKEv2 payloads as frozen dataclasses, with the codec of each payload's body.

Formats: RFC 7296 §3.3-3.16, RFC 7383 §2.5 (Encrypted Fragment), RFC 6467
(GSPM). The 4-byte generic payload header (§3.2) and the chaining of payloads
are handled in :mod:`mpa_ike.wire.message`; here each ``_pull_*`` function reads
one payload body from a buffer already restricted to that body, and each
``_push_*`` function writes one.

Reserved fields: nonzero reserved bits are ignored on receipt and written as
zero (§3.2, "MUST be sent as zero; MUST be ignored on receipt"), so a received
message with nonzero reserved bits does not re-serialize identically. That is
harmless because integrity is checked on the bytes received (see
:func:`mpa_ike.wire.message.split_protected`), never on re-serialized ones. The
one exception is the 3 reserved octets of an ID payload: they are part of the
RestOfIDPayload signed by AUTH (§2.15), so :class:`IdPayload` keeps them.

Every payload keeps the critical bit it was received with, so that messages
whose reserved bits are zero re-serialize byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Any, ClassVar, TypeAlias

from mpa_ike.constants import (
    AuthMethod,
    CertEncoding,
    CfgAttrType,
    CfgType,
    DhGroup,
    EncrId,
    EsnId,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttrType,
    TransformType,
    TsType,
)
from mpa_ike.errors import CodecError, LocalProtocolError
from mpa_ike.records import quick_init
from mpa_ike.wire.buffer import Buffer

IPAddress: TypeAlias = IPv4Address | IPv6Address


def syntax_error(reason: str) -> CodecError:
    return CodecError(reason, NotifyType.INVALID_SYNTAX)


# ---------------------------------------------------------------------------
# SA payload (RFC 7296 §3.3)

_TV_FLAG = 0x8000  # Attribute Format bit: Type/Value, 2-byte value in place of the length


@quick_init
@dataclass(frozen=True, slots=True)
class TransformAttribute:
    """A transform attribute (§3.3.5): ``int`` value for TV format, ``bytes`` for TLV."""

    attr_type: TransformAttrType
    value: int | bytes

    @classmethod
    def key_length(cls, bits: int) -> TransformAttribute:
        return cls(TransformAttrType.KEY_LENGTH, bits)


_TRANSFORM_ID_ENUMS: dict[int, type[IntEnum]] = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhGroup,
    TransformType.ESN: EsnId,
}


@quick_init
@dataclass(frozen=True, slots=True)
class Transform:
    """A transform substructure (§3.3.2). ``id`` is the raw Transform ID."""

    type: TransformType
    id: int
    attributes: tuple[TransformAttribute, ...] = ()

    @property
    def key_length(self) -> int | None:
        """The KEY_LENGTH attribute in bits, or None when absent (§3.3.5)."""
        for attr in self.attributes:
            if attr.attr_type == TransformAttrType.KEY_LENGTH and isinstance(attr.value, int):
                return attr.value
        return None

    @property
    def typed_id(self) -> int:
        """The Transform ID as the IntEnum of its transform type (EncrId, PrfId, ...)."""
        enum = _TRANSFORM_ID_ENUMS.get(self.type)
        return enum(self.id) if enum is not None else self.id


@quick_init
@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal substructure (§3.3.1)."""

    number: int
    protocol_id: ProtocolId
    spi: bytes
    transforms: tuple[Transform, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class SaPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]
    critical: bool = False


# SPI sizes allowed per protocol; a protocol not listed may use any size.
_PROPOSAL_SPI_SIZES: dict[int, tuple[int, ...]] = {
    ProtocolId.IKE: (0, 8),  # 0 in IKE_SA_INIT, 8 when rekeying the IKE SA (§3.3.1)
    ProtocolId.AH: (4,),
    ProtocolId.ESP: (4,),
}
_NOTIFY_SPI_SIZES: dict[int, tuple[int, ...]] = {
    ProtocolId.IKE: (0, 8),
    ProtocolId.AH: (0, 4),
    ProtocolId.ESP: (0, 4),
}
_DELETE_SPI_SIZES: dict[int, tuple[int, ...]] = {
    ProtocolId.IKE: (0,),  # the IKE SA's SPIs are in the header (§3.11)
    ProtocolId.AH: (4,),
    ProtocolId.ESP: (4,),
}


def _check_spi_size(table: dict[int, tuple[int, ...]], protocol: int, size: int) -> None:
    allowed = table.get(protocol)
    if allowed is not None and size not in allowed:
        raise syntax_error(f"SPI size {size} invalid for protocol {protocol}")


_LAST_PROPOSAL, _MORE_PROPOSALS = 0, 2
_LAST_TRANSFORM, _MORE_TRANSFORMS = 0, 3


# Last Substruc, RESERVED, Length, then the fixed fields of the substructure.
_TRANSFORM_FIXED = struct.Struct("!BxHBxH")
_PROPOSAL_FIXED = struct.Struct("!BxHBBBB")
_NOTIFY_FIXED = struct.Struct("!BBH")
_SELECTOR_FIXED = struct.Struct("!BBHHH")  # an address range's, before the addresses


def _check_substructure(marker: int, more_marker: int, length: int, fixed: int) -> int:
    """Validate Last Substruc and Length; return the length of the variable part."""
    if marker not in (0, more_marker):
        raise syntax_error(f"bad Last Substruc value {marker}")
    if length < fixed:
        raise syntax_error(f"substructure length {length} below {fixed}")
    return length - fixed


def _pull_transform_attribute(buf: Buffer) -> TransformAttribute:
    word = buf.pull_uint16()
    if word & _TV_FLAG:
        return TransformAttribute(TransformAttrType.of(word & 0x7FFF), buf.pull_uint16())
    return TransformAttribute(TransformAttrType.of(word), buf.pull_bytes(buf.pull_uint16()))


def _pull_transform(buf: Buffer) -> tuple[bool, Transform]:
    marker, length, transform_type, transform_id = buf.pull_struct(_TRANSFORM_FIXED)
    rest = _check_substructure(marker, _MORE_TRANSFORMS, length, _TRANSFORM_FIXED.size)
    attributes: list[TransformAttribute] = []
    if rest:
        with buf.restrict(rest):
            while not buf.eof():
                attributes.append(_pull_transform_attribute(buf))
    return marker == 0, Transform(TransformType.of(transform_type), transform_id, tuple(attributes))


def _pull_proposal(buf: Buffer) -> tuple[bool, Proposal]:
    marker, length, number, protocol_value, spi_size, transform_count = buf.pull_struct(
        _PROPOSAL_FIXED
    )
    rest = _check_substructure(marker, _MORE_PROPOSALS, length, _PROPOSAL_FIXED.size)
    protocol = ProtocolId.of(protocol_value)
    _check_spi_size(_PROPOSAL_SPI_SIZES, protocol, spi_size)
    with buf.restrict(rest):
        spi = buf.pull_bytes(spi_size)
        transforms = []
        for index in range(transform_count):
            last_transform, transform = _pull_transform(buf)
            if last_transform != (index == transform_count - 1):
                raise syntax_error("Last Substruc disagrees with the transform count")
            transforms.append(transform)
    return marker == 0, Proposal(number, protocol, spi, tuple(transforms))


def _pull_sa(buf: Buffer, critical: bool) -> SaPayload:
    proposals: list[Proposal] = []
    is_last = False
    while not buf.eof():
        if is_last:
            raise syntax_error("data after the last proposal")
        is_last, proposal = _pull_proposal(buf)
        proposals.append(proposal)
    if not is_last:
        raise syntax_error("SA payload without a last proposal")
    return SaPayload(tuple(proposals), critical)


def _push_transform_attribute(buf: Buffer, attr: TransformAttribute) -> None:
    if isinstance(attr.value, int):
        buf.push_uint16(_TV_FLAG | attr.attr_type)
        buf.push_uint16(attr.value)
    else:
        buf.push_uint16(attr.attr_type)
        buf.push_uint16(len(attr.value))
        buf.push_bytes(attr.value)


def _push_transform(buf: Buffer, transform: Transform, is_last: bool) -> None:
    start = buf.written
    marker = _LAST_TRANSFORM if is_last else _MORE_TRANSFORMS
    # The length patched below.
    buf.push_struct(_TRANSFORM_FIXED, marker, 0, transform.type, transform.id)
    for attr in transform.attributes:
        _push_transform_attribute(buf, attr)
    buf.patch_uint16(start + 2, buf.written - start)


def _push_proposal(buf: Buffer, proposal: Proposal, is_last: bool) -> None:
    start = buf.written
    marker = _LAST_PROPOSAL if is_last else _MORE_PROPOSALS
    buf.push_struct(  # the length patched below
        _PROPOSAL_FIXED,
        marker,
        0,
        proposal.number,
        proposal.protocol_id,
        len(proposal.spi),
        len(proposal.transforms),
    )
    buf.push_bytes(proposal.spi)
    last_index = len(proposal.transforms) - 1
    for index, transform in enumerate(proposal.transforms):
        _push_transform(buf, transform, index == last_index)
    buf.patch_uint16(start + 2, buf.written - start)


def _push_sa(buf: Buffer, payload: SaPayload) -> None:
    last_index = len(payload.proposals) - 1
    for index, proposal in enumerate(payload.proposals):
        _push_proposal(buf, proposal, index == last_index)


# ---------------------------------------------------------------------------
# Key Exchange (§3.4)


@quick_init
@dataclass(frozen=True, slots=True)
class KePayload:
    payload_type: ClassVar[PayloadType] = PayloadType.KE
    group: DhGroup
    data: bytes
    critical: bool = False


def _pull_ke(buf: Buffer, critical: bool) -> KePayload:
    group = DhGroup.of(buf.pull_uint16())
    buf.skip(2)
    return KePayload(group, buf.pull_rest(), critical)


def _push_ke(buf: Buffer, payload: KePayload) -> None:
    buf.push_uint16(payload.group)
    buf.push_uint16(0)
    buf.push_bytes(payload.data)


# ---------------------------------------------------------------------------
# Identification (§3.5)


@quick_init
@dataclass(frozen=True, slots=True)
class IdPayload:
    """Common body of IDi and IDr; use :class:`IdiPayload` or :class:`IdrPayload`.

    ``reserved`` is the 24-bit RESERVED field as received: AUTH signs it (§2.15).
    """

    id_type: IdType
    data: bytes
    critical: bool = False
    reserved: int = 0

    def rest_of_id_payload(self) -> bytes:
        """The ID payload body after the generic header, the octets AUTH covers (§2.15)."""
        return bytes((self.id_type,)) + self.reserved.to_bytes(3, "big") + self.data


@quick_init
@dataclass(frozen=True, slots=True)
class IdiPayload(IdPayload):
    payload_type: ClassVar[PayloadType] = PayloadType.IDI


@quick_init
@dataclass(frozen=True, slots=True)
class IdrPayload(IdPayload):
    payload_type: ClassVar[PayloadType] = PayloadType.IDR


def _pull_id_fields(buf: Buffer) -> tuple[IdType, bytes, int]:
    id_type = IdType.of(buf.pull_uint8())
    reserved = int.from_bytes(buf.pull_bytes(3), "big")
    return id_type, buf.pull_rest(), reserved


def _pull_idi(buf: Buffer, critical: bool) -> IdiPayload:
    id_type, data, reserved = _pull_id_fields(buf)
    return IdiPayload(id_type, data, critical, reserved)


def _pull_idr(buf: Buffer, critical: bool) -> IdrPayload:
    id_type, data, reserved = _pull_id_fields(buf)
    return IdrPayload(id_type, data, critical, reserved)


def _push_id(buf: Buffer, payload: IdPayload) -> None:
    buf.push_bytes(payload.rest_of_id_payload())


# ---------------------------------------------------------------------------
# Certificate and Certificate Request (§3.6, §3.7)

SHA1_LENGTH = 20


@quick_init
@dataclass(frozen=True, slots=True)
class CertPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.CERT
    encoding: CertEncoding
    data: bytes
    critical: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class CertReqPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: CertEncoding
    data: bytes
    critical: bool = False

    def authority_key_hashes(self) -> list[bytes]:
        """The SHA-1 hashes of trusted CA public keys, for X.509 encodings (§3.7)."""
        if len(self.data) % SHA1_LENGTH:
            raise syntax_error("CERTREQ authority data is not a list of SHA-1 hashes")
        return [self.data[i : i + SHA1_LENGTH] for i in range(0, len(self.data), SHA1_LENGTH)]


def _pull_cert(buf: Buffer, critical: bool) -> CertPayload:
    return CertPayload(CertEncoding.of(buf.pull_uint8()), buf.pull_rest(), critical)


def _pull_certreq(buf: Buffer, critical: bool) -> CertReqPayload:
    return CertReqPayload(CertEncoding.of(buf.pull_uint8()), buf.pull_rest(), critical)


def _push_cert(buf: Buffer, payload: CertPayload | CertReqPayload) -> None:
    buf.push_uint8(payload.encoding)
    buf.push_bytes(payload.data)


# ---------------------------------------------------------------------------
# Authentication (§3.8)


@quick_init
@dataclass(frozen=True, slots=True)
class AuthPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.AUTH
    method: AuthMethod
    data: bytes
    critical: bool = False


def _pull_auth(buf: Buffer, critical: bool) -> AuthPayload:
    method = AuthMethod.of(buf.pull_uint8())
    buf.skip(3)
    return AuthPayload(method, buf.pull_rest(), critical)


def _push_auth(buf: Buffer, payload: AuthPayload) -> None:
    buf.push_uint8(payload.method)
    buf.push_bytes(b"\x00\x00\x00")
    buf.push_bytes(payload.data)


# ---------------------------------------------------------------------------
# Nonce (§3.9)

NONCE_MIN_LENGTH = 16
NONCE_MAX_LENGTH = 256


@quick_init
@dataclass(frozen=True, slots=True)
class NoncePayload:
    payload_type: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes
    critical: bool = False


def _pull_nonce(buf: Buffer, critical: bool) -> NoncePayload:
    data = buf.pull_rest()
    if not NONCE_MIN_LENGTH <= len(data) <= NONCE_MAX_LENGTH:
        raise syntax_error(f"nonce of {len(data)} octets, not 16-256 (§3.9)")
    return NoncePayload(data, critical)


def _push_data_only(
    buf: Buffer, payload: NoncePayload | VendorIdPayload | EapPayload | GspmPayload
) -> None:
    buf.push_bytes(payload.data)


# ---------------------------------------------------------------------------
# Notify (§3.10); typed helpers for the data of well-known types live in
# mpa_ike.wire.notify.


@quick_init
@dataclass(frozen=True, slots=True)
class NotifyPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.NOTIFY
    notify_type: NotifyType
    protocol_id: ProtocolId = ProtocolId.NONE
    spi: bytes = b""
    data: bytes = b""
    critical: bool = False


def _pull_notify(buf: Buffer, critical: bool) -> NotifyPayload:
    protocol = ProtocolId.of(buf.pull_uint8())
    spi_size = buf.pull_uint8()
    notify_type = NotifyType.of(buf.pull_uint16())
    _check_spi_size(_NOTIFY_SPI_SIZES, protocol, spi_size)
    spi = buf.pull_bytes(spi_size)
    return NotifyPayload(notify_type, protocol, spi, buf.pull_rest(), critical)


def _push_notify(buf: Buffer, payload: NotifyPayload) -> None:
    buf.push_struct(_NOTIFY_FIXED, payload.protocol_id, len(payload.spi), payload.notify_type)
    buf.push_bytes(payload.spi)
    buf.push_bytes(payload.data)


# ---------------------------------------------------------------------------
# Delete (§3.11)


@quick_init
@dataclass(frozen=True, slots=True)
class DeletePayload:
    """``spi_size`` is explicit because an empty SPI list does not imply it."""

    payload_type: ClassVar[PayloadType] = PayloadType.DELETE
    protocol_id: ProtocolId
    spi_size: int
    spis: tuple[bytes, ...] = ()
    critical: bool = False

    @classmethod
    def for_ike_sa(cls) -> DeletePayload:
        return cls(ProtocolId.IKE, 0)

    @classmethod
    def for_child_sas(
        cls, spis: tuple[bytes, ...], protocol: ProtocolId = ProtocolId.ESP
    ) -> DeletePayload:
        return cls(protocol, 4, spis)


def _pull_delete(buf: Buffer, critical: bool) -> DeletePayload:
    protocol = ProtocolId.of(buf.pull_uint8())
    spi_size = buf.pull_uint8()
    count = buf.pull_uint16()
    _check_spi_size(_DELETE_SPI_SIZES, protocol, spi_size)
    if buf.remaining != spi_size * count:
        raise syntax_error("Delete payload length disagrees with its SPI count")
    raw = buf.pull_rest()
    if spi_size == 0:
        spis: tuple[bytes, ...] = (b"",) * count
    else:
        spis = tuple(raw[i : i + spi_size] for i in range(0, len(raw), spi_size))
    return DeletePayload(protocol, spi_size, spis, critical)


def _push_delete(buf: Buffer, payload: DeletePayload) -> None:
    if any(len(spi) != payload.spi_size for spi in payload.spis):
        raise LocalProtocolError("Delete payload SPI of the wrong size")
    buf.push_uint8(payload.protocol_id)
    buf.push_uint8(payload.spi_size)
    buf.push_uint16(len(payload.spis))
    buf.push_bytes(b"".join(payload.spis))


# ---------------------------------------------------------------------------
# Vendor ID (§3.12)


@quick_init
@dataclass(frozen=True, slots=True)
class VendorIdPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.VENDOR
    data: bytes
    critical: bool = False


def _pull_vendor(buf: Buffer, critical: bool) -> VendorIdPayload:
    return VendorIdPayload(buf.pull_rest(), critical)


# ---------------------------------------------------------------------------
# Traffic Selector (§3.13)

_TS_ADDRESS_LENGTHS = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}


@quick_init
@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """An address-range selector (§3.13.1); ``ip_protocol`` 0 means any protocol."""

    ts_type: TsType
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: IPAddress
    end_addr: IPAddress

    @classmethod
    def from_network(
        cls,
        network: IPv4Network | IPv6Network,
        ip_protocol: int = 0,
        start_port: int = 0,
        end_port: int = 0xFFFF,
    ) -> TrafficSelector:
        ts_type = TsType.IPV4_ADDR_RANGE if network.version == 4 else TsType.IPV6_ADDR_RANGE
        return cls(
            ts_type,
            ip_protocol,
            start_port,
            end_port,
            network.network_address,
            network.broadcast_address,
        )


@quick_init
@dataclass(frozen=True, slots=True)
class RawTrafficSelector:
    """A selector of a type this codec does not decode, kept for round trip.

    ``octet1`` is the octet after TS Type (IP Protocol ID in address-range types).
    """

    ts_type: TsType
    octet1: int
    body: bytes


AnyTrafficSelector: TypeAlias = TrafficSelector | RawTrafficSelector


@quick_init
@dataclass(frozen=True, slots=True)
class TsPayload:
    """Common body of TSi and TSr; use :class:`TsiPayload` or :class:`TsrPayload`."""

    selectors: tuple[AnyTrafficSelector, ...]
    critical: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class TsiPayload(TsPayload):
    payload_type: ClassVar[PayloadType] = PayloadType.TSI


@quick_init
@dataclass(frozen=True, slots=True)
class TsrPayload(TsPayload):
    payload_type: ClassVar[PayloadType] = PayloadType.TSR


def _pull_address(buf: Buffer, length: int) -> IPAddress:
    packed = buf.pull_bytes(length)
    return IPv4Address(packed) if length == 4 else IPv6Address(packed)


def _pull_traffic_selector(buf: Buffer) -> AnyTrafficSelector:
    ts_type = TsType.of(buf.pull_uint8())
    octet1 = buf.pull_uint8()
    length = buf.pull_uint16()
    if length < 4:
        raise syntax_error(f"selector length {length}")
    with buf.restrict(length - 4):
        address_length = _TS_ADDRESS_LENGTHS.get(ts_type)
        if address_length is None:
            return RawTrafficSelector(ts_type, octet1, buf.pull_rest())
        if length != 8 + 2 * address_length:
            raise syntax_error(f"selector length {length} for TS type {ts_type}")
        start_port = buf.pull_uint16()
        end_port = buf.pull_uint16()
        start = _pull_address(buf, address_length)
        end = _pull_address(buf, address_length)
    return TrafficSelector(ts_type, octet1, start_port, end_port, start, end)


def _pull_selectors(buf: Buffer) -> tuple[AnyTrafficSelector, ...]:
    count = buf.pull_uint8()
    buf.skip(3)
    selectors = tuple(_pull_traffic_selector(buf) for _ in range(count))
    if not buf.eof():
        raise syntax_error("data after the announced traffic selectors")
    return selectors


def _pull_tsi(buf: Buffer, critical: bool) -> TsiPayload:
    return TsiPayload(_pull_selectors(buf), critical)


def _pull_tsr(buf: Buffer, critical: bool) -> TsrPayload:
    return TsrPayload(_pull_selectors(buf), critical)


def _push_traffic_selector(buf: Buffer, selector: AnyTrafficSelector) -> None:
    if isinstance(selector, RawTrafficSelector):
        buf.push_uint8(selector.ts_type)
        buf.push_uint8(selector.octet1)
        buf.push_uint16(4 + len(selector.body))
        buf.push_bytes(selector.body)
        return
    start, end = selector.start_addr.packed, selector.end_addr.packed
    if not len(start) == len(end) == _TS_ADDRESS_LENGTHS.get(selector.ts_type):
        raise LocalProtocolError(f"addresses do not match TS type {selector.ts_type!r}")
    buf.push_struct(
        _SELECTOR_FIXED,
        selector.ts_type,
        selector.ip_protocol,
        8 + 2 * len(start),
        selector.start_port,
        selector.end_port,
    )
    buf.push_bytes(start)
    buf.push_bytes(end)


def _push_ts(buf: Buffer, payload: TsPayload) -> None:
    buf.push_uint8(len(payload.selectors))
    buf.push_bytes(b"\x00\x00\x00")
    for selector in payload.selectors:
        _push_traffic_selector(buf, selector)


# ---------------------------------------------------------------------------
# Encrypted and Authenticated (§3.14) and Encrypted Fragment (RFC 7383 §2.5)


@quick_init
@dataclass(frozen=True, slots=True)
class EncryptedPayload:
    """SK payload. ``inner_type`` is the type of the first payload inside (§3.14):
    it travels in this payload's Next Payload field. ``body`` is IV|ciphertext|ICV.
    """

    payload_type: ClassVar[PayloadType] = PayloadType.SK
    inner_type: PayloadType
    body: bytes
    critical: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class EncryptedFragmentPayload:
    """SKF payload (RFC 7383 §2.5). ``inner_type`` is NONE in all but fragment 1."""

    payload_type: ClassVar[PayloadType] = PayloadType.SKF
    fragment_number: int
    total_fragments: int
    inner_type: PayloadType
    body: bytes
    critical: bool = False


ProtectedPayload: TypeAlias = EncryptedPayload | EncryptedFragmentPayload
FRAGMENT_HEADER_LENGTH = 4  # Fragment Number and Total Fragments, after the generic header


def pull_protected(
    buf: Buffer, payload_type: PayloadType, inner_type: PayloadType, critical: bool
) -> ProtectedPayload:
    """Read an SK or SKF body; the caller passes the Next Payload field as ``inner_type``."""
    if payload_type == PayloadType.SK:
        return EncryptedPayload(inner_type, buf.pull_rest(), critical)
    number = buf.pull_uint16()
    total = buf.pull_uint16()
    return EncryptedFragmentPayload(number, total, inner_type, buf.pull_rest(), critical)


def push_protected_header(buf: Buffer, payload: ProtectedPayload) -> None:
    """Write the SKF fields that precede the body (nothing for SK)."""
    if isinstance(payload, EncryptedFragmentPayload):
        buf.push_uint16(payload.fragment_number)
        buf.push_uint16(payload.total_fragments)


def _push_protected(buf: Buffer, payload: ProtectedPayload) -> None:
    push_protected_header(buf, payload)
    buf.push_bytes(payload.body)


# ---------------------------------------------------------------------------
# Configuration (§3.15)

_CFG_TYPE_MASK = 0x7FFF  # the top bit is the reserved R bit (§3.15.1)


@quick_init
@dataclass(frozen=True, slots=True)
class CfgAttribute:
    """A configuration attribute (§3.15.1); an empty value asks for one in a CFG_REQUEST."""

    attr_type: CfgAttrType
    value: bytes = b""

    @classmethod
    def ipv4(cls, attr_type: CfgAttrType, address: IPv4Address | None = None) -> CfgAttribute:
        return cls(attr_type, address.packed if address is not None else b"")

    @classmethod
    def ipv6(cls, attr_type: CfgAttrType, address: IPv6Address | None = None) -> CfgAttribute:
        """A 16-octet IPv6 address value (INTERNAL_IP6_DNS, INTERNAL_IP6_DHCP, ...)."""
        return cls(attr_type, address.packed if address is not None else b"")

    @classmethod
    def ipv6_prefixed(
        cls, attr_type: CfgAttrType, interface: IPv6Interface | None = None
    ) -> CfgAttribute:
        """Address and 1-octet prefix length (INTERNAL_IP6_ADDRESS, INTERNAL_IP6_SUBNET)."""
        if interface is None:
            return cls(attr_type)
        return cls(attr_type, interface.ip.packed + bytes((interface.network.prefixlen,)))

    def as_ipv4(self) -> IPv4Address | None:
        """The IPv4 address value, or None for an empty (request) value."""
        if not self.value:
            return None
        if len(self.value) != 4:
            raise syntax_error(f"{self.attr_type!r} of {len(self.value)} octets, not 4")
        return IPv4Address(self.value)

    def as_ipv4_subnet(self) -> IPv4Network | None:
        """INTERNAL_IP4_SUBNET: address and netmask, 8 octets."""
        if not self.value:
            return None
        if len(self.value) != 8:
            raise syntax_error(f"{self.attr_type!r} of {len(self.value)} octets, not 8")
        try:
            return IPv4Network(
                (IPv4Address(self.value[:4]), str(IPv4Address(self.value[4:]))), False
            )
        except ValueError as exc:
            raise syntax_error(f"bad netmask in {self.attr_type!r}") from exc

    def as_ipv6(self) -> IPv6Address | None:
        if not self.value:
            return None
        if len(self.value) != 16:
            raise syntax_error(f"{self.attr_type!r} of {len(self.value)} octets, not 16")
        return IPv6Address(self.value)

    def as_ipv6_prefixed(self) -> IPv6Interface | None:
        if not self.value:
            return None
        if len(self.value) != 17 or self.value[16] > 128:
            raise syntax_error(f"{self.attr_type!r} is not an address and prefix length")
        return IPv6Interface((IPv6Address(self.value[:16]), self.value[16]))


@quick_init
@dataclass(frozen=True, slots=True)
class ConfigurationPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.CP
    cfg_type: CfgType
    attributes: tuple[CfgAttribute, ...] = ()
    critical: bool = False


def _pull_cp(buf: Buffer, critical: bool) -> ConfigurationPayload:
    cfg_type = CfgType.of(buf.pull_uint8())
    buf.skip(3)
    attributes: list[CfgAttribute] = []
    while not buf.eof():
        attr_type = CfgAttrType.of(buf.pull_uint16() & _CFG_TYPE_MASK)
        attributes.append(CfgAttribute(attr_type, buf.pull_bytes(buf.pull_uint16())))
    return ConfigurationPayload(cfg_type, tuple(attributes), critical)


def _push_cp(buf: Buffer, payload: ConfigurationPayload) -> None:
    buf.push_uint8(payload.cfg_type)
    buf.push_bytes(b"\x00\x00\x00")
    for attr in payload.attributes:
        buf.push_uint16(attr.attr_type)
        buf.push_uint16(len(attr.value))
        buf.push_bytes(attr.value)


# ---------------------------------------------------------------------------
# EAP (§3.16), GSPM (RFC 6467 §3), unknown payloads


@quick_init
@dataclass(frozen=True, slots=True)
class EapPayload:
    """A whole EAP message, opaque here (parsed by mpa_ike.eap)."""

    payload_type: ClassVar[PayloadType] = PayloadType.EAP
    data: bytes
    critical: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class GspmPayload:
    payload_type: ClassVar[PayloadType] = PayloadType.GSPM
    data: bytes
    critical: bool = False


@quick_init
@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload of a type this codec does not know, without the critical bit (§2.5)."""

    payload_type: PayloadType
    body: bytes
    critical: bool = False


def _pull_eap(buf: Buffer, critical: bool) -> EapPayload:
    return EapPayload(buf.pull_rest(), critical)


def _pull_gspm(buf: Buffer, critical: bool) -> GspmPayload:
    return GspmPayload(buf.pull_rest(), critical)


def _push_unknown(buf: Buffer, payload: UnknownPayload) -> None:
    buf.push_bytes(payload.body)


Payload: TypeAlias = (
    SaPayload
    | KePayload
    | IdiPayload
    | IdrPayload
    | CertPayload
    | CertReqPayload
    | AuthPayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorIdPayload
    | TsiPayload
    | TsrPayload
    | EncryptedPayload
    | EncryptedFragmentPayload
    | ConfigurationPayload
    | EapPayload
    | GspmPayload
    | UnknownPayload
)

# Body decoders of the payload types this codec knows, except SK and SKF, whose
# Next Payload field means something else (see pull_protected).
BODY_DECODERS: dict[int, Callable[[Buffer, bool], Payload]] = {
    PayloadType.SA: _pull_sa,
    PayloadType.KE: _pull_ke,
    PayloadType.IDI: _pull_idi,
    PayloadType.IDR: _pull_idr,
    PayloadType.CERT: _pull_cert,
    PayloadType.CERTREQ: _pull_certreq,
    PayloadType.AUTH: _pull_auth,
    PayloadType.NONCE: _pull_nonce,
    PayloadType.NOTIFY: _pull_notify,
    PayloadType.DELETE: _pull_delete,
    PayloadType.VENDOR: _pull_vendor,
    PayloadType.TSI: _pull_tsi,
    PayloadType.TSR: _pull_tsr,
    PayloadType.CP: _pull_cp,
    PayloadType.EAP: _pull_eap,
    PayloadType.GSPM: _pull_gspm,
}

_BODY_ENCODERS: dict[type[Any], Callable[[Buffer, Any], None]] = {
    SaPayload: _push_sa,
    KePayload: _push_ke,
    IdiPayload: _push_id,
    IdrPayload: _push_id,
    CertPayload: _push_cert,
    CertReqPayload: _push_cert,
    AuthPayload: _push_auth,
    NoncePayload: _push_data_only,
    NotifyPayload: _push_notify,
    DeletePayload: _push_delete,
    VendorIdPayload: _push_data_only,
    TsiPayload: _push_ts,
    TsrPayload: _push_ts,
    EncryptedPayload: _push_protected,
    EncryptedFragmentPayload: _push_protected,
    ConfigurationPayload: _push_cp,
    EapPayload: _push_data_only,
    GspmPayload: _push_data_only,
    UnknownPayload: _push_unknown,
}


def push_payload_body(buf: Buffer, payload: Payload) -> None:
    """Write one payload's body (everything after its generic header)."""
    encoder = _BODY_ENCODERS.get(type(payload))
    if encoder is None:
        raise LocalProtocolError(f"not a payload: {payload!r}")
    encoder(buf, payload)
