"""The emulator's admission and scheduling arithmetic, without devices (no root needed)."""

from __future__ import annotations

import pytest

from mpa_testbed.linkemu import (
    Impairment,
    LinkDirection,
    LinkSpec,
    parse_loss,
    parse_rate,
    parse_time,
)


def _direction(imp: Impairment, seed: int = 3) -> LinkDirection:
    return LinkDirection("l/a2b", -1, -1, imp, seed)


def test_units() -> None:
    assert parse_time("20ms") == pytest.approx(0.02)
    assert parse_time("500us") == pytest.approx(0.0005)
    assert parse_time("1.5s") == 1.5
    assert parse_time(0.25) == 0.25
    assert parse_rate("10mbit") == 10e6
    assert parse_rate("512kbit") == 512e3
    assert parse_rate("1g") == 1e9
    assert parse_loss("1%") == pytest.approx(0.01)
    assert parse_loss("0.2") == 0.2
    for bad in ("20 parsecs", "fast", "-1ms"):
        with pytest.raises(ValueError):
            parse_time(bad)
    with pytest.raises(ValueError):
        Impairment(loss=1.5)
    with pytest.raises(ValueError):
        Impairment().updated(colour="blue")


def test_updated_parses_and_keeps_the_rest() -> None:
    imp = Impairment(delay=0.01).updated(loss="5%", rate="1mbit")
    assert imp == Impairment(delay=0.01, loss=0.05, rate=1e6)
    assert Impairment().transparent and not imp.transparent


def test_delay_only() -> None:
    d = _direction(Impairment(delay=0.02))
    assert d.admit(100, 10.0) == pytest.approx(10.02)
    assert d.admit(100, 10.001) == pytest.approx(10.021)


def test_rate_serializes_back_to_back_frames() -> None:
    # 1250-byte frames take 10 ms each at 1 Mbit/s; a burst leaves 10 ms apart.
    d = _direction(Impairment(delay=0.005, rate=1e6, queue=5000))
    dues = [d.admit(1250, 0.0) for _ in range(6)]
    assert dues[:5] == pytest.approx([0.015, 0.025, 0.035, 0.045, 0.055])
    assert dues[5] is None  # 5000 bytes already wait: tail drop
    assert d.stats.queue_drops == 1
    assert d.admit(1250, 1.0) == pytest.approx(1.015)  # an idle link starts afresh


def test_jitter_stays_in_bounds_and_in_order() -> None:
    d = _direction(Impairment(delay=0.01, jitter=0.004))
    dues = [d.admit(100, t * 0.001) for t in range(2000)]
    assert all(due is not None for due in dues)
    values = [due for due in dues if due is not None]
    assert values == sorted(values)
    delays = [due - t * 0.001 for t, due in enumerate(values)]
    assert min(delays) >= 0.006 - 1e-9 and max(delays) <= 0.014 + 1e-9


def test_loss_is_seeded_and_close_to_the_ratio() -> None:
    def losses(seed: int) -> list[int]:
        d = _direction(Impairment(loss=0.1), seed)
        return [i for i in range(10000) if d.admit(100, i * 0.001) is None]

    first = losses(1)
    assert first == losses(1)  # reproducible
    assert first != losses(2)
    assert 900 <= len(first) <= 1100


def test_link_spec_round_trips_through_json() -> None:
    spec = LinkSpec(
        "a", "x", "e0", "y", "e1", Impairment(delay=0.02), Impairment(loss=0.1), False, 9
    )
    assert LinkSpec.from_json(spec.to_json()) == spec
