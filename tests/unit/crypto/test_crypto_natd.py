"""NAT-D hashes (RFC 7296 §2.23)."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from mpa_ike.crypto.natd import nat_detection_hash

SPI_I = bytes.fromhex("0123456789abcdef")
SPI_R = bytes(8)


def test_ipv4_layout() -> None:
    expected = hashlib.sha1(SPI_I + SPI_R + bytes([192, 0, 2, 1]) + b"\x01\xf4").digest()
    assert nat_detection_hash(SPI_I, SPI_R, "192.0.2.1", 500) == expected


def test_ipv6_layout() -> None:
    address = ipaddress.IPv6Address("2001:db8::1")
    expected = hashlib.sha1(SPI_I + SPI_R + address.packed + b"\x11\x94").digest()
    assert nat_detection_hash(SPI_I, SPI_R, address, 4500) == expected


def test_spi_length_checked() -> None:
    with pytest.raises(ValueError):
        nat_detection_hash(SPI_I[:4], SPI_R, "192.0.2.1", 500)
