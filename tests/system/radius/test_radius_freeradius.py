"""The gateway's RADIUS client against a real FreeRADIUS on loopback.

EAP conversations are driven by the project's own EAP peer (``mpa_ike.eap``) through
:class:`gateway.radius.EapRelay`, as the IKE responder will relay them. A small UDP
relay in front of FreeRADIUS forges or drops answers where a test needs it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from gateway.radius import (
    AccessAnswer,
    AccessResult,
    AccountingSession,
    Code,
    RadiusClient,
    RadiusConfig,
    RadiusServer,
    RadiusTimeout,
    TerminateCause,
    Usage,
    message_authenticator,
    response_authenticator,
    station_id,
)
from mpa_harness.freeradius import (
    FreeRadius,
    RadiusClientSpec,
    RadiusUser,
    free_udp_port,
    require_freeradius,
)
from mpa_ike.eap import EapPeer, EapResult, EapType
from mpa_ike.eap.packet import EapCode, parse_packet, request

SECRET = "s3cret-of-the-tests"
ALICE = RadiusUser(
    "alice",
    "correct horse",
    framed_ip="10.9.0.5",
    framed_ipv6="2001:db8:9::5",
    session_timeout=3600,
    classes=(b"gold", b"\x01\x02tier"),
)
BOB = RadiusUser("CORP\\bob", 'hun"ter\\2')  # a users file escapes both
USERS = (ALICE, BOB)


@pytest.fixture
def freeradius(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FreeRadius]:
    """A FreeRADIUS on 127.0.0.1 (free ports) knowing alice and bob, client 127.0.0.1.

    Its files are removed unless the test failed (the debug log tells why).
    """
    require_freeradius()
    failed_before = request.session.testsfailed
    server = FreeRadius(
        tmp_path / "freeradius",
        clients=[RadiusClientSpec("127.0.0.1", SECRET, "gateway")],
        users=USERS,
        debug=True,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(remove=request.session.testsfailed == failed_before)


LOOPBACK = ip_address("127.0.0.1")
PEER_ADDRESS = station_id("192.0.2.10", 4500)
METHODS = [EapType.MD5_CHALLENGE, EapType.MSCHAPV2]


def server_of(freeradius: FreeRadius, secret: str = SECRET) -> RadiusServer:
    assert freeradius.auth_port is not None
    return RadiusServer(LOOPBACK, freeradius.auth_port, secret.encode(), freeradius.acct_port)


def config(*servers: RadiusServer, timeout: float = 1.0, retries: int = 1) -> RadiusConfig:
    return RadiusConfig(servers, timeout=timeout, retries=retries, accounting=True)


async def converse(
    client: RadiusClient, peer: EapPeer, user: str | None = None
) -> list[AccessAnswer]:
    """The gateway's side: EAP-Request/Identity to the peer, then relay until the end."""
    relay = client.eap_relay(user or peer.identity, PEER_ADDRESS, station_id("192.0.2.1", 4500))
    message = peer.handle(request(0, EapType.IDENTITY).to_bytes())
    answers = []
    for _ in range(10):
        assert message is not None, "the peer stopped answering"
        answer = await relay.relay(message)
        answers.append(answer)
        message = peer.handle(answer.eap_message)
        if answer.result != AccessResult.CHALLENGE:
            return answers
    raise AssertionError("conversation did not end")


def run_conversation(
    radius_config: RadiusConfig, peer: EapPeer
) -> tuple[list[AccessAnswer], RadiusClient]:
    async def main() -> tuple[list[AccessAnswer], RadiusClient]:
        async with RadiusClient(radius_config) as client:
            return await converse(client, peer), client

    return asyncio.run(main())


# --------------------------------------------------------------------------- EAP


@pytest.mark.parametrize("method", METHODS, ids=["md5", "mschapv2"])
def test_eap_accept_with_msk_and_attributes(freeradius: FreeRadius, method: EapType) -> None:
    """FreeRADIUS proposes EAP-MD5; a peer that only knows MSCHAPv2 Naks it."""
    peer = EapPeer(ALICE.name, ALICE.password, methods=[method])
    answers, _ = run_conversation(config(server_of(freeradius)), peer)
    final = answers[-1]
    assert final.result == AccessResult.ACCEPT
    assert parse_packet(final.eap_message).code == EapCode.SUCCESS
    assert peer.result == EapResult.SUCCESS and peer.method == method
    if method == EapType.MSCHAPV2:
        assert final.msk is not None and len(final.msk) == 64
        assert final.msk == peer.msk
    else:
        # EAP-MD5 derives no key: FreeRADIUS sends no MS-MPPE keys, so there is no MSK
        # and IKE AUTH falls back to SK_pi/SK_pr (RFC 7296 §2.16).
        assert final.msk is None and peer.msk is None
    assert final.framed_ip == IPv4Address("10.9.0.5")
    assert final.framed_ipv6 == IPv6Address("2001:db8:9::5")
    assert final.session_timeout == 3600
    assert final.classes == (b"gold", b"\x01\x02tier")
    assert all(a.state is not None for a in answers[:-1])  # Challenges carry State


def test_user_name_with_a_domain(freeradius: FreeRadius) -> None:
    peer = EapPeer(BOB.name, BOB.password, methods=[EapType.MSCHAPV2])
    answers, _ = run_conversation(config(server_of(freeradius)), peer)
    assert answers[-1].result == AccessResult.ACCEPT and answers[-1].msk == peer.msk
    assert answers[-1].framed_ip is None and answers[-1].classes == ()


@pytest.mark.parametrize("method", METHODS, ids=["md5", "mschapv2"])
def test_wrong_password_is_rejected(freeradius: FreeRadius, method: EapType) -> None:
    peer = EapPeer(ALICE.name, "wrong", methods=[method])
    answers, _ = run_conversation(config(server_of(freeradius)), peer)
    final = answers[-1]
    assert final.result == AccessResult.REJECT
    assert parse_packet(final.eap_message).code == EapCode.FAILURE
    assert final.msk is None and final.framed_ip is None
    assert peer.result == EapResult.FAILURE


def test_unknown_user_is_rejected(freeradius: FreeRadius) -> None:
    peer = EapPeer("mallory", "x", methods=[EapType.MD5_CHALLENGE])
    answers, _ = run_conversation(config(server_of(freeradius)), peer)
    assert answers[-1].result == AccessResult.REJECT


# --------------------------------------------------------------------------- fail-over


def test_fails_over_to_the_second_server_and_remembers_it(freeradius: FreeRadius) -> None:
    dead = RadiusServer(LOOPBACK, free_udp_port(), SECRET.encode())
    radius_config = config(dead, server_of(freeradius), timeout=0.2, retries=1)

    async def main() -> tuple[float, float, int]:
        async with RadiusClient(radius_config) as client:
            began = time.monotonic()
            first = await converse(client, EapPeer(ALICE.name, ALICE.password))
            assert first[-1].result == AccessResult.ACCEPT
            assert first[-1].server == radius_config.servers[1]
            after_first = time.monotonic() - began
            began = time.monotonic()
            second = await converse(client, EapPeer(ALICE.name, ALICE.password))
            assert second[-1].result == AccessResult.ACCEPT
            return after_first, time.monotonic() - began, client.active

    after_first, after_second, active = asyncio.run(main())
    assert active == 1
    assert after_first >= 2 * 0.2  # two transmissions to the dead server
    assert after_second < 0.2  # straight to the server that answered


def test_no_server_answers(freeradius: FreeRadius) -> None:
    servers = [RadiusServer(LOOPBACK, free_udp_port(), b"x") for _ in range(2)]
    peer = EapPeer(ALICE.name, ALICE.password)
    began = time.monotonic()
    with pytest.raises(RadiusTimeout):
        run_conversation(config(*servers, timeout=0.1, retries=2), peer)
    assert 2 * 3 * 0.1 <= time.monotonic() - began < 2.0


# --------------------------------------------------------------------------- accounting


def test_accounting_start_interim_stop_in_the_detail_file(freeradius: FreeRadius) -> None:
    session = AccountingSession(
        session_id="ike-0123456789abcdef",
        user_name=ALICE.name,
        calling_station_id=PEER_ADDRESS,
        called_station_id=station_id("192.0.2.1", 4500),
        framed_ip=IPv4Address("10.9.0.5"),
        framed_ipv6=IPv6Address("2001:db8:9::5"),
        classes=ALICE.classes,
    )
    interim = Usage(30, input_octets=1000, output_octets=2000, input_packets=10, output_packets=20)
    final = Usage(
        75, input_octets=3 * 2**32 + 5, output_octets=6000, input_packets=33, output_packets=44
    )

    async def main() -> list[bool]:
        async with RadiusClient(config(server_of(freeradius))) as client:
            return [
                await client.account_start(session),
                await client.account_interim(session, interim),
                await client.account_stop(session, final, TerminateCause.USER_REQUEST),
            ]

    assert asyncio.run(main()) == [True, True, True]
    records = [
        r for r in freeradius.accounting_records() if r.get("Acct-Session-Id") == session.session_id
    ]
    assert [r.get("Acct-Status-Type") for r in records] == ["Start", "Interim-Update", "Stop"]
    for record in records:
        assert record.get("User-Name") == "alice"
        assert record.get("Framed-IP-Address") == "10.9.0.5"
        assert record.get("Framed-IPv6-Address") == "2001:db8:9::5"
        assert record.get("Calling-Station-Id") == PEER_ADDRESS
        assert record.get("NAS-Identifier") == "mpa-gateway"
        assert record.octets("Class") == list(ALICE.classes)
    start, middle, stop = records
    assert start.get("Acct-Session-Time") is None
    assert middle.get("Acct-Session-Time") == "30"
    assert middle.get("Acct-Input-Octets") == "1000"
    assert middle.get("Acct-Output-Octets") == "2000"
    assert middle.get("Acct-Input-Packets") == "10"
    assert middle.get("Acct-Output-Packets") == "20"
    assert stop.get("Acct-Session-Time") == "75"
    assert stop.get("Acct-Input-Octets") == "5"
    assert stop.get("Acct-Input-Gigawords") == "3"
    assert stop.get("Acct-Output-Octets") == "6000"
    assert stop.get("Acct-Terminate-Cause") == "User-Request"


def test_accounting_off_sends_nothing(freeradius: FreeRadius) -> None:
    off = RadiusConfig((server_of(freeradius),), accounting=False)
    session = AccountingSession("s-off", ALICE.name, PEER_ADDRESS)

    async def main() -> bool:
        async with RadiusClient(off) as client:
            return await client.account_start(session)

    assert asyncio.run(main()) is False
    assert not [r for r in freeradius.accounting_records() if r.get("Acct-Session-Id") == "s-off"]


# --------------------------------------------------------------------------- a relay


Policy = Callable[[bytes, bytes, int], list[bytes]]


class Relay(asyncio.DatagramProtocol):
    """Stands between the client and FreeRADIUS on loopback: forwards requests and lets
    ``policy(request, answer, copy)`` decide what the client gets for each answer; a
    request for which ``drop(request, copy)`` is true goes nowhere."""

    def __init__(self, upstream: tuple[str, int], policy: Policy, drop: Callable[[int], bool]):
        self.upstream = upstream
        self.policy = policy
        self.drop = drop
        self.transport: asyncio.DatagramTransport | None = None
        self.requests: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        copy = sum(1 for r in self.requests if r == data)
        self.requests.append(data)
        if self.drop(copy):
            return
        asyncio.get_running_loop().create_task(self.forward(data, addr, copy))

    async def forward(self, data: bytes, client: tuple[str, int], copy: int) -> None:
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bytes] = loop.create_future()

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, answer: bytes, addr: tuple[str, int]) -> None:
                if not answered.done():
                    answered.set_result(answer)

        transport, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.upstream)
        try:
            transport.sendto(data)
            answer = await asyncio.wait_for(answered, 5)
        finally:
            transport.close()
        assert self.transport is not None
        for out in self.policy(data, answer, copy):
            self.transport.sendto(out, client)


def forge(request_raw: bytes, answer: bytes, secret: bytes, code: int) -> bytes:
    """``answer`` with another code, signed as a server with ``secret`` would sign it."""
    authenticator = request_raw[4:20]
    forged = bytes([code]) + answer[1:]
    position = forged.index(b"\x50\x12", 20) + 2
    zeroed = forged[:position] + bytes(16) + forged[position + 16 :]
    mac = message_authenticator(zeroed, secret, authenticator)
    forged = zeroed[:position] + mac + zeroed[position + 16 :]
    return forged[:4] + response_authenticator(forged, authenticator, secret) + forged[20:]


def run_through_relay(
    freeradius: FreeRadius,
    policy: Policy,
    drop: Callable[[int], bool],
    peer: EapPeer,
    timeout: float = 0.5,
) -> tuple[list[AccessAnswer], Relay]:
    async def main() -> tuple[list[AccessAnswer], Relay]:
        loop = asyncio.get_running_loop()
        assert freeradius.auth_port is not None
        upstream = ("127.0.0.1", freeradius.auth_port)
        transport, relay = await loop.create_datagram_endpoint(
            lambda: Relay(upstream, policy, drop), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        try:
            server = RadiusServer(LOOPBACK, port, SECRET.encode())
            async with RadiusClient(config(server, timeout=timeout, retries=1)) as client:
                return await converse(client, peer), relay
        finally:
            transport.close()

    return asyncio.run(main())


def test_forged_answer_is_dropped(freeradius: FreeRadius, caplog: pytest.LogCaptureFixture) -> None:
    """Each genuine answer is preceded by a Reject signed with another secret."""

    def forged_first(request_raw: bytes, answer: bytes, copy: int) -> list[bytes]:
        return [forge(request_raw, answer, b"not-the-secret", Code.ACCESS_REJECT), answer]

    caplog.set_level(logging.WARNING, logger="gateway.radius")
    peer = EapPeer(ALICE.name, ALICE.password, methods=[EapType.MSCHAPV2])
    answers, relay = run_through_relay(freeradius, forged_first, lambda copy: False, peer)
    assert answers[-1].result == AccessResult.ACCEPT and answers[-1].msk == peer.msk
    dropped = [r for r in caplog.records if "wrong Response Authenticator" in r.getMessage()]
    assert len(dropped) == len(answers) == len(relay.requests)


def test_only_forged_answers_time_out(freeradius: FreeRadius) -> None:
    def forged_only(request_raw: bytes, answer: bytes, copy: int) -> list[bytes]:
        return [forge(request_raw, answer, b"not-the-secret", answer[0])]

    peer = EapPeer(ALICE.name, ALICE.password)
    with pytest.raises(RadiusTimeout):
        run_through_relay(freeradius, forged_only, lambda copy: False, peer, timeout=0.2)


def test_lost_request_is_retransmitted(freeradius: FreeRadius) -> None:
    """The first copy of every request is lost; the same bytes come again after the
    timeout, and FreeRADIUS answers the copy."""
    peer = EapPeer(ALICE.name, ALICE.password, methods=[EapType.MSCHAPV2])
    began = time.monotonic()
    answers, relay = run_through_relay(
        freeradius, lambda q, a, c: [a], lambda copy: copy == 0, peer, timeout=0.2
    )
    assert answers[-1].result == AccessResult.ACCEPT and answers[-1].msk == peer.msk
    assert len(relay.requests) == 2 * len(answers)
    assert relay.requests[0] == relay.requests[1]  # a retransmission is the same packet
    assert time.monotonic() - began >= 0.2 * len(answers)


# --------------------------------------------------------------------------- the harness


def test_a_server_that_cannot_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    require_freeradius()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        server = FreeRadius(
            tmp_path / "busy",
            clients=[RadiusClientSpec("127.0.0.1", SECRET)],
            users=USERS,
            auth_port=taken.getsockname()[1],
        )
        began = time.monotonic()
        with pytest.raises(RuntimeError, match="exited"):
            server.start(timeout=10)
        assert time.monotonic() - began < 5
    assert server.proc is None
    assert "in use" in server.log()
