"""The environment itself: an ESP tunnel keyed by hand with ``ip xfrm`` carries UDP.

Independent of the project's code: if this fails, the kernel (modules, algorithms)
is at fault, not the datapath under test. Both algorithm shapes the project
negotiates are checked: AEAD rfc4106(gcm(aes)) with a 128-bit ICV, and cbc(aes)
with hmac(sha256) truncated to 128 bits (RFC 4868).
"""

from __future__ import annotations

import pytest

from mpa_harness.netns import Netns
from tests.system.kernel.conftest import INNER_LEFT, INNER_RIGHT, OUTER_LEFT, OUTER_RIGHT
from tests.system.kernel.kernelhelp import Link, ip_batch, ip_sa_counters, udp_exchange

SPI_TO_RIGHT, SPI_TO_LEFT = 0x1001, 0x1002
ALGORITHMS = {
    "gcm": [["aead", "rfc4106(gcm(aes))", "0x" + "a5" * 20, "128"]],
    "cbc-sha256": [
        ["enc", "cbc(aes)", "0x" + "5a" * 16],
        ["auth-trunc", "hmac(sha256)", "0x" + "c3" * 32, "128"],
    ],
}


def add_tunnel(
    ns: Netns, outer: tuple[str, str], inner: tuple[str, str], spis: tuple[int, int], algs: str
) -> None:
    """Both states and the out/in policies of one side; ``outer``, ``inner`` are (local, remote).

    The same keys serve both directions: the SPIs tell the states apart.
    """
    (local, remote), (spi_out, spi_in) = outer, spis
    keys = " ".join(" ".join(alg) for alg in ALGORITHMS[algs])
    lines = [
        f"xfrm state add src {src} dst {dst} proto esp spi {spi:#x} reqid 7 mode tunnel {keys}"
        for src, dst, spi in ((local, remote, spi_out), (remote, local, spi_in))
    ]
    prefix = "/128" if ":" in inner[0] else "/32"
    for direction, (src, dst), (tsrc, tdst) in (
        ("out", inner, outer),
        ("in", inner[::-1], outer[::-1]),
    ):
        lines.append(
            f"xfrm policy add src {src}{prefix} dst {dst}{prefix} dir {direction} "
            f"tmpl src {tsrc} dst {tdst} proto esp reqid 7 mode tunnel"
        )
    ip_batch(lines, ns)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("algs", list(ALGORITHMS))
def test_hand_keyed_tunnel_carries_udp(hosts: Link, algs: str, version: int) -> None:
    left, right = hosts.left, hosts.right
    outer = (OUTER_LEFT[version], OUTER_RIGHT[version])
    inner = (INNER_LEFT[version], INNER_RIGHT[version])
    add_tunnel(left, outer, inner, (SPI_TO_RIGHT, SPI_TO_LEFT), algs)
    add_tunnel(right, outer[::-1], inner[::-1], (SPI_TO_LEFT, SPI_TO_RIGHT), algs)

    payloads = [b"kernel group %d" % i for i in range(3)]
    assert udp_exchange(left, inner[0], right, inner[1], payloads) == payloads

    sent, received = ip_sa_counters(left)[SPI_TO_RIGHT], ip_sa_counters(right)[SPI_TO_RIGHT]
    assert (sent.src, sent.dst) == outer
    assert sent.packets == received.packets == len(payloads)
    assert sent.bytes == received.bytes > sum(map(len, payloads))
    assert ip_sa_counters(right)[SPI_TO_LEFT].packets == 0
