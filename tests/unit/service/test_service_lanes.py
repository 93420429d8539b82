"""mpa_ike.node.lanes: the steering program's choice for each kind of datagram (run as
the kernel runs it), a kernel that refuses the program, and the transport reading the
priority lane before the bulk lane. Loopback, free ports (the NAT-T program: any port
but 500 carries the non-ESP marker); the kernel's own choice on 500 and 4500 is in
tests/system/flood/test_lanes.py."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import cast

import pytest

from mpa_bench import flood_sender
from mpa_ike.constants import NON_ESP_MARKER
from mpa_ike.datagram import Address, Datagram
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import Event
from mpa_ike.node import lanes
from mpa_ike.node.transport import IkeTransport
from mpa_ike.wire import Message, parse_message, serialize_message
from mpa_ike.wire.notify import cookie_notify

LOOPBACK = "127.0.0.1"
INIT = flood_sender.init_request("192.0.2.2", "aes128-sha256-x25519")


def with_cookie(request: bytes) -> bytes:
    """§2.6: the request again with the COOKIE as its first payload."""
    message = parse_message(request)
    payloads = (cookie_notify(b"\x00" + bytes(32)), *message.payloads)
    return serialize_message(Message(message.header, payloads))


def known_spi(request: bytes) -> bytes:
    """A message of a handshake under way: the responder's SPI set (IKE_AUTH)."""
    return request[:8] + b"\x11" * 8 + request[16:18] + bytes([35]) + request[19:]


KINDS = {
    "new IKE_SA_INIT": (INIT, lanes.BULK),
    "IKE_SA_INIT with COOKIE": (with_cookie(INIT), lanes.PRIORITY),
    "known SPI": (known_spi(INIT), lanes.PRIORITY),
    "short": (INIT[:12], lanes.BULK),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_program_on_port_500(kind: str) -> None:
    data, lane = KINDS[kind]
    assert lanes.run_program(lanes.steering_program(marker=False), data) == lane


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_program_behind_the_marker(kind: str) -> None:
    data, lane = KINDS[kind]
    program = lanes.steering_program(marker=True)
    assert lanes.run_program(program, NON_ESP_MARKER + data) == lane


def test_esp_and_keepalives_on_the_nat_t_port() -> None:
    program = lanes.steering_program(marker=True)
    assert lanes.run_program(program, b"\x00\x00\x12\x34" + bytes(40)) == lanes.PRIORITY
    assert lanes.run_program(program, b"\xff") == lanes.BULK


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_kernel_that_refuses_the_program_leaves_one_socket(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(sock: socket.socket, program: list[lanes.Instruction]) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(lanes, "attach", refuse)
    with caplog.at_level(logging.WARNING, logger=lanes.__name__):
        found = lanes.open_lanes((LOOPBACK, free_port()), socket.AF_INET, lambda sock: None)
    try:
        assert found.priority is None
        assert "one receive queue on 127.0.0.1:" in caplog.text
        assert "Invalid argument" in caplog.text
    finally:
        found.bulk.close()


def test_a_taken_port_is_refused_as_without_lanes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind((LOOPBACK, 0))
        with pytest.raises(OSError, match="in use"):
            lanes.open_lanes(busy.getsockname(), socket.AF_INET, lambda sock: None)


class Recorder:
    """As much of an Endpoint as the transport uses: a responder that keeps what came."""

    responder = object()

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.received: list[bytes] = []

    def receive_datagram(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        self.received.append(data)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        return []

    def get_timer(self) -> float | None:
        return None

    def next_event(self) -> Event | None:
        return None


def test_the_transport_reads_the_priority_lane_first() -> None:
    async def test() -> None:
        recorder = Recorder()
        transport = IkeTransport(cast(Endpoint, recorder), lambda event: None)
        local: Address = (LOOPBACK, free_port())
        await transport.bind(LOOPBACK, (local[1],))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            try:
                for _ in range(20):
                    peer.sendto(NON_ESP_MARKER + INIT, local)
                peer.sendto(NON_ESP_MARKER + known_spi(INIT), local)
                while len(recorder.received) < 21:
                    await asyncio.sleep(0.005)
            finally:
                transport.close()
        assert recorder.received[0] == known_spi(INIT)

    asyncio.run(asyncio.wait_for(test(), timeout=10))
