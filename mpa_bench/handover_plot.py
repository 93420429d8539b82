"""``mpa-bench handover --plot``: probe arrivals around the handover, and outage spread.

One column per configuration. A row per method shows its median run (the run whose
outage is the median): every probe's one-way delay against its arrival time from the
link event, correspondent to MN and back, with the link-up time, the MN's first IKE
message and the answer marked. The last row shows each method's outages over all runs
(box and points, logarithmic).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpa_bench.handover_measure import Sample

if TYPE_CHECKING:
    from mpa_bench.handover import Result

WINDOW_BEFORE = 0.02  # seconds shown before the link event
COLOURS = {
    "mpa": "tab:green",
    "mobike": "tab:olive",
    "reactive": "tab:orange",
    "charon-mobike": "tab:blue",
    "charon-reauth": "tab:purple",
    "mpa-cli": "tab:cyan",
}


def median_run(samples: Sequence[Sample]) -> Sample | None:
    good = sorted((s for s in samples if s.ok and s.flow is not None), key=lambda s: s.outage or 0)
    return good[(len(good) - 1) // 2] if good else None


def plot(results: Sequence[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in results[0].samples if any(r.samples.get(m) for r in results)]
    rows, cols = len(methods) + 1, len(results)
    fig, axes = plt.subplots(
        rows, cols, figsize=(6.5 * cols, 1.9 * rows + 2.2), squeeze=False, layout="constrained"
    )
    for col, result in enumerate(results):
        runs = {m: median_run(result.samples.get(m, [])) for m in methods}
        longest = max((s.outage or 0 for s in runs.values() if s is not None), default=0.1)
        end = longest * 1.15 + 0.02
        for row, method in enumerate(methods):
            ax = axes[row][col]
            _timeline(ax, method, runs[method], end)
            if row == 0:
                ax.set_title(result.configuration.label(), fontsize=10)
        _distribution(axes[-1][col], methods, result.samples)
    fig.suptitle("mpa-bench handover: probe arrivals around the link event (median run)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _timeline(ax: Any, method: str, sample: Sample | None, end: float) -> None:
    ax.set_xlim(-WINDOW_BEFORE * 1e3, end * 1e3)
    ax.set_ylabel(f"{method}\ndelay ms", fontsize=8)
    ax.tick_params(labelsize=7)
    if sample is None or sample.flow is None:
        ax.text(0.5, 0.5, "no completed run", transform=ax.transAxes, ha="center", fontsize=8)
        return
    t0 = sample.t0
    for arrivals, colour, label in (
        (sample.flow.forward, COLOURS.get(method, "k"), "CN to MN"),
        (sample.flow.reverse, "grey", "MN to CN"),
    ):
        shown = [a for a in arrivals if -WINDOW_BEFORE <= a.received - t0 <= end]
        ax.plot(
            [(a.received - t0) * 1e3 for a in shown],
            [a.delay * 1e3 for a in shown],
            ".",
            markersize=2,
            color=colour,
            label=label,
        )
    line = sample.timeline
    marks = (
        (0.0, "k", "link event"),
        (line.link_up, "tab:gray", "link up"),
        (line.ike_first, "tab:red", "first IKE"),
        (line.ike_answer, "tab:cyan", "answer"),
    )
    for at, colour, label in marks:
        if at is not None:
            ax.axvline(at * 1e3, color=colour, linestyle="--", linewidth=0.8, label=label)
    ax.text(
        0.99,
        0.9,
        f"outage {(sample.outage or 0) * 1e3:.1f} ms",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
    )
    ax.legend(fontsize=6, loc="center right", ncol=2)
    ax.set_xlabel("ms from the link event", fontsize=7)


def _distribution(ax: Any, methods: Sequence[str], samples: dict[str, list[Sample]]) -> None:
    data = [[(s.outage or 0) * 1e3 for s in samples.get(m, []) if s.ok] for m in methods]
    shown = [(m, d) for m, d in zip(methods, data, strict=True) if d]
    if not shown:
        return
    ax.boxplot([d for _, d in shown], showfliers=False)
    jitter = random.Random(1)
    for i, (method, values) in enumerate(shown, start=1):
        xs = [i + jitter.uniform(-0.15, 0.15) for _ in values]
        ax.plot(xs, values, ".", color=COLOURS.get(method, "k"), markersize=4)
    ax.set_xticks(range(1, len(shown) + 1), [m for m, _ in shown], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("outage ms (all runs)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, axis="y", which="both", alpha=0.3)
