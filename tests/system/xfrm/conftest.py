"""Fixtures of the XFRM tests: a private network namespace for the kernel tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from mpa_harness.netns import Netns, netns


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace and talk NETLINK_XFRM"
    if shutil.which("ip") is None:
        return "iproute2's ip not found"
    return None


@pytest.fixture
def xfrm_netns() -> Iterator[Netns]:
    """A fresh namespace, deleted afterwards; skip without root, but fail when CI=true."""
    reason = _netns_unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the XFRM namespace tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    with netns("xf") as ns:
        yield ns
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert ns.name not in listed.stdout.split(), f"namespace {ns.name} left behind"
