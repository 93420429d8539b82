"""Pseudorandom functions (RFC 7296 §3.3.2 transform type 2, RFC 4868 §2.1).

Only the HMAC PRFs are implemented; for them the key is used whole, whatever
its length (RFC 2104), which is what SKEYSEED = prf(Ni | Nr, g^ir) relies on.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from mpa_ike.constants import PrfId
from mpa_ike.crypto.errors import UnsupportedAlgorithm
from mpa_ike.records import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Prf:
    """An HMAC PRF; ``key_size`` is its preferred key length (RFC 7296 §2.14)."""

    id: PrfId
    digest: str
    output_size: int

    @property
    def key_size(self) -> int:
        return self.output_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.digest)


PRFS: dict[PrfId, Prf] = {
    PrfId.HMAC_SHA1: Prf(PrfId.HMAC_SHA1, "sha1", 20),
    PrfId.HMAC_SHA2_256: Prf(PrfId.HMAC_SHA2_256, "sha256", 32),
    PrfId.HMAC_SHA2_384: Prf(PrfId.HMAC_SHA2_384, "sha384", 48),
    PrfId.HMAC_SHA2_512: Prf(PrfId.HMAC_SHA2_512, "sha512", 64),
}


def get_prf(prf_id: int) -> Prf:
    """The PRF for a transform id, or :class:`UnsupportedAlgorithm`."""
    try:
        return PRFS[PrfId.of(prf_id)]
    except KeyError:
        raise UnsupportedAlgorithm(f"unsupported PRF {PrfId(prf_id).name}") from None
