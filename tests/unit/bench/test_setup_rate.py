"""mpa-bench setup-rate: its statistics, the shape of its JSON and its options."""

from __future__ import annotations

import json
import math

import pytest

from mpa_bench import cli as bench
from mpa_bench import setup_rate
from mpa_bench.setup_rate_stats import (
    FIGURES,
    GatewayResult,
    Phase,
    count_between,
    cpu_seconds,
    kib_per_sa,
    percentile,
    rate_between,
    report,
    result,
    rss_kib,
    run_queue_wait,
    table,
)

# proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
# cmajflt utime stime cutime cstime ...; a comm with a space and a parenthesis.
STAT = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 7 3 20 0 3 0"


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_rate_counts_the_window_half_open() -> None:
    times = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert count_between(times, 1.0, 3.0) == 4  # 1.0 in, 3.0 out
    assert rate_between(times, 1.0, 3.0) == 2.0
    with pytest.raises(ValueError):
        rate_between(times, 2.0, 2.0)


def test_cpu_seconds_are_utime_and_stime_after_the_comm() -> None:
    assert cpu_seconds(STAT, ticks=100) == 3.0  # (250 + 50) / 100; children's 7 + 3 not


def test_rss_is_vmrss_in_kib() -> None:
    assert rss_kib("Name:\tcharon\nVmHWM:\t  20000 kB\nVmRSS:\t   12288 kB\n") == 12288
    with pytest.raises(ValueError):
        rss_kib("Name:\tkthreadd\n")


def test_run_queue_wait_sums_the_threads() -> None:
    assert run_queue_wait(["100 2000000000 5\n", "7 500000000 1\n"]) == 2.5


def test_kib_per_sa() -> None:
    assert kib_per_sa(10_000, 30_000, 2000) == 10.0
    assert math.isnan(kib_per_sa(10_000, 10_000, 0))


def phase(completions: list[float], latencies: list[float], cpu: float) -> Phase:
    return Phase(
        start=10.0,
        end=20.0,
        completions=completions,
        latencies=latencies,
        gateway_cpu=cpu,
        initiator_cpu=5.0,
        gateway_wait=0.5,
    )


def gateway(rate: int, cpu: float, kib: tuple[int, int, int]) -> GatewayResult:
    # ``rate`` completions a second in the window, some before and after it
    completions = [5.0, *(10 + n / rate for n in range(10 * rate)), 20.0, 21.0]
    saturated = phase(completions, [], cpu)
    latency = phase([], [0.010, 0.020, 0.030, 0.040], 0.0)
    return result(saturated, latency, rate / 2, kib, failed=1)


def test_result_takes_rate_and_cpu_from_the_window() -> None:
    figures = gateway(100, 8.0, (40_000, 60_000, 2000))
    assert figures.sa_per_second == 100.0
    assert figures.cpu_s_per_sa == pytest.approx(8.0 / 1000)
    assert figures.kib_per_sa == 10.0
    assert figures.p50_ms == pytest.approx(25.0)
    assert figures.p99_ms == pytest.approx(39.7)
    assert figures.half_rate == 50.0
    assert figures.gateway_load == pytest.approx(0.8)
    assert figures.gateway_waiting == pytest.approx(0.05)
    assert figures.initiator_load == pytest.approx(0.5)
    assert figures.saturated  # 0.8 busy + 0.05 waiting
    assert not gateway(100, 2.0, (1, 2, 1)).saturated


def test_json_holds_each_gateway_its_ratios_to_charon_and_the_setup() -> None:
    figures = {
        "mpa-gateway": gateway(100, 8.0, (40_000, 60_000, 2000)),
        "charon": gateway(200, 4.0, (10_000, 20_000, 2000)),
    }
    document = json.loads(json.dumps(report(figures, {"hold": 2000})))
    for name in ("mpa-gateway", "charon"):
        for key in ("sa_per_second", "cpu_s_per_sa", "kib_per_sa", "p50_ms", "p99_ms"):
            assert isinstance(document["gateways"][name][key], float)
    mpa = document["ratio_to_charon"]["mpa-gateway"]
    assert set(mpa) == set(FIGURES)
    assert mpa["sa_per_second"] == pytest.approx(0.5)
    assert mpa["cpu_s_per_sa"] == pytest.approx(4.0)
    assert mpa["kib_per_sa"] == pytest.approx(2.0)
    assert document["ratio_to_charon"]["charon"]["sa_per_second"] == 1.0
    assert document["gateways"]["charon"]["saturated"] is False
    assert document["setup"] == {"hold": 2000}


def test_json_has_null_for_a_figure_it_could_not_take() -> None:
    figures = {"charon": gateway(100, 8.0, (1, 1, 0))}
    text = json.dumps(report(figures, {}), allow_nan=False)
    assert json.loads(text)["gateways"]["charon"]["kib_per_sa"] is None


def test_table_shows_ratios_and_who_was_not_saturated() -> None:
    text = table(
        {
            "mpa-gateway": gateway(100, 8.0, (40_000, 60_000, 2000)),
            "charon": gateway(200, 4.0, (10_000, 20_000, 2000)),
        }
    )
    assert "IKE SAs/s at saturation" in text
    [row] = [line for line in text.splitlines() if line.startswith("gateway CPU ms per SA")]
    assert row.split()[-4:] == ["8.000", "4.00", "2.000", "1.00"]
    assert "charon: its core was not the limit" in text


def test_cpu_per_sa_in_units_of_the_reference_work() -> None:
    """mpa-gateway took 8 ms per SA while the reference work took 100 ms; charon 2 ms on
    a core that had become twice as slow (200 ms): 4x raw, 8x on the same footing."""
    mpa = gateway(100, 8.0, (40_000, 60_000, 2000))
    charon = gateway(200, 4.0, (10_000, 20_000, 2000))
    mpa.reference_ms, charon.reference_ms = (90.0, 110.0), (200.0, 200.0)
    assert mpa.cpu_per_sa_in_reference == pytest.approx(0.08)
    document = json.loads(json.dumps(report({"mpa-gateway": mpa, "charon": charon}, {})))
    assert document["ratio_to_charon"]["mpa-gateway"]["cpu_s_per_sa"] == 4.0
    assert document["ratio_to_charon"]["mpa-gateway"]["cpu_per_sa_in_reference"] == 8.0
    assert document["gateways"]["mpa-gateway"]["reference_ms"] == [90.0, 110.0]
    text = table({"mpa-gateway": mpa, "charon": charon})
    [row] = [line for line in text.splitlines() if line.startswith("  in reference work units")]
    assert row.split()[-4:] == ["0.0800", "8.00", "0.0100", "1.00"]
    [row] = [line for line in text.splitlines() if line.startswith("reference work before")]
    assert row.split()[-2:] == ["90.0/110.0", "200.0/200.0"]


def test_without_the_reference_work_its_figures_are_missing() -> None:
    figures = gateway(100, 8.0, (40_000, 60_000, 2000))
    assert math.isnan(figures.cpu_per_sa_in_reference)
    document = json.loads(json.dumps(report({"charon": figures}, {}), allow_nan=False))
    assert document["gateways"]["charon"]["reference_ms"] == [None, None]


def test_the_reference_work_takes_cpu_on_the_cores_named() -> None:
    assert 1.0 < setup_rate.reference_ms(frozenset({0})) < 5000.0


def test_the_command_is_listed_and_its_defaults_fit_the_issue() -> None:
    assert bench.COMMANDS["setup-rate"][0] == "mpa_bench.setup_rate"
    args = setup_rate.build_parser().parse_args([])
    assert (args.proposal, args.hold, args.gateway_cpu, args.initiator_cpus) == (
        "x25519-ecdsa",
        10000,
        "0",
        "1",
    )
    assert setup_rate.settings(args).traced
    assert not setup_rate.settings(setup_rate.build_parser().parse_args(["--no-traced"])).traced


def test_users_cover_the_held_sas_and_the_loops() -> None:
    args = setup_rate.build_parser().parse_args(["--initiators", "3", "--hold", "10000"])
    setup = setup_rate.settings(args)
    assert setup.block * setup.initiators == setup.users
    assert setup.block >= math.ceil(10000 / 3) + setup.concurrency
    assert setup_rate.split(10000, 3) == [3334, 3333, 3333]


def test_cores_are_limited_to_those_usable() -> None:
    import os

    usable = os.sched_getaffinity(0)
    assert setup_rate.cpus(",".join(map(str, usable))) == frozenset(usable)
    with pytest.raises(SystemExit):
        setup_rate.cpus("4096")
