"""One peer identity, how many IKE SAs: INITIAL_CONTACT (RFC 7296 §2.4) and the
gateway's uniqueness policy, strongSwan's ``unique`` (charon's check_uniqueness).

Run when a new responder IKE SA has authenticated its peer and before it leases an
address, so that a peer that lost its state gets its address back from the IKE SA it
replaces. The peer is who EAP authenticated where EAP ran (charon compares
get_other_eap_id), else its IDi. The older IKE SAs of the same peer that are up:

- INITIAL_CONTACT in the peer's first IKE_AUTH (unless ``never``): closed at once,
  without DELETE: the peer says it has no other IKE SA with us.
- ``replace`` (our default): closed too, a DELETE sent once to each (strongSwan waits
  for that DELETE's answer; a peer that lost its state never sends one, and the lease
  would stay with the old SA meanwhile).
- ``keep``: the new IKE SA is refused (AUTHENTICATION_FAILED), unless it comes from
  the address of the older one (a reauthentication).
- ``no`` (strongSwan's default): both stay. ``never``: both stay, INITIAL_CONTACT too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from mpa_ike.datagram import Address
from mpa_ike.ike_config import UniquePolicy
from mpa_ike.ike_sa_common import IkeSaState

__all__ = ["Duplicate", "admit"]

S = TypeVar("S", bound="Duplicate")


class Duplicate(Protocol):
    """An IKE SA as the uniqueness check sees it."""

    is_initiator: bool
    state: IkeSaState
    remote: Address
    initial_contact: bool

    @property
    def local_spi(self) -> bytes: ...

    @property
    def unique_identity(self) -> str | None: ...

    def replace(self, new_ike_sa: bytes, reason: str, now: float, *, tell: bool) -> None: ...


def admit(new: S, others: Iterable[S], policy: UniquePolicy, now: float) -> tuple[bool, list[S]]:
    """(whether ``new`` may go on, the older IKE SAs closed for it)."""
    force = new.initial_contact
    if policy == "never" or (policy == "no" and not force):
        return True, []
    duplicates = [old for old in others if _duplicate(old, new)]
    if policy == "keep" and not force:
        refused = any(old.remote[0] != new.remote[0] for old in duplicates)
        return not refused, []
    for old in duplicates:
        if force:
            reason = "the peer's INITIAL_CONTACT (RFC 7296 §2.4)"
            old.replace(new.local_spi, reason, now, tell=False)
        else:
            old.replace(new.local_spi, "uniqueness policy replace", now, tell=True)
    return True, duplicates


def _duplicate(old: Duplicate, new: Duplicate) -> bool:
    return (
        old is not new
        and not old.is_initiator
        and old.state == IkeSaState.ESTABLISHED
        and old.unique_identity is not None
        and old.unique_identity == new.unique_identity
    )
