"""The parts of a handover's outage on synthetic captures (no root): DHCP and ND read
from a ``tcpdump -i any`` capture, round trips paired, and the time of the silence
split into link, address, AAA/EAP, IKE and processing so that it adds up."""

from __future__ import annotations

import ipaddress
import struct
import sys
from pathlib import Path

import pytest

from mpa_bench.handover import build_parser, parts_table
from mpa_bench.handover_measure import IkeMessage, measure, summarise
from mpa_bench.handover_parts import (
    AddressMessage,
    address_messages,
    attribute,
    dhcp_interval,
    frames,
    round_trips,
    slaac_interval,
)
from mpa_harness import guards
from mpa_testbed.dhcp import DhcpServer, dhcp_range, first_usable, parse_monitor
from mpa_testbed.probe import Arrival, FlowLog

INTERVAL = 0.001
SPI = "0102030405060708"
MAC = bytes.fromhex("020000000042")


# -- synthetic packets ----------------------------------------------------------------------


def _ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            0,
            0,
            64,
            17,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + udp
    )


def _dhcp(kind: int, yiaddr: str = "0.0.0.0") -> bytes:
    bootp = bytearray(240)
    bootp[0] = 1 if kind in (1, 3) else 2
    bootp[16:20] = ipaddress.IPv4Address(yiaddr).packed
    bootp[28:34] = MAC
    bootp[236:240] = b"\x63\x82\x53\x63"
    return bytes(bootp) + bytes([53, 1, kind, 0, 255])  # a pad option before the end


def _ipv6_icmp(src: str, dst: str, icmp: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + icmp
    )


def _nd(kind: int, target: str | None = None) -> bytes:
    body = bytes([kind, 0, 0, 0]) + bytes(4)
    if target is not None:
        body += ipaddress.IPv6Address(target).packed
    return body


def _pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 276)]
    for stamp, packet in packets:
        proto = 0x86DD if packet[0] >> 4 == 6 else 0x0800
        frame = struct.pack("!HHIHBB8s", proto, 0, 2, 1, 4, 6, bytes(8)) + packet
        sec, usec = int(stamp), round((stamp - int(stamp)) * 1e6)
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


OFFSET = 1.7e9  # realtime minus monotonic
LL_MN, LL_GW = "fe80::42", "fe80::1"


def _capture(tmp_path: Path) -> list[AddressMessage]:
    at = OFFSET + 100.0
    packets = [
        # DORA on B: DISCOVER 20 ms after the event, ACK at 33 ms,
        (at + 0.020, _ipv4_udp("0.0.0.0", "255.255.255.255", 68, 67, _dhcp(1))),
        (at + 0.021, _ipv4_udp("10.2.0.1", "10.2.0.40", 67, 68, _dhcp(2, "10.2.0.40"))),
        (at + 0.030, _ipv4_udp("0.0.0.0", "255.255.255.255", 68, 67, _dhcp(3))),
        (at + 0.033, _ipv4_udp("10.2.0.1", "10.2.0.40", 67, 68, _dhcp(5, "10.2.0.40"))),
        # seen twice by -i any,
        (at + 0.033, _ipv4_udp("10.2.0.1", "10.2.0.40", 67, 68, _dhcp(5, "10.2.0.40"))),
        # router solicitation, advertisement, a DAD probe and an address resolution,
        (at + 0.004, _ipv6_icmp(LL_MN, "ff02::2", _nd(133))),
        (at + 0.006, _ipv6_icmp(LL_GW, "ff02::1", _nd(134))),
        (at + 0.500, _ipv6_icmp("::", "ff02::1:ff00:42", _nd(135, "fd00:2::42"))),
        (at + 0.600, _ipv6_icmp(LL_MN, "ff02::1:ff00:1", _nd(135, "fd00:2::1"))),
        # and UDP that is not DHCP.
        (at + 0.040, _ipv4_udp("10.2.0.40", "10.2.0.1", 500, 500, bytes(28))),
    ]
    path = tmp_path / "b.pcap"
    _pcap(path, sorted(packets, key=lambda p: p[0]))
    return address_messages(frames(path), OFFSET)


def test_dhcp_and_nd_are_read_from_the_capture(tmp_path: Path) -> None:
    messages = _capture(tmp_path)
    assert [(m.sent, m.kind, m.address) for m in messages] == [
        (True, "RS", None),
        (False, "RA", None),
        (True, "DISCOVER", None),
        (False, "OFFER", "10.2.0.40"),
        (True, "REQUEST", None),
        (False, "ACK", "10.2.0.40"),
        (True, "NS", "fd00:2::42"),
    ]
    assert messages[2].time == pytest.approx(100.020, abs=2e-6)
    assert dhcp_interval(messages, 100.0) == pytest.approx((100.020, 100.033), abs=2e-6)
    # From a REQUEST (a client rebooting with its lease) to the ACK, and nothing after.
    assert dhcp_interval(messages, 100.025) == pytest.approx((100.030, 100.033), abs=2e-6)
    assert dhcp_interval(messages, 100.034) is None
    # SLAAC: from the solicitation to the address usable (DAD done, from the monitor).
    assert slaac_interval(messages, 100.0, 101.5) == pytest.approx((100.004, 101.5), abs=2e-6)
    no_rs = [m for m in messages if m.kind != "RS"]
    assert slaac_interval(no_rs, 100.0, 101.5) == pytest.approx((100.006, 101.5), abs=2e-6)
    assert slaac_interval(messages, 100.0, None) is None
    # From the carrier when it is known: the kernel's own wait before its RS counts.
    assert slaac_interval(messages, 100.0, 101.5, 100.001) == (100.001, 101.5)
    assert slaac_interval(messages, 100.0, 100.0005, 100.001) is None


def _ike(t: float, sent: bool, exchange: str, response: bool, mid: int) -> IkeMessage:
    return IkeMessage(t, sent, exchange, response, mid, SPI, 100)


def test_round_trips_pair_requests_and_answers() -> None:
    messages = [
        _ike(99.9, True, "INFORMATIONAL", False, 5),  # before the event: not the handover's
        _ike(100.010, True, "IKE_SA_INIT", False, 0),
        _ike(100.012, False, "IKE_SA_INIT", True, 0),  # a COOKIE: the request again
        _ike(100.013, True, "IKE_SA_INIT", False, 0),
        _ike(100.017, False, "IKE_SA_INIT", True, 0),
        _ike(100.020, True, "IKE_AUTH", False, 1),
        _ike(100.220, True, "IKE_AUTH", False, 1),  # retransmitted: keeps its first send
        _ike(100.225, False, "IKE_AUTH", True, 1),
        _ike(100.230, False, "INFORMATIONAL", False, 0),  # the gateway's request
        _ike(100.231, True, "INFORMATIONAL", True, 0),
    ]
    trips = round_trips(messages, 100.0)
    assert [name for name, _ in trips] == ["IKE_SA_INIT", "IKE_SA_INIT", "IKE_AUTH"]
    times = [time for _, span in trips for time in span]
    assert times == pytest.approx([100.010, 100.012, 100.013, 100.017, 100.020, 100.225])


def test_attribution_adds_up_and_earlier_parts_take_overlaps() -> None:
    parts = attribute(
        (0.0, 0.100),
        {
            "link": [(-0.5, 0.002)],  # clipped to the window
            "address": [(0.010, 0.030)],
            "aaa": [(0.025, 0.040), (0.045, 0.050)],  # 5 ms of it is address time
            "ike": [(0.035, 0.045), (0.090, 0.200)],  # 5 ms is AAA time; clipped at 0.1
        },
    )
    assert parts == pytest.approx(
        {"link": 0.002, "address": 0.020, "aaa": 0.015, "ike": 0.015, "processing": 0.048}
    )
    assert sum(parts.values()) == pytest.approx(0.100)
    empty = attribute((1.0, 1.01), {"link": [], "address": []})
    assert empty == pytest.approx({"link": 0.0, "address": 0.0, "processing": 0.01})


def _flow(count: int, missing: range) -> FlowLog:
    sent = [(seq, 99.0 + seq * INTERVAL) for seq in range(count)]
    forward = [Arrival(s, t, t + 0.0005) for s, t in sent if s not in missing]
    reverse = [Arrival(a.seq, a.received, a.received + 0.0005) for a in forward]
    return FlowLog(INTERVAL, sent, forward, reverse)


def test_a_reactive_handover_by_dhcp_splits_into_its_parts(tmp_path: Path) -> None:
    # Silent from 99.9995 (the last echo back, of seq 999) to 100.1005 (seq 1100's echo):
    # 101 ms. Carrier at 2 ms, DHCP 20-33 ms, IKE_SA_INIT 40-46, IKE_AUTH 50-60 and
    # 62-70, the first probe forward at 100.1000, back at 100.1005.
    log = _flow(1500, range(1000, 1100))
    ike = [
        _ike(100.040, True, "IKE_SA_INIT", False, 0),
        _ike(100.046, False, "IKE_SA_INIT", True, 0),
        _ike(100.050, True, "IKE_AUTH", False, 1),
        _ike(100.060, False, "IKE_AUTH", True, 1),
        _ike(100.062, True, "IKE_AUTH", False, 2),
        _ike(100.070, False, "IKE_AUTH", True, 2),
        _ike(100.300, True, "CREATE_CHILD_SA", False, 3),  # after the flow is back
        _ike(100.301, False, "CREATE_CHILD_SA", True, 3),
    ]
    sample = measure(
        "reactive", 0, log, 100.0, 100.002, ike, addressing=_capture(tmp_path), usable=None
    )
    assert sample.ok and sample.outage == pytest.approx(0.101, abs=1e-9)
    assert sample.breakdown is not None
    parts = sample.breakdown.parts
    assert parts["link"] == pytest.approx(0.0025, abs=1e-6)  # from 99.9995
    assert parts["address"] == pytest.approx(0.013, abs=2e-6)
    assert parts["aaa"] == pytest.approx(0.018, abs=1e-6)
    assert parts["ike"] == pytest.approx(0.006, abs=1e-6)
    assert parts["processing"] == pytest.approx(0.101 - 0.0395, abs=3e-6)
    assert sum(parts.values()) == pytest.approx(sample.outage, abs=1e-9)
    assert (sample.breakdown.aaa_round_trips, sample.breakdown.ike_round_trips) == (2, 1)
    data = sample.to_json()
    assert data["breakdown"]["parts_s"]["aaa"] == pytest.approx(0.018, abs=1e-6)
    assert [m["kind"] for m in data["addressing"]][:3] == ["RS", "RA", "DISCOVER"]
    summary = summarise([sample])
    assert summary["part_address"]["median"] == pytest.approx(0.013, abs=2e-6)
    assert summary["aaa_round_trips"]["median"] == 2
    row = parts_table({"reactive": summary}, {}).splitlines()[2].split()
    assert row[:7] == ["reactive", "101.0", "2.5", "13.0", "18.0", "6.0", "61.5"]
    # Before the event the flow runs every millisecond: that is its longest silence.
    assert sample.idle == pytest.approx(0.001, abs=1e-6)
    assert row[7:] == ["2", "1", "1.0"]


def test_mpa_pays_no_address_acquisition() -> None:
    # The nCoA comes from CP: no DHCP, no usable event; the update is the one round trip.
    log = _flow(1500, range(1000, 1004))
    ike = [_ike(100.0015, True, "INFORMATIONAL", False, 7)]
    ike.append(_ike(100.0025, False, "INFORMATIONAL", True, 7))
    sample = measure("mpa", 0, log, 100.0, 100.001, ike)
    assert sample.breakdown is not None
    assert sample.breakdown.parts["address"] == 0.0
    assert sample.breakdown.parts["ike"] == pytest.approx(0.001)
    assert sample.breakdown.address is None
    failed = measure("mpa", 0, _flow(1500, range(1000, 1500)), 100.0, 100.001, ike)
    assert failed.breakdown is None and not failed.ok


# -- address events, the DHCP server, options ---------------------------------------------------


MONITOR = """Timestamp: Thu Dec  3 01:45:30 2026 486683 usec
643: mn-b    inet 10.2.0.41/24 scope global mn-b\\       valid_lft forever preferred_lft forever
Timestamp: Thu Dec  3 01:45:30 2026 497531 usec
643: mn-b    inet6 fd00:2::42/64 scope global tentative dynamic mngtmpaddr \\       valid_lft
Timestamp: Thu Dec  3 01:45:30 2026 500000 usec
643: mn-b    inet6 fd00:2::43/64 scope global tentative optimistic dynamic \\       valid_lft
Timestamp: Thu Dec  3 01:45:31 2026 727411 usec
643: mn-b    inet6 fd00:2::42/64 scope global dynamic mngtmpaddr \\       valid_lft forever
Timestamp: Thu Dec  3 01:45:32 2026 000001 usec
Deleted 643: mn-b    inet6 fd00:2::42/64 scope global dynamic \\       valid_lft forever
"""


def test_address_events_tell_when_an_address_is_usable() -> None:
    import time

    base = time.mktime(time.strptime("Thu Dec 3 01:45:30 2026", "%a %b %d %H:%M:%S %Y"))
    events = parse_monitor(MONITOR.splitlines(), offset=base)
    assert [(e.address, e.deleted, e.usable) for e in events] == [
        ("10.2.0.41/24", False, True),
        ("fd00:2::42/64", False, False),  # tentative: DAD under way
        ("fd00:2::43/64", False, True),  # optimistic: usable during DAD
        ("fd00:2::42/64", False, True),
        ("fd00:2::42/64", True, False),
    ]
    assert events[0].time == pytest.approx(0.486683)
    v6 = first_usable(events, "mn-b", 6, since=0.0)
    assert v6 is not None and v6.address == "fd00:2::43/64"
    later = first_usable(events, "mn-b", 6, since=0.6)
    assert later is not None and later.time == pytest.approx(1.727411)
    assert first_usable(events, "mn-c", 4, since=0.0) is None


def test_the_dhcp_server_hands_out_below_the_pool(tmp_path: Path) -> None:
    assert dhcp_range("10.2.0.0/24") == ("10.2.0.32", "10.2.0.120")
    server = DhcpServer(None, "ngw", "ngw-b", tmp_path, v4="10.2.0.0/24", v6="fd00:2::/64")  # type: ignore[arg-type]
    try:
        cmd = server.command()
    except RuntimeError as why:  # dnsmasq not installed here
        guards.require(str(why), "the dnsmasq command line")
    assert "--dhcp-range=10.2.0.32,10.2.0.120,255.255.255.0,1h" in cmd
    assert "--dhcp-range=fd00:2::,ra-only,64" in cmd and "--enable-ra" in cmd
    assert "--port=0" in cmd and "--no-ping" in cmd
    assert f"--dhcp-leasefile={tmp_path / 'dnsmasq-ngw.leases'}" in cmd
    v6_only = DhcpServer(None, "ngw", "ngw-b", tmp_path, v6="fd00:2::/64", ping=True)  # type: ignore[arg-type]
    assert not any(c.startswith("--dhcp-range=10.") for c in v6_only.command())
    assert "--no-ping" not in v6_only.command()


def test_help_documents_dhcp_and_mpa_cli() -> None:
    text = build_parser().format_help()
    for word in ("--dhcp", "--optimistic-dad", "--dhcp-ping", "mpa-cli", "SLAAC"):
        assert word in text, word
    args = build_parser().parse_args(["--dhcp", "--optimistic-dad", "--methods", "mpa-cli"])
    assert args.dhcp and args.optimistic_dad and args.methods == "mpa-cli"


def test_mpa_cli_prefers_the_console_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mpa_bench import handover_methods

    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert handover_methods.mobile_command() == (
        [str(python), "-m", "mobile.cli"],
        "python -m mobile.cli",
    )
    script = python.parent / "mpa-mobile"
    script.write_text("#!/bin/sh\n")
    assert handover_methods.mobile_command() == ([str(script)], "console script")
