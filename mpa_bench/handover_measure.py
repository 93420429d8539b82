"""What one handover of ``mpa-bench handover`` measured, and the statistics over many.

Pure functions over raw samples, so that the measurement itself is tested on synthetic
flows and captures (``tests/unit/bench``):

- the probe flow (``mpa_testbed.probe``): the outage in each direction is the
  longest silence that ends after the link event (or the trailing silence of a flow
  that never came back), lost packets those of the flow never received;
- the IKE messages the MN sent and received, from a capture in its namespace; tcpdump
  stamps packets with ``CLOCK_REALTIME``, the probe with ``CLOCK_MONOTONIC``: the capture
  is moved onto the probe's clock by the offset between the two clocks, read once
  around the run (:func:`clock_offset`);
- the timeline of one handover, every time relative to the link event (``t0``): link
  up, first IKE message sent by the MN, the answer it waited for, first probe back;
- the parts of the outage (link, address acquisition, AAA/EAP and IKE round trips,
  processing: :mod:`mpa_bench.handover_parts`).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mpa_bench.handover_parts import PARTS, AddressMessage, Breakdown, Datagram, breakdown
from mpa_ike.constants import ExchangeType
from mpa_ike.wire import HEADER_LENGTH, parse_header
from mpa_testbed.probe import Arrival, FlowLog, FlowReport, analyse

NON_ESP_MARKER = b"\x00\x00\x00\x00"
TRAILING_OK = 0.05  # a flow whose last probes were lost at random still came back
NAT_T_PORT = 4500
IKE_PORT = 500


def clock_offset(tries: int = 7) -> float:
    """``CLOCK_REALTIME - CLOCK_MONOTONIC`` in seconds, from the narrowest of ``tries``
    brackets of one realtime reading between two monotonic ones (microsecond-exact)."""
    best: tuple[float, float] | None = None
    for _ in range(tries):
        before = time.monotonic()
        real = time.time()
        after = time.monotonic()
        width = after - before
        if best is None or width < best[0]:
            best = (width, real - (before + after) / 2)
    assert best is not None
    return best[1]


@dataclass(frozen=True)
class IkeMessage:
    """One IKE message on the MN's interfaces, ``time`` on the monotonic clock."""

    time: float
    sent: bool  # by the MN
    exchange: str
    response: bool
    message_id: int
    spi_i: str
    size: int


def _ike_payload(dgram: Datagram) -> bytes | None:
    """The IKE message of a datagram on port 500 or behind the non-ESP marker on 4500."""
    ports = (dgram.sport, dgram.dport)
    if NAT_T_PORT in ports:
        if dgram.payload.startswith(NON_ESP_MARKER):
            return dgram.payload[4:]
        return None  # ESP in UDP or a keepalive
    if IKE_PORT in ports:
        return dgram.payload
    return None


def ike_messages(
    datagrams: Iterable[Datagram], peers: Iterable[str], offset: float
) -> list[IkeMessage]:
    """IKE messages of a capture in the MN, received (from one of the gateway's
    ``peers`` addresses) or sent, in time order.

    ``offset`` is :func:`clock_offset`: capture time minus offset is monotonic time.
    """
    theirs = set(peers)
    out: list[IkeMessage] = []
    for dgram in datagrams:
        data = _ike_payload(dgram)
        if data is None or len(data) < HEADER_LENGTH:
            continue
        header = parse_header(data)
        try:
            exchange = ExchangeType(header.exchange_type).name
        except ValueError:
            exchange = str(int(header.exchange_type))
        out.append(
            IkeMessage(
                time=dgram.time - offset,
                sent=dgram.src not in theirs,
                exchange=exchange,
                response=header.is_response,
                message_id=header.message_id,
                spi_i=header.spi_i.hex(),
                size=len(data),
            )
        )
    out.sort(key=lambda m: m.time)
    return out


# -- one handover ---------------------------------------------------------------------


@dataclass
class Timeline:
    """Times of one handover in seconds after the link event (None: did not happen).

    ``ike_first``: the MN's first IKE message after the event (the update, a MOBIKE
    path probe or IKE_SA_INIT); ``ike_answer``: the last answer the MN received before
    the probe flow was back in both directions (the update's answer, the last IKE_AUTH
    or a rekey's), else the first answer after ``ike_first``; ``signalling`` the time
    between the two; ``data_forward`` / ``data_reverse``: the probe that ends
    the silence at the MN / at the correspondent.
    """

    link_up: float | None = None
    ike_first: float | None = None
    ike_answer: float | None = None
    data_forward: float | None = None
    data_reverse: float | None = None
    ike_sent: int = 0
    ike_received: int = 0

    @property
    def signalling(self) -> float | None:
        if self.ike_first is None or self.ike_answer is None:
            return None
        return self.ike_answer - self.ike_first


def silence_after(timeline: Sequence[Arrival], t0: float) -> tuple[float, Arrival | None]:
    """The longest silence that ends after ``t0``, and the arrival that ends it.

    Arrivals just after ``t0`` that were already on their way do not end the handover's
    silence, a silence before ``t0`` (a neighbour resolved late when the flow started,
    say) is not the handover's, and a probe that arrives after later ones (held in a
    queue somewhere) neither ends a silence nor starts one.
    """
    best: tuple[float, Arrival | None] = (0.0, None)
    previous: float | None = None
    highest = -1
    for arrival in timeline:
        if arrival.seq < highest:
            continue  # a straggler overtaken by later probes: the flow did not resume
        highest = arrival.seq
        if arrival.received > t0:
            silence = arrival.received - (t0 if previous is None else previous)
            if silence > best[0]:
                best = (silence, arrival)
        previous = arrival.received
    return best


def silence_before(timeline: Sequence[Arrival], t0: float) -> float | None:
    """The longest silence between arrivals before ``t0``: the flow with no handover
    going on, the floor the machine's load puts under any outage (None: fewer than two
    arrivals)."""
    received = sorted(a.received for a in timeline if a.received < t0)
    if len(received) < 2:
        return None
    return max(b - a for a, b in itertools.pairwise(received))


def first_after_gap(timeline: Sequence[Arrival], t0: float) -> Arrival | None:
    """The arrival that ends the handover's silence (see ``silence_after``)."""
    return silence_after(timeline, t0)[1]


def build_timeline(
    t0: float, t_up: float | None, messages: Sequence[IkeMessage], report: FlowReport
) -> Timeline:
    """The timeline of one handover from the link event ``t0`` (monotonic)."""
    after = [m for m in messages if m.time >= t0]
    sent = [m for m in after if m.sent]
    forward = first_after_gap(report.forward.timeline, t0)
    reverse = first_after_gap(report.reverse.timeline, t0)
    line = Timeline(
        link_up=None if t_up is None else t_up - t0,
        data_forward=None if forward is None else forward.received - t0,
        data_reverse=None if reverse is None else reverse.received - t0,
        ike_sent=len(sent),
        ike_received=len(after) - len(sent),
    )
    if not sent:
        return line
    first = sent[0]
    line.ike_first = first.time - t0
    answers = [m for m in after if not m.sent and m.response and m.time >= first.time]
    if not answers:
        return line
    answer = answers[0]
    back = [a.received for a in (forward, reverse) if a is not None]
    if back:
        before_data = [m for m in answers if m.time <= max(back)]
        if before_data:
            answer = before_data[-1]
    line.ike_answer = answer.time - t0
    return line


def merge_flows(before: FlowLog, after: FlowLog) -> FlowLog:
    """One logical flow out of a flow to the old address and one to the new.

    The reactive MN changes address: the correspondent's flow to its old address stops
    at the handover, one to the address it gets afterwards (started beforehand) starts
    delivering once it is connected. The logical flow is ``before``'s packets up to the
    last one that arrived, then ``after``'s sent later, renumbered in send order (both
    flows have the same interval). Packets of ``after`` sent earlier and delivered late
    (queued somewhere until the new address existed) are not part of it.
    """
    delivered = [a.sent for a in before.forward]
    switch = max(delivered) if delivered else float("-inf")
    chosen = [(0, s, t) for s, t in before.sent if t <= switch]
    chosen += [(1, s, t) for s, t in after.sent if t > switch]
    chosen.sort(key=lambda item: item[2])
    number = {(flow, seq): n for n, (flow, seq, _) in enumerate(chosen)}
    merged = FlowLog(before.interval, send_errors=before.send_errors + after.send_errors)
    merged.sent = [(n, t) for n, (_, _, t) in enumerate(chosen)]
    for flow, log in enumerate((before, after)):
        for a in log.forward:
            if (flow, a.seq) in number:
                merged.forward.append(Arrival(number[flow, a.seq], a.sent, a.received))
        for a in log.reverse:
            if (flow, a.seq) in number:
                merged.reverse.append(Arrival(number[flow, a.seq], a.sent, a.received))
    return merged


def trim(log: FlowLog, until: float) -> FlowLog:
    """The flow as if its sender had stopped at ``until``: the probes sent later, their
    arrivals and their echoes left out.

    A stopped sender does not wait for its last echoes, and the reflector is stopped
    right after it: the probes still in flight would otherwise look lost.
    """
    kept = [(seq, t) for seq, t in log.sent if t <= until]
    seqs = {seq for seq, _ in kept}
    return FlowLog(
        log.interval,
        kept,
        [a for a in log.forward if a.seq in seqs],
        [a for a in log.reverse if a.seq in seqs],
        log.send_errors,
    )


@dataclass
class Sample:
    """One handover of one method: figures, timeline, and every raw sample behind them."""

    method: str
    run: int
    ok: bool
    error: str | None = None
    t0: float = 0.0
    outage_forward: float | None = None
    outage_reverse: float | None = None
    lost_forward: int | None = None
    lost_reverse: int | None = None
    timeline: Timeline = field(default_factory=Timeline)
    flow: FlowLog | None = None
    ike: list[IkeMessage] = field(default_factory=list)
    addressing: list[AddressMessage] = field(default_factory=list)
    breakdown: Breakdown | None = None
    idle: float | None = None  # the flow's longest silence before the link event
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outage(self) -> float | None:
        """What a two-way application sees: the longer silence of the two directions."""
        values = [v for v in (self.outage_forward, self.outage_reverse) if v is not None]
        return max(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "run": self.run,
            "ok": self.ok,
            "error": self.error,
            "t0": self.t0,
            "outage_s": self.outage,
            "outage_forward_s": self.outage_forward,
            "outage_reverse_s": self.outage_reverse,
            "lost_forward": self.lost_forward,
            "lost_reverse": self.lost_reverse,
            "timeline_s": {**asdict(self.timeline), "signalling": self.timeline.signalling},
            "ike": [asdict(m) for m in self.ike],
            "addressing": [asdict(m) for m in self.addressing],
            "breakdown": None if self.breakdown is None else self.breakdown.to_json(),
            "idle_s": self.idle,
            "flow": self.flow.to_json() if self.flow is not None else None,
            "extra": self.extra,
        }


def measure(
    method: str,
    run: int,
    log: FlowLog,
    t0: float,
    t_up: float | None,
    messages: Sequence[IkeMessage],
    *,
    completed: bool = True,
    error: str | None = None,
    addressing: Sequence[AddressMessage] = (),
    usable: float | None = None,
    radius: Sequence[tuple[float, float]] | None = None,
) -> Sample:
    """A sample from a flow and a capture around a link event at ``t0``.

    A handover whose flow never came back, in either direction, has its trailing
    silence as outage and is not ``ok``. The lost packets are the whole flow's (random
    loss on the links too). A handover that completed has its outage split into parts
    (:func:`mpa_bench.handover_parts.breakdown`; ``addressing``: the capture's DHCP and
    ND messages, ``usable``: when a SLAAC address became usable, ``radius``: the
    gateway's RADIUS round trips when it relays EAP to a RADIUS server).
    """
    report = analyse(log)
    line = build_timeline(t0, t_up, messages, report)
    recovered = (
        line.data_forward is not None
        and line.data_reverse is not None
        and report.forward.trailing < TRAILING_OK
        and report.reverse.trailing < TRAILING_OK
    )
    gap_f, end_f = silence_after(report.forward.timeline, t0)
    gap_r, end_r = silence_after(report.reverse.timeline, t0)
    forward = max(gap_f, report.forward.trailing)
    reverse = max(gap_r, report.reverse.trailing)
    parts = None
    longer = (gap_f, end_f) if gap_f >= gap_r else (gap_r, end_r)
    if recovered and longer[1] is not None:
        end = longer[1].received
        window = (end - longer[0], end)
        parts = breakdown(window, t0, t_up, messages, addressing, usable, radius)
    return Sample(
        method=method,
        run=run,
        ok=completed and recovered and error is None,
        error=error if error else (None if recovered else "the probe flow did not come back"),
        t0=t0,
        outage_forward=forward,
        outage_reverse=reverse,
        lost_forward=report.forward.lost,
        lost_reverse=report.reverse.lost,
        timeline=line,
        flow=log,
        ike=list(messages),
        addressing=list(addressing),
        breakdown=parts,
        idle=max(
            (
                v
                for v in (
                    silence_before(report.forward.timeline, t0),
                    silence_before(report.reverse.timeline, t0),
                )
                if v is not None
            ),
            default=None,
        ),
    )


# -- statistics -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Median, 95th percentile (nearest rank) and spread (min, max) of some values."""

    n: int
    median: float
    p95: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float | int | None]) -> Stats | None:
        data = sorted(float(v) for v in values if v is not None)
        if not data:
            return None
        rank = max(0, min(len(data) - 1, -(-95 * len(data) // 100) - 1))
        return cls(len(data), statistics.median(data), data[rank], data[0], data[-1])

    def to_json(self) -> dict[str, float]:
        return asdict(self)


TIMELINE_FIELDS = ("link_up", "ike_first", "ike_answer", "data_forward", "data_reverse")


def summarise(samples: Sequence[Sample]) -> dict[str, Any]:
    """Statistics of one method's samples (only those that completed count)."""
    good = [s for s in samples if s.ok]
    summary: dict[str, Any] = {"runs": len(samples), "ok": len(good)}
    figures: dict[str, Stats | None] = {
        "outage": Stats.of(s.outage for s in good),
        "outage_forward": Stats.of(s.outage_forward for s in good),
        "outage_reverse": Stats.of(s.outage_reverse for s in good),
        "lost_forward": Stats.of(s.lost_forward for s in good),
        "lost_reverse": Stats.of(s.lost_reverse for s in good),
        "signalling": Stats.of(s.timeline.signalling for s in good),
        "ike_sent": Stats.of(s.timeline.ike_sent for s in good),
        "idle": Stats.of(s.idle for s in good),
    }
    for name in TIMELINE_FIELDS:
        figures[name] = Stats.of(getattr(s.timeline, name) for s in good)
    split = [s.breakdown for s in good if s.breakdown is not None]
    for name in PARTS:
        figures[f"part_{name}"] = Stats.of(b.parts[name] for b in split)
    figures["aaa_round_trips"] = Stats.of(b.aaa_round_trips for b in split)
    figures["ike_round_trips"] = Stats.of(b.ike_round_trips for b in split)
    summary.update({k: None if v is None else v.to_json() for k, v in figures.items()})
    summary["errors"] = sorted({s.error for s in samples if s.error})
    return summary
