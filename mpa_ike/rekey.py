"""CREATE_CHILD_SA bookkeeping (RFC 7296 §1.3, §2.8, §2.18, §2.25): what an IKE SA
remembers of rekeys in flight, and the collision rule.

The exchanges themselves are methods of :class:`mpa_ike.ike_sa.IkeSa` (section
"CREATE_CHILD_SA" there): ``rekey_child_sa``, ``create_child_sa``,
``rekey_ike_sa`` and the responder ``_on_create_child_request``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mpa_ike.child_sa import ChildSa
from mpa_ike.crypto.dh import KeyExchange

if TYPE_CHECKING:
    from mpa_ike.ike_sa import IkeSa

# How long a rekeyed IKE SA waits for the peer's DELETE before it goes quietly.
REKEYED_IKE_SA_GRACE = 30.0
# A rekey refused with TEMPORARY_FAILURE (§2.25) is tried again this much later.
REKEY_RETRY_DELAY = 10.0
# An IKE SA rekey asked for while other exchanges are under way waits this long (§2.18).
IKE_REKEY_BUSY_DELAY = 1.0


@dataclass
class IkeRekey:
    """Our CREATE_CHILD_SA rekeying the IKE SA (§1.3.2): the new SPI, Ni and KE."""

    spi: bytes
    nonce: bytes
    dh: KeyExchange


@dataclass
class IkeCollision:
    """§2.25.2: the peer's IKE SA rekey, answered while ours was out."""

    successor: IkeSa
    nonces: tuple[bytes, bytes]


@dataclass
class PeerChildRekey:
    """§2.8.1: the peer's rekey of a CHILD SA we were rekeying ourselves."""

    new: ChildSa
    nonces: tuple[bytes, bytes]


def ours_is_redundant(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """§2.8.1 (CHILD SAs) and §2.8.2 (IKE SAs): of two simultaneous rekeys, the SA
    created by the exchange holding the lowest of the four nonces is redundant, and
    the initiator of that exchange deletes it. ``ours``: (Ni, Nr) of our exchange."""
    return min(ours) < min(theirs)


def jittered(rekey_time: float, jitter: float, random: Callable[[int], bytes]) -> float:
    """``rekey_time`` less a random part of up to ``jitter`` of it (strongSwan's
    rand_time), so that two peers with one configuration do not rekey at once."""
    fraction = int.from_bytes(random(2), "big") / 0x10000
    return rekey_time * (1.0 - jitter * fraction)
