"""``mpa-bench handover --datapath xfrm``: one ``mpa`` run on the testbed with the
kernel's ESP in both daemons completes, and the gateway's XFRM states moved in place
(the same SPIs, the nCoA as the mobile node's end, the counters going on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = "import sys; from mpa_bench.cli import main; sys.exit(main())"
BENCH_TIMEOUT = 150.0


def test_bench_handover_with_the_xfrm_datapath(tmp_path: Path) -> None:
    out = tmp_path / "handover.json"
    # Probes every 10 ms, not 1: a user-mode kernel's one CPU carries the flow, both
    # daemons, the capture and the link emulator, and at 1 ms it falls seconds behind.
    args = ["handover", "--datapath", "xfrm", "--methods", "mpa", "--runs", "1"]
    args += ["--probe-interval", "10"]
    proc = subprocess.run(
        [sys.executable, "-c", BENCH, *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["environment"]["options"]["datapath"] == "xfrm"
    (sample,) = data["configurations"][0]["samples"]["mpa"]
    assert sample["ok"], sample["error"]
    assert sample["outage_s"] is not None and sample["outage_s"] < 5.0
    ncoa = sample["extra"]["ncoa"]
    assert sample["extra"]["answer"].startswith(f"ngw: moved to {ncoa} on mn-b")
    states = sample["extra"]["xfrm_states"]
    before = {s["spi"]: s for s in states["before"]}
    after = {s["spi"]: s for s in states["after"]}
    assert len(before) == 2 and set(after) == set(before), states
    assert all(state["packets"] > 0 for state in before.values()), states  # the flow on A
    for spi, state in after.items():
        assert ncoa in (state["src"], state["dst"]), state
        assert ncoa not in (before[spi]["src"], before[spi]["dst"]), before[spi]
        assert state["packets"] > before[spi]["packets"], (before[spi], state)
