"""The parts of ``mpa-bench flood`` that need no namespace: the flood's packet and the
measure of how long each request of a set-up holds the gateway's loop."""

from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path

from mpa_bench import flood_blocking, flood_sender
from mpa_ike.admission import scan_init_request
from mpa_ike.constants import ExchangeType, NotifyType
from mpa_ike.datagram import Datagram
from mpa_ike.endpoint import Endpoint
from mpa_ike.wire import parse_header, parse_message


def test_flood_packet_is_an_ike_sa_init_to_port_500() -> None:
    message = flood_sender.init_request("192.0.2.2", "aes128-sha256-x25519")
    packet = flood_sender.packet_template("192.0.2.2", message)
    version, _, length = struct.unpack_from("!BBH", packet)
    assert version == 0x45 and length == len(packet)
    assert packet[16:20] == ipaddress.IPv4Address("192.0.2.2").packed
    source, destination, udp_length, checksum = struct.unpack_from("!HHHH", packet, 20)
    assert (source, destination, checksum) == (500, 500, 0)
    assert udp_length == len(packet) - 20
    ike = bytes(packet[flood_sender.SPI_AT :])
    header = parse_header(ike)
    assert header.exchange_type == ExchangeType.IKE_SA_INIT and header.message_id == 0
    assert parse_message(ike).payloads and scan_init_request(ike) is not None


def test_a_gateway_under_load_answers_the_flood_with_cookies(tmp_path: Path) -> None:
    _, config = flood_blocking.configs("aes128gcm16-prfsha256-x25519", "ecdsa", tmp_path)
    gateway = Endpoint(random=os.urandom, responder=config, half_open_threshold=0)
    ike = flood_sender.init_request("192.0.2.2", "aes128gcm16-prfsha256-x25519")
    for n in range(3):
        spi = bytes([n + 1]) * 8
        request = Datagram(spi + ike[8:], (f"198.18.0.{n + 1}", 500), ("192.0.2.2", 500))
        gateway.receive_datagram(request.data, request.src, request.dst, 0.0)
    answers = gateway.datagrams_to_send(0.0)
    assert len(answers) == 3 and gateway.counters["cookies_sent"] == 3
    for answer in answers:
        (notify,) = parse_message(answer.data).payloads
        assert notify.notify_type == NotifyType.COOKIE  # type: ignore[attr-defined]
    assert not list(gateway)


def test_blocking_measures_every_request_of_a_set_up(tmp_path: Path) -> None:
    measured = flood_blocking.measure("aes128gcm16-prfsha256-x25519", "ecdsa", 2, tmp_path)
    steps = ["IKE_SA_INIT", *(f"IKE_AUTH {n}" for n in range(5))]
    assert sorted(measured) == sorted(steps)
    assert all(len(samples) == 2 and min(samples) > 0 for samples in measured.values())
