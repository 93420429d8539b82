"""The kernel group: tests that need ESP in the kernel, run inside user-mode-linux.

The development kernel has XFRM but no ESP states, so these tests run in a UML
kernel booted by ``deploy/uml/run`` (which sets ``MPA_UML=1`` inside). Outside UML
only ``test_in_uml.py`` is collected: it boots the kernel once and runs the rest of
this directory there with pytest. Inside UML only the rest is collected.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.kernel.kernelhelp import Link, linked_namespaces

OUTER = "test_in_uml.py"
# Inner addresses and networks by IP version (see the hosts fixture).
INNER_LEFT = {4: "10.1.0.1", 6: "fd01::1"}
INNER_RIGHT = {4: "10.2.0.1", 6: "fd02::1"}
INNER_NETS = {
    "left": {4: "10.1.0.0/24", 6: "fd01::/64"},
    "right": {4: "10.2.0.0/24", 6: "fd02::/64"},
}
OUTER_LEFT = {4: "192.0.2.1", 6: "2001:db8::1"}
OUTER_RIGHT = {4: "192.0.2.2", 6: "2001:db8::2"}


def inside_uml() -> bool:
    return os.environ.get("MPA_UML") == "1"


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return (collection_path.name == OUTER) == inside_uml()


@pytest.fixture
def hosts() -> Iterator[Link]:
    """Two namespaces on one veth link: 192.0.2.1 and 2001:db8::1 left, .2 and ::2 right.

    Each side also has an inner address on lo, 10.1.0.1 and fd01::1 left, 10.2.0.1 and
    fd02::1 right, routed to the other side's inner network over the link, the way
    a tunnel-mode CHILD SA's traffic selectors see it.
    """

    def lines(
        outer: dict[int, str], inner: dict[int, str], peer: dict[int, str], nets: dict[int, str]
    ) -> list[str]:
        return [
            f"addr add {outer[4]}/24 dev {{dev}}",
            f"addr add {outer[6]}/64 dev {{dev}} nodad",
            f"addr add {inner[4]}/32 dev lo",
            f"addr add {inner[6]}/128 dev lo",
            f"route add {nets[4]} via {peer[4]}",
            f"route add {nets[6]} via {peer[6]}",
        ]

    with linked_namespaces(
        lines(OUTER_LEFT, INNER_LEFT, OUTER_RIGHT, INNER_NETS["right"]),
        lines(OUTER_RIGHT, INNER_RIGHT, OUTER_LEFT, INNER_NETS["left"]),
    ) as link:
        yield link
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in (link.left, link.right):
        assert ns.name not in listed.split(), f"namespace {ns.name} left behind"
