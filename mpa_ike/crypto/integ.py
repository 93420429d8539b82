"""Integrity algorithms (RFC 7296 §3.3.2 transform type 3).

HMAC-SHA1-96 (RFC 2404) and the HMAC-SHA2 family of RFC 4868 §2.1: the key is
as long as the hash output and the ICV is the output truncated to half.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from mpa_ike.constants import IntegId
from mpa_ike.crypto.errors import UnsupportedAlgorithm
from mpa_ike.records import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Integ:
    id: IntegId
    digest: str
    key_size: int
    icv_size: int

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.digest)[: self.icv_size]


INTEGS: dict[IntegId, Integ] = {
    IntegId.HMAC_SHA1_96: Integ(IntegId.HMAC_SHA1_96, "sha1", 20, 12),
    IntegId.HMAC_SHA2_256_128: Integ(IntegId.HMAC_SHA2_256_128, "sha256", 32, 16),
    IntegId.HMAC_SHA2_384_192: Integ(IntegId.HMAC_SHA2_384_192, "sha384", 48, 24),
    IntegId.HMAC_SHA2_512_256: Integ(IntegId.HMAC_SHA2_512_256, "sha512", 64, 32),
}


def get_integ(integ_id: int) -> Integ:
    """The integrity algorithm for a transform id, or :class:`UnsupportedAlgorithm`."""
    try:
        return INTEGS[IntegId.of(integ_id)]
    except KeyError:
        raise UnsupportedAlgorithm(f"unsupported integrity {IntegId(integ_id).name}") from None
