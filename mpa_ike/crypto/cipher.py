"""Encryption algorithms (RFC 7296 §3.3.2 transform type 1): sizes and key layout.

The descriptors say how much keying material each cipher takes and how the SK
payload is laid out; :mod:`mpa_ike.crypto.sk` does the encrypting.

- AES-CBC (RFC 3602): 16-byte random IV, padding to the 16-byte block.
- AES-GCM with a 16-byte ICV (RFC 5282 §7.1, RFC 4106 §8.1): the keying
  material is the AES key followed by a 4-byte salt; 8-byte explicit IV.
- ChaCha20-Poly1305 (RFC 7634 §2, §4): 32-byte key plus 4-byte salt, 8-byte IV,
  no Key Length attribute.

The combined-mode ciphers are stream ciphers, so their padding block is one
byte (RFC 7634 Appendix B carries a Pad Length of zero).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpa_ike.constants import EncrId
from mpa_ike.crypto.errors import UnsupportedAlgorithm
from mpa_ike.records import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Encr:
    id: EncrId
    key_bits: tuple[int, ...]
    """Key lengths allowed in the Key Length attribute; empty: no attribute."""
    fixed_key_bits: int
    """Key length when the transform carries no Key Length attribute (0: required)."""
    is_aead: bool
    iv_size: int
    block_size: int
    salt_size: int = 0
    icv_size: int = 0

    def key_size(self, key_bits: int | None) -> int:
        """Bytes of keying material for this cipher, salt included (RFC 5282 §7.1)."""
        return self.cipher_key_bits(key_bits) // 8 + self.salt_size

    def cipher_key_bits(self, key_bits: int | None) -> int:
        """Validate the Key Length attribute and return the key length in bits."""
        if not self.key_bits:
            if key_bits is not None and key_bits != self.fixed_key_bits:
                raise UnsupportedAlgorithm(f"{self.id.name} takes no key length {key_bits}")
            return self.fixed_key_bits
        if key_bits not in self.key_bits:
            raise UnsupportedAlgorithm(f"{self.id.name} with key length {key_bits}")
        return key_bits


_AES_BITS = (128, 192, 256)

ENCRS: dict[EncrId, Encr] = {
    EncrId.AES_CBC: Encr(EncrId.AES_CBC, _AES_BITS, 0, False, iv_size=16, block_size=16),
    EncrId.AES_GCM_16: Encr(EncrId.AES_GCM_16, _AES_BITS, 0, True, 8, 1, salt_size=4, icv_size=16),
    EncrId.CHACHA20_POLY1305: Encr(
        EncrId.CHACHA20_POLY1305, (), 256, True, 8, 1, salt_size=4, icv_size=16
    ),
}


def get_encr(encr_id: int) -> Encr:
    """The cipher descriptor for a transform id, or :class:`UnsupportedAlgorithm`."""
    try:
        return ENCRS[EncrId.of(encr_id)]
    except KeyError:
        raise UnsupportedAlgorithm(f"unsupported encryption {EncrId(encr_id).name}") from None
