"""CP address assignment, traffic selector narrowing, identities, certificates, datapath."""

from __future__ import annotations

import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded
from core_pki import Pki
from cryptography.hazmat.primitives import serialization

from gateway.pool import AddressPool
from mpa_ike.certificates import certificate_names, verify_peer_certificate
from mpa_ike.config_payload import build_reply, build_request, parse_reply, parse_request
from mpa_ike.constants import CertEncoding, IdType, NotifyType
from mpa_ike.datapath import RecordingDatapath
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import RemoteProtocolError
from mpa_ike.events import ChildSaEstablished, ChildSaFailed, IkeSaEstablished
from mpa_ike.identity import parse_identity
from mpa_ike.traffic_selectors import acceptable_answer, narrow, parse_range, to_range
from mpa_ike.wire import TrafficSelector


def run(
    pki: Pki, pool: AddressPool[Any], mobile: Endpoint | None = None, seed: int = 2, **options: Any
) -> Link:
    gateway = Endpoint(random=seeded(seed), responder=responder_config(pool, credential=pki.rsa))
    link = Link(mobile or Endpoint(random=seeded(1)), gateway)
    link.mobile.initiate(initiator_config(ca=pki.ca.cert, **options), MOBILE, GATEWAY, 0.0)
    link.run()
    return link


def test_dual_stack_addresses(pki: Pki) -> None:
    pool: AddressPool[Any] = AddressPool(
        [IPv4Network("10.10.0.0/28"), IPv6Network("2001:db8:b::/64")]
    )
    link = run(pki, pool, virtual_ip_families=(4, 6))
    established = link.of_type(IkeSaEstablished)[0]
    assert isinstance(established, IkeSaEstablished)
    assert established.assigned_addresses == (
        IPv4Address("10.10.0.1"),
        ip_address("2001:db8:b::1"),
    )
    child = link.of_type(ChildSaEstablished)[0]
    assert isinstance(child, ChildSaEstablished)
    assert [str(r) for r in child.params.local_ts] == ["10.10.0.1", "2001:db8:b::1"]


def test_pool_exhausted_fails_child_only(pki: Pki) -> None:
    pool: AddressPool[Any] = AddressPool([IPv4Network("10.10.0.1/32")])
    first = run(pki, pool)
    assert first.of_type(ChildSaEstablished)
    second = run(pki, pool, mobile=Endpoint(random=seeded(5)), seed=6)
    assert second.of_type(IkeSaEstablished)
    (failed,) = second.of_type(ChildSaFailed)
    assert isinstance(failed, ChildSaFailed)
    assert failed.notify == NotifyType.INTERNAL_ADDRESS_FAILURE


def test_peer_claiming_nat_gets_udp_encapsulation(pki: Pki, pool: AddressPool[Any]) -> None:
    """strongSwan's encap=yes fakes NAT-D: both sides must encapsulate ESP."""
    link = run(pki, pool, force_encap=True, mobike=False)
    for side in ("mobile", "gateway"):
        child = link.of_type(ChildSaEstablished, side)[0]
        assert isinstance(child, ChildSaEstablished) and child.params.encap
        assert child.params.local[1] == 4500 and child.params.remote[1] == 4500


def test_recording_datapath_takes_child_sa_events(pki: Pki, pool: AddressPool[Any]) -> None:
    link = run(pki, pool)
    datapath = RecordingDatapath()
    for event in link.mobile_events:
        if isinstance(event, ChildSaEstablished):
            datapath.install_child_sa(event.params)
    (params,) = datapath.installed.values()
    datapath.move_child_sa(params.spi_in, params.spi_out, ("10.0.0.1", 4500), GATEWAY, True)
    datapath.remove_child_sa(params.spi_in, params.spi_out)
    assert [c.method for c in datapath.calls] == [
        "install_child_sa",
        "move_child_sa",
        "remove_child_sa",
    ]
    assert not datapath.installed
    assert "encr_key_in" not in repr(params).split("encr_id")[0]


def _ts(text: str) -> TrafficSelector:
    return TrafficSelector.from_network(ip_network(text))


def test_narrowing() -> None:
    proposed = [_ts("0.0.0.0/0"), _ts("::/0")]
    assert narrow(proposed, [parse_range("10.10.0.1")]) == (parse_range("10.10.0.1"),)
    assert narrow([_ts("192.168.0.0/16")], [_ts("10.0.0.0/8")]) == ()
    narrowed = narrow([_ts("10.0.0.0/8")], [_ts("10.1.0.0/16"), _ts("0.0.0.0/0")])
    assert [str(to_range(t)) for t in narrowed] == [
        "10.1.0.0-10.1.255.255",
        "10.0.0.0-10.255.255.255",
    ]
    assert acceptable_answer([parse_range("10.10.0.1")], [_ts("0.0.0.0/0")])
    assert not acceptable_answer([_ts("0.0.0.0/0")], [_ts("10.0.0.0/8")])
    assert not acceptable_answer([], [_ts("10.0.0.0/8")])


def test_cp_round_trip() -> None:
    request = parse_request(build_request([4, 6]))
    assert request.addresses == {4: None, 6: None} and request.dns
    reply = parse_reply(
        build_reply(
            [IPv4Address("10.0.0.5"), ip_address("2001:db8::5")],
            [IPv4Address("10.0.0.53"), ip_address("2001:db8::53")],
            [4, 6],
        )
    )
    assert [str(a) for a in reply.addresses] == ["10.0.0.5", "2001:db8::5"]
    assert [str(a) for a in reply.dns] == ["10.0.0.53", "2001:db8::53"]


def test_identities() -> None:
    assert parse_identity("192.0.2.1").id_type == IdType.IPV4_ADDR
    assert parse_identity("2001:db8::1").id_type == IdType.IPV6_ADDR
    assert parse_identity("alice@example.net").id_type == IdType.RFC822_ADDR
    assert parse_identity("@gw.example.net").data == b"gw.example.net"
    assert parse_identity("CN=gw, O=mpa-ike").id_type == IdType.DER_ASN1_DN
    assert str(parse_identity("gw.example.net")) == "gw.example.net"


def test_certificate_checks(pki: Pki) -> None:
    cert = pki.rsa.chain[0]
    assert certificate_names(cert, parse_identity("gw.example.net"))
    assert not certificate_names(cert, parse_identity("other.example.net"))
    assert certificate_names(cert, parse_identity(cert.subject.rfc4514_string()))
    now = datetime.datetime.now(datetime.UTC)
    payloads = pki.chain.cert_payloads()
    verify_peer_certificate(payloads, [pki.ca.cert], parse_identity("gw.example.net"), now)
    for cas, when in (([pki.other_ca.cert], now), ([pki.ca.cert], now.replace(year=now.year + 5))):
        try:
            verify_peer_certificate(payloads, cas, parse_identity("gw.example.net"), when)
        except RemoteProtocolError as error:
            assert error.notify == NotifyType.AUTHENTICATION_FAILED
        else:
            raise AssertionError("an untrusted or expired chain was accepted")


def test_cert_payloads_are_the_chain_in_der_each_time_a_new_list(pki: Pki) -> None:
    """Encoded once per credential (every IKE_AUTH response carries them); each call
    still hands out a list of its own, end entity first."""
    der = serialization.Encoding.DER
    first = pki.chain.cert_payloads()
    assert [p.data for p in first] == [c.public_bytes(der) for c in pki.chain.chain]
    assert all(p.encoding == CertEncoding.X509_SIGNATURE for p in first)
    first.append(first[0])
    assert pki.chain.cert_payloads() == first[:-1]


def test_ts_unacceptable_fails_child_only(pki: Pki, pool: AddressPool[Any]) -> None:
    gateway = Endpoint(
        random=seeded(2),
        responder=responder_config(pool, credential=pki.rsa, local_ts="10.0.0.0/8"),
    )
    link = Link(Endpoint(random=seeded(1)), gateway)
    config = initiator_config(ca=pki.ca.cert, remote_ts="192.168.0.0/16")
    link.mobile.initiate(config, MOBILE, GATEWAY, 0.0)
    link.run()
    for side in ("mobile", "gateway"):
        assert link.of_type(IkeSaEstablished, side)
        (failed,) = link.of_type(ChildSaFailed, side)
        assert isinstance(failed, ChildSaFailed) and failed.notify == NotifyType.TS_UNACCEPTABLE


def test_tsr_narrowed_to_gateway_policy(pki: Pki, pool: AddressPool[Any]) -> None:
    gateway = Endpoint(
        random=seeded(2),
        responder=responder_config(pool, credential=pki.rsa, local_ts="10.20.0.0/16"),
    )
    link = Link(Endpoint(random=seeded(1)), gateway)
    link.mobile.initiate(initiator_config(ca=pki.ca.cert), MOBILE, GATEWAY, 0.0)
    link.run()
    child = link.of_type(ChildSaEstablished)[0]
    assert isinstance(child, ChildSaEstablished)
    assert [str(r) for r in child.params.remote_ts] == ["10.20.0.0-10.20.255.255"]


def test_delete_all_on_shutdown(pki: Pki, pool: AddressPool[Any]) -> None:
    link = run(pki, pool)
    link.gateway.delete_all(link.now)
    link.run()
    assert not list(link.gateway) and not list(link.mobile)
    assert pool.available(4) == pool.size(4)


def test_non_esp_marker_framing() -> None:
    from mpa_ike.datagram import Datagram, frame_for_socket, unframe_from_socket

    on_500 = Datagram(b"ike", ("192.0.2.1", 500), ("192.0.2.2", 500))
    on_4500 = Datagram(b"ike", ("192.0.2.1", 4500), ("192.0.2.2", 4500))
    assert frame_for_socket(on_500) == b"ike"
    assert frame_for_socket(on_4500) == b"\x00\x00\x00\x00ike"
    assert unframe_from_socket(b"\x00\x00\x00\x00ike", 4500) == b"ike"
    assert unframe_from_socket(b"\xff", 4500) is None  # NAT keepalive
    assert unframe_from_socket(b"\x12\x34\x56\x78esp", 4500) is None  # ESP
    assert unframe_from_socket(b"ike", 500) == b"ike"


def test_ipv6_outer_addresses_with_fragments(pki: Pki, pool: AddressPool[Any]) -> None:
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, credential=pki.chain))
    link = Link(Endpoint(random=seeded(1)), gateway)
    mobile, gw = ("2001:db8:a::10", 500), ("2001:db8:b::1", 500)
    link.mobile.initiate(initiator_config(ca=pki.ca.cert), mobile, gw, 0.0)
    link.run()
    established = link.of_type(IkeSaEstablished, "gateway")[0]
    assert isinstance(established, IkeSaEstablished)
    assert established.remote == ("2001:db8:a::10", 4500) and not established.nat_detected
    assert max(len(t.datagram.data) for t in link.log) <= 1280 - 40 - 8 - 4
