"""The figures of ``mpa-bench setup-rate``, from what its phases recorded (pure functions).

Kept apart from the set-up (namespaces, daemons, initiator processes) so that the
arithmetic and the shape of the report are tested without root.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# The keys the report holds for every gateway, and which way is better for each.
FIGURES = (
    "sa_per_second",
    "cpu_s_per_sa",
    "cpu_per_sa_in_reference",
    "kib_per_sa",
    "p50_ms",
    "p99_ms",
)
REFERENCE = "charon"
# Below this share of its core at saturation, the gateway was not the limit (the
# initiators were): its rate is a lower bound, its CPU per SA still holds.
SATURATED = 0.85


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks (numpy's default);
    NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def count_between(times: Iterable[float], start: float, end: float) -> int:
    """How many of ``times`` fall in [start, end)."""
    return sum(1 for t in times if start <= t < end)


def rate_between(times: Iterable[float], start: float, end: float) -> float:
    """Events per second in [start, end)."""
    if end <= start:
        raise ValueError("an empty window")
    return count_between(times, start, end) / (end - start)


def cpu_seconds(stat: str, ticks: int | None = None) -> float:
    """utime + stime of a ``/proc/PID/stat`` line, in seconds (every thread of the
    process; its children's time is not counted)."""
    ticks = ticks or os.sysconf("SC_CLK_TCK")
    # comm (field 2) may hold spaces and parentheses: fields are counted after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / ticks


def rss_kib(status: str) -> int:
    """VmRSS of a ``/proc/PID/status`` text, in KiB."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"VmRSS in {unit}")
            return int(value)
    raise ValueError("no VmRSS line (a zombie or a kernel thread?)")


def run_queue_wait(schedstats: Iterable[str]) -> float:
    """Seconds the threads waited for a core, from their ``/proc/PID/task/TID/schedstat``
    (time on the core, time runnable but waiting, timeslices; nanoseconds)."""
    return sum(int(text.split()[1]) for text in schedstats) / 1e9


@dataclass
class Phase:
    """What the initiators saw in one timed phase, merged over all of them."""

    start: float  # the window the figure is taken over (monotonic seconds)
    end: float
    completions: list[float] = field(default_factory=list)  # times of established SAs
    latencies: list[float] = field(default_factory=list)  # seconds, of SAs in the window
    failed: int = 0
    gateway_cpu: float = 0.0  # CPU seconds of the gateway process over the window
    initiator_cpu: float = 0.0  # of all initiator processes over the window
    gateway_wait: float = 0.0  # seconds the gateway's threads waited for their core

    @property
    def established(self) -> int:
        return count_between(self.completions, self.start, self.end)

    @property
    def rate(self) -> float:
        return rate_between(self.completions, self.start, self.end)

    @property
    def gateway_load(self) -> float:
        """The share of one core the gateway used over the window."""
        return self.gateway_cpu / (self.end - self.start)

    @property
    def initiator_load(self) -> float:
        return self.initiator_cpu / (self.end - self.start)

    @property
    def gateway_waiting(self) -> float:
        """The share of the window the gateway was runnable but not running (its core
        busy with something else: another of its threads, or another program)."""
        return self.gateway_wait / (self.end - self.start)


@dataclass
class GatewayResult:
    """One gateway's figures; NaN where a phase did not give one."""

    sa_per_second: float
    cpu_s_per_sa: float
    kib_per_sa: float
    p50_ms: float
    p99_ms: float
    half_rate: float  # SAs per second offered in the latency phase
    held: int  # IKE SAs (each with one CHILD SA) in the memory phase
    rss_before_kib: int
    rss_held_kib: int
    gateway_load: float  # share of its core at saturation
    initiator_load: float  # share of a core used by all initiators at saturation
    gateway_waiting: float  # share of the saturation window it waited for its core
    failed: int  # IKE SAs that did not come up, all phases
    latency_samples: int
    hold_seconds: float = math.nan  # how long the held SAs took to come up
    traced_kib_per_sa: float = math.nan  # tracemalloc's growth per held SA (mpa-gateway)
    # CPU ms of the reference work on the gateway's core before saturation, after latency
    reference_ms: tuple[float, float] = (math.nan, math.nan)

    @property
    def cpu_per_sa_in_reference(self) -> float:
        """CPU per IKE SA in units of the reference work (the mean of its two runs): less
        moved than the CPU itself by the machine's changes of speed between runs and
        gateways, as far as two snapshots of that speed tell."""
        reference = sum(self.reference_ms) / 2
        return ratio(self.cpu_s_per_sa * 1000, reference)

    @property
    def saturated(self) -> bool:
        """Whether the gateway's core was the limit of the saturation phase."""
        return self.gateway_load + self.gateway_waiting >= SATURATED


def saturation(phase: Phase) -> tuple[float, float]:
    """(IKE SAs per second, gateway CPU seconds per IKE SA) of the saturation phase."""
    established = phase.established
    per_sa = phase.gateway_cpu / established if established else math.nan
    return phase.rate, per_sa


def latency_ms(phase: Phase) -> tuple[float, float]:
    """(p50, p99) of the set-up latencies, in milliseconds."""
    ms = [v * 1000 for v in phase.latencies]
    return percentile(ms, 50), percentile(ms, 99)


def kib_per_sa(rss_before: int, rss_held: int, held: int) -> float:
    """RSS growth per held IKE SA (KiB); NaN for none held."""
    return (rss_held - rss_before) / held if held else math.nan


def result(
    rate_phase: Phase,
    latency_phase: Phase,
    half_rate: float,
    memory: tuple[int, int, int],
    failed: int,
) -> GatewayResult:
    """A gateway's figures from its saturation and latency phases and ``memory``
    (RSS before, RSS with the SAs held, SAs held)."""
    rate, per_sa = saturation(rate_phase)
    p50, p99 = latency_ms(latency_phase)
    before, held_rss, held = memory
    return GatewayResult(
        sa_per_second=rate,
        cpu_s_per_sa=per_sa,
        kib_per_sa=kib_per_sa(before, held_rss, held),
        p50_ms=p50,
        p99_ms=p99,
        half_rate=half_rate,
        held=held,
        rss_before_kib=before,
        rss_held_kib=held_rss,
        gateway_load=rate_phase.gateway_load,
        initiator_load=rate_phase.initiator_load,
        gateway_waiting=rate_phase.gateway_waiting,
        failed=failed,
        latency_samples=len(latency_phase.latencies),
    )


def ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN when either is missing or the reference is 0."""
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return math.nan
    return value / reference


def report(gateways: Mapping[str, GatewayResult], setup: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--json`` document: every gateway's figures, their ratios to charon's, the
    set-up. NaN becomes null (JSON has no NaN)."""
    reference = gateways.get(REFERENCE)
    out: dict[str, Any] = {"gateways": {}, "ratio_to_charon": {}, "setup": dict(setup)}
    for name, figures in gateways.items():
        out["gateways"][name] = {k: _json_number(v) for k, v in asdict(figures).items()}
        out["gateways"][name]["saturated"] = figures.saturated
        out["gateways"][name]["cpu_per_sa_in_reference"] = _json_number(
            figures.cpu_per_sa_in_reference
        )
        if reference is not None:
            out["ratio_to_charon"][name] = {
                k: _json_number(ratio(getattr(figures, k), getattr(reference, k))) for k in FIGURES
            }
    return out


def _json_number(value: object) -> object:
    if isinstance(value, tuple):
        return [_json_number(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table(gateways: Mapping[str, GatewayResult]) -> str:
    """The figures as a text table, each beside its ratio to charon's."""
    reference = gateways.get(REFERENCE)
    rows = [
        ("IKE SAs/s at saturation", "sa_per_second", "{:.1f}"),
        ("gateway CPU ms per SA", "cpu_s_per_sa", "{:.3f}"),
        ("  in reference work units", "cpu_per_sa_in_reference", "{:.4f}"),
        ("KiB per held SA (RSS)", "kib_per_sa", "{:.1f}"),
        ("KiB per held SA (tracemalloc)", "traced_kib_per_sa", "{:.1f}"),
        ("p50 set-up at half rate, ms", "p50_ms", "{:.1f}"),
        ("p99 set-up at half rate, ms", "p99_ms", "{:.1f}"),
    ]
    names = list(gateways)
    head = f"{'':<30}" + "".join(f"{n:>14}{'x charon':>10}" for n in names)
    lines = [head]
    for label, key, fmt in rows:
        line = f"{label:<30}"
        for name in names:
            value = getattr(gateways[name], key)
            shown = value * 1000 if key == "cpu_s_per_sa" else value
            x = ratio(value, getattr(reference, key)) if reference else math.nan
            line += f"{_fmt(fmt, shown):>14}{_fmt('{:.2f}', x):>10}"
        lines.append(line)
    extra: list[tuple[str, str | None, str]] = [
        ("offered in latency phase, SA/s", "half_rate", "{:.1f}"),
        ("gateway core busy at saturation", "gateway_load", "{:.0%}"),
        ("gateway waiting for its core", "gateway_waiting", "{:.0%}"),
        ("initiator core busy at saturation", "initiator_load", "{:.0%}"),
        ("held SAs (memory)", "held", "{}"),
        ("seconds to set them up", "hold_seconds", "{:.1f}"),
        ("RSS before / held, MiB", None, ""),
        ("reference work before/after, ms", "reference_ms", ""),
        ("failed set-ups", "failed", "{}"),
    ]
    limited = [n for n in names if not gateways[n].saturated]
    for label, attribute, form in extra:
        line = f"{label:<30}"
        for name in names:
            figures = gateways[name]
            if attribute is None:
                text = f"{figures.rss_before_kib / 1024:.1f}/{figures.rss_held_kib / 1024:.1f}"
            elif attribute == "reference_ms":
                text = "/".join(_fmt("{:.1f}", ms) for ms in figures.reference_ms)
            else:
                text = _fmt(form, getattr(figures, attribute))
            line += f"{text:>14}{'':>10}"
        lines.append(line.rstrip())
    for name in limited:
        lines.append(
            f"{name}: its core was not the limit at saturation (the initiators were): "
            "its SAs/s is a lower bound, CPU per SA holds"
        )
    return "\n".join(lines)


def _fmt(fmt: str, value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)
