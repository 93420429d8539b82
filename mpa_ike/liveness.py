"""Liveness of one established IKE SA: :class:`Liveness` holds dead peer detection
(RFC 7296 §2.4), NAT keepalives (RFC 3948 §2.3) and the peer's INVALID_IKE_SPI hint
(RFC 7296 §2.21.4).

DPD: after ``Lifetimes.dpd_delay`` without an authenticated message from the peer
(and nothing of ours in flight, which would find out as much), an empty
INFORMATIONAL; its answer is the proof. It is retransmitted on the IKE SA's schedule
(bounded by ``dpd_timeout`` when set; strongSwan ignores that key for IKEv2); no
answer and the IKE SA with its CHILD SAs is deleted locally, IkeSaFailed "peer dead"
(the gateway's lease goes back to the pool). :meth:`Liveness.check` is the same
probe on command.

NAT keepalives: the side that found itself behind a NAT (its NAT_DETECTION_DESTINATION_IP
did not match) sends a single 0xFF octet to the peer's port 4500 after
``Lifetimes.keep_alive`` seconds in which it sent nothing, so that the NAT keeps the
mapping. The core hands it out as a :class:`mpa_ike.datagram.Datagram` whose data is
:data:`mpa_ike.constants.NAT_KEEPALIVE`; :func:`mpa_ike.datagram.frame_for_socket`
sends it without the non-ESP marker.

INVALID_IKE_SPI: a peer that restarted answers our request with an unprotected
INFORMATIONAL naming that notify. It is not authenticated, so nothing is torn down:
the IKE SA emits :class:`mpa_ike.events.PeerForgotIkeSa` once, and the glue may set
up a new IKE SA that replaces this one once it is up (``Endpoint.initiate(...,
replaces=spi)``); DPD still ends this one if the peer is really gone.

It talks to the IKE SA through :class:`LivenessHost` and sends through the SA's
:class:`mpa_ike.exchange.Exchanges`.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from mpa_ike.constants import IKE_PORT, NAT_KEEPALIVE, ExchangeType, NotifyType
from mpa_ike.datagram import Address
from mpa_ike.events import Event, LivenessConfirmed, PeerForgotIkeSa
from mpa_ike.exchange import Exchanges
from mpa_ike.ike_config import InitiatorConfig, Lifetimes, ResponderConfig
from mpa_ike.ike_sa_common import IkeSaState
from mpa_ike.wire import EncryptedFragmentPayload, EncryptedPayload, Message, NotifyPayload

__all__ = ["PEER_DEAD", "Liveness", "LivenessHost", "is_invalid_ike_spi_answer"]

PEER_DEAD = "peer dead"


class LivenessHost(Protocol):
    """What liveness reads of its IKE SA, and how it ends it."""

    name: str
    local: Address
    remote: Address
    state: IkeSaState
    nat_local: bool
    counters: Counter[str]

    @property
    def local_spi(self) -> bytes: ...

    @property
    def config(self) -> InitiatorConfig | ResponderConfig: ...

    def emit(self, event: Event) -> None: ...

    def fail(self, reason: str, now: float, notify: NotifyType | None = None) -> None: ...


def is_invalid_ike_spi_answer(message: Message) -> bool:
    """RFC 7296 §2.21.4, §1.5: an unprotected response carrying INVALID_IKE_SPI."""
    protected = any(
        isinstance(p, EncryptedPayload | EncryptedFragmentPayload) for p in message.payloads
    )
    notified = any(
        isinstance(p, NotifyPayload) and p.notify_type == NotifyType.INVALID_IKE_SPI
        for p in message.payloads
    )
    return message.header.is_response and notified and not protected


class Liveness:
    """DPD, NAT keepalives and the INVALID_IKE_SPI hint of one IKE SA."""

    def __init__(self, sa: LivenessHost, exchanges: Exchanges) -> None:
        self._sa = sa
        self._exchanges = exchanges
        self._last_sent = 0.0
        self._probing = False
        self._hinted = False

    @property
    def _lifetimes(self) -> Lifetimes:
        return self._sa.config.lifetimes

    @property
    def probing(self) -> bool:
        """A DPD INFORMATIONAL of ours awaits its answer."""
        return self._probing

    def start(self, now: float) -> None:
        """The SA is up: the quiet periods count from now."""
        self._exchanges.last_heard = now
        self._last_sent = now

    def sent(self, now: float) -> None:
        """Something left for the peer: no keepalive needed for a while."""
        self._last_sent = now

    # ------------------------------------------------------------------
    # Timers

    def deadlines(self) -> list[float | None]:
        return [self._dpd_deadline(), self._keepalive_deadline()]

    def _dpd_deadline(self) -> float | None:
        delay = self._lifetimes.dpd_delay
        if delay is None or not self._exchanges.idle or self._sa.state != IkeSaState.ESTABLISHED:
            return None
        return self._exchanges.last_heard + delay

    def _keepalive_deadline(self) -> float | None:
        """RFC 3948 §2.3: only behind a NAT, only on the NAT-T port."""
        interval = self._lifetimes.keep_alive
        sa = self._sa
        if interval is None or not sa.nat_local or sa.local[1] == IKE_PORT:
            return None
        if sa.state != IkeSaState.ESTABLISHED:
            return None
        return self._last_sent + interval

    def handle_timer(self, now: float) -> None:
        dpd = self._dpd_deadline()
        if dpd is not None and now >= dpd:
            self._sa.counters["dpd_sent"] += 1
            self.check(now)
        keepalive = self._keepalive_deadline()
        if keepalive is not None and now >= keepalive:
            self._sa.counters["keepalives_sent"] += 1
            self._exchanges.send_to(NAT_KEEPALIVE, self._sa.local, self._sa.remote)
            self._last_sent = now

    # ------------------------------------------------------------------
    # DPD (RFC 7296 §1.4, §2.4)

    def check(self, now: float) -> None:
        """An empty INFORMATIONAL; no answer through its retransmissions: peer dead."""
        if self._sa.state != IkeSaState.ESTABLISHED:
            return
        self._probing = True
        policy = self._sa.config.retransmit.within(self._lifetimes.dpd_timeout)
        self._exchanges.request(
            ExchangeType.INFORMATIONAL, [], self._on_answer, now, self._on_silence, policy
        )

    def _on_answer(self, message: Message, now: float) -> None:
        self._probing = False
        self._exchanges.finish(now)
        sa = self._sa
        sa.emit(LivenessConfirmed(sa.local_spi, sa.name))

    def _on_silence(self, now: float) -> None:
        self._probing = False
        self._sa.counters["dpd_failed"] += 1
        self._sa.fail(f"{PEER_DEAD} (no answer to an empty INFORMATIONAL)", now)

    # ------------------------------------------------------------------
    # INVALID_IKE_SPI (RFC 7296 §2.21.4)

    def on_invalid_ike_spi(self, message: Message, now: float) -> None:
        """The peer answered our outstanding request with INVALID_IKE_SPI: a hint, told
        once; the SA lives on (its retransmissions, or DPD, end it if it is dead)."""
        sa = self._sa
        sa.counters["invalid_ike_spi_received"] += 1
        if self._hinted or sa.state != IkeSaState.ESTABLISHED:
            return
        if message.header.message_id != self._exchanges.outstanding_message_id:
            sa.counters["dropped_invalid_ike_spi"] += 1
            return
        self._hinted = True
        sa.emit(PeerForgotIkeSa(sa.local_spi, sa.name, sa.remote))
