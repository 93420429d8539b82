"""Request retransmission with exponential back-off (RFC 7296 §2.1, §2.4).

Only the initiator of an exchange retransmits, bit for bit. The defaults are
strongSwan's (``charon.retransmit_timeout`` 4 s, ``retransmit_base`` 1.8,
``retransmit_tries`` 5): retransmission n is sent ``timeout * base**(n-1)``
after the previous send, and after the last one the exchange waits
``timeout * base**tries`` more before giving up (165 s in all by default). A policy
may first repeat at ``timeout`` a ``steady`` number of times before it backs off.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mpa_ike.records import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class RetransmitPolicy:
    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5
    # Give up this long after the first transmission at the latest (None: the whole
    # schedule): a DPD's dpd_timeout (mpa_ike.liveness).
    limit: float | None = None
    # Retransmissions sent ``timeout`` apart before the back-off begins.
    steady: int = 0

    def delay(self, sent: int) -> float:
        """Wait after the ``sent``-th transmission (1 = the original) before acting."""
        return self.timeout * self.base ** max(0, sent - 1 - self.steady)

    def total(self) -> float:
        """From the first transmission to giving up (165.06 s by default)."""
        whole = sum(self.delay(sent) for sent in range(1, self.tries + 2))
        return whole if self.limit is None else min(whole, self.limit)

    def within(self, limit: float | None) -> RetransmitPolicy:
        """This schedule, given up ``limit`` seconds after the first send (None: as is)."""
        if limit is None:
            return self
        return RetransmitPolicy(self.timeout, self.base, self.tries, limit, self.steady)


UPDATE_RETRANSMIT = RetransmitPolicy(timeout=0.2, base=2.0, tries=7)
"""For UPDATE_SA_ADDRESSES after a move: the node has just lost its path and the new
link may drop the update, so the first retransmission comes after 0.2 s rather than
4 s (then 0.4, 0.8 ... s; about 51 s in all before giving up)."""


INIT_RETRANSMIT = RetransmitPolicy(timeout=0.1, base=2.0, tries=18, steady=9)
"""For IKE_SA_INIT without a COOKIE: a repeat costs the responder no state (it answers
it with what it sent, RFC 7296 §2.1, or with a COOKIE again, §2.6), and when a flood
of IKE_SA_INIT fills the responder's socket, the kernel drops a legitimate request as
often as a flooding one: each transmission is a draw. So it goes ten times in the
first second, 0.1 s apart, then after 0.2, 0.4 ... 51.2 s (about 103 s in all before
giving up). A request that carries a COOKIE, like any other, keeps the usual schedule."""


class TimerAction(Enum):
    NONE = "none"
    RETRANSMIT = "retransmit"
    GIVE_UP = "give_up"


class Retransmitter:
    """The back-off schedule of one outstanding request."""

    def __init__(self, policy: RetransmitPolicy, now: float) -> None:
        self.policy = policy
        self.sent = 1
        self.end = None if policy.limit is None else now + policy.limit
        self.deadline = self._capped(now + policy.delay(1))

    def _capped(self, deadline: float) -> float:
        return deadline if self.end is None else min(deadline, self.end)

    def on_timer(self, now: float) -> TimerAction:
        if now < self.deadline:
            return TimerAction.NONE
        if self.sent > self.policy.tries or (self.end is not None and now >= self.end):
            return TimerAction.GIVE_UP
        self.sent += 1
        self.deadline = self._capped(now + self.policy.delay(self.sent))
        return TimerAction.RETRANSMIT
