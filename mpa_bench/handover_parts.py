"""The parts of a handover's outage: where the silence of the probe flow went.

The outage is the longest silence of the probe flow (the longer direction), from the
last probe before it to the one that ended it. Its time is split into parts, each
measured from the capture in the MN's namespace, the address events of the MN
(``mpa_testbed.dhcp.AddressWatch``) and the link event:

- ``link``: from the start of the silence to the carrier of the new link (the layer-2
  event itself);
- ``address``: address acquisition on the new link: DHCPv4 from the client's first
  message (DISCOVER, or REQUEST on a reboot) to the server's ACK; SLAAC from the new
  link's carrier (the kernel starts at once: DAD of the link-local address, the router
  solicitation after its random delay) to the address being usable (DAD done, or at
  once when optimistic);
- ``aaa``: the AAA round trips. With a RADIUS server behind the gateway, its RADIUS
  exchanges as the gateway sees them (Access-Request sent to Access-Challenge, -Accept
  or -Reject received; a capture in the gateway's namespace); with EAP answered by the
  gateway itself, the MN's IKE_AUTH round trips (EAP), request sent to answer received;
- ``ike``: its other IKE round trips (IKE_SA_INIT, the INFORMATIONAL of an update or a
  MOBIKE path probe, CREATE_CHILD_SA; with RADIUS also IKE_AUTH's time around the
  RADIUS exchange: the hops between the MN and the gateway);
- ``processing``: the rest: programs starting and reacting, scripts, timers (charon's
  100 ms after a netlink event), neighbour resolution, the datapath.

A time covered by two parts counts for the first of that list (a round trip during the
address acquisition is address time), so the parts always add up to the outage. Round
trips are paired by the initiator's SPI, message ID and exchange; a retransmitted
request keeps its first send time.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mpa_harness.pcap import _ip_payload, _link_payload

PARTS = ("link", "address", "aaa", "ike", "processing")
PART_TITLES = {
    "link": "link",
    "address": "address",
    "aaa": "AAA/EAP",
    "ike": "IKE",
    "processing": "processing",
}
DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK"}
ND_TYPES = {133: "RS", 134: "RA", 135: "NS"}
DHCP_MAGIC = b"\x63\x82\x53\x63"
RADIUS_AUTH_PORT = 1812
RADIUS_REQUEST = 1  # Access-Request (RFC 2865 §4)
RADIUS_ANSWERS = {2, 3, 11}  # Access-Accept, Access-Reject, Access-Challenge

Interval = tuple[float, float]


class Message(Protocol):
    """An IKE message as ``handover_measure.IkeMessage`` has it."""

    @property
    def time(self) -> float: ...
    @property
    def sent(self) -> bool: ...
    @property
    def exchange(self) -> str: ...
    @property
    def response(self) -> bool: ...
    @property
    def message_id(self) -> int: ...
    @property
    def spi_i(self) -> str: ...


@dataclass(frozen=True)
class AddressMessage:
    """A DHCPv4 or neighbour discovery message on the MN's interfaces (monotonic time).

    ``kind``: DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK (DHCP); RS, RA, or NS for a
    DAD probe (from the unspecified address)."""

    time: float
    sent: bool
    kind: str
    address: str | None = None  # DHCP's offered address, the NS's target


# -- reading a capture ---------------------------------------------------------------------


def frames(path: Path) -> Iterator[tuple[float, bytes]]:
    """(capture time, IP packet) of a classic pcap file (as ``mpa_harness.pcap`` reads)."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        packet = _link_payload(linktype, data[offset : offset + incl])
        offset += incl
        if packet:
            yield sec + frac / (1e9 if nano else 1e6), packet


def _dhcp(payload: bytes) -> tuple[str, str | None] | None:
    """(message type, your address) of a BOOTP payload with a DHCP message type."""
    if len(payload) < 240 or payload[236:240] != DHCP_MAGIC:
        return None
    yiaddr = str(ipaddress.IPv4Address(payload[16:20]))
    i = 240
    while i + 1 < len(payload) and payload[i] != 255:
        code = payload[i]
        if code == 0:
            i += 1
            continue
        length = payload[i + 1]
        if code == 53 and length == 1:
            kind = DHCP_TYPES.get(payload[i + 2], str(payload[i + 2]))
            return kind, None if yiaddr == "0.0.0.0" else yiaddr
        i += 2 + length
    return None


def classify(packet: bytes) -> tuple[bool | None, str, str | None] | None:
    """(sent by the client, kind, address) of a DHCP or ND packet, else None; ``sent`` is
    None where the packet does not say (neighbour discovery: the caller knows its own)."""
    parsed = _ip_payload(packet)
    if parsed is None:
        return None
    src, _dst, proto, payload = parsed
    if proto == 17 and len(payload) >= 8:
        sport, dport = struct.unpack_from("!HH", payload, 0)
        if {sport, dport} <= {67, 68}:
            found = _dhcp(payload[8:])
            if found is not None:
                return dport == 67, found[0], found[1]
        return None
    if proto == 58 and payload and payload[0] in ND_TYPES:
        kind = ND_TYPES[payload[0]]
        target = None
        if kind == "NS":
            if src != "::":
                return None  # address resolution, not DAD
            target = str(ipaddress.IPv6Address(payload[8:24])) if len(payload) >= 24 else None
        return kind in ("RS", "NS"), kind, target
    return None


def address_messages(
    captured: Iterable[tuple[float, bytes]], offset: float
) -> list[AddressMessage]:
    """The DHCP and ND messages of a capture in the MN, moved onto the monotonic clock
    (``offset``: realtime minus monotonic). A message seen twice (``-i any`` sees a
    bridged or forwarded packet once per interface) counts once."""
    out: list[AddressMessage] = []
    seen: set[tuple[float, str, str | None]] = set()
    for stamp, packet in captured:
        found = classify(packet)
        if found is None:
            continue
        sent, kind, address = found
        key = (round(stamp, 6), kind, address)
        if key in seen:
            continue
        seen.add(key)
        out.append(AddressMessage(stamp - offset, bool(sent), kind, address))
    out.sort(key=lambda m: m.time)
    return out


# -- the intervals of each part ----------------------------------------------------------------


def dhcp_interval(messages: Sequence[AddressMessage], t0: float) -> Interval | None:
    """The client's first DHCP message after ``t0`` to the first ACK after it."""
    first = next(
        (m for m in messages if m.time >= t0 and m.sent and m.kind in DHCP_TYPES.values()), None
    )
    if first is None:
        return None
    ack = next(
        (m for m in messages if m.time >= first.time and not m.sent and m.kind == "ACK"), None
    )
    return None if ack is None else (first.time, ack.time)


def slaac_interval(
    messages: Sequence[AddressMessage],
    t0: float,
    usable: float | None,
    carrier: float | None = None,
) -> Interval | None:
    """From the new link's ``carrier`` (if not known: the MN's first RS after ``t0``,
    else the first RA) to the address being usable."""
    if usable is None:
        return None
    if carrier is not None:
        return (carrier, usable) if usable >= carrier else None
    start = next((m for m in messages if t0 <= m.time and m.sent and m.kind == "RS"), None)
    if start is None:
        start = next((m for m in messages if t0 <= m.time and not m.sent and m.kind == "RA"), None)
    begin = t0 if start is None else start.time
    return (begin, usable) if usable >= begin else None


class Datagram(Protocol):
    """A captured UDP datagram as ``mpa_harness.pcap.UdpDatagram`` has it."""

    @property
    def time(self) -> float: ...
    @property
    def src(self) -> str: ...
    @property
    def sport(self) -> int: ...
    @property
    def dst(self) -> str: ...
    @property
    def dport(self) -> int: ...
    @property
    def payload(self) -> bytes: ...


def radius_round_trips(datagrams: Iterable[Datagram], offset: float) -> list[Interval]:
    """The RADIUS authentication round trips of a capture at the client (the gateway),
    moved onto the monotonic clock (``offset``: realtime minus monotonic): each
    Access-Request to the answer with its Identifier from the server it went to. A
    retransmitted request keeps its first send time; a datagram seen twice (``-i any``)
    counts once."""
    sent: dict[tuple[str, int, str, int], float] = {}
    trips: list[Interval] = []
    for d in sorted(datagrams, key=lambda d: d.time):
        if len(d.payload) < 20:
            continue
        code, identifier = d.payload[0], d.payload[1]
        if code == RADIUS_REQUEST and d.dport == RADIUS_AUTH_PORT:
            sent.setdefault((d.src, d.sport, d.dst, identifier), d.time - offset)
        elif code in RADIUS_ANSWERS and d.sport == RADIUS_AUTH_PORT:
            start = sent.pop((d.dst, d.dport, d.src, identifier), None)
            if start is not None:
                trips.append((start, d.time - offset))
    return trips


def round_trips(messages: Sequence[Message], t0: float) -> list[tuple[str, Interval]]:
    """The MN's requests after ``t0`` and their answers: (exchange, (sent, answered))."""
    open_: dict[tuple[str, int, str], float] = {}
    trips: list[tuple[str, Interval]] = []
    for m in sorted(messages, key=lambda m: m.time):
        if m.time < t0:
            continue
        key = (m.spi_i, m.message_id, m.exchange)
        if m.sent and not m.response:
            open_.setdefault(key, m.time)
        elif not m.sent and m.response and key in open_:
            trips.append((m.exchange, (open_.pop(key), m.time)))
    return trips


# -- attribution -----------------------------------------------------------------------------


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _subtract(intervals: list[Interval], taken: list[Interval]) -> list[Interval]:
    out = []
    for start, end in intervals:
        pieces = [(start, end)]
        for t_start, t_end in taken:
            nxt = []
            for p_start, p_end in pieces:
                if t_end <= p_start or t_start >= p_end:
                    nxt.append((p_start, p_end))
                    continue
                if p_start < t_start:
                    nxt.append((p_start, t_start))
                if t_end < p_end:
                    nxt.append((t_end, p_end))
            pieces = nxt
        out += pieces
    return out


def attribute(window: Interval, parts: dict[str, list[Interval]]) -> dict[str, float]:
    """Seconds of ``window`` per part, in the order of ``parts`` (earlier parts take a
    time covered twice), the rest ``processing``; the values add up to the window."""
    start, end = window
    taken: list[Interval] = []
    result: dict[str, float] = {}
    for name, intervals in parts.items():
        clipped = _union((max(start, a), min(end, b)) for a, b in intervals)
        own = _subtract(clipped, taken)
        result[name] = sum(b - a for a, b in own)
        taken = _union([*taken, *own])
    result["processing"] = max(0.0, (end - start) - sum(b - a for a, b in taken))
    return result


@dataclass
class Breakdown:
    """The parts of one outage (seconds) and how many round trips each IKE part held."""

    parts: dict[str, float]
    aaa_round_trips: int
    ike_round_trips: int
    window: Interval
    address: Interval | None
    aaa: list[Interval] = field(default_factory=list)  # the AAA round trips counted

    def to_json(self) -> dict[str, object]:
        return {
            "parts_s": self.parts,
            "aaa_round_trips": self.aaa_round_trips,
            "ike_round_trips": self.ike_round_trips,
            "window_s": list(self.window),
            "address_s": None if self.address is None else list(self.address),
            "aaa_s": [list(span) for span in self.aaa],
        }


def breakdown(
    window: Interval,
    t0: float,
    t_up: float | None,
    ike: Sequence[Message],
    addressing: Sequence[AddressMessage],
    usable: float | None,
    radius: Sequence[Interval] | None = None,
) -> Breakdown:
    """The parts of the outage ``window`` (monotonic times) of a handover at ``t0``.

    ``usable``: when the MN's new address became usable (its address events), for
    SLAAC; None when the method acquired none (``mpa``'s nCoA comes from CP).
    ``radius``: the gateway's RADIUS round trips (:func:`radius_round_trips`) when it
    relays EAP to a RADIUS server; they are then the AAA part, and IKE_AUTH's round
    trips count as IKE."""
    start, end = window
    address = dhcp_interval(addressing, t0) or slaac_interval(addressing, t0, usable, t_up)
    trips = [(x, span) for x, span in round_trips(ike, t0) if span[0] < end]
    if radius is None:
        aaa = [span for x, span in trips if x == "IKE_AUTH"]
        other = [span for x, span in trips if x != "IKE_AUTH"]
    else:
        aaa = sorted(span for span in radius if t0 <= span[0] < end)
        other = [span for _x, span in trips]
    parts = attribute(
        window,
        {
            "link": [(start, t_up)] if t_up is not None else [],
            "address": [address] if address is not None else [],
            "aaa": aaa,
            "ike": other,
        },
    )
    return Breakdown(parts, len(aaa), len(other), window, address, aaa)
