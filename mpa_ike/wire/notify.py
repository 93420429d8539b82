"""Typed builders and readers for the Notification Data of well-known notify types.

Readers take a :class:`NotifyPayload` of the right type and raise
:class:`CodecError` (INVALID_SYNTAX) when its data has the wrong shape.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from mpa_ike.constants import DhGroup, HashAlgorithm, NotifyType, ProtocolId
from mpa_ike.errors import LocalProtocolError
from mpa_ike.records import quick_init
from mpa_ike.wire.payloads import IPAddress, NotifyPayload, syntax_error

NAT_DETECTION_LENGTH = 20  # SHA-1 output
COOKIE_MAX_LENGTH = 64
COOKIE2_MIN_LENGTH = 8

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _require_length(notify: NotifyPayload, allowed: Iterable[int]) -> bytes:
    if len(notify.data) not in allowed:
        raise syntax_error(f"{notify.notify_type!r} data of {len(notify.data)} octets")
    return notify.data


# -- NAT detection (RFC 7296 §2.23) ------------------------------------------


def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: IPAddress, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port), the NAT_DETECTION_*_IP data (§2.23)."""
    return hashlib.sha1(spi_i + spi_r + address.packed + _U16.pack(port)).digest()


def nat_detection_notify(notify_type: NotifyType, digest: bytes) -> NotifyPayload:
    """NAT_DETECTION_SOURCE_IP or NAT_DETECTION_DESTINATION_IP carrying ``digest``."""
    return NotifyPayload(notify_type, data=digest)


def read_nat_detection(notify: NotifyPayload) -> bytes:
    return _require_length(notify, (NAT_DETECTION_LENGTH,))


# -- INVALID_KE_PAYLOAD (§1.3, §3.10.1): the accepted DH group, 2 octets ----


def invalid_ke_notify(group: DhGroup) -> NotifyPayload:
    return NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, data=_U16.pack(group))


def read_invalid_ke_group(notify: NotifyPayload) -> DhGroup:
    return DhGroup.of(_U16.unpack(_require_length(notify, (2,)))[0])


# -- SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4): list of 2-octet identifiers ----


def signature_hash_algorithms_notify(algorithms: Iterable[HashAlgorithm]) -> NotifyPayload:
    data = b"".join(_U16.pack(algorithm) for algorithm in algorithms)
    return NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=data)


def read_signature_hash_algorithms(notify: NotifyPayload) -> tuple[HashAlgorithm, ...]:
    if len(notify.data) % 2:
        raise syntax_error("SIGNATURE_HASH_ALGORITHMS data of odd length")
    return tuple(HashAlgorithm.of(value) for (value,) in _U16.iter_unpack(notify.data))


# -- COOKIE (§2.6: 1 to 64 octets) and COOKIE2 (RFC 4555 §3.7: 8 to 64) ------


def cookie_notify(cookie: bytes) -> NotifyPayload:
    return NotifyPayload(NotifyType.COOKIE, data=cookie)


def read_cookie(notify: NotifyPayload) -> bytes:
    return _require_length(notify, range(1, COOKIE_MAX_LENGTH + 1))


def cookie2_notify(cookie: bytes) -> NotifyPayload:
    return NotifyPayload(NotifyType.COOKIE2, data=cookie)


def read_cookie2(notify: NotifyPayload) -> bytes:
    return _require_length(notify, range(COOKIE2_MIN_LENGTH, COOKIE_MAX_LENGTH + 1))


# -- ADDITIONAL_IP4/IP6_ADDRESS (RFC 4555 §3.6) ------------------------------


def additional_address_notify(address: IPAddress) -> NotifyPayload:
    """ADDITIONAL_IP4_ADDRESS or ADDITIONAL_IP6_ADDRESS, by the address family."""
    if address.version == 4:
        return NotifyPayload(NotifyType.ADDITIONAL_IP4_ADDRESS, data=address.packed)
    return NotifyPayload(NotifyType.ADDITIONAL_IP6_ADDRESS, data=address.packed)


def read_additional_address(notify: NotifyPayload) -> IPAddress:
    if notify.notify_type == NotifyType.ADDITIONAL_IP4_ADDRESS:
        return IPv4Address(_require_length(notify, (4,)))
    return IPv6Address(_require_length(notify, (16,)))


# -- NO_NATS_ALLOWED (RFC 4555 §3.9) -----------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class NoNatsAllowed:
    """The addresses and ports the sender used, to compare with the IP header."""

    src_addr: IPAddress
    dst_addr: IPAddress
    src_port: int
    dst_port: int


def no_nats_allowed_notify(
    src_addr: IPAddress, dst_addr: IPAddress, src_port: int, dst_port: int
) -> NotifyPayload:
    if src_addr.version != dst_addr.version:
        raise LocalProtocolError("NO_NATS_ALLOWED addresses of different families")
    data = src_addr.packed + dst_addr.packed + _U16.pack(src_port) + _U16.pack(dst_port)
    return NotifyPayload(NotifyType.NO_NATS_ALLOWED, data=data)


def read_no_nats_allowed(notify: NotifyPayload) -> NoNatsAllowed:
    data = _require_length(notify, (12, 36))
    address_length = (len(data) - 4) // 2
    make = IPv4Address if address_length == 4 else IPv6Address
    ports = 2 * address_length
    return NoNatsAllowed(
        make(data[:address_length]),
        make(data[address_length:ports]),
        _U16.unpack_from(data, ports)[0],
        _U16.unpack_from(data, ports + 2)[0],
    )


# -- REKEY_SA (§1.3.3): the SPI of the SA being rekeyed, no data -------------


def rekey_sa_notify(spi: bytes, protocol: ProtocolId = ProtocolId.ESP) -> NotifyPayload:
    return NotifyPayload(NotifyType.REKEY_SA, protocol, spi)


def read_rekey_sa(notify: NotifyPayload) -> tuple[ProtocolId, bytes]:
    if notify.protocol_id not in (ProtocolId.AH, ProtocolId.ESP) or len(notify.spi) != 4:
        raise syntax_error("REKEY_SA without an AH or ESP SPI")
    return notify.protocol_id, notify.spi


# -- SET_WINDOW_SIZE (§2.3): 4-octet window size -----------------------------


def set_window_size_notify(window_size: int) -> NotifyPayload:
    return NotifyPayload(NotifyType.SET_WINDOW_SIZE, data=_U32.pack(window_size))


def read_set_window_size(notify: NotifyPayload) -> int:
    value: int = _U32.unpack(_require_length(notify, (4,)))[0]
    return value
