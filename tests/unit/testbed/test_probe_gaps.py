"""The probe's gap analysis on synthetic flows with known gaps (no root needed)."""

from __future__ import annotations

import pytest

from mpa_testbed.probe import Arrival, FlowLog, analyse, gaps

INTERVAL = 0.001
DELAY = 0.0005


def _flow(count: int, missing: set[int], *, start: float = 100.0) -> list[Arrival]:
    return [
        Arrival(seq, start + seq * INTERVAL, start + seq * INTERVAL + DELAY)
        for seq in range(count)
        if seq not in missing
    ]


def test_known_gaps_come_back_exactly() -> None:
    missing = set(range(100, 150)) | set(range(700, 710)) | {999}
    report = gaps(_flow(1000, missing), INTERVAL, expected=range(1000))
    assert report.expected == 1000
    assert report.received == 1000 - 61
    assert report.lost == 61
    assert report.lost_seqs == tuple(sorted(missing))
    assert [(g.before.seq, g.after.seq) for g in report.gaps] == [(99, 150), (699, 710)]
    assert [g.duration for g in report.gaps] == pytest.approx([0.051, 0.011], abs=1e-9)
    assert [g.lost for g in report.gaps] == [50, 10]
    assert report.longest == pytest.approx(0.051, abs=1e-9)
    assert report.longest_gap is not None and report.longest_gap.before.seq == 99
    assert report.delay_median == pytest.approx(DELAY)
    assert [a.seq for a in report.timeline] == sorted(set(range(1000)) - missing)


def test_no_gap_in_a_regular_flow() -> None:
    report = gaps(_flow(500, set()), INTERVAL)
    assert report.lost == 0
    assert report.gaps == ()
    assert report.longest == pytest.approx(INTERVAL, abs=1e-9)


def test_default_expectation_and_threshold() -> None:
    # Without `expected`, 0..max seq are expected; a 2-interval silence is not listed.
    report = gaps(_flow(20, {0, 5}), INTERVAL)
    assert report.lost_seqs == (0, 5)
    assert report.gaps == ()
    assert report.longest == pytest.approx(2 * INTERVAL, abs=1e-9)
    listed = gaps(_flow(20, {5}), INTERVAL, threshold=1.5 * INTERVAL)
    assert [(g.before.seq, g.after.seq) for g in listed.gaps] == [(4, 6)]


def test_duplicates_and_reordering() -> None:
    flow = _flow(10, set())
    late = Arrival(3, flow[3].sent, flow[9].received + 0.0001)  # a duplicate, late
    swapped = [*flow[:4], flow[5], flow[4], *flow[6:], late]
    report = gaps(swapped, INTERVAL)
    assert report.received == 10
    assert report.lost == 0
    assert all(g.lost == 0 for g in report.gaps)


def test_empty_flow() -> None:
    report = gaps([], INTERVAL, expected=range(5))
    assert report.lost == 5
    assert report.longest == 0.0
    assert report.longest_gap is None
    assert report.delay_median is None


def test_both_directions() -> None:
    sent = [(seq, 100.0 + seq * INTERVAL) for seq in range(300)]
    forward = _flow(300, set(range(50, 60)))
    # Echoes leave the reflector as the probes arrive; 20 more are lost on the way back.
    reverse = [
        Arrival(a.seq, a.received, a.received + DELAY) for a in forward if not 200 <= a.seq < 220
    ]
    report = analyse(FlowLog(INTERVAL, sent, forward, reverse))
    assert report.forward.lost_seqs == tuple(range(50, 60))
    assert report.forward.longest == pytest.approx(0.011, abs=1e-9)
    # Reverse losses count only what reached the reflector.
    assert report.reverse.expected == 290
    assert report.reverse.lost_seqs == tuple(range(200, 220))
    assert report.reverse.longest == pytest.approx(0.021, abs=1e-9)
    assert report.summary()["forward"]["lost"] == 10


def test_a_flow_that_never_recovers_shows_its_trailing_silence() -> None:
    arrivals = _flow(1000, set(range(400, 1000)))
    last_sent = 100.0 + 999 * INTERVAL
    report = gaps(arrivals, INTERVAL, expected=range(1000), last_sent=last_sent)
    assert report.lost == 600
    assert report.trailing == pytest.approx(0.600, abs=1e-9)
    assert report.longest == pytest.approx(0.600, abs=1e-9)
    assert report.longest_gap is not None
    assert report.longest_gap.duration == pytest.approx(INTERVAL, abs=1e-9)
    # A flow whose last packets arrived has no trailing silence.
    assert gaps(_flow(1000, set()), INTERVAL, last_sent=last_sent).trailing == 0.0


def test_flow_log_round_trips_through_json() -> None:
    log = FlowLog(INTERVAL, [(0, 1.0), (1, 1.001)], _flow(2, set()), _flow(1, set()), 3)
    assert FlowLog.from_json(log.to_json()) == log
    assert analyse(log).forward.trailing == 0.0
