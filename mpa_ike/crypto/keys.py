"""Key derivation: prf+, SKEYSEED, the IKE SA keys and CHILD SA KEYMAT.

RFC 7296 §2.13 (prf+), §2.14 (IKE SA keys), §2.17 (CHILD SA keys) and §2.18
(IKE SA rekey). These are the computations NIST SP 800-135 §4.1.2 names the
IKEv2 KDF and ACVP tests as "kdf-components ikev2".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpa_ike.crypto.prf import Prf
from mpa_ike.errors import LocalProtocolError
from mpa_ike.records import quick_init

_PRF_PLUS_MAX_ROUNDS = 255


def prf_plus(prf: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    rounds = -(-length // prf.output_size)
    if rounds > _PRF_PLUS_MAX_ROUNDS:
        raise LocalProtocolError(f"prf+ cannot produce {length} bytes with {prf.id.name}")
    blocks: list[bytes] = []
    block = b""
    for counter in range(1, rounds + 1):
        block = prf(key, block + seed + bytes((counter,)))
        blocks.append(block)
    return b"".join(blocks)[:length]


def skeyseed(prf: Prf, nonce_i: bytes, nonce_r: bytes, shared_secret: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14); HMAC keys are used whole."""
    return prf(nonce_i + nonce_r, shared_secret)


def rekey_skeyseed(
    old_prf: Prf, old_sk_d: bytes, shared_secret: bytes, nonce_i: bytes, nonce_r: bytes
) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 §2.18).

    The PRF is the old IKE SA's: the rekeying exchange belongs to it.
    """
    return old_prf(old_sk_d, shared_secret + nonce_i + nonce_r)


@quick_init
@dataclass(frozen=True, slots=True)
class IkeKeys:
    """The seven IKE SA keys of RFC 7296 §2.14, in derivation order.

    ``sk_ai``/``sk_ar`` are empty with a combined-mode cipher; ``sk_ei``/
    ``sk_er`` then include the salt (RFC 5282 §7.1).
    """

    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes


@quick_init
@dataclass(frozen=True, slots=True)
class IkeKeyExport:
    """What decrypts an IKE SA's SK payloads in a capture (Wireshark's
    ``ikev2_decryption_table``): both SPIs, the transforms and SK_e/SK_a both ways."""

    spi_i: bytes
    spi_r: bytes
    encr_id: int
    encr_key_bits: int | None
    integ_id: int | None  # None with a combined-mode cipher
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)


def derive_ike_keys(
    prf: Prf,
    seed_key: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_size: int,
    integ_key_size: int,
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr).

    ``seed_key`` is SKEYSEED (from :func:`skeyseed` or :func:`rekey_skeyseed`);
    sizes are in bytes; SK_d, SK_pi and SK_pr are as long as the PRF output.
    """
    sizes = (
        prf.key_size,
        integ_key_size,
        integ_key_size,
        encr_key_size,
        encr_key_size,
        prf.key_size,
        prf.key_size,
    )
    stream = prf_plus(prf, seed_key, nonce_i + nonce_r + spi_i + spi_r, sum(sizes))
    return IkeKeys(*_split(stream, sizes))


@quick_init
@dataclass(frozen=True, slots=True)
class ChildKeys:
    """CHILD SA KEYMAT split as RFC 7296 §2.17: encr_i, integ_i, encr_r, integ_r.

    The ``_i`` keys protect traffic from the initiator of the exchange that
    created the SA to the responder.
    """

    encr_i: bytes
    integ_i: bytes
    encr_r: bytes
    integ_r: bytes

    def outbound(self, initiator: bool) -> tuple[bytes, bytes]:
        """(encr, integ) keys for the SA this side sends on."""
        return (self.encr_i, self.integ_i) if initiator else (self.encr_r, self.integ_r)

    def inbound(self, initiator: bool) -> tuple[bytes, bytes]:
        """(encr, integ) keys for the SA this side receives on."""
        return self.outbound(not initiator)


def derive_child_keys(
    prf: Prf,
    sk_d: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    encr_key_size: int,
    integ_key_size: int,
    shared_secret: bytes | None = None,
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17).

    ``shared_secret`` is the CREATE_CHILD_SA key exchange result when PFS is
    used; the nonces are those of the exchange that creates the SA.
    """
    seed = (shared_secret or b"") + nonce_i + nonce_r
    sizes = (encr_key_size, integ_key_size, encr_key_size, integ_key_size)
    stream = prf_plus(prf, sk_d, seed, sum(sizes))
    return ChildKeys(*_split(stream, sizes))


def _split(stream: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    parts: list[bytes] = []
    offset = 0
    for size in sizes:
        parts.append(stream[offset : offset + size])
        offset += size
    return parts
