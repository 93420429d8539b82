"""The README's main job, deploy/demo.sh, as a newcomer runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.usefixtures("netns_env")
def test_demo_hands_over_with_the_flow_going_on() -> None:
    result = subprocess.run(
        [str(ROOT / "deploy" / "demo.sh"), "--eap", "md5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ngw: pre-authenticated, address 10.2.0." in result.stdout
    assert "handover: ngw: moved to 10.2.0." in result.stdout
    assert "the flow went on through the handover" in result.stdout
