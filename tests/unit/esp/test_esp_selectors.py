"""Traffic selectors in the ESP tables: addresses, protocols, ports (RFC 4301 §4.4.1)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from mpa_ike.constants import EncrId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.esp import DropReason, EspTunnels, PacketKeys, Selector, packet_keys

KEY = bytes(range(20))


def packet(src: str, dst: str, proto: int = 17, sport: int = 1000, dport: int = 53) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    l4 = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)
    if s.version == 4:
        head = b"\x45\x00" + (28).to_bytes(2, "big") + bytes(4) + bytes([64, proto, 0, 0])
        return head + s.packed + d.packed + l4
    return b"\x60\0\0\0" + (8).to_bytes(2, "big") + bytes([proto, 64]) + s.packed + d.packed + l4


def install(
    t: EspTunnels, n: int, local: tuple[TsRange, ...], remote: tuple[TsRange, ...]
) -> ChildSaParams:
    p = ChildSaParams(
        spi_in=(0x100 + n).to_bytes(4, "big"),
        spi_out=(0x200 + n).to_bytes(4, "big"),
        encr_id=EncrId.AES_GCM_16,
        encr_key_bits=128,
        integ_id=None,
        encr_key_in=KEY,
        integ_key_in=b"",
        encr_key_out=KEY,
        integ_key_out=b"",
        esn=False,
        local=("192.0.2.1", 4500),
        remote=("192.0.2.2", 4500),
        encap=True,
        local_ts=local,
        remote_ts=remote,
    )
    t.install(p)
    return p


def test_protocol_and_port_selectors() -> None:
    t = EspTunnels()
    anywhere = (TsRange("0.0.0.0", "255.255.255.255"),)
    dns = install(t, 1, anywhere, (TsRange("10.1.0.53", "10.1.0.53", 17, 53, 53),))
    web = install(t, 2, anywhere, (TsRange("10.1.0.0", "10.1.0.255", 6, 443, 443),))
    rest = install(t, 3, anywhere, (TsRange("10.1.0.0", "10.1.0.255"),))

    def spi_for(pkt: bytes) -> bytes | DropReason:
        pair = t.lookup_outbound(pkt)
        return pair if isinstance(pair, DropReason) else pair.outbound.spi

    # Newest first: "rest" was installed last and covers everything in 10.1.0.0/24.
    assert spi_for(packet("10.9.0.1", "10.1.0.53")) == rest.spi_out
    t.remove(rest.spi_in)
    assert spi_for(packet("10.9.0.1", "10.1.0.53")) == dns.spi_out
    assert spi_for(packet("10.9.0.1", "10.1.0.53", dport=54)) is DropReason.NO_SA
    assert spi_for(packet("10.9.0.1", "10.1.0.53", proto=6)) is DropReason.NO_SA
    assert spi_for(packet("10.9.0.1", "10.1.0.9", proto=6, dport=443)) == web.spi_out
    assert spi_for(packet("10.9.0.1", "10.1.0.9", proto=6, dport=80)) is DropReason.NO_SA
    assert spi_for(b"\x45") is DropReason.MALFORMED


def test_non_first_fragments_match_only_portless_selectors() -> None:
    t = EspTunnels()
    anywhere = (TsRange("0.0.0.0", "255.255.255.255"),)
    install(t, 1, anywhere, (TsRange("10.1.0.53", "10.1.0.53", 17, 53, 53),))
    frag = bytearray(packet("10.9.0.1", "10.1.0.53"))
    frag[6:8] = (185).to_bytes(2, "big")  # fragment offset 185 * 8
    keys = packet_keys(bytes(frag))
    assert keys is not None and keys.dst_port is None
    assert t.lookup_outbound(bytes(frag)) is DropReason.NO_SA


def test_ipv6_selectors() -> None:
    t = EspTunnels()
    mn = install(
        t,
        1,
        (TsRange("fd00:1::", "fd00:1::ffff"),),
        (TsRange("fd00:9::1", "fd00:9::1"),),
    )
    pair = t.lookup_outbound(packet("fd00:1::5", "fd00:9::1"))
    assert not isinstance(pair, DropReason) and pair.inbound.spi == mn.spi_in
    assert t.lookup_outbound(packet("fd00:2::5", "fd00:9::1")) is DropReason.NO_SA
    assert t.lookup_outbound(packet("10.1.0.5", "10.9.0.1")) is DropReason.NO_SA
    keys = packet_keys(packet("fd00:1::5", "fd00:9::1", proto=6, sport=7, dport=8))
    assert keys == PacketKeys(
        6, int(ipaddress.ip_address("fd00:1::5")), int(ipaddress.ip_address("fd00:9::1")), 6, 7, 8
    )


addresses = st.integers(0, 2**32 - 1)


@given(addresses, addresses, addresses, st.integers(0, 255), st.integers(0, 0xFFFF))
def test_selector_matches_like_ipaddress(a: int, b: int, addr: int, proto: int, port: int) -> None:
    start, end = sorted((a, b))
    ts = TsRange(str(ipaddress.IPv4Address(start)), str(ipaddress.IPv4Address(end)), 17, 1000, 2000)
    sel = Selector.from_ts(ts)
    expected = start <= addr <= end and proto == 17 and 1000 <= port <= 2000
    assert sel.matches(addr, proto, port) == expected
    assert not sel.matches(addr, proto, None)


def test_ipv6_extension_headers_and_fragments() -> None:
    base = packet("fd00:1::5", "fd00:9::1", proto=17, sport=7, dport=53)
    header, l4 = base[:40], base[40:]
    # Hop-by-hop options (8 bytes), then a first fragment, then UDP.
    hop = bytes([44, 0]) + bytes(6)
    first = bytes([17, 0]) + (0).to_bytes(2, "big") + bytes(4)
    chained = header[:6] + bytes([0]) + header[7:] + hop + first + l4
    keys = packet_keys(chained)
    assert keys is not None and (keys.protocol, keys.src_port, keys.dst_port) == (17, 7, 53)
    # A later fragment: the protocol is known, the ports are not.
    later = bytes([17, 0]) + (185 << 3).to_bytes(2, "big") + bytes(4)
    keys = packet_keys(header[:6] + bytes([44]) + header[7:] + later + l4)
    assert keys is not None and (keys.protocol, keys.dst_port) == (17, None)
    # Truncated extension headers never raise.
    for cut in range(40, len(chained)):
        packet_keys(chained[:cut])
