"""Key exchange methods (RFC 7296 §3.3.2 transform type 4) and KE payload data.

- MODP groups 14, 15, 16 (RFC 3526): public value g^x mod p and shared
  secret g^ir, both left-padded with zeros to the length of p (RFC 7296 §3.4,
  §2.14).
- ECP groups 19, 20, 21 (RFC 5903 §7): public value x | y, each coordinate
  padded to the field size, without the 0x04 point-format octet; the shared
  secret is the x coordinate only.
- Curve25519 and Curve448 (RFC 8031 §2): the RFC 7748 public keys and
  shared secrets as they are.

Private keys are built from given bytes so a test can replay an exchange byte
for byte; :func:`generate_key_exchange` draws them from an injectable source.
A peer value that is out of range, off the curve, of the wrong length, or
yields an all-zero X25519/X448 secret raises RemoteProtocolError
(INVALID_SYNTAX).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import dh, ec, x448, x25519
from cryptography.utils import CryptographyDeprecationWarning

from mpa_ike.constants import DhGroup, NotifyType
from mpa_ike.crypto.errors import UnsupportedAlgorithm
from mpa_ike.crypto.randomness import Random
from mpa_ike.errors import ConfigError, RemoteProtocolError

_MODP2048_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"
)
_MODP3072_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
)
_MODP4096_HEX = (
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"
)


class KeyExchange(Protocol):
    """One side of a key exchange: what goes into the KE payload, and g^ir."""

    @property
    def group(self) -> DhGroup: ...

    @property
    def public_bytes(self) -> bytes: ...

    def shared_secret(self, peer_public: bytes) -> bytes: ...


def _invalid(group: DhGroup, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"invalid {group.name} public value: {why}", NotifyType.INVALID_SYNTAX
    )


class ModpKeyExchange:
    """Finite-field Diffie-Hellman over an RFC 3526 group, generator 2.

    The modular exponentiations run in OpenSSL through ``cryptography``
    (about ten times faster than Python's ``pow``). The private exponent stays
    injectable: ``cryptography`` cannot derive a public value from a given
    exponent, so g^x is obtained as the "shared secret" with the public value
    g itself, then the key is rebuilt with its true public value.
    """

    def __init__(self, group: DhGroup, prime: int, private: bytes) -> None:
        exponent = int.from_bytes(private, "big")
        if not 1 < exponent < prime - 1:
            raise ConfigError(f"{group.name} private exponent out of range")
        self._group = group
        self._prime = prime
        self._size = (prime.bit_length() + 7) // 8
        numbers = _modp_parameter_numbers(prime)
        public = _modp_public_value(numbers, exponent)
        with _modp():
            key = dh.DHPrivateNumbers(exponent, dh.DHPublicNumbers(public, numbers)).private_key()
        self._key = key
        self._public = public.to_bytes(self._size, "big")

    @property
    def group(self) -> DhGroup:
        return self._group

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        # RFC 7296 §3.4: the value is padded to the length of the modulus;
        # 1 and p-1 would give a secret an attacker knows.
        if len(peer_public) != self._size:
            raise _invalid(self._group, f"length {len(peer_public)}, expected {self._size}")
        value = int.from_bytes(peer_public, "big")
        if not 1 < value < self._prime - 1:
            raise _invalid(self._group, "out of range")
        numbers = _modp_parameter_numbers(self._prime)
        try:
            with _modp():
                peer = dh.DHPublicNumbers(value, numbers).public_key()
                secret = self._key.exchange(peer)
        except ValueError as exc:
            raise _invalid(self._group, "refused by the key exchange") from exc
        # cryptography strips leading zero octets; g^ir is as long as p (§2.14).
        return secret.rjust(self._size, b"\x00")


_GENERATOR = 2
_MODP_PARAMETERS: dict[int, dh.DHParameterNumbers] = {}


def _modp_parameter_numbers(prime: int) -> dh.DHParameterNumbers:
    numbers = _MODP_PARAMETERS.get(prime)
    if numbers is None:
        with _modp():
            numbers = _MODP_PARAMETERS[prime] = dh.DHParameterNumbers(prime, _GENERATOR)
    return numbers


@contextlib.contextmanager
def _modp() -> Iterator[None]:
    """The MODP groups of RFC 3526 stay part of IKEv2 (strongSwan's default proposals
    include modp2048), whatever a cryptography release thinks of finite-field DH."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


def _modp_public_value(numbers: dh.DHParameterNumbers, exponent: int) -> int:
    """g^x mod p, computed by OpenSSL as the exchange of x with the public value g."""
    try:
        # The public value given here is a placeholder that is never used.
        with _modp():
            private = dh.DHPrivateNumbers(exponent, dh.DHPublicNumbers(_GENERATOR, numbers))
            key = private.private_key()
            generator = dh.DHPublicNumbers(_GENERATOR, numbers).public_key()
            return int.from_bytes(key.exchange(generator), "big")
    except ValueError:  # a library that checks the key pair: fall back to Python
        return pow(_GENERATOR, exponent, numbers.p)


class EcpKeyExchange:
    """ECDH over a NIST prime curve with the RFC 5903 §7 encoding."""

    def __init__(self, group: DhGroup, curve: ec.EllipticCurve, private: bytes) -> None:
        self._group = group
        self._curve = curve
        self._coord_size = (curve.key_size + 7) // 8
        try:
            self._key = ec.derive_private_key(int.from_bytes(private, "big"), curve)
        except ValueError as exc:
            raise ConfigError(f"{group.name} private key out of range") from exc
        point = self._key.public_key().public_numbers()
        self._public = point.x.to_bytes(self._coord_size, "big") + point.y.to_bytes(
            self._coord_size, "big"
        )

    @property
    def group(self) -> DhGroup:
        return self._group

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != 2 * self._coord_size:
            raise _invalid(self._group, f"length {len(peer_public)}")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self._curve, b"\x04" + peer_public)
            return self._key.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise _invalid(self._group, "not a point on the curve") from exc


class MontgomeryKeyExchange:
    """Curve25519 and Curve448 (RFC 7748 §5, RFC 8031)."""

    def __init__(self, group: DhGroup, private: bytes) -> None:
        key_size, private_cls, self._public_cls = _MONTGOMERY_CURVES[group]
        if len(private) != key_size:
            raise ConfigError(f"{group.name.lower()} private key must be {key_size} bytes")
        self._group = group
        self._key = private_cls.from_private_bytes(private)
        self._public: bytes = self._key.public_key().public_bytes_raw()

    @property
    def group(self) -> DhGroup:
        return self._group

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        if len(peer_public) != len(self._public):
            raise _invalid(self._group, f"length {len(peer_public)}")
        try:
            peer = self._public_cls.from_public_bytes(peer_public)
            return bytes(self._key.exchange(peer))
        except ValueError as exc:
            # RFC 8031 §2.3: an all-zero result (small-order point) is refused.
            raise _invalid(self._group, "small-order point") from exc


_MONTGOMERY_CURVES: dict[DhGroup, tuple[int, Any, Any]] = {
    DhGroup.CURVE25519: (32, x25519.X25519PrivateKey, x25519.X25519PublicKey),
    DhGroup.CURVE448: (56, x448.X448PrivateKey, x448.X448PublicKey),
}


MODP_PRIMES: dict[DhGroup, int] = {
    DhGroup.MODP2048: int("".join(_MODP2048_HEX), 16),
    DhGroup.MODP3072: int("".join(_MODP3072_HEX), 16),
    DhGroup.MODP4096: int("".join(_MODP4096_HEX), 16),
}

# Private exponent lengths: at least twice the group's security strength
# (NIST SP 800-57: 112, 128 and ~150 bits), which keeps pow() cheap.
_MODP_EXPONENT_SIZE = {DhGroup.MODP2048: 32, DhGroup.MODP3072: 48, DhGroup.MODP4096: 64}

ECP_CURVES: dict[DhGroup, ec.EllipticCurve] = {
    DhGroup.ECP256: ec.SECP256R1(),
    DhGroup.ECP384: ec.SECP384R1(),
    DhGroup.ECP521: ec.SECP521R1(),
}

SUPPORTED_GROUPS: tuple[DhGroup, ...] = (
    *MODP_PRIMES,
    *ECP_CURVES,
    DhGroup.CURVE25519,
    DhGroup.CURVE448,
)


def private_key_size(group: int) -> int:
    """How many random bytes :func:`generate_key_exchange` draws for ``group``."""
    group = DhGroup.of(group)
    if group in _MODP_EXPONENT_SIZE:
        return _MODP_EXPONENT_SIZE[group]
    if group in ECP_CURVES:
        return (ECP_CURVES[group].key_size + 7) // 8
    if group == DhGroup.CURVE25519:
        return 32
    if group == DhGroup.CURVE448:
        return 56
    raise UnsupportedAlgorithm(f"unsupported key exchange {group.name}")


def key_exchange_from_private(group: int, private: bytes) -> KeyExchange:
    """The key exchange for ``group`` with the given private key bytes.

    MODP: the big-endian exponent; ECP: the big-endian scalar (1 <= d < n);
    Curve25519/448: the RFC 7748 scalar as is (clamped by the curve).
    """
    group = DhGroup.of(group)
    if group in MODP_PRIMES:
        return ModpKeyExchange(group, MODP_PRIMES[group], private)
    if group in ECP_CURVES:
        return EcpKeyExchange(group, ECP_CURVES[group], private)
    if group in _MONTGOMERY_CURVES:
        return MontgomeryKeyExchange(group, private)
    raise UnsupportedAlgorithm(f"unsupported key exchange {group.name}")


def generate_key_exchange(group: int, random: Random = os.urandom) -> KeyExchange:
    """A fresh key exchange for ``group`` with a private key drawn from ``random``.

    ECP scalars are masked to the bit length of the curve and redrawn while
    outside [1, n-1] (rejection sampling, FIPS 186-5 A.4.2).
    """
    group = DhGroup.of(group)
    size = private_key_size(group)
    while True:
        private = random(size)
        if group in ECP_CURVES:
            private = _mask_to_bits(private, ECP_CURVES[group].key_size)
        try:
            return key_exchange_from_private(group, private)
        except ConfigError:
            continue


def _mask_to_bits(data: bytes, bits: int) -> bytes:
    excess = len(data) * 8 - bits
    return bytes([data[0] & (0xFF >> excess)]) + data[1:]
