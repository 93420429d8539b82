"""mpa-gateway's MOBIKE checks (RFC 4555 §3.5, §3.9) at daemon level.

A real ``mpa-gateway`` (userspace datapath, pool 10.77.0.128/25, ``mobike:
{address_policy: allocated}``) runs in its own namespace; the mobile node is our
sans-I/O core (:class:`mpa_ike.endpoint.Endpoint` as initiator) pumped by
:class:`MobileNode` over real UDP sockets that the test opens in the mobile node's
namespace, one per address and port, so that it chooses the source address of every
datagram, and captures, replays and forges datagrams. Each test reads ``mpa-gateway
status --json`` (IKE SA addresses, leases, pool, counters) before and after.

tests/core/test_core_mobike.py checks the same behaviour in memory with a fake clock;
test_charon_moves_gateway_policy.py shows it with charon as the mobile node.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servicehelp import Daemon

from mpa_harness.netns import Netns, TwoHosts, two_hosts
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import ExchangeType, HeaderFlag, NotifyType, PayloadType, ProtocolId
from mpa_ike.datagram import Address, Datagram, frame_for_socket, unframe_from_socket
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import AddressUpdateRefused, ChildSaEstablished, Event, IkeSaEstablished
from mpa_ike.ike_config import InitiatorConfig
from mpa_ike.node.credentials import load_certificates
from mpa_ike.node.service import proposal_specs, wall_clock
from mpa_ike.wire import (
    EncryptedPayload,
    IkeHeader,
    Message,
    NotifyPayload,
    parse_header,
    serialize_message,
)
from tests.system.interop.test_mobile_vs_gateway import (
    CLIENT_ID,
    EAP_PASSWORD,
    EAP_USER,
    ESP,
    GATEWAY_ID,
    PROTECTED_NET,
    gateway_yaml,
    start_daemon,
    status,
    wait_listening,
)
from tests.system.interop.test_traffic import IKE, KEY, METHOD, traffic_env, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]
__all__ = ["traffic_env"]  # the fixture, imported to be found here

POOL = "10.77.0.128/25"
NCOA = "10.77.0.129"  # the first address of the pool: the nCoA of the one IKE SA
MN = "192.0.2.1"  # the mobile node's address on network A (two_hosts' left end)
GW = "192.0.2.2"
ELSEWHERE = "192.0.2.3"  # another address of the mobile node, not allocated by the gateway
GW_LAN = "10.1.0.1"  # an address of the gateway inside PROTECTED_NET, on its lo
CLONE_NEWNET = 0x40000000
NAT_T = 4500
WAIT = 3.0  # seconds for any one exchange


# --------------------------------------------------------------------------- sockets


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run this thread in ``ns``: sockets opened meanwhile stay in that namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns.name}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


@dataclass
class Esp:
    """One ESP packet seen by the mobile node's raw socket."""

    spi: bytes
    src: str
    dst: str


@dataclass
class MobileNode:
    """Our initiator core over real UDP sockets in ``ns``, pumped by hand.

    ``sent`` and ``received`` are the IKE messages (without the non-ESP marker) as
    they left and arrived; ``redirect`` may rewrite where a datagram the core built
    leaves from (a NAT in front of the mobile node).
    """

    ns: Netns
    endpoint: Endpoint = field(default_factory=lambda: Endpoint(random=os.urandom))
    sockets: dict[Address, socket.socket] = field(default_factory=dict)
    sent: list[Datagram] = field(default_factory=list)
    received: list[Datagram] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    esp: list[Esp] = field(default_factory=list)
    redirect: Callable[[Datagram], Datagram] = lambda datagram: datagram
    _raw: socket.socket | None = None

    def bind(self, address: str, port: int = NAT_T) -> None:
        with inside(self.ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, port))
        self.sockets[(address, port)] = sock

    def watch_esp(self) -> None:
        """Plain ESP (protocol 50) to any of our addresses, for the datapath checks."""
        with inside(self.ns):
            self._raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)

    def close(self) -> None:
        for sock in [*self.sockets.values(), *filter(None, [self._raw])]:
            sock.close()

    def send(self, data: bytes, src: Address, dst: Address) -> None:
        """An IKE message as is (framed for the port), from our socket ``src``."""
        self.sent.append(Datagram(data, src, dst))
        self.sockets[src].sendto(frame_for_socket(Datagram(data, src, dst)), dst)

    def pump(self, until: Callable[[], bool], timeout: float = WAIT) -> None:
        """Send, receive and fire timers until ``until()`` holds (AssertionError after
        ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            timer = self.endpoint.get_timer()
            if timer is not None and timer <= now:
                self.endpoint.handle_timer(now)
            for datagram in self.endpoint.datagrams_to_send(now):
                out = self.redirect(datagram)
                self.send(out.data, out.src, out.dst)
            while (event := self.endpoint.next_event()) is not None:
                self.events.append(event)
            if until():
                return
            assert now < deadline, f"not within {timeout} s; events {self.events}"
            self._receive(min(0.05, deadline - now))

    def idle(self, seconds: float) -> None:
        """Go on sending, receiving and firing timers for ``seconds``."""
        until = time.monotonic() + seconds
        self.pump(lambda: time.monotonic() >= until, timeout=seconds + 1)

    def _receive(self, wait: float) -> None:
        watched: list[socket.socket] = [*self.sockets.values(), *filter(None, [self._raw])]
        ready, _, _ = select.select(watched, [], [], max(wait, 0))
        for sock in ready:
            payload, peer = sock.recvfrom(65535)
            if sock is self._raw:
                self._esp_seen(payload)
                continue
            local = next(a for a, s in self.sockets.items() if s is sock)
            message = unframe_from_socket(payload, local[1])
            src = (str(peer[0]), int(peer[1]))
            if message is None:
                self.esp.append(Esp(payload[:4], src[0], local[0]))
                continue
            self.received.append(Datagram(message, src, local))
            self.endpoint.receive_datagram(message, src, local, time.monotonic())

    def _esp_seen(self, packet: bytes) -> None:
        header = (packet[0] & 0x0F) * 4
        src, dst = (str(ipaddress.IPv4Address(packet[at : at + 4])) for at in (12, 16))
        self.esp.append(Esp(packet[header : header + 4], src, dst))

    def of_type(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


# --------------------------------------------------------------------------- setup


@dataclass
class Setup:
    hosts: TwoHosts
    gateway: Daemon
    config: Path
    mobile: MobileNode
    spi: bytes  # the mobile node's IKE SA
    spi_i: bytes
    spi_r: bytes
    child_spi_in: bytes  # the mobile node's inbound CHILD SA SPI (the gateway's outbound)

    @property
    def gw(self) -> Netns:
        return self.hosts.right

    @property
    def mn(self) -> Netns:
        return self.hosts.left

    def status(self) -> dict[str, Any]:
        return status("gateway.cli", self.config)

    def next_message_id(self) -> int:
        """The Message ID the gateway expects next from us (§2.2)."""
        requests = [
            parse_header(d.data).message_id
            for d in self.mobile.sent
            if not parse_header(d.data).is_response
        ]
        return max(requests) + 1

    def move(self, local: str, port: int = NAT_T) -> None:
        """The mobile node's UPDATE_SA_ADDRESSES from ``local`` (RFC 4555 §3.5), to its
        answer."""
        answered = len(self.mobile.received)
        self.mobile.endpoint.update_addresses(self.spi, (local, port), time.monotonic())
        self.mobile.pump(lambda: len(self.mobile.received) > answered)


def initiator_config(workdir: Path, *, no_nats_allowed: bool = False) -> InitiatorConfig:
    """What mobile/service.py builds for the ``gw`` entry of mobile_yaml."""
    return InitiatorConfig(
        name="gw",
        identity=CLIENT_ID,
        eap_password=EAP_PASSWORD,
        remote_id=GATEWAY_ID,
        ike_proposals=proposal_specs([IKE], ProtocolId.IKE),
        child=ChildSaConfig(
            proposal_specs([ESP], ProtocolId.ESP),
            remote_ts=(ipaddress.ip_network(PROTECTED_NET),),
        ),
        ca=load_certificates(workdir / "ca.pem", "ca"),
        wall_clock=wall_clock,
        eap_methods=(EapType.MSCHAPV2,),
        eap_identity=EAP_USER,
        no_nats_allowed=no_nats_allowed,
    )


@contextlib.contextmanager
def connected(workdir: Path, *, no_nats_allowed: bool = False) -> Iterator[Setup]:
    """mpa-gateway in ``right``, our initiator in ``left`` with an IKE SA and a CHILD SA;
    the nCoA and ELSEWHERE on the mobile node's link, routed there by the gateway."""
    with two_hosts() as hosts, contextlib.ExitStack() as stack:
        mn, gw = hosts.left, hosts.right
        config, _ = gateway_yaml(
            workdir,
            [GW],
            METHOD,
            IKE,
            KEY,
            pool=[POOL],
            datapath="userspace",
            mobike={"address_policy": "allocated"},
        )
        gateway = start_daemon("gateway.cli", config, gw.name)
        stack.callback(lambda: print(gateway.stop()))
        wait_listening(config)
        gw.add_addr("lo", f"{GW_LAN}/32")
        gw.add_route(POOL, dev=hosts.link.b.dev)  # network B, where the nCoA will be
        mn.add_addr(hosts.link.a.dev, f"{NCOA}/32")
        mn.add_addr(hosts.link.a.dev, f"{ELSEWHERE}/24")
        mobile = MobileNode(mn)
        stack.callback(mobile.close)
        for local in ((MN, 500), (MN, NAT_T), (NCOA, NAT_T), (ELSEWHERE, NAT_T)):
            mobile.bind(*local)
        mobile.watch_esp()
        config_i = initiator_config(workdir, no_nats_allowed=no_nats_allowed)
        sa = mobile.endpoint.initiate(config_i, (MN, 500), (GW, 500), time.monotonic())
        mobile.pump(lambda: bool(mobile.of_type(ChildSaEstablished)))
        [established] = mobile.of_type(IkeSaEstablished)
        assert [str(a) for a in established.assigned_addresses] == [NCOA]
        [child] = mobile.of_type(ChildSaEstablished)
        yield Setup(
            hosts, gateway, config, mobile, sa.local_spi, sa.spi_i, sa.spi_r, child.params.spi_in
        )


def the_sa(report: dict[str, Any]) -> dict[str, Any]:
    [sa] = report["ike_sas"]
    assert isinstance(sa, dict)
    return sa


def assert_unmoved(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Same IKE SA at the same addresses, its lease still its own, the pool as it was."""
    old, new = the_sa(before), the_sa(after)
    assert (new["name"], new["local"], new["remote"]) == (old["name"], old["local"], old["remote"])
    assert_lease_kept(before, after)


def assert_lease_kept(before: dict[str, Any], after: dict[str, Any]) -> None:
    """(e) The nCoA stays leased to this IKE SA, and the pool lends nothing more."""
    assert after["leases"] == [{"address": NCOA, "ike_sa": the_sa(after)["name"]}]
    assert after["leases"] == before["leases"]
    assert after["pool"] == before["pool"]


def counted(setup: Setup, name: str, value: int) -> Callable[[], bool]:
    return lambda: setup.status()["counters"].get(name, 0) == value


def esp_reaches(setup: Setup, address: str) -> None:
    """A datagram from the gateway's LAN to the nCoA goes through the CHILD SA: ESP on
    our inbound SPI to ``address``."""
    seen = len(setup.mobile.esp)
    with inside(setup.gw), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((GW_LAN, 0))
        probe.sendto(b"probe", (NCOA, 9))

    def arrived() -> bool:
        return any(e.spi == setup.child_spi_in for e in setup.mobile.esp[seen:])

    setup.mobile.pump(arrived)
    [esp] = [e for e in setup.mobile.esp[seen:] if e.spi == setup.child_spi_in]
    assert (esp.src, esp.dst) == (GW, address)


# --------------------------------------------------------------------------- tests


def test_update_from_an_address_not_allocated_is_refused(short_tmp: Path) -> None:
    """(a) UNACCEPTABLE_ADDRESSES to the update from ELSEWHERE; nothing moves, and the
    CHILD SA still carries ESP to the old address."""
    with connected(short_tmp) as setup:
        before = setup.status()
        assert the_sa(before)["remote"] == f"{MN}[{NAT_T}]"
        esp_reaches(setup, MN)

        setup.move(ELSEWHERE)

        [refused] = setup.mobile.of_type(AddressUpdateRefused)
        assert refused.notify == NotifyType.UNACCEPTABLE_ADDRESSES and refused.by_peer
        assert setup.mobile.received[-1].dst == (ELSEWHERE, NAT_T)  # answered where it came from
        after = setup.status()
        assert_unmoved(before, after)
        assert after["counters"]["updates_refused"] == 1
        assert "updates_accepted" not in after["counters"]
        esp_reaches(setup, MN)


def test_update_from_the_allocated_ncoa_is_accepted(short_tmp: Path) -> None:
    """(b) The update from the nCoA leased to this very IKE SA moves it, and its CHILD
    SA, there."""
    with connected(short_tmp) as setup:
        before = setup.status()

        setup.move(NCOA)

        assert not setup.mobile.of_type(AddressUpdateRefused)
        assert setup.mobile.received[-1].dst == (NCOA, NAT_T)
        after = setup.status()
        sa = the_sa(after)
        assert sa["remote"] == f"{NCOA}[{NAT_T}]" and sa["local"] == f"{GW}[{NAT_T}]"
        assert sa["name"] == the_sa(before)["name"]
        assert_lease_kept(before, after)
        assert after["counters"]["updates_accepted"] == 1
        assert "updates_refused" not in after["counters"]
        esp_reaches(setup, NCOA)  # the CHILD SA moved along


def forged_update(setup: Setup, message_id: int) -> bytes:
    """INFORMATIONAL with our SPIs and the next Message ID, SK full of random bytes."""
    body = os.urandom(8 + 32 + 16)  # IV, "ciphertext", ICV
    header = IkeHeader(
        setup.spi_i, setup.spi_r, ExchangeType.INFORMATIONAL, int(HeaderFlag.INITIATOR), message_id
    )
    return serialize_message(Message(header, (EncryptedPayload(PayloadType.NOTIFY, body),)))


def plaintext_update(setup: Setup, message_id: int) -> bytes:
    """INFORMATIONAL with N(UPDATE_SA_ADDRESSES) in the clear: no SK payload at all."""
    header = IkeHeader(
        setup.spi_i, setup.spi_r, ExchangeType.INFORMATIONAL, int(HeaderFlag.INITIATOR), message_id
    )
    notify = NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES)
    return serialize_message(Message(header, (notify,)))


def test_forged_and_unauthenticated_updates_change_nothing(short_tmp: Path) -> None:
    """(c) From the allocated nCoA itself, so that only authentication stands in the way:
    a wrong ICV and an update without SK are dropped and counted (RFC 7296 §2.21.1),
    without an answer; the Message ID does not move, so our real update still goes in."""
    with connected(short_tmp) as setup:
        before = setup.status()
        integrity = before["counters"].get("dropped_integrity", 0)
        message_id = setup.next_message_id()
        gateway = (GW, NAT_T)
        for n, forged in enumerate(
            [forged_update(setup, message_id), plaintext_update(setup, message_id)], 1
        ):
            heard = len(setup.mobile.received)
            setup.mobile.send(forged, (NCOA, NAT_T), gateway)
            wait_for(counted(setup, "dropped_integrity", integrity + n))
            after = setup.status()
            assert_unmoved(before, after)
            assert "updates_accepted" not in after["counters"]
            assert "updates_refused" not in after["counters"]
            setup.mobile.idle(0.2)
            assert len(setup.mobile.received) == heard  # never answered

        setup.move(NCOA)
        assert parse_header(setup.mobile.sent[-1].data).message_id == message_id
        assert the_sa(setup.status())["remote"] == f"{NCOA}[{NAT_T}]"


def test_replayed_updates_change_nothing(short_tmp: Path) -> None:
    """(c) RFC 7296 §2.1: a replay of the last request, already answered, gets the stored
    answer where it came from and is not acted on; an older one is dropped."""
    with connected(short_tmp) as setup:
        gateway = (GW, NAT_T)
        setup.move(ELSEWHERE)  # refused, answered
        refused_update = setup.mobile.sent[-1]
        setup.move(NCOA)  # accepted, answered
        accepted_update = setup.mobile.sent[-1]
        assert accepted_update.src == (NCOA, NAT_T)
        before = setup.status()
        assert the_sa(before)["remote"] == f"{NCOA}[{NAT_T}]"
        answers = before["counters"].get("retransmissions_answered", 0)
        stale = before["counters"].get("dropped_message_id", 0)

        # The accepted update, replayed from elsewhere: the cached answer goes there.
        heard = len(setup.mobile.received)
        setup.mobile.send(accepted_update.data, (ELSEWHERE, NAT_T), gateway)
        setup.mobile.pump(lambda: len(setup.mobile.received) > heard)
        replayed_answer = setup.mobile.received[-1]
        assert replayed_answer.dst == (ELSEWHERE, NAT_T)
        assert replayed_answer.data == setup.mobile.received[heard - 1].data
        wait_for(counted(setup, "retransmissions_answered", answers + 1))
        assert_unmoved(before, setup.status())

        # The refused update (an older Message ID), replayed from MN: dropped.
        setup.mobile.send(refused_update.data, (MN, NAT_T), gateway)
        wait_for(counted(setup, "dropped_message_id", stale + 1))
        after = setup.status()
        assert_unmoved(before, after)
        assert after["counters"]["updates_accepted"] == 1
        assert after["counters"]["updates_refused"] == 1


def test_no_nats_allowed_not_matching_the_header_is_refused(short_tmp: Path) -> None:
    """(d) RFC 4555 §3.9: the update names nCoA[4500] in NO_NATS_ALLOWED but leaves from
    nCoA[4501] (a NAT's port): UNEXPECTED_NAT_DETECTED, nothing moves."""
    with connected(short_tmp, no_nats_allowed=True) as setup:
        setup.mobile.bind(NCOA, NAT_T + 1)
        before = setup.status()

        def nat(datagram: Datagram) -> Datagram:
            if datagram.src == (NCOA, NAT_T):
                return Datagram(datagram.data, (NCOA, NAT_T + 1), datagram.dst)
            return datagram

        setup.mobile.redirect = nat
        setup.move(NCOA)

        [refused] = setup.mobile.of_type(AddressUpdateRefused)
        assert refused.notify == NotifyType.UNEXPECTED_NAT_DETECTED and refused.by_peer
        assert setup.mobile.received[-1].dst == (NCOA, NAT_T + 1)
        after = setup.status()
        assert_unmoved(before, after)
        assert after["counters"]["updates_refused"] == 1
        assert "updates_accepted" not in after["counters"]

        # Without the NAT the same check passes: the refusal was the header's doing.
        setup.mobile.redirect = lambda datagram: datagram
        setup.move(NCOA)
        assert the_sa(setup.status())["remote"] == f"{NCOA}[{NAT_T}]"


def test_lease_stays_with_its_ike_sa_throughout(short_tmp: Path) -> None:
    """(e) Refused, accepted, refused again from the old address: the nCoA stays leased
    to the one IKE SA, the pool lends nothing more, and ESP follows the accepted move."""
    with connected(short_tmp) as setup:
        first = setup.status()
        assert first["pool"]["ipv4"] == {"size": 126, "available": 125}
        setup.move(ELSEWHERE)
        assert_lease_kept(first, setup.status())
        setup.move(NCOA)
        assert_lease_kept(first, setup.status())
        setup.move(MN)
        last = setup.status()
        assert_lease_kept(first, last)
        assert the_sa(last)["remote"] == f"{NCOA}[{NAT_T}]"
        assert last["counters"]["updates_refused"] == 2
        assert last["counters"]["updates_accepted"] == 1
        assert [e.notify for e in setup.mobile.of_type(AddressUpdateRefused)] == [
            NotifyType.UNACCEPTABLE_ADDRESSES,
            NotifyType.UNACCEPTABLE_ADDRESSES,
        ]
