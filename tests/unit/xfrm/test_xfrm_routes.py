"""The XFRM datapath's routes: the requests built, the selectors routed, the bookkeeping."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.io.netlink import Message, pull_attributes, push_attribute, push_u32
from mpa_ike.io.policy_routing import (
    RTA_GATEWAY,
    RTA_MARK,
    RTM_GETROUTE,
    NextHop,
    Routing,
    XfrmRoutes,
    next_hop_request,
    pull_next_hop,
    via_route_request,
)
from mpa_ike.io.rtnl import RTA_DST, RTA_OIF, RTA_PREFSRC, RTA_TABLE, RTM_NEWROUTE, Request, RtMsg
from mpa_ike.node.datapath import selector_routes

FIXED = RtMsg.LAYOUT.size
ROUTING = Routing(table=4096, priority=2000, mark=0x4D500003)


def params(remote: str, remote_ts: list[tuple[str, str]], local_ts: list[str]) -> ChildSaParams:
    return ChildSaParams(
        spi_in=b"\x00\x00\x00\x01",
        spi_out=b"\x00\x00\x00\x02",
        encr_id=20,
        encr_key_bits=128,
        integ_id=None,
        encr_key_in=bytes(20),
        integ_key_in=b"",
        encr_key_out=bytes(20),
        integ_key_out=b"",
        esn=False,
        local=("192.0.2.2", 500),
        remote=(remote, 500),
        encap=False,
        local_ts=tuple(TsRange(a, a) for a in local_ts),
        remote_ts=tuple(TsRange(a, b) for a, b in remote_ts),
    )


def test_next_hop_request_and_answer() -> None:
    request = next_hop_request("198.51.100.7", "192.0.2.2")
    assert request.kind == RTM_GETROUTE
    fixed = RtMsg.pull(request.body)
    assert (fixed.family, fixed.dst_len, fixed.src_len) == (socket.AF_INET, 32, 32)
    assert request.attributes(FIXED).get(RTA_DST) == ipaddress.ip_address("198.51.100.7").packed
    answer = RtMsg(socket.AF_INET, 32).push() + push_u32(RTA_OIF, 3)
    answer += push_attribute(RTA_GATEWAY, ipaddress.ip_address("192.0.2.1").packed)
    assert pull_next_hop(answer) == NextHop(3, "192.0.2.1")
    assert pull_next_hop(RtMsg(socket.AF_INET6, 128).push() + push_u32(RTA_OIF, 4)) == NextHop(4)


def test_via_route_request() -> None:
    request = via_route_request("replace", "10.0.9.0/24", NextHop(3, "192.0.2.1"), 221, "10.9.0.5")
    attributes = request.attributes(FIXED)
    assert request.kind == RTM_NEWROUTE
    assert attributes.get(RTA_GATEWAY) == ipaddress.ip_address("192.0.2.1").packed
    assert attributes.get(RTA_PREFSRC) == ipaddress.ip_address("10.9.0.5").packed
    assert int.from_bytes(attributes.get(RTA_TABLE) or b"", "little") == 221
    assert int.from_bytes(attributes.get(RTA_OIF) or b"", "little") == 3
    on_link = via_route_request("del", "fd00:9::/64", NextHop(3), 221, "fd00:99::5")
    assert on_link.attributes(FIXED).get(RTA_GATEWAY) is None
    assert on_link.attributes(FIXED).get(RTA_PREFSRC) is None  # a deletion names no source


def test_selector_routes_split_around_the_peer_and_prefer_the_cp_address() -> None:
    sa = params("10.0.0.1", [("10.0.0.0", "10.0.0.3"), ("fd00:9::", "fd00:9::ff")], ["10.9.0.5"])
    assert selector_routes(sa, with_source=True) == [
        ("10.0.0.0/32", "10.9.0.5"),
        ("10.0.0.2/31", "10.9.0.5"),
        ("fd00:9::/120", None),  # no inner address of that family
    ]
    assert selector_routes(sa, with_source=False)[0] == ("10.0.0.0/32", None)


class FakeRtnl:
    """What XfrmRoutes asks of :class:`mpa_ike.io.rtnl.Rtnl`, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int, bytes | None]] = []
        self.rules: list[tuple[str, dict[str, Any]]] = []
        self.netlink = self
        self.refuse_source = False

    def request(self, *args: Any, **kw: Any) -> Any:
        if args and isinstance(args[0], int):  # netlink.request: a route get
            body = RtMsg(socket.AF_INET).push() + push_u32(RTA_OIF, 7)
            return [Message(RTM_NEWROUTE, 0, 1, 0, body)]
        self.rules.append((args[1], kw))
        return None

    def send(self, request: Request) -> list[Message]:
        attributes = pull_attributes(request.body, FIXED)
        if self.refuse_source and attributes.get(RTA_PREFSRC):
            raise OSError(22, "no such source")
        dst = ipaddress.ip_address(attributes.get(RTA_DST) or b"")
        oif = int.from_bytes(attributes.get(RTA_OIF) or b"", "little")
        kind = "del" if request.kind != RTM_NEWROUTE else "replace"
        self.sent.append((kind, str(dst), oif, attributes.get(RTA_GATEWAY)))
        return []


def test_routes_counted_moved_and_removed() -> None:
    rtnl = FakeRtnl()
    routes = XfrmRoutes(rtnl, ROUTING)  # type: ignore[arg-type]
    assert routes.next_hop("192.0.2.1", "192.0.2.2") == NextHop(7)
    routes.add(b"a", [("10.0.9.0/24", "10.9.0.5")], NextHop(7))
    routes.add(b"b", [("10.0.9.0/24", "10.9.0.5")], NextHop(7))  # a rekey's new SA
    assert [s[0] for s in rtnl.sent] == ["replace"]
    assert rtnl.rules == [("add", {"family": socket.AF_INET, "priority": 2000, "table": 4096})]
    routes.remove(b"a")
    assert len(rtnl.sent) == 1  # still carried by b
    routes.move(b"b", NextHop(9, "198.51.100.1"))
    assert rtnl.sent[-1] == ("replace", "10.0.9.0", 9, ipaddress.ip_address("198.51.100.1").packed)
    routes.close()
    assert rtnl.sent[-1][:3] == ("del", "10.0.9.0", 9)
    assert rtnl.rules[-1][0] == "del"


def test_a_gateway_looks_up_and_sends_ike_past_its_table() -> None:
    rtnl = FakeRtnl()
    routes = XfrmRoutes(rtnl, ROUTING, bypass=True)  # type: ignore[arg-type]
    routes.add(b"a", [("10.9.0.5/32", None)], NextHop(7))
    assert [kw["priority"] for _, kw in rtnl.rules] == [1999, 2000]
    assert rtnl.rules[0][1]["fwmark"] == 0x4D500003
    request = next_hop_request("10.9.0.5", None, routes.bypass_mark)
    assert request.attributes(FIXED).get(RTA_MARK) == (0x4D500003).to_bytes(4, "little")
    routes.close()
    assert [kw["priority"] for cmd, kw in rtnl.rules if cmd == "del"] == [2000, 1999]


def test_a_source_not_ours_routes_without_it() -> None:
    rtnl = FakeRtnl()
    rtnl.refuse_source = True
    routes = XfrmRoutes(rtnl, ROUTING)  # type: ignore[arg-type]
    routes.add(b"a", [("10.0.9.0/24", "10.9.0.5")], NextHop(7))
    assert rtnl.sent == [("replace", "10.0.9.0", 7, None)]
