"""The handover benchmark's own measurement on synthetic flows and captures (no root).

The probe's gap analysis itself is covered by ``tests/testbed/test_probe_gaps.py``; here
what the benchmark adds on top: the capture read onto the probe's clock, the timeline of
a handover, the joining of a reactive MN's two flows, a sample's figures, statistics,
link options and the table.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import time
from pathlib import Path

import pytest

from mpa_bench.handover import Configuration, configurations, parse_links, table
from mpa_bench.handover_measure import (
    IkeMessage,
    Stats,
    clock_offset,
    first_after_gap,
    ike_messages,
    measure,
    merge_flows,
    summarise,
    trim,
)
from mpa_harness.pcap import read_udp
from mpa_ike.constants import ExchangeType
from mpa_testbed.probe import Arrival, FlowLog, ProbeFlow

INTERVAL = 0.001
DELAY = 0.0005
MN, GW = "10.2.0.80", "10.2.0.1"
SPI = bytes(range(1, 9))


# -- synthetic captures -------------------------------------------------------------------


def _ike(exchange: ExchangeType, message_id: int, *, response: bool) -> bytes:
    flags = 0x20 if response else 0x08
    return SPI + bytes(8) + struct.pack("!BBBBII", 46, 0x20, exchange, flags, message_id, 28)


def _udp_ipv4(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
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
    return header + udp


def _write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    """A pcap of Linux cooked v2 frames (what ``tcpdump -i any`` writes), microseconds."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 276)]
    for stamp, packet in frames:
        sll2 = struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 4, 6, bytes(8))
        frame = sll2 + packet
        sec, usec = int(stamp), round((stamp - int(stamp)) * 1e6)
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def test_capture_is_read_onto_the_probe_clock(tmp_path: Path) -> None:
    offset = 1.7e9 + 0.25  # realtime minus monotonic
    marker = bytes(4)
    frames = [
        # An INFORMATIONAL request from the MN behind the non-ESP marker, its answer,
        (100.010 + offset, _udp_ipv4(MN, GW, 4500, 4500, marker + _ike(37, 6, response=False))),
        (100.011 + offset, _udp_ipv4(GW, MN, 4500, 4500, marker + _ike(37, 6, response=True))),
        # ESP in UDP and a NAT keepalive, which are not IKE,
        (100.012 + offset, _udp_ipv4(GW, MN, 4500, 4500, b"\x12\x34\x56\x78" + bytes(40))),
        (100.013 + offset, _udp_ipv4(MN, GW, 4500, 4500, b"\xff")),
        # and IKE_SA_INIT on port 500.
        (100.020 + offset, _udp_ipv4(MN, GW, 500, 500, _ike(34, 0, response=False))),
    ]
    path = tmp_path / "ike.pcap"
    _write_pcap(path, frames)
    messages = ike_messages(read_udp(path), [GW], offset)
    assert [(m.sent, m.exchange, m.response, m.message_id) for m in messages] == [
        (True, "INFORMATIONAL", False, 6),
        (False, "INFORMATIONAL", True, 6),
        (True, "IKE_SA_INIT", False, 0),
    ]
    assert [m.time for m in messages] == pytest.approx([100.010, 100.011, 100.020], abs=2e-6)
    assert messages[0].spi_i == SPI.hex()


def test_clock_offset_matches_the_clocks() -> None:
    assert clock_offset() == pytest.approx(time.time() - time.monotonic(), abs=0.001)


# -- synthetic flows ------------------------------------------------------------------------


def _flow(
    count: int, missing: set[int], *, start: float = 99.0, shift: float = 0.0
) -> tuple[list[tuple[int, float]], list[Arrival], list[Arrival]]:
    """Sent, forward arrivals and echoes of a flow of ``count`` probes, some missing."""
    sent = [(seq, start + shift + seq * INTERVAL) for seq in range(count)]
    forward = [Arrival(s, t, t + DELAY) for s, t in sent if s not in missing]
    reverse = [Arrival(a.seq, a.received, a.received + DELAY) for a in forward]
    return sent, forward, reverse


def _messages(*times: tuple[float, bool, bool]) -> list[IkeMessage]:
    return [IkeMessage(t, sent, "INFORMATIONAL", resp, 6, SPI.hex(), 80) for t, sent, resp in times]


def test_a_known_gap_gives_back_the_handover() -> None:
    # Probes sent at 99.000 + k ms; those sent from 100.000 to 100.011 never arrive.
    sent, forward, reverse = _flow(2000, set(range(1000, 1012)))
    log = FlowLog(INTERVAL, sent, forward, reverse)
    messages = _messages((100.010, True, False), (100.011, False, True), (100.5, False, False))
    sample = measure("mpa", 0, log, 100.0, 100.005, messages)
    assert sample.ok and sample.error is None
    # Last arrival 99.9995 (seq 999), next 100.0125 (seq 1012): 13 ms both ways.
    assert sample.outage_forward == pytest.approx(0.013, abs=1e-9)
    assert sample.outage_reverse == pytest.approx(0.013, abs=1e-9)
    assert sample.outage == pytest.approx(0.013, abs=1e-9)
    assert (sample.lost_forward, sample.lost_reverse) == (12, 0)
    line = sample.timeline
    assert line.link_up == pytest.approx(0.005)
    assert line.ike_first == pytest.approx(0.010)
    assert line.ike_answer == pytest.approx(0.011)
    assert line.signalling == pytest.approx(0.001)
    assert line.data_forward == pytest.approx(0.0125)
    assert line.data_reverse == pytest.approx(0.013)
    assert (line.ike_sent, line.ike_received) == (1, 2)
    data = sample.to_json()
    assert data["outage_s"] == pytest.approx(0.013)
    assert FlowLog.from_json(data["flow"]) == log


def test_the_answer_is_the_last_before_the_flow_is_back() -> None:
    # A re-authentication: a probe on the old SA, then IKE_SA_INIT and IKE_AUTH rounds;
    # data comes back after the last IKE_AUTH answer, a later request does not count.
    sent, forward, reverse = _flow(2000, set(range(1000, 1020)))
    report_log = FlowLog(INTERVAL, sent, forward, reverse)
    messages = _messages(
        (100.008, True, False),
        (100.009, False, True),
        (100.010, True, False),
        (100.012, False, True),
        (100.013, True, False),
        (100.015, False, True),
        (100.030, True, False),
        (100.031, False, True),
    )
    line = measure("charon-reauth", 0, report_log, 100.0, 100.004, messages).timeline
    assert line.ike_first == pytest.approx(0.008)
    assert line.ike_answer == pytest.approx(0.015)
    assert line.signalling == pytest.approx(0.007)
    assert (line.ike_sent, line.ike_received) == (4, 4)


def test_no_ike_after_the_event() -> None:
    sent, forward, reverse = _flow(500, set(range(200, 230)))
    log = FlowLog(INTERVAL, sent, forward, reverse)
    line = measure("x", 0, log, 99.2, None, _messages((99.1, True, False))).timeline
    assert line.ike_first is None and line.ike_answer is None and line.signalling is None
    assert line.link_up is None
    assert line.data_forward == pytest.approx(0.0305)  # seq 230, sent 99.230


def test_a_flow_that_never_comes_back_is_a_failed_handover() -> None:
    sent, forward, reverse = _flow(1000, set(range(600, 1000)))
    sample = measure("x", 3, FlowLog(INTERVAL, sent, forward, reverse), 99.6, 99.601, [])
    assert not sample.ok
    assert sample.error == "the probe flow did not come back"
    assert sample.outage_forward == pytest.approx(0.4, abs=1e-9)  # the trailing silence
    assert sample.lost_forward == 400
    failed = measure("x", 3, FlowLog(INTERVAL, sent, forward, reverse), 99.6, None, [], error="e")
    assert failed.error == "e" and not failed.ok


def test_the_end_of_the_silence_is_after_the_event() -> None:
    # Packets already on their way arrive just after the event; the silence that ends
    # the handover is the longest one ending after it, not the first arrival after it.
    _, forward, _ = _flow(300, set(range(102, 140)))
    end = first_after_gap(forward, 99.1)
    assert end is not None and end.seq == 140
    assert first_after_gap([], 99.1) is None


def test_a_reactive_mn_s_two_flows_join_into_one() -> None:
    # Flow 1 to the old address delivers until 100.000 (seq 999); flow 2 to the new
    # address, sent half an interval later, delivers from 100.0305 on (seq 1030), and
    # one packet of it sent long before came out of a queue with the first ones.
    s1, f1, r1 = _flow(2000, set(range(1000, 2000)))
    s2, f2, r2 = _flow(2000, set(range(0, 1030)), shift=0.0005)
    queued = Arrival(500, s2[500][1], 100.0309)
    f2.append(queued)
    r2.append(Arrival(500, queued.received, queued.received + DELAY))
    merged = merge_flows(FlowLog(INTERVAL, s1, f1, r1), FlowLog(INTERVAL, s2, f2, r2))
    times = [t for _, t in merged.sent]
    assert times == sorted(times)
    assert [s for s, _ in merged.sent] == list(range(len(merged.sent)))
    # Flow 1's packets up to its last delivered one (0..999, the last sent at 99.999),
    # then flow 2's sent later (999.., from 99.9995).
    assert len(merged.sent) == 1000 + 1001
    assert len(merged.forward) == 1000 + 970
    sample = measure("reactive", 0, merged, 100.0, 100.002, [])
    assert sample.ok
    assert sample.outage_forward == pytest.approx(100.031 - 99.9995, abs=1e-9)
    assert sample.lost_forward == 31  # flow 2's 999..1029
    assert sample.lost_reverse == 0
    # A second flow that never delivered: the first one's silence is the outage.
    nothing = merge_flows(FlowLog(INTERVAL, s1, f1, r1), FlowLog(INTERVAL, s2, [], []))
    assert len(nothing.sent) == 2001 and len(nothing.forward) == 1000
    assert not measure("reactive", 0, nothing, 100.0, None, []).ok


def test_a_stopped_flow_is_trimmed_to_what_could_arrive() -> None:
    # Stopped at 100.0 with 25 ms on the way: the last probes never reached the
    # reflector and their echoes never came back. Trimmed, nothing is lost.
    delay = 0.025
    sent = [(seq, 99.0 + seq * INTERVAL) for seq in range(1001)]
    forward = [Arrival(s, t, t + delay) for s, t in sent if t + delay <= 100.0]
    reverse = [Arrival(a.seq, a.received, a.received + delay) for a in forward]
    reverse = [a for a in reverse if a.received <= 100.0]
    log = FlowLog(INTERVAL, sent, forward, reverse)
    untrimmed = measure("x", 0, log, 99.5, None, [])  # a silence at the end
    assert untrimmed.outage_forward == pytest.approx(delay, abs=1e-6)
    assert untrimmed.lost_forward == 25
    trimmed = trim(log, 100.0 - 0.06)
    assert len(trimmed.sent) == 941 and len(trimmed.forward) == 941
    sample = measure("x", 0, trimmed, 99.5, None, [])
    assert sample.ok and sample.lost_forward == 0 and sample.lost_reverse == 0
    assert sample.outage_reverse == pytest.approx(INTERVAL, abs=1e-9)


def test_a_straggler_neither_ends_nor_starts_a_silence() -> None:
    # A probe held 120 ms in a queue comes after later ones: the flow did not stop
    # before it nor resume with it.
    sent, forward, reverse = _flow(1000, set(range(500, 510)))
    late = forward.pop(300)
    forward.append(Arrival(late.seq, late.sent, late.received + 0.120))
    forward.sort(key=lambda a: a.received)
    sample = measure("x", 0, FlowLog(INTERVAL, sent, forward, reverse), 99.45, None, [])
    assert sample.outage_forward == pytest.approx(0.011, abs=1e-9)
    assert sample.timeline.data_forward == pytest.approx(99.5105 - 99.45)


# -- statistics, options, table ---------------------------------------------------------------


def test_statistics() -> None:
    stats = Stats.of([*range(20, 0, -1), None])
    assert stats is not None
    assert (stats.n, stats.median, stats.p95, stats.low, stats.high) == (20, 10.5, 19, 1, 20)
    one = Stats.of([0.004])
    assert one is not None and one.median == one.p95 == one.low == one.high == 0.004
    assert Stats.of([None]) is None


def test_summary_counts_only_completed_runs() -> None:
    good = []
    for gap in (10, 20, 30):
        sent, forward, reverse = _flow(600, set(range(300, 300 + gap)))
        good.append(measure("mpa", gap, FlowLog(INTERVAL, sent, forward, reverse), 99.3, None, []))
    sent, forward, reverse = _flow(600, set(range(300, 600)))
    bad = measure("mpa", 9, FlowLog(INTERVAL, sent, forward, reverse), 99.3, None, [])
    summary = summarise([*good, bad])
    assert (summary["runs"], summary["ok"]) == (4, 3)
    assert summary["outage"]["median"] == pytest.approx(0.021)
    assert summary["lost_forward"]["high"] == 30
    assert summary["errors"] == ["the probe flow did not come back"]


def test_link_options() -> None:
    assert parse_links("delay", "25ms") == {"ngw-core": pytest.approx(0.025)}
    assert parse_links("delay", "core:25ms,access:10ms") == {
        "ngw-core": pytest.approx(0.025),
        "a": pytest.approx(0.010),
        "b": pytest.approx(0.010),
    }
    assert parse_links("loss", "1%") == {"a": 0.01, "b": 0.01}
    assert parse_links("rate", "b:10mbit") == {"b": 1e7}
    assert parse_links("jitter", "2ms") == {"ngw-core": pytest.approx(0.002)}
    with pytest.raises(ValueError, match="no link"):
        parse_links("delay", "nowhere:1ms")
    with pytest.raises(ValueError):
        parse_links("loss", "ten")


def test_configurations_are_every_delay_with_every_loss() -> None:
    args = argparse.Namespace(delay=["0", "25ms"], loss=["0", "5%"], jitter="1ms", rate=None)
    confs = configurations(args)
    assert len(confs) == 4
    assert confs[0].impairments == {"ngw-core": {"jitter": 0.001}}
    assert confs[3].impairments == {
        "ngw-core": {"jitter": 0.001, "delay": 0.025},
        "a": {"loss": 0.05},
        "b": {"loss": 0.05},
    }
    assert confs[3].label() == "a 5% loss, b 5% loss, ngw-core 25 ms ±1 ms"
    spec = confs[3].spec("4")
    assert spec.links["ngw-core"].emulated and spec.links["a"].emulated
    assert spec.links["a"].a2b.loss == spec.links["a"].b2a.loss == 0.05
    assert spec.links["ngw-core"].b2a.delay == pytest.approx(0.025)
    assert not spec.links["b"].up and not spec.links["cn-core"].emulated
    plain = Configuration().spec("split")
    assert plain.family == "split"
    assert plain.links["a"].emulated and plain.links["b"].emulated
    assert plain.links["a"].a2b.transparent and plain.links["b"].b2a.transparent


def test_table_shows_ratios_to_mpa() -> None:
    def summary(outage: float) -> dict[str, object]:
        stats = {"n": 1, "median": outage, "p95": outage, "low": outage, "high": outage}
        return {"runs": 1, "ok": 1, "outage": stats, "errors": []}

    text = table(
        "no added delay",
        {"mpa": summary(0.005), "charon-reauth": summary(0.120), "mobike": {}},
        {"mobike": "not yet"},
    )
    rows = {line.split()[0]: line for line in text.splitlines()[3:]}
    assert rows["mpa"].split()[2:6] == ["5.0", "5.0", "5.0-5.0", "1.0"]
    assert rows["charon-reauth"].split()[2:6] == ["120.0", "120.0", "120.0-120.0", "24.0"]
    assert "not available: not yet" in rows["mobike"]


def test_a_silence_before_the_event_is_not_the_handover_s() -> None:
    # The flow starts late (a neighbour resolved after 300 ms) and the handover costs
    # 20 ms: the outage is the silence that ends after the event.
    sent, forward, reverse = _flow(2000, set(range(0, 300)) | set(range(1000, 1020)))
    sample = measure("x", 0, FlowLog(INTERVAL, sent, forward, reverse), 100.0, None, [])
    assert sample.outage_forward == pytest.approx(0.021, abs=1e-9)
    assert sample.lost_forward == 320


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_heartbeat_tells_when_the_flow_works_both_ways() -> None:
    """A run waits for the flow after the method is done (``wait_for_flow``): on loopback
    a flow that echoes is back at once, one whose reflector never echoes is not."""
    from mpa_bench.handover_methods import wait_for_flow

    echoing = ProbeFlow([], [], "127.0.0.1", port=_free_udp_port(), heartbeat=0.02)
    silent = ProbeFlow([], [], "127.0.0.1", port=_free_udp_port(), heartbeat=0.02, echo=False)
    with echoing, silent:
        since = time.monotonic()
        assert wait_for_flow([echoing], since, since + 5.0)
        told = echoing.last_echo()
        assert told is not None and told > since
        assert not wait_for_flow([silent], since, time.monotonic() + 0.3)
        assert silent.last_echo() is None
        log = echoing.stop()
    assert any(abs(a.received - told) < 1e-9 for a in log.reverse)


def test_a_flow_stops_once_its_echoes_have_caught_up() -> None:
    """Before a flow stops, its echoes catch up with what it sent (``catch_up``): a
    flow that echoes has echoed probes sent a moment ago; one that never echoes waits
    out the limit, and its echoed probe stays unknown."""
    from mpa_bench.handover_methods import catch_up

    echoing = ProbeFlow([], [], "127.0.0.1", port=_free_udp_port(), heartbeat=0.02)
    silent = ProbeFlow([], [], "127.0.0.1", port=_free_udp_port(), heartbeat=0.02, echo=False)
    with echoing, silent:
        time.sleep(0.2)
        started = time.monotonic()
        assert catch_up([echoing], 0.3, 5.0)
        probe = echoing.echoed_probe()
        assert probe is not None and probe >= started - 0.3
        started = time.monotonic()
        assert not catch_up([silent], 0.3, 0.4)
        assert time.monotonic() - started >= 0.4
        assert silent.echoed_probe() is None
        log = echoing.stop()
    assert any(abs(sent - probe) < 1e-9 for _, sent in log.sent)


def test_idle_is_the_longest_silence_before_the_event() -> None:
    # 30 probes lost half a second before the event (a stalled machine), 20 at it: the
    # handover's outage is its own, the stall before it is the idle figure.
    sent, forward, reverse = _flow(2000, set(range(500, 530)) | set(range(1000, 1020)))
    sample = measure("x", 0, FlowLog(INTERVAL, sent, forward, reverse), 100.0, None, [])
    assert sample.outage_forward == pytest.approx(0.021, abs=1e-9)
    assert sample.idle == pytest.approx(0.031, abs=1e-9)
    assert sample.to_json()["idle_s"] == sample.idle
    assert summarise([sample])["idle"]["median"] == pytest.approx(0.031, abs=1e-9)
