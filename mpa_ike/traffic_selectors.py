"""Traffic selector narrowing (RFC 7296 §2.9), as strongSwan does it.

The responder intersects each selector the initiator proposed with each one
its policy allows; the result, in the initiator's order and without
duplicates, is what it answers (an empty result means TS_UNACCEPTABLE). A
virtual-IP client's TSi is narrowed to the address assigned by CP. The
initiator accepts an answer only if every selector lies within one it
proposed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from mpa_ike.constants import TsType
from mpa_ike.datapath import IPNetwork, TsRange
from mpa_ike.wire import AnyTrafficSelector, IPAddress, TrafficSelector

ANY_PORT = (0, 0xFFFF)


def selectors_for_networks(networks: Iterable[IPNetwork]) -> tuple[TrafficSelector, ...]:
    return tuple(TrafficSelector.from_network(network) for network in networks)


def selector_for_address(address: IPAddress) -> TrafficSelector:
    ts_type = TsType.IPV4_ADDR_RANGE if address.version == 4 else TsType.IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, 0, *ANY_PORT, address, address)


def _make(ts_type: TsType, value: int) -> IPAddress:
    return IPv4Address(value) if ts_type == TsType.IPV4_ADDR_RANGE else IPv6Address(value)


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector both ``a`` and ``b`` cover, or None."""
    if a.ts_type != b.ts_type:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    start = max(int(a.start_addr), int(b.start_addr))
    end = min(int(a.end_addr), int(b.end_addr))
    start_port = max(a.start_port, b.start_port)
    end_port = min(a.end_port, b.end_port)
    if start > end or start_port > end_port:
        return None
    protocol = a.ip_protocol or b.ip_protocol
    return TrafficSelector(
        a.ts_type, protocol, start_port, end_port, _make(a.ts_type, start), _make(a.ts_type, end)
    )


def narrow(
    proposed: Sequence[AnyTrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """The responder's answer to ``proposed`` under the policy ``allowed`` (§2.9)."""
    result: list[TrafficSelector] = []
    for theirs in proposed:
        if not isinstance(theirs, TrafficSelector):
            continue  # an unknown TS type is skipped, not an error
        for ours in allowed:
            common = intersect(theirs, ours)
            if common is not None and common not in result:
                result.append(common)
    return tuple(result)


def within(inner: TrafficSelector, outer: TrafficSelector) -> bool:
    return intersect(inner, outer) == inner


def acceptable_answer(
    answered: Sequence[AnyTrafficSelector], proposed: Sequence[TrafficSelector]
) -> bool:
    """Initiator's check: every answered selector lies within a proposed one."""
    if not answered:
        return False
    return all(
        isinstance(ts, TrafficSelector) and any(within(ts, p) for p in proposed) for ts in answered
    )


def to_range(selector: TrafficSelector) -> TsRange:
    return TsRange(
        str(selector.start_addr),
        str(selector.end_addr),
        selector.ip_protocol,
        selector.start_port,
        selector.end_port,
    )


def ranges(selectors: Iterable[AnyTrafficSelector]) -> tuple[TsRange, ...]:
    return tuple(to_range(ts) for ts in selectors if isinstance(ts, TrafficSelector))


def parse_range(text: str) -> TrafficSelector:
    """A selector from ``a.b.c.d`` or ``start-end`` (tests and status output)."""
    start, _, end = text.partition("-")
    first = ip_address(start)
    return selector_for_address(first) if not end else _span(first, ip_address(end))


def _span(first: IPAddress, last: IPAddress) -> TrafficSelector:
    ts_type = TsType.IPV4_ADDR_RANGE if first.version == 4 else TsType.IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, 0, *ANY_PORT, first, last)
