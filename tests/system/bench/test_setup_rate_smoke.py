"""mpa-bench setup-rate, small: two initiators against mpa-gateway and charon.

Every phase runs (memory, saturation, latency, mpa-gateway's traced memory) for a second
or two, with a few IKE SAs each; the JSON holds both gateways' figures and their ratios,
nothing failed, and no namespace of the run is left.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mpa_bench import setup_rate
from mpa_harness import guards
from mpa_harness.charon import require_charon
from mpa_harness.netns import TAG

pytestmark = [pytest.mark.netns, pytest.mark.charon]


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in listed.stdout.splitlines() if TAG in line}


@pytest.mark.timeout(120)
def test_small_run_against_both_gateways(tmp_path: Path) -> None:
    guards.require(guards.namespaces_unavailable(), "the set-up rate benchmark")
    require_charon()
    out = tmp_path / "rate.json"
    code = setup_rate.main(
        [
            "--initiators", "2",
            "--concurrency", "4",
            "--hold", "20",
            "--warmup", "0.5",
            "--duration", "1.5",
            "--latency-duration", "1.5",
            "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    document = json.loads(out.read_text())
    for name in ("mpa-gateway", "charon"):
        figures = document["gateways"][name]
        assert figures["sa_per_second"] > 1
        assert 0 < figures["cpu_s_per_sa"] < 1
        assert figures["held"] == 20
        assert figures["kib_per_sa"] is not None
        assert figures["latency_samples"] > 0
        assert figures["p50_ms"] <= figures["p99_ms"]
        assert figures["failed"] == 0
    assert document["gateways"]["mpa-gateway"]["traced_kib_per_sa"] > 1
    assert document["gateways"]["charon"]["traced_kib_per_sa"] is None
    assert document["ratio_to_charon"]["charon"]["sa_per_second"] == 1.0
    assert document["ratio_to_charon"]["mpa-gateway"]["cpu_s_per_sa"] > 0
    assert document["setup"]["datapaths"] == {
        "mpa-gateway": "userspace",
        "charon": "kernel-libipsec",
    }
    assert not namespaces()
