"""Key exchange against RFC 5903/5114 (ECP), RFC 7748/8031 (X25519/X448), RFC 3526."""

from __future__ import annotations

from typing import Any

import pytest

from mpa_ike.constants import DhGroup, NotifyType
from mpa_ike.crypto.dh import (
    MODP_PRIMES,
    SUPPORTED_GROUPS,
    generate_key_exchange,
    key_exchange_from_private,
    private_key_size,
)
from mpa_ike.crypto.errors import UnsupportedAlgorithm
from mpa_ike.errors import ConfigError, RemoteProtocolError


def _check_pair(case: dict[str, Any]) -> None:
    group = case["group"]
    initiator = key_exchange_from_private(group, bytes.fromhex(case["priv_i"]))
    responder = key_exchange_from_private(group, bytes.fromhex(case["priv_r"]))
    assert initiator.group == group
    assert initiator.public_bytes.hex() == case["pub_i"]
    assert responder.public_bytes.hex() == case["pub_r"]
    assert initiator.shared_secret(responder.public_bytes).hex() == case["shared"]
    assert responder.shared_secret(initiator.public_bytes).hex() == case["shared"]


def test_ecp_vectors(known_answers: dict[str, Any]) -> None:
    for case in known_answers["rfc5903_ecdh"]["cases"]:
        _check_pair(case)


def test_montgomery_vectors(known_answers: dict[str, Any]) -> None:
    for case in known_answers["rfc7748_x25519"]["cases"]:
        _check_pair(case)


def _pi_scaled(bits: int) -> int:
    """floor(pi * 2^bits), Machin's formula in integers."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inverse(x: int) -> int:
        total, term, n, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n += 2
            sign = -sign
        return total

    return (4 * (4 * arctan_inverse(5) - arctan_inverse(239))) >> guard


@pytest.mark.parametrize(
    ("group", "bits", "k"),
    [
        (DhGroup.MODP2048, 2048, 124476),
        (DhGroup.MODP3072, 3072, 1690314),
        (DhGroup.MODP4096, 4096, 240904),
    ],
)
def test_modp_primes_follow_rfc3526(group: DhGroup, bits: int, k: int) -> None:
    # RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * ( [2^(n-130) pi] + k ).
    expected = 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_scaled(bits - 130) + k)
    assert MODP_PRIMES[group] == expected


def test_modp_tail_matches_rfc3526_text() -> None:
    assert format(MODP_PRIMES[DhGroup.MODP2048], "X").endswith("15728E5A8AACAA68FFFFFFFFFFFFFFFF")


@pytest.mark.parametrize("group", SUPPORTED_GROUPS)
def test_generated_exchanges_agree(group: DhGroup) -> None:
    a, b = generate_key_exchange(group), generate_key_exchange(group)
    assert a.shared_secret(b.public_bytes) == b.shared_secret(a.public_bytes)


@pytest.mark.parametrize("group", SUPPORTED_GROUPS)
def test_injected_random_replays(group: DhGroup) -> None:
    def random(size: int) -> bytes:
        return bytes([0x5A]) * size

    assert generate_key_exchange(group, random).public_bytes == (
        generate_key_exchange(group, random).public_bytes
    )
    assert private_key_size(group) > 0


def _assert_invalid(group: DhGroup, peer: bytes) -> None:
    exchange = generate_key_exchange(group)
    with pytest.raises(RemoteProtocolError) as info:
        exchange.shared_secret(peer)
    assert info.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("group", SUPPORTED_GROUPS)
def test_wrong_length_rejected(group: DhGroup) -> None:
    good = generate_key_exchange(group).public_bytes
    _assert_invalid(group, good[:-1])
    _assert_invalid(group, good + b"\x00")


@pytest.mark.parametrize("group", list(MODP_PRIMES))
def test_modp_out_of_range(group: DhGroup) -> None:
    prime = MODP_PRIMES[group]
    size = (prime.bit_length() + 7) // 8
    for value in (0, 1, prime - 1, prime, prime + 1):
        _assert_invalid(group, value.to_bytes(size, "big"))


@pytest.mark.parametrize("group", [DhGroup.ECP256, DhGroup.ECP384, DhGroup.ECP521])
def test_ecp_point_not_on_curve(group: DhGroup) -> None:
    good = bytearray(generate_key_exchange(group).public_bytes)
    good[-1] ^= 1
    _assert_invalid(group, bytes(good))
    _assert_invalid(group, bytes(len(good)))


@pytest.mark.parametrize(("group", "size"), [(DhGroup.CURVE25519, 32), (DhGroup.CURVE448, 56)])
def test_montgomery_small_order(group: DhGroup, size: int) -> None:
    _assert_invalid(group, bytes(size))


def test_bad_private_keys_and_unsupported_groups() -> None:
    with pytest.raises(ConfigError):
        key_exchange_from_private(DhGroup.ECP256, bytes(32))
    with pytest.raises(ConfigError):
        key_exchange_from_private(DhGroup.MODP2048, b"\x01")
    with pytest.raises(ConfigError):
        key_exchange_from_private(DhGroup.CURVE25519, bytes(31))
    with pytest.raises(UnsupportedAlgorithm):
        key_exchange_from_private(DhGroup.MODP1024, bytes(32))
    with pytest.raises(UnsupportedAlgorithm):
        generate_key_exchange(DhGroup.ECP224_BP)
