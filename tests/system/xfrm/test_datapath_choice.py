"""``datapath: auto`` on this kernel: the daemon asks the kernel for a throwaway ESP state
in its own namespace and logs what it chose and why (here XFRM without ESP: userspace;
the kernel group checks the other outcome in user-mode-linux)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mpa_harness.netns import Netns
from mpa_ike.io import xfrm
from tests.servicehelp import Daemon, write_yaml

pytestmark = pytest.mark.netns


def test_auto_resolves_and_says_why(xfrm_netns: Netns) -> None:
    choice = xfrm.choose_datapath("auto", xfrm_netns.name)
    if xfrm.probe_esp(xfrm_netns.name) is None:
        assert str(choice) == "datapath: xfrm (the kernel has ESP)"
    else:
        assert choice.kind == "userspace"
        assert str(choice).startswith("datapath: userspace (the kernel refused an ESP state: ")
    assert xfrm_netns.ip("xfrm", "state").stdout == ""  # the probe left nothing


def test_gateway_logs_its_choice(
    xfrm_netns: Netns, gateway_data: dict[str, Any], short_dir: Path
) -> None:
    expected = str(xfrm.choose_datapath("auto", xfrm_netns.name))
    config = write_yaml(short_dir / "gw.yaml", {**gateway_data, "datapath": "auto"})
    daemon = Daemon(
        "gateway.cli", short_dir / "gw.sock", "-c", config,
        prefix=["ip", "netns", "exec", xfrm_netns.name],
    )  # fmt: skip
    stderr = daemon.stop()
    assert expected in stderr, stderr
    assert xfrm_netns.ip("xfrm", "state").stdout == ""
