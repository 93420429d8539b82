"""A NAT's new mapping in a kernel with ESP: XFRM_MSG_MAPPING to the glue, the SA's
encapsulation rewritten.

The left namespace runs the datapath glue over an ``XfrmDatapath`` with an ESP-in-UDP
CHILD SA to the right one, and reads the kernel's XFRM events. The right side's kernel
then sends valid ESP in UDP for that SA from another source port (4501), as a NAT that
changed its mapping of the peer would: the left kernel decrypts it and announces the
mapping, ``XfrmEvents`` reports it (the inbound state, old and new address and port),
the glue asks the core to follow it and the move it gets back
(ChildSaAddressesUpdated, what the core emits for a peer behind a NAT, see
tests/unit/core/test_core_nat_mapping.py) rewrites both states' encapsulation: the
left side's ESP then goes to the new port, the only one the right side still listens on.
"""

from __future__ import annotations

import select
import socket
import time
from typing import cast

from mpa_ike.datagram import Address
from mpa_ike.events import ChildSaAddressesUpdated, ChildSaEstablished
from mpa_ike.io.xfrm import StateMapping, XfrmDatapath, XfrmEvent, XfrmEvents
from mpa_ike.node.datapath import DatapathGlue
from mpa_ike.node.transport import IkeTransport
from tests.system.kernel.conftest import OUTER_LEFT, OUTER_RIGHT
from tests.system.kernel.kernelhelp import Link, ns_socket
from tests.system.kernel.test_xfrm_datapath import (
    CASES,
    SPI_LEFT_IN,
    SPI_RIGHT_IN,
    UDP_ENCAP,
    UDP_ENCAP_ESPINUDP,
    exchange,
    side_params,
)

IKE_SA = bytes.fromhex("00112233aabbccdd")
NEW_PORT = 4501
EVENT_WAIT = 10.0


class CoreStandIn:
    """The transport's side of a mapping: the glue's request is recorded and the core's
    answer for a peer behind a NAT (the IKE SA and its CHILD SA follow) comes back."""

    def __init__(self, glue: DatapathGlue, local: Address) -> None:
        self.glue, self.local = glue, local
        self.asked: list[tuple[bytes, Address]] = []

    @property
    def endpoint(self) -> CoreStandIn:
        return self

    def nat_mapping(self, spi: bytes, new_remote: Address, now: float) -> None:
        self.asked.append((spi, new_remote))
        moved = ChildSaAddressesUpdated(
            spi, "gw", SPI_LEFT_IN, SPI_RIGHT_IN, self.local, new_remote, True
        )
        self.glue.on_event(moved)

    def now(self) -> float:
        return time.monotonic()

    def process(self) -> None:
        pass


def encap_socket(hosts: Link, side: str, port: int) -> socket.socket:
    sock = ns_socket(hosts.left if side == "left" else hosts.right, socket.AF_INET)
    sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
    sock.bind(("0.0.0.0", port))
    return sock


def test_mapping_rewrites_the_encapsulation(hosts: Link) -> None:
    case = CASES["v4-gcm-udp-encap"]
    left, right = OUTER_LEFT[4], OUTER_RIGHT[4]
    glue = DatapathGlue(XfrmDatapath(netns=hosts.left.name, move_method="migrate"), "xfrm")
    stand_in = CoreStandIn(glue, (left, 4500))
    glue.transport = cast(IkeTransport, stand_in)
    seen: list[XfrmEvent] = []

    def heard(event: XfrmEvent) -> None:
        seen.append(event)
        glue.kernel_event(event)

    events = XfrmEvents(heard, netns=hosts.left.name)
    peer = XfrmDatapath(netns=hosts.right.name)
    socks = [encap_socket(hosts, "left", 4500), encap_socket(hosts, "right", 4500)]
    try:
        glue.on_event(ChildSaEstablished(IKE_SA, "gw", side_params(case, True, left, right)))
        peer.install_child_sa(side_params(case, False, right, left))
        assert glue.installed(SPI_LEFT_IN) and glue.errors == 0
        exchange(hosts, case, 3, 3)
        assert seen == []  # the SA's own port: no mapping

        # The peer's NAT maps it to another port: its ESP now comes from 4501.
        socks.append(encap_socket(hosts, "right", NEW_PORT))
        peer.move_child_sa(SPI_RIGHT_IN, SPI_LEFT_IN, (right, NEW_PORT), (left, 4500), True)
        socks.pop(1).close()  # only the new port answers from now on
        exchange(hosts, case, 0, 2)  # right to left: ESP in UDP from right:4501
        deadline = time.monotonic() + EVENT_WAIT
        while not seen and time.monotonic() < deadline:
            select.select([events.fileno()], [], [], 0.2)
            events.read()
        mappings = [e for e in seen if isinstance(e, StateMapping)]
        assert mappings, seen
        mapping = mappings[0]
        assert mapping.key.spi == int.from_bytes(SPI_LEFT_IN, "big")
        assert (mapping.old, mapping.new) == ((right, 4500), (right, NEW_PORT))
        assert stand_in.asked[0] == (IKE_SA, (right, NEW_PORT))
        assert glue.errors == 0

        text = hosts.left.ip("xfrm", "state").stdout
        assert text.count("type espinudp") == 2, text
        assert f"sport 4500 dport {NEW_PORT}" in text and f"sport {NEW_PORT} dport 4500" in text
        # Left to right now reaches the new port (nothing listens on 4500 there).
        exchange(hosts, case, 3, 1)
        print(f"{mapping}\n{text}")
    finally:
        for sock in socks:
            sock.close()
        events.close()
        glue.close()
        peer.flush_own()
        peer.close()
