"""UserspaceDatapath without root: fake TUN devices, two datapaths joined in memory.

The fake TUN records writes and routes; the UDP 4500 demultiplexers of both sides
hand each other's payloads over directly, so IKE, ESP and keepalives share the
"port" exactly as on the wire (RFC 3948).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from dataclasses import replace

import pytest

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaParams, Datapath, TsRange
from mpa_ike.errors import LocalProtocolError
from mpa_ike.esp import SEQ_SOFT_MARGIN, DropReason, Expiry
from mpa_ike.io.userspace import UserspaceDatapath
from tests.system.esp.udp4500 import Udp4500Demux, Udp4500Kind

MN_OUTER: Address = ("192.0.2.1", 4500)
GW_OUTER: Address = ("192.0.2.2", 4500)
LAN = TsRange("10.1.0.0", "10.1.0.255")


class FakeTun:
    def __init__(self) -> None:
        self.fd = -1
        self.written: list[bytes] = []
        self.routes: dict[str, str | None] = {}
        self.tables: dict[str, int] = {}
        self.addresses: list[str] = []

    def read(self) -> bytes:
        raise BlockingIOError

    def write(self, packet: bytes) -> int:
        self.written.append(packet)
        return len(packet)

    def add_route(self, network: str, src: str | None = None, table: int = 254) -> None:
        assert network not in self.routes
        self.routes[network] = src
        self.tables[network] = table

    def del_route(self, network: str, table: int = 254) -> None:
        assert self.tables.pop(network) == table
        del self.routes[network]

    def add_address(self, cidr: str) -> None:
        self.addresses.append(cidr)

    def del_address(self, cidr: str) -> None:
        self.addresses.remove(cidr)


def ip_udp(src: str, dst: str, payload: bytes = b"data", sport: int = 1000) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = sport.to_bytes(2, "big") + b"\x00\x07" + (8 + len(payload)).to_bytes(2, "big")
    udp += b"\0\0" + payload
    if s.version == 4:
        head = b"\x45\x00" + (20 + len(udp)).to_bytes(2, "big") + bytes(4) + b"\x40\x11\0\0"
        return head + s.packed + d.packed + udp
    return b"\x60\0\0\0" + len(udp).to_bytes(2, "big") + b"\x11\x40" + s.packed + d.packed + udp


def params(
    n: int, side: str, cp: str, remote_ts: tuple[TsRange, ...] | None = None
) -> ChildSaParams:
    """Pair ``n``: the MN's view (``side="mn"``) or the gateway's of the same SAs."""
    to_gw, to_mn = (0xC1000000 + n).to_bytes(4, "big"), (0xC2000000 + n).to_bytes(4, "big")
    k1, k2 = bytes([n % 256]) * 16, bytes([(n + 100) % 256]) * 16
    i1, i2 = bytes([1]) * 32, bytes([2]) * 32
    mn_addr: Address = (f"192.0.2.{n + 1}", 4500) if n else MN_OUTER
    mn_side = side == "mn"
    cp_ts = (TsRange(cp, cp),)
    return ChildSaParams(
        spi_in=to_mn if mn_side else to_gw,
        spi_out=to_gw if mn_side else to_mn,
        encr_id=EncrId.AES_CBC,
        encr_key_bits=128,
        integ_id=IntegId.HMAC_SHA2_256_128,
        encr_key_in=k2 if mn_side else k1,
        integ_key_in=i2 if mn_side else i1,
        encr_key_out=k1 if mn_side else k2,
        integ_key_out=i1 if mn_side else i2,
        esn=False,
        local=mn_addr if mn_side else GW_OUTER,
        remote=GW_OUTER if mn_side else mn_addr,
        encap=True,
        local_ts=cp_ts if mn_side else (LAN,),
        remote_ts=remote_ts or ((LAN,) if mn_side else cp_ts),
    )


class Link:
    """MN and gateway datapaths whose UDP 4500 demuxes talk to each other."""

    def __init__(self) -> None:
        self.mn_tun, self.gw_tun = FakeTun(), FakeTun()
        self.ike_at_gw: list[tuple[bytes, Address]] = []
        self.keepalives_at_gw = 0
        self.mn_src: Address = MN_OUTER
        self.sent_by_gw: list[Address] = []
        self.gw_demux = Udp4500Demux(self._gw_send, on_ike=self._gw_ike)
        self.mn_demux = Udp4500Demux(lambda data, addr: self.gw_demux.receive(data, self.mn_src))
        self.mn = UserspaceDatapath(self.mn_tun, self.mn_demux.send_esp)
        self.gw = UserspaceDatapath(self.gw_tun, self.gw_demux.send_esp)
        self.mn_demux.on_esp = self.mn.esp_received
        self.gw_demux.on_esp = self.gw.esp_received

    def _gw_send(self, data: bytes, addr: Address) -> None:
        self.sent_by_gw.append(addr)
        self.mn_demux.receive(data, GW_OUTER)

    def _gw_ike(self, data: bytes, addr: Address) -> None:
        self.ike_at_gw.append((data, addr))


def test_echo_both_ways_and_counters() -> None:
    link = Link()
    datapath: Datapath = link.mn  # the datapath interface the glue programs against
    assert datapath is link.mn
    link.mn.install_child_sa(params(0, "mn", "10.9.0.1"))
    link.gw.install_child_sa(params(0, "gw", "10.9.0.1"))
    request = ip_udp("10.9.0.1", "10.1.0.1")
    assert link.mn.inner_packet(request) is None
    assert link.gw_tun.written == [request]
    reply = ip_udp("10.1.0.1", "10.9.0.1")
    assert link.gw.inner_packet(reply) is None
    assert link.mn_tun.written == [reply]
    mn, gw = (
        link.mn.counters(params(0, "mn", "").spi_in),
        link.gw.counters(params(0, "gw", "").spi_in),
    )
    assert (mn.packets_out, mn.packets_in, gw.packets_out, gw.packets_in) == (1, 1, 1, 1)
    assert mn.bytes_out == gw.bytes_in == len(request)
    assert link.gw_demux.counts[Udp4500Kind.ESP] == 1


def test_ike_and_keepalives_share_the_port() -> None:
    link = Link()
    link.mn_demux.send_ike(b"IKE message", GW_OUTER)
    link.mn_demux.send_keepalive(GW_OUTER)
    assert link.ike_at_gw == [(b"IKE message", MN_OUTER)]
    assert link.gw_demux.counts[Udp4500Kind.KEEPALIVE] == 1
    assert link.gw_demux.counts[Udp4500Kind.ESP] == 0


def test_gateway_with_many_mobile_nodes() -> None:
    link = Link()
    gw = link.gw
    pairs = [params(n, "gw", f"10.9.{n // 200}.{n % 200 + 1}") for n in range(1, 120)]
    for p in pairs:
        gw.install_child_sa(p)
    assert len(link.gw_tun.routes) == len(pairs)
    assert link.gw_tun.routes["10.9.0.2/32"] is None  # the LAN selector has no single source
    for p in pairs:
        cp = p.remote_ts[0].start
        assert gw.inner_packet(ip_udp("10.1.0.7", cp)) is None
        assert link.sent_by_gw[-1] == p.remote
        assert gw.counters(p.spi_in).packets_out == 1
    # Nothing for an address without an SA, nor from outside the LAN selector.
    assert gw.inner_packet(ip_udp("10.1.0.7", "10.9.9.9")) is DropReason.NO_SA
    assert gw.inner_packet(ip_udp("10.2.0.7", "10.9.0.1")) is DropReason.NO_SA
    assert gw.drops() == {"no-sa": 2}
    for p in pairs:
        gw.remove_child_sa(p.spi_in, p.spi_out)
    assert link.gw_tun.routes == {}


def test_inbound_selector_check() -> None:
    """RFC 4301 §5.2: a decrypted packet from outside the SA's selectors is dropped."""
    link = Link()
    link.gw.install_child_sa(params(0, "gw", "10.9.0.1"))
    # An MN that claims a wider selector than the gateway installed.
    wide = TsRange("10.9.0.0", "10.9.0.255")
    link.mn.install_child_sa(replace(params(0, "mn", "10.9.0.1"), local_ts=(wide,)))
    assert link.mn.inner_packet(ip_udp("10.9.0.2", "10.1.0.1")) is None
    assert link.gw_tun.written == []
    spi = params(0, "gw", "").spi_in
    assert link.gw.drops(spi) == {"policy": 1}
    assert link.gw.counters(spi).packets_in == 0


def test_mobile_node_routes() -> None:
    """Routes for the peer's selectors, with the CP address as source, minus the peer."""
    link = Link()
    everything = (TsRange("0.0.0.0", "255.255.255.255"), TsRange("::", "f" * 4 + ":" + "f" * 4))
    p = params(0, "mn", "10.9.0.1", remote_ts=(LAN,))
    link.mn.install_child_sa(p)
    assert link.mn_tun.routes == {"10.1.0.0/24": "10.9.0.1"}
    link.mn.remove_child_sa(p.spi_in, p.spi_out)
    assert link.mn_tun.routes == {}
    wide = params(0, "mn", "10.9.0.1", remote_ts=(everything[0],))
    link.mn.install_child_sa(wide)
    nets = [ipaddress.ip_network(n) for n in link.mn_tun.routes]
    gw_ip = ipaddress.ip_address(GW_OUTER[0])
    assert len(nets) == 32 and not any(gw_ip in n for n in nets)
    assert sum(n.num_addresses for n in nets) == 2**32 - 1


def test_update_addresses_keeps_sequence_and_replay_state() -> None:
    link = Link()
    mn_p, gw_p = params(0, "mn", "10.9.0.1"), params(0, "gw", "10.9.0.1")
    link.mn.install_child_sa(mn_p)
    link.gw.install_child_sa(gw_p)
    for _ in range(3):
        link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1"))
        link.gw.inner_packet(ip_udp("10.1.0.1", "10.9.0.1"))
    new_mn: Address = ("198.51.100.7", 4500)
    link.mn.move_child_sa(mn_p.spi_in, mn_p.spi_out, new_mn, GW_OUTER, True)
    link.gw.move_child_sa(gw_p.spi_in, gw_p.spi_out, GW_OUTER, new_mn, True)
    link.mn_src = new_mn
    link.gw.inner_packet(ip_udp("10.1.0.1", "10.9.0.1"))
    assert link.sent_by_gw[-1] == new_mn
    pair = link.gw.tunnels.by_spi_in[gw_p.spi_in]
    assert pair.outbound.seq == 4 and pair.inbound.window.top == 3
    assert link.gw.counters(gw_p.spi_in).packets_out == 4
    with pytest.raises(LocalProtocolError):
        link.gw.move_child_sa(b"\0\0\0\1", gw_p.spi_out, GW_OUTER, new_mn, True)


def test_removed_sa_and_refusals() -> None:
    link = Link()
    p = params(0, "gw", "10.9.0.1")
    link.gw.install_child_sa(p)
    with pytest.raises(LocalProtocolError):
        link.gw.install_child_sa(p)
    with pytest.raises(LocalProtocolError):
        link.gw.install_child_sa(replace(p, spi_in=b"\1\2\3\4", encap=False))
    link.mn.install_child_sa(params(0, "mn", "10.9.0.1"))
    link.gw.remove_child_sa(p.spi_in, p.spi_out)
    link.gw.remove_child_sa(p.spi_in, p.spi_out)  # idempotent
    link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1"))
    assert link.gw.drops() == {"unknown-spi": 1}


def test_reads_the_device_on_the_event_loop() -> None:
    """start() reads packets from the device's descriptor (a socketpair here)."""

    class PairTun(FakeTun):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self.sock = sock
            self.fd = sock.fileno()

        def read(self) -> bytes:
            return os.read(self.fd, 65535)

    async def run() -> list[Address]:
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        sent: list[Address] = []
        dp = UserspaceDatapath(PairTun(ours), lambda data, local, remote: sent.append(remote))
        dp.install_child_sa(params(0, "mn", "10.9.0.1"))
        dp.start()
        for _ in range(3):
            kernel.send(ip_udp("10.9.0.1", "10.1.0.1"))
        kernel.send(b"\x45junk")
        for _ in range(20):
            await asyncio.sleep(0.01)
            if len(sent) == 3:
                break
        dp.stop()
        ours.close()
        kernel.close()
        return sent

    assert asyncio.run(run()) == [GW_OUTER] * 3


def test_plain_esp_sender() -> None:
    """SAs without UDP encapsulation go to the plain-ESP sender, the others to UDP."""
    udp: list[Address] = []
    plain: list[Address] = []
    dp = UserspaceDatapath(
        FakeTun(),
        lambda data, local, remote: udp.append(remote),
        send_plain=lambda data, local, remote: plain.append(remote),
    )
    p = replace(params(0, "mn", "10.9.0.1"), encap=False)
    dp.install_child_sa(p)
    assert dp.inner_packet(ip_udp("10.9.0.1", "10.1.0.1")) is None
    assert (udp, plain) == ([], [GW_OUTER])
    dp.move_child_sa(p.spi_in, p.spi_out, MN_OUTER, GW_OUTER, True)
    assert dp.inner_packet(ip_udp("10.9.0.1", "10.1.0.1")) is None
    assert (udp, plain) == ([GW_OUTER], [GW_OUTER])


def test_rekey_moves_traffic_to_the_new_pair() -> None:
    """RFC 7296 §2.8: once the new pair is installed, outbound uses it; the old
    one still decrypts what was in flight until it is removed."""
    for cp, remote_ts in (("10.9.0.1", None), ("10.9.0.1", (LAN,))):
        link = Link()
        old_gw = params(0, "gw", cp)
        new_gw = replace(params(0, "gw", cp), spi_in=b"\xd0\0\0\1", spi_out=b"\xd0\0\0\2")
        old_mn = params(0, "mn", cp, remote_ts)
        new_mn = replace(old_mn, spi_in=b"\xd0\0\0\2", spi_out=b"\xd0\0\0\1")
        link.gw.install_child_sa(old_gw)
        link.mn.install_child_sa(old_mn)
        link.mn.inner_packet(ip_udp(cp, "10.1.0.1"))
        link.gw.install_child_sa(new_gw)
        link.mn.install_child_sa(new_mn)
        link.mn.inner_packet(ip_udp(cp, "10.1.0.1"))
        link.gw.inner_packet(ip_udp("10.1.0.1", cp))
        assert link.gw.counters(old_gw.spi_in).packets_in == 1
        assert link.gw.counters(new_gw.spi_in).packets_in == 1
        assert link.gw.counters(new_gw.spi_in).packets_out == 1
        assert link.mn.counters(new_mn.spi_in).packets_in == 1
        link.gw.remove_child_sa(old_gw.spi_in, old_gw.spi_out)
        link.mn.remove_child_sa(old_mn.spi_in, old_mn.spi_out)
        assert link.gw_tun.routes  # still routed for the new pair
        assert link.mn.inner_packet(ip_udp(cp, "10.1.0.1")) is None
        assert link.gw.counters(new_gw.spi_in).packets_in == 2


def test_mapping_change_is_reported_not_applied() -> None:
    """ESP from a new outer address is delivered and reported once; the SA stays put."""
    link = Link()
    mn_p, gw_p = params(0, "mn", "10.9.0.1"), params(0, "gw", "10.9.0.1")
    link.mn.install_child_sa(mn_p)
    link.gw.install_child_sa(gw_p)
    reports: list[tuple[bytes, bytes, Address]] = []
    link.gw.on_mapping = lambda spi_in, spi_out, src: reports.append((spi_in, spi_out, src))
    link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1"))
    assert reports == [] and gw_p.spi_in in link.gw.last_inbound
    link.mn_src = ("198.51.100.9", 4501)  # a NAT rebinding
    for _ in range(3):
        link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1"))
    assert reports == [(gw_p.spi_in, gw_p.spi_out, ("198.51.100.9", 4501))]
    assert len(link.gw_tun.written) == 4
    link.gw.inner_packet(ip_udp("10.1.0.1", "10.9.0.1"))
    assert link.sent_by_gw[-1] == MN_OUTER  # not moved by the datapath itself
    link.gw.move_child_sa(gw_p.spi_in, gw_p.spi_out, GW_OUTER, link.mn_src, True)
    link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1"))
    assert len(reports) == 1


def test_inner_addresses() -> None:
    link = Link()
    link.mn.add_inner_address("10.9.0.1")
    link.mn.add_inner_address("fd00:9::1")
    assert link.mn_tun.addresses == ["10.9.0.1/32", "fd00:9::1/128"]
    link.mn.del_inner_address("10.9.0.1")
    assert link.mn_tun.addresses == ["fd00:9::1/128"]


def test_sequence_expiry_events() -> None:
    """Soft expiry once, SEQ_SOFT_MARGIN numbers before the end; hard once at the end."""
    link = Link()
    p = params(0, "mn", "10.9.0.1")
    link.mn.install_child_sa(p)
    expiries: list[Expiry] = []
    link.mn.on_expire = expiries.append
    out = link.mn.tunnels.by_spi_in[p.spi_in].outbound
    out.seq = out.soft_limit - 2
    for _ in range(3):
        assert link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1")) is None
    assert expiries == [Expiry(p.spi_in, p.spi_out, hard=False)]
    out.seq = 0xFFFFFFFE
    assert link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1")) is None
    for _ in range(2):
        assert link.mn.inner_packet(ip_udp("10.9.0.1", "10.1.0.1")) is DropReason.SEQ_EXHAUSTED
    assert expiries[1:] == [Expiry(p.spi_in, p.spi_out, hard=True)]
    assert link.mn.drops(p.spi_in) == {"seq-exhausted": 2}
    assert out.soft_limit == 0xFFFFFFFF - SEQ_SOFT_MARGIN
