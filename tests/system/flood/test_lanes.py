"""The kernel's steering of a responder's two receive queues (mpa_ike.node.lanes) on
the IKE ports themselves, 500 and 4500, between two namespaces: a new IKE_SA_INIT
waits in the bulk lane with a flood's, what follows it in a handshake (the request
returning a COOKIE, any message naming the responder's SPI) and ESP in UDP go to the
priority lane."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from mpa_bench import flood_sender
from mpa_bench.fuzz_mobile import inside
from mpa_harness import guards
from mpa_harness.netns import TwoHosts, two_hosts
from mpa_ike.constants import NON_ESP_MARKER
from mpa_ike.node import lanes
from mpa_ike.wire import Message, parse_message, serialize_message
from mpa_ike.wire.notify import cookie_notify

pytestmark = [pytest.mark.netns]

SENDER, RESPONDER = "192.0.2.1", "192.0.2.2"


def messages() -> dict[str, tuple[bytes, int]]:
    init = flood_sender.init_request(RESPONDER, "aes128-sha256-x25519")
    message = parse_message(init)
    cookie = (cookie_notify(b"\x00" + bytes(32)), *message.payloads)  # §2.6: first
    with_cookie = serialize_message(Message(message.header, cookie))
    known_spi = init[:8] + b"\x11" * 8 + init[16:18] + bytes([35]) + init[19:]  # IKE_AUTH
    return {
        "new IKE_SA_INIT": (init, lanes.BULK),
        "IKE_SA_INIT with COOKIE": (with_cookie, lanes.PRIORITY),
        "known SPI": (known_spi, lanes.PRIORITY),
    }


@pytest.fixture(scope="module")
def hosts() -> Iterator[TwoHosts]:
    guards.require(guards.namespaces_unavailable(), "the lanes of the IKE ports")
    with two_hosts(left_addrs=(f"{SENDER}/24",), right_addrs=(f"{RESPONDER}/24",)) as found:
        yield found


def landed(hosts: TwoHosts, port: int, payloads: list[bytes]) -> list[list[bytes]]:
    """Send ``payloads`` to the responder's ``port``; what each lane read."""
    local = (RESPONDER, port)
    with inside(hosts.right.name):
        opened = lanes.open_lanes(local, socket.AF_INET, lambda sock: None)
    with inside(hosts.left.name):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert opened.priority is not None, "the kernel refused the steering program"
    found: list[list[bytes]] = [[], []]
    try:
        for payload in payloads:
            sender.sendto(payload, local)
        deadline = time.monotonic() + 2
        while sum(map(len, found)) < len(payloads) and time.monotonic() < deadline:
            for lane, sock in ((lanes.BULK, opened.bulk), (lanes.PRIORITY, opened.priority)):
                sock.setblocking(False)
                try:
                    found[lane].append(sock.recv(65535))
                except BlockingIOError:
                    time.sleep(0.001)
    finally:
        sender.close()
        opened.bulk.close()
        opened.priority.close()
    return found


def test_port_500(hosts: TwoHosts) -> None:
    sent = messages()
    found = landed(hosts, 500, [data for data, _ in sent.values()])
    for name, (data, lane) in sent.items():
        assert data in found[lane], name


def test_port_4500_behind_the_marker_and_esp(hosts: TwoHosts) -> None:
    sent = {name: (NON_ESP_MARKER + data, lane) for name, (data, lane) in messages().items()}
    sent["ESP in UDP"] = (b"\x00\x00\x12\x34" + bytes(60), lanes.PRIORITY)
    sent["NAT keepalive"] = (b"\xff", lanes.BULK)
    found = landed(hosts, 4500, [data for data, _ in sent.values()])
    for name, (data, lane) in sent.items():
        assert data in found[lane], name
