"""MODP key exchange through OpenSSL agrees with g^x mod p (RFC 3526, RFC 7296 §2.14).

The expected values come from Python's ``pow`` over the RFC 3526 primes, independent
of the OpenSSL path in mpa_ike.crypto.dh; the cases include shared secrets with
leading zero octets, which must keep the full length of the modulus.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import dh

from mpa_ike.constants import DhGroup
from mpa_ike.crypto.dh import MODP_PRIMES, key_exchange_from_private, private_key_size
from mpa_ike.errors import RemoteProtocolError


def _exponent(group: DhGroup, label: str) -> bytes:
    size = private_key_size(group)
    return hashlib.shake_256(f"{group.name} {label}".encode()).digest(size)


@pytest.mark.parametrize("group", list(MODP_PRIMES))
def test_public_and_shared_values_match_pow(group: DhGroup) -> None:
    prime, size = MODP_PRIMES[group], (MODP_PRIMES[group].bit_length() + 7) // 8
    x, y = (_exponent(group, side) for side in ("initiator", "responder"))
    ours, theirs = key_exchange_from_private(group, x), key_exchange_from_private(group, y)
    xi, yi = int.from_bytes(x, "big"), int.from_bytes(y, "big")
    assert ours.public_bytes == pow(2, xi, prime).to_bytes(size, "big")
    expected = pow(2, xi * yi, prime).to_bytes(size, "big")
    assert ours.shared_secret(theirs.public_bytes) == expected
    assert theirs.shared_secret(ours.public_bytes) == expected


def test_leading_zero_shared_secret_is_padded() -> None:
    group, prime = DhGroup.MODP2048, MODP_PRIMES[DhGroup.MODP2048]
    fixed = _exponent(group, "fixed")
    peer_public = pow(2, int.from_bytes(fixed, "big"), prime)
    for counter in range(4000):
        x = _exponent(group, f"zero {counter}")
        expected = pow(peer_public, int.from_bytes(x, "big"), prime).to_bytes(256, "big")
        if expected[0] == 0:
            break
    else:
        pytest.fail("no secret with a leading zero octet found")
    secret = key_exchange_from_private(group, x).shared_secret(peer_public.to_bytes(256, "big"))
    assert secret == expected and len(secret) == 256


def test_fallback_when_the_library_checks_key_pairs() -> None:
    """If cryptography ever refuses the placeholder public value, pow() takes over."""
    real = dh.DHPrivateNumbers

    class Checking:
        def __init__(self, x: int, public_numbers: dh.DHPublicNumbers) -> None:
            self._numbers = real(x, public_numbers)

        def private_key(self) -> dh.DHPrivateKey:
            if self._numbers.public_numbers.y == 2:
                raise ValueError("inconsistent key pair")
            return self._numbers.private_key()

    # Set and put back by hand: cryptography wraps a module with deprecated names (FFDH
    # since 46) in an object whose attributes pytest's monkeypatch deletes on undo.
    dh.DHPrivateNumbers = Checking  # type: ignore[assignment]
    try:
        x = _exponent(DhGroup.MODP2048, "fallback")
        expected = pow(2, int.from_bytes(x, "big"), MODP_PRIMES[DhGroup.MODP2048])
        exchange = key_exchange_from_private(DhGroup.MODP2048, x)
    finally:
        dh.DHPrivateNumbers = real
    assert exchange.public_bytes == expected.to_bytes(256, "big")


@pytest.mark.parametrize("offset", [0, 1, -1, 0x10000])
def test_peer_values_out_of_range(offset: int) -> None:
    """0, 1, p-1 and p itself are refused (RFC 7296 §3.4 via the range check)."""
    prime = MODP_PRIMES[DhGroup.MODP2048]
    value = {0: 0, 1: 1, -1: prime - 1, 0x10000: prime}[offset]
    ours = key_exchange_from_private(DhGroup.MODP2048, _exponent(DhGroup.MODP2048, "range"))
    with pytest.raises(RemoteProtocolError):
        ours.shared_secret(value.to_bytes(256, "big"))
