"""mpa_ike.io.netlink and rtnl: the codec, and the requests the kernel carries out, read
back with ``ip -j``.

The namespace tests need root; they skip elsewhere and fail when CI=true.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from mpa_harness.netns import Netns, add_veth, netns
from mpa_ike.io import netlink, rtnl
from tests.system.esp.test_userspace_netns import require_netns

NODE = str(Path(__file__).resolve().parent / "rtnl_node.py")


# -- pure ----------------------------------------------------------------------------


def _message(kind: int, seq: int, body: bytes) -> bytes:
    return netlink.push_message(netlink.Message(kind, 0, seq, 0, body))


def _error(seq: int, err: int) -> bytes:
    return _message(netlink.NLMSG_ERROR, seq, struct.pack("=i", -err) + bytes(16))


def test_messages_of_a_datagram_stop_at_a_broken_header() -> None:
    data = _error(6, errno.EEXIST) + _error(7, errno.ESRCH)
    assert [(m.kind, m.seq) for m in netlink.pull_messages(data)] == [(2, 6), (2, 7)]
    broken = netlink.NLMSG_HEADER.pack(3, netlink.NLMSG_ERROR, 0, 7, 0) + bytes(8)
    assert list(netlink.pull_messages(data[:36] + broken)) == list(netlink.pull_messages(data))[:1]


def test_error_and_its_extended_ack() -> None:
    ack = next(netlink.pull_messages(_error(7, 0)))
    assert netlink.pull_error(ack) == (0, "")
    text = b"prefix length too long\0"
    tlv = netlink.push_attribute(netlink.NLMSGERR_ATTR_MSG, text)
    flags = netlink.NLM_F_CAPPED | netlink.NLM_F_ACK_TLVS
    request = netlink.NLMSG_HEADER.pack(64, rtnl.RTM_NEWADDR, 0x605, 9, 0)
    body = struct.pack("=i", -errno.EINVAL) + request + tlv
    refusal = netlink.Message(netlink.NLMSG_ERROR, flags, 9, 0, body)
    assert netlink.pull_error(refusal) == (errno.EINVAL, "prefix length too long")
    error = rtnl.RtnlError(errno.EINVAL, rtnl.RTM_NEWADDR, "prefix length too long", "addr")
    assert error.code == error.errno == errno.EINVAL
    assert "RTM_NEWADDR failed" in str(error) and "prefix length" in str(error)


def test_attributes_nested_and_truncated() -> None:
    inner = netlink.push_u32(1, 7) + netlink.push_attribute(2, b"ab")
    data = netlink.push_nested(5, [inner]) + netlink.push_u8(6, 1)
    attrs = netlink.pull_attributes(data)
    assert attrs.kinds() == [5, 6]
    nested = attrs.nested(5)
    assert nested is not None and nested.u32(1) == 7 and nested.get(2) == b"ab"
    assert netlink.pull_attributes(data[:-4]).kinds() == [5]  # the last one cut short


def test_unknown_requests_and_arguments_are_left_to_pyroute2() -> None:
    with pytest.raises(rtnl.Unsupported):
        rtnl.build("link", "add", {"index": 1})
    with pytest.raises(rtnl.Unsupported):
        rtnl.build("route", "add", {"dst": "10.0.0.0/8", "oif": 1, "gateway": "10.0.0.1"})
    with pytest.raises(rtnl.Unsupported):
        rtnl.build("route", "append", {"dst": "10.0.0.0/8", "oif": 1})


def test_route_request_layout() -> None:
    request = rtnl.build(
        "route", "add", {"dst": "10.9.0.0/24", "oif": 5, "table": 1000, "prefsrc": "10.2.0.1"}
    )
    assert request.kind == rtnl.RTM_NEWROUTE
    assert request.flags == netlink.NLM_F_CREATE | netlink.NLM_F_EXCL
    head = rtnl.RtMsg.pull(request.body)
    assert (head.family, head.dst_len, head.table) == (socket.AF_INET, 24, rtnl.RT_TABLE_COMPAT)
    assert (head.protocol, head.scope, head.type) == (
        rtnl.RTPROT_BOOT,
        rtnl.RT_SCOPE_LINK,
        rtnl.RTN_UNICAST,
    )
    attrs = request.attributes(rtnl.RtMsg.LAYOUT.size)
    assert attrs.get(rtnl.RTA_DST) == bytes([10, 9, 0, 0])
    assert attrs.u32(rtnl.RTA_TABLE) == 1000
    assert attrs.u32(rtnl.RTA_OIF) == 5
    assert attrs.get(rtnl.RTA_PREFSRC) == bytes([10, 2, 0, 1])


def test_link_request_layout() -> None:
    request = rtnl.build("link", "set", {"index": 4, "state": "up", "mtu": 1400})
    head = rtnl.IfInfoMsg.pull(request.body)
    assert (request.kind, head.index, head.flags, head.change) == (rtnl.RTM_NEWLINK, 4, 1, 1)
    assert request.attributes(rtnl.IfInfoMsg.LAYOUT.size).u32(rtnl.IFLA_MTU) == 1400


def test_address_entries_and_link_events() -> None:
    def address(index: int, raw: bytes) -> bytes:
        family = socket.AF_INET6 if len(raw) == 16 else socket.AF_INET
        head = rtnl.IfAddrMsg(family, 32, 0, 0, index).push()
        return head + netlink.push_attribute(rtnl.IFA_ADDRESS, raw)

    entry = rtnl.AddressEntry.pull(address(3, bytes(15) + b"\x01"))
    assert entry == rtnl.AddressEntry(3, socket.AF_INET6, 32, "::1")
    assert rtnl.AddressEntry.pull(address(2, b"\x01\x02")) is None
    up = rtnl.IfInfoMsg(index=2, flags=rtnl.IFF_UP | rtnl.IFF_LOWER_UP).push()
    down = rtnl.IfInfoMsg(index=3, flags=rtnl.IFF_UP).push()
    messages = [
        netlink.Message(rtnl.RTM_NEWLINK, body=up),
        netlink.Message(rtnl.RTM_NEWADDR, body=address(2, bytes(4))),
        netlink.Message(rtnl.RTM_NEWLINK, body=down),
        netlink.Message(rtnl.RTM_NEWLINK, body=up[:8]),  # cut short: skipped
    ]
    assert rtnl.link_events(messages) == [rtnl.LinkEvent(2, True), rtnl.LinkEvent(3, False)]


# -- in a namespace --------------------------------------------------------------------


def _apply(ns: Netns, steps: list[Any]) -> list[Any]:
    out = ns.run([sys.executable, NODE, json.dumps(steps)]).stdout
    result: list[Any] = json.loads(out)
    return result


def _ip_json(ns: Netns, *args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(ns.ip("-j", *args).stdout or "[]")
    return result


@pytest.fixture
def pair() -> Any:
    require_netns()
    with netns("rtA") as a, netns("rtB") as b:
        veth = add_veth(a, b)
        yield a, veth.a.dev


@pytest.mark.netns
def test_addresses_routes_and_rules_as_ip_shows_them(pair: Any) -> None:
    ns, dev = pair
    steps = [
        ["addr", "add", {"dev": dev, "address": "10.2.0.129", "prefixlen": 32}],
        ["addr", "add", {"dev": dev, "address": "10.2.0.129", "prefixlen": 32}],
        ["addr", "add", {"dev": dev, "address": "fd00:2::81", "prefixlen": 128, "flags": 2}],
        ["route", "add", {"dst": "10.9.0.0/24", "dev": dev, "table": 230, "prefsrc": "10.2.0.129"}],
        ["route", "add", {"dst": "fd00:9::/64", "dev": dev, "table": 230, "prefsrc": "fd00:2::81"}],
        ["route", "add", {"dst": "0.0.0.0/0", "dev": dev, "table": 1000}],
        ["route", "replace", {"dst": "192.0.2.7/32", "dev": dev, "prefsrc": "10.2.0.129"}],
        ["route", "replace", {"dst": "192.0.2.7/32", "dev": dev, "prefsrc": "10.2.0.129"}],
        [
            "rule",
            "add",
            {"family": 2, "priority": 210, "src": "10.2.0.129", "src_len": 32, "table": 230},
        ],
        [
            "rule",
            "add",
            {"family": 10, "priority": 219, "fwmark": 0x4D50, "fwmask": 0xFFFFFFFF, "table": 254},
        ],
        ["route", "del", {"dst": "10.8.0.0/24", "dev": dev, "table": 230}],
        ["addresses", dev, socket.AF_INET],
        ["addresses", dev, socket.AF_INET6],
    ]
    results = _apply(ns, steps)
    assert results[:11] == [
        "ok",
        errno.EEXIST,
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        errno.ESRCH,
    ]
    assert results[11] == ["10.2.0.129"]
    assert "fd00:2::81" in results[12]
    addrs = {
        a["local"]: a for i in _ip_json(ns, "addr", "show", "dev", dev) for a in i["addr_info"]
    }
    assert addrs["10.2.0.129"]["prefixlen"] == 32
    assert addrs["fd00:2::81"]["prefixlen"] == 128 and addrs["fd00:2::81"].get("nodad")
    table = _ip_json(ns, "route", "show", "table", "230")
    assert [(r["dst"], r["dev"], r["prefsrc"], r["scope"]) for r in table] == [
        ("10.9.0.0/24", dev, "10.2.0.129", "link")
    ]
    table6 = _ip_json(ns, "-6", "route", "show", "table", "230")
    assert [(r["dst"], r["dev"], r["prefsrc"]) for r in table6] == [
        ("fd00:9::/64", dev, "fd00:2::81")
    ]
    assert [r["dst"] for r in _ip_json(ns, "route", "show", "table", "1000")] == ["default"]
    main = [r for r in _ip_json(ns, "route", "show") if r["dst"] == "192.0.2.7"]
    assert len(main) == 1 and main[0]["prefsrc"] == "10.2.0.129"
    rules = _ip_json(ns, "rule", "show")
    assert {"priority": 210, "src": "10.2.0.129", "table": "230"}.items() <= next(
        r for r in rules if r["priority"] == 210
    ).items()
    rule6 = next(r for r in _ip_json(ns, "-6", "rule", "show") if r["priority"] == 219)
    assert rule6["fwmark"] == "0x4d50" and rule6["table"] == "main"

    undo = [
        [
            "rule",
            "del",
            {"family": 2, "priority": 210, "src": "10.2.0.129", "src_len": 32, "table": 230},
        ],
        [
            "rule",
            "del",
            {"family": 10, "priority": 219, "fwmark": 0x4D50, "fwmask": 0xFFFFFFFF, "table": 254},
        ],
        ["route", "del", {"dst": "10.9.0.0/24", "dev": dev, "table": 230}],
        ["route", "del", {"dst": "fd00:9::/64", "dev": dev, "table": 230}],
        ["route", "del", {"dst": "0.0.0.0/0", "dev": dev, "table": 1000}],
        ["addr", "del", {"dev": dev, "address": "10.2.0.129", "prefixlen": 32}],
        ["addr", "del", {"dev": dev, "address": "fd00:2::81", "prefixlen": 128}],
        ["addr", "del", {"dev": dev, "address": "fd00:2::81", "prefixlen": 128}],
        [
            "rule",
            "del",
            {"family": 2, "priority": 210, "src": "10.2.0.129", "src_len": 32, "table": 230},
        ],
    ]
    assert _apply(ns, undo) == ["ok"] * 7 + [errno.EADDRNOTAVAIL, errno.ENOENT]
    assert not [r for r in _ip_json(ns, "rule", "show") if r["priority"] in (210, 219)]
    assert not _ip_json(ns, "route", "show", "table", "230")
    assert not _ip_json(ns, "route", "show", "table", "1000")
    assert not [r for r in _ip_json(ns, "route", "show") if r["dst"] == "192.0.2.7"]


@pytest.mark.netns
def test_a_dump_of_many_addresses_and_the_own_address(pair: Any) -> None:
    ns, dev = pair
    many = [f"10.{n // 250}.{n % 250}.1" for n in range(600)]  # several datagrams of dump
    steps: list[Any] = [["addr", "add", {"dev": dev, "address": a, "prefixlen": 32}] for a in many]
    steps += [
        ["addresses", dev, socket.AF_INET],
        ["addresses", "lo", socket.AF_INET],
        ["own", dev, 4, many[:599]],
        ["own", dev, 4, many],
        ["own", dev, 6, []],
    ]
    results = _apply(ns, steps)
    assert results[:600] == ["ok"] * 600
    assert sorted(results[600]) == sorted(many)
    assert results[601] == ["127.0.0.1"]
    assert results[602:] == [many[599], None, None]  # fe80:: does not count


@pytest.mark.netns
def test_netlink_call_goes_fast_or_falls_back_to_pyroute2(pair: Any) -> None:
    ns, dev = pair
    steps = [
        ["call_addr", "add", {"dev": dev, "address": "10.7.0.1", "prefixlen": 24}],
        ["call_route", "add", {"dst": "10.70.0.0/16", "dev": dev, "table": 240}],
        # A gateway is not built by rtnl: pyroute2 takes it.
        ["call_route", "add", {"dst": "10.71.0.0/16", "gateway": "10.7.0.2", "table": 240}],
        ["call_route", "add", {"dst": "10.70.0.0/16", "dev": dev, "table": 240}],
    ]
    assert _apply(ns, steps) == ["ok", "ok", "ok", errno.EEXIST]
    routes = {r["dst"]: r for r in _ip_json(ns, "route", "show", "table", "240")}
    assert routes["10.71.0.0/16"]["gateway"] == "10.7.0.2"
    assert routes["10.70.0.0/16"]["dev"] == dev
