"""mpa_ike.node.transport on loopback, without root: framing on the NAT-T port, the ESP hook,
the timer, and a whole exchange between two endpoints through real UDP sockets.

Ports other than 500 carry the non-ESP marker (RFC 3948 §2.2), as 4500 does, so the
tests use free unprivileged ports.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from ipaddress import ip_network

from gateway.pool import AddressPool
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import ProtocolId
from mpa_ike.crypto.proposal import parse_proposals
from mpa_ike.datagram import Address
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import ChildSaEstablished, Event, IkeSaFailed
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.node.transport import IkeTransport, normalize, source_address_for
from mpa_ike.retransmit import RetransmitPolicy

LOOPBACK = "127.0.0.1"
PSK = b"transport test key"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
    return port


def initiator(retransmit: RetransmitPolicy | None = None) -> InitiatorConfig:
    return InitiatorConfig(
        name="gw",
        identity="alice",
        eap_password="alice-secret",
        remote_id="gw.example.net",
        ike_proposals=tuple(parse_proposals("aes128gcm16-prfsha256-x25519")),
        child=ChildSaConfig(
            tuple(parse_proposals("aes128gcm16", ProtocolId.ESP)),
            remote_ts=(ip_network("10.1.0.0/24"),),
        ),
        psk=PSK,
        retransmit=retransmit or RetransmitPolicy(),
        init_retransmit=retransmit or RetransmitPolicy(),
    )


def responder(pool: AddressPool[object]) -> ResponderConfig:
    users = {"alice": "alice-secret"}
    return ResponderConfig(
        identity="gw.example.net",
        ike_proposals=tuple(parse_proposals("aes128gcm16-prfsha256-x25519")),
        child=ChildSaConfig(
            tuple(parse_proposals("aes128gcm16", ProtocolId.ESP)),
            local_ts=(ip_network("10.1.0.0/24"),),
        ),
        eap_users=lambda name: users.get(name.decode()),
        psk=PSK,
        eap_methods=(EapType.MD5_CHALLENGE,),
        allocator=pool,
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def connect(gateway: IkeTransport, mobile: IkeTransport) -> None:
    """Both transports on free loopback ports, and the mobile node's set-up started."""
    gw_local: Address = (LOOPBACK, free_port())
    mn_local: Address = (LOOPBACK, free_port())
    await gateway.bind(LOOPBACK, (gw_local[1],))
    await mobile.bind(LOOPBACK, (mn_local[1],))
    mobile.endpoint.initiate(initiator(), mn_local, gw_local, mobile.now())
    mobile.process()


def test_exchange_between_two_transports() -> None:
    async def test() -> None:
        gw_events: list[Event] = []
        mn_events: list[Event] = []
        pool: AddressPool[object] = AddressPool([ip_network("10.3.0.0/28")])
        gateway = IkeTransport(Endpoint(responder=responder(pool)), gw_events.append)
        mobile = IkeTransport(Endpoint(), mn_events.append)
        try:
            await connect(gateway, mobile)
            await until(lambda: any(isinstance(e, ChildSaEstablished) for e in gw_events))
            await until(lambda: any(isinstance(e, ChildSaEstablished) for e in mn_events))
            [sa] = list(mobile.endpoint)
            assert sa.assigned_addresses == (ip_network("10.3.0.1/32").network_address,)

            mobile.endpoint.delete_all(mobile.now())
            mobile.process()
            await until(lambda: not list(gateway.endpoint) and not list(mobile.endpoint))
            assert list(pool.leases()) == []
        finally:
            gateway.close()
            mobile.close()

    run(test)


class CountingTransport(IkeTransport):
    """Counts the datagrams it sends."""

    sent = 0

    def send_raw(self, payload: bytes, src: Address, dst: Address) -> bool:
        self.sent += 1
        return super().send_raw(payload, src, dst)


def test_the_child_sa_is_in_the_datapath_before_the_answer_leaves() -> None:
    """The gateway's datapath has the CHILD SA (its event handled) before the last
    IKE_AUTH response is sent: the mobile node's first packet finds it."""

    async def test() -> None:
        pool: AddressPool[object] = AddressPool([ip_network("10.3.0.0/28")])
        sent_when_installed: list[int] = []
        sent_when_up: list[int] = []

        def on_gateway_event(event: Event) -> None:
            if isinstance(event, ChildSaEstablished):
                sent_when_installed.append(gateway.sent)

        def on_mobile_event(event: Event) -> None:
            if isinstance(event, ChildSaEstablished):
                sent_when_up.append(gateway.sent)

        gateway = CountingTransport(Endpoint(responder=responder(pool)), on_gateway_event)
        mobile = IkeTransport(Endpoint(), on_mobile_event)
        try:
            await connect(gateway, mobile)
            await until(lambda: bool(sent_when_up))
            assert sent_when_up[0] == sent_when_installed[0] + 1  # the last answer only
        finally:
            gateway.close()
            mobile.close()

    run(test)


def test_nat_t_framing_esp_hook_keepalives_and_retransmission() -> None:
    async def test() -> None:
        esp: list[tuple[bytes, Address, Address]] = []
        events: list[Event] = []
        transport = IkeTransport(
            Endpoint(),
            events.append,
            esp_handler=lambda data, src, local: esp.append((data, src, local)),
        )
        local: Address = (LOOPBACK, free_port())
        await transport.bind(LOOPBACK, (local[1],))
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LOOPBACK, 0))
        peer.settimeout(2)
        try:
            policy = RetransmitPolicy(timeout=0.05, base=1.0, tries=1)
            transport.endpoint.initiate(
                initiator(policy), local, peer.getsockname(), transport.now()
            )
            transport.process()
            loop = asyncio.get_running_loop()
            first, _ = await loop.run_in_executor(None, peer.recvfrom, 4096)
            again, _ = await loop.run_in_executor(None, peer.recvfrom, 4096)
            assert first[:4] == b"\0\0\0\0"  # non-ESP marker on a port other than 500
            assert again == first  # the timer fired: a retransmission, bit for bit
            await until(lambda: any(isinstance(e, IkeSaFailed) for e in events))

            peer.sendto(b"\xff", local)  # NAT keepalive: ignored
            peer.sendto(b"\x00\x00\x12\x34" + bytes(20), local)  # ESP: to the hook
            await until(lambda: bool(esp))
            assert esp == [(b"\x00\x00\x12\x34" + bytes(20), peer.getsockname(), local)]
            assert transport.counters["keepalives"] == 1

            assert transport.send_raw(b"esp out", local, peer.getsockname())
            data, _ = await loop.run_in_executor(None, peer.recvfrom, 4096)
            assert data == b"esp out"
            assert not transport.send_raw(b"x", (LOOPBACK, 1), peer.getsockname())
        finally:
            peer.close()
            transport.close()

    run(test)


def test_addresses() -> None:
    assert normalize(("2001:DB8::0:1", 500)) == ("2001:db8::1", 500)
    assert source_address_for(LOOPBACK) == LOOPBACK
