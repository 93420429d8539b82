"""Fixtures of the XFRM tests: a private network namespace for the kernel tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from mpa_harness import guards
from mpa_harness.netns import Netns, netns


@pytest.fixture
def xfrm_netns() -> Iterator[Netns]:
    """A fresh namespace, deleted afterwards; skip without root, but fail when CI=true."""
    guards.require(guards.namespaces_unavailable(), "the XFRM namespace tests")
    with netns("xf") as ns:
        yield ns
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert ns.name not in listed.stdout.split(), f"namespace {ns.name} left behind"
