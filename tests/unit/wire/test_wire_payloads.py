"""Every payload type and every NotifyType round-trips byte for byte; body checks."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface

import pytest
from wire_samples import ALL_PAYLOADS, ESP_PROPOSAL, IKE_PROPOSAL, PLAIN_PAYLOADS

from mpa_ike.constants import (
    CertEncoding,
    CfgAttrType,
    DhGroup,
    EncrId,
    HashAlgorithm,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from mpa_ike.errors import CodecError, LocalProtocolError
from mpa_ike.wire import (
    CertReqPayload,
    CfgAttribute,
    IdiPayload,
    NotifyPayload,
    Payload,
    Transform,
    UnknownPayload,
    VendorIdPayload,
    parse_payload_chain,
    serialize_payload_chain,
)
from mpa_ike.wire import notify as nd


def round_trip(payloads: list[Payload]) -> bytes:
    first, data = serialize_payload_chain(payloads)
    assert parse_payload_chain(first, data) == payloads
    assert serialize_payload_chain(parse_payload_chain(first, data)) == (first, data)
    return data


@pytest.mark.parametrize("name", sorted(ALL_PAYLOADS))
def test_every_payload_type_round_trips(name: str) -> None:
    round_trip([ALL_PAYLOADS[name]])


# An unknown payload with the critical bit is rejected instead (tested elsewhere).
KNOWN_PLAIN_PAYLOADS = {
    name: payload
    for name, payload in PLAIN_PAYLOADS.items()
    if not isinstance(payload, UnknownPayload)
}


@pytest.mark.parametrize("name", sorted(KNOWN_PLAIN_PAYLOADS))
def test_critical_bit_survives_round_trip(name: str) -> None:
    payload = KNOWN_PLAIN_PAYLOADS[name]
    data = round_trip([replace(payload, critical=True)])
    assert data[1] == 0x80


@pytest.mark.parametrize("notify_type", list(NotifyType))
def test_every_notify_type_round_trips(notify_type: NotifyType) -> None:
    payload = NotifyPayload(notify_type, ProtocolId.ESP, b"\x00\x00\x10\x01", b"data")
    data = round_trip([payload])
    assert data[6:8] == int(notify_type).to_bytes(2, "big")


def test_chain_of_all_plain_payloads_then_sk() -> None:
    chain = [*PLAIN_PAYLOADS.values(), ALL_PAYLOADS["sk"]]
    data = round_trip(chain)
    assert len(data) > 500


def test_unassigned_code_points_are_kept() -> None:
    transform = Transform(TransformType(77), 4242)
    notify = NotifyPayload(NotifyType(30000), ProtocolId(9), b"\x01", b"")
    round_trip([IdiPayload(IdType(200), b"x"), notify])
    assert transform.typed_id == 4242
    assert Transform(TransformType.ENCR, 20).typed_id is EncrId.AES_GCM_16


def test_transform_key_length() -> None:
    assert IKE_PROPOSAL.transforms[0].key_length == 256
    assert ESP_PROPOSAL.transforms[1].key_length is None


def test_rest_of_id_payload_keeps_reserved_octets() -> None:
    payload = IdiPayload(IdType.FQDN, b"gw", reserved=0xABCDEF)
    assert payload.rest_of_id_payload() == b"\x02\xab\xcd\xefgw"
    assert parse_payload_chain(*serialize_payload_chain([payload])) == [payload]


def test_certreq_authority_hashes() -> None:
    certreq = CertReqPayload(CertEncoding.X509_SIGNATURE, bytes(40))
    assert certreq.authority_key_hashes() == [bytes(20)] * 2
    with pytest.raises(CodecError):
        CertReqPayload(CertEncoding.X509_SIGNATURE, bytes(21)).authority_key_hashes()


def test_unknown_payload_without_critical_bit_is_kept() -> None:
    data = bytes.fromhex("00000008") + b"abcd"
    assert parse_payload_chain(PayloadType(100), data) == [
        UnknownPayload(PayloadType(100), b"abcd")
    ]


def test_unknown_critical_payload_names_its_type() -> None:
    data = bytes.fromhex("00800008") + b"abcd"
    with pytest.raises(CodecError) as info:
        parse_payload_chain(PayloadType(100), data)
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert info.value.data == b"\x64"


def test_sk_must_be_last_when_serializing() -> None:
    with pytest.raises(LocalProtocolError):
        serialize_payload_chain([ALL_PAYLOADS["sk"], ALL_PAYLOADS["nonce"]])


def test_out_of_range_values_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        serialize_payload_chain([NotifyPayload(NotifyType(70000))])
    with pytest.raises(LocalProtocolError):
        serialize_payload_chain([VendorIdPayload(bytes(70000))])


@pytest.mark.parametrize(
    ("body_hex", "why"),
    [
        ("03040000", "ESP notify with a 4-octet SPI size but no SPI"),
        ("0302" + "0000" + "0102", "ESP notify with a 2-octet SPI"),
        ("01020000" + "0102", "IKE notify with a 2-octet SPI"),
    ],
)
def test_notify_spi_size_checks(body_hex: str, why: str) -> None:
    body = bytes.fromhex(body_hex)
    data = bytes((0, 0)) + (4 + len(body)).to_bytes(2, "big") + body
    with pytest.raises(CodecError):
        parse_payload_chain(PayloadType.NOTIFY, data)


@pytest.mark.parametrize(
    "body_hex",
    [
        "01080000",  # IKE delete with an 8-octet SPI size
        "03040002" + "01020304",  # two ESP SPIs announced, one present
        "03020001" + "0102",  # ESP SPI of 2 octets
    ],
)
def test_delete_checks(body_hex: str) -> None:
    body = bytes.fromhex(body_hex)
    data = bytes((0, 0)) + (4 + len(body)).to_bytes(2, "big") + body
    with pytest.raises(CodecError):
        parse_payload_chain(PayloadType.DELETE, data)


@pytest.mark.parametrize("size", [0, 15, 257])
def test_nonce_length_limits(size: int) -> None:
    data = bytes((0, 0)) + (4 + size).to_bytes(2, "big") + bytes(size)
    with pytest.raises(CodecError):
        parse_payload_chain(PayloadType.NONCE, data)


# -- notify data helpers ----------------------------------------------------


def test_nat_detection_hash_and_notify() -> None:
    digest = nd.nat_detection_hash(bytes(8), bytes(8), IPv4Address("192.0.2.1"), 500)
    expected = hashlib.sha1(bytes(16) + b"\xc0\x00\x02\x01\x01\xf4").digest()
    assert digest == expected
    notify = nd.nat_detection_notify(NotifyType.NAT_DETECTION_SOURCE_IP, digest)
    assert nd.read_nat_detection(notify) == digest
    with pytest.raises(CodecError):
        nd.read_nat_detection(NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=b"x"))


def test_invalid_ke_group() -> None:
    notify = nd.invalid_ke_notify(DhGroup.MODP2048)
    assert notify.data == b"\x00\x0e"
    assert nd.read_invalid_ke_group(notify) is DhGroup.MODP2048
    with pytest.raises(CodecError):
        nd.read_invalid_ke_group(NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, data=b"\x0e"))


def test_signature_hash_algorithms() -> None:
    algorithms = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_512, HashAlgorithm(99))
    notify = nd.signature_hash_algorithms_notify(algorithms)
    assert notify.data == bytes.fromhex("000200040063")
    assert nd.read_signature_hash_algorithms(notify) == algorithms
    with pytest.raises(CodecError):
        nd.read_signature_hash_algorithms(NotifyPayload(notify.notify_type, data=b"\x00"))


def test_cookies() -> None:
    assert nd.read_cookie(nd.cookie_notify(b"c")) == b"c"
    assert nd.read_cookie2(nd.cookie2_notify(bytes(8))) == bytes(8)
    for bad in (b"", bytes(65)):
        with pytest.raises(CodecError):
            nd.read_cookie(nd.cookie_notify(bad))
    with pytest.raises(CodecError):
        nd.read_cookie2(nd.cookie2_notify(bytes(7)))


def test_additional_addresses() -> None:
    for address in (IPv4Address("198.51.100.7"), IPv6Address("2001:db8::7")):
        notify = nd.additional_address_notify(address)
        assert nd.read_additional_address(notify) == address
    assert nd.additional_address_notify(IPv4Address("1.2.3.4")).notify_type == (
        NotifyType.ADDITIONAL_IP4_ADDRESS
    )
    with pytest.raises(CodecError):
        nd.read_additional_address(NotifyPayload(NotifyType.ADDITIONAL_IP6_ADDRESS, data=bytes(4)))


def test_no_nats_allowed() -> None:
    src, dst = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
    notify = nd.no_nats_allowed_notify(src, dst, 4500, 500)
    assert notify.data == bytes.fromhex("c0000201c0000202119401f4")
    assert nd.read_no_nats_allowed(notify) == nd.NoNatsAllowed(src, dst, 4500, 500)
    v6 = nd.no_nats_allowed_notify(IPv6Address("::1"), IPv6Address("::2"), 1, 2)
    assert nd.read_no_nats_allowed(v6).dst_addr == IPv6Address("::2")
    with pytest.raises(LocalProtocolError):
        nd.no_nats_allowed_notify(src, IPv6Address("::2"), 1, 2)
    with pytest.raises(CodecError):
        nd.read_no_nats_allowed(NotifyPayload(NotifyType.NO_NATS_ALLOWED, data=bytes(13)))


def test_rekey_sa_and_window_size() -> None:
    notify = nd.rekey_sa_notify(b"\x01\x02\x03\x04")
    assert nd.read_rekey_sa(notify) == (ProtocolId.ESP, b"\x01\x02\x03\x04")
    with pytest.raises(CodecError):
        nd.read_rekey_sa(NotifyPayload(NotifyType.REKEY_SA))
    assert nd.read_set_window_size(nd.set_window_size_notify(5)) == 5


# -- configuration attribute helpers ---------------------------------------


def test_cfg_attribute_addresses() -> None:
    request = CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS)
    assert request.value == b""
    assert request.as_ipv4() is None
    reply = CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS, IPv4Address("10.0.0.9"))
    assert reply.as_ipv4() == IPv4Address("10.0.0.9")
    prefixed = CfgAttribute.ipv6_prefixed(
        CfgAttrType.INTERNAL_IP6_ADDRESS, IPv6Interface("2001:db8::9/64")
    )
    assert len(prefixed.value) == 17
    assert prefixed.as_ipv6_prefixed() == IPv6Interface("2001:db8::9/64")
    assert CfgAttribute.ipv6_prefixed(CfgAttrType.INTERNAL_IP6_ADDRESS).as_ipv6_prefixed() is None
    dns = CfgAttribute.ipv6(CfgAttrType.INTERNAL_IP6_DNS, IPv6Address("2001:db8::53"))
    assert dns.as_ipv6() == IPv6Address("2001:db8::53")
    subnet = CfgAttribute(CfgAttrType.INTERNAL_IP4_SUBNET, bytes.fromhex("0a000000ffff0000"))
    assert subnet.as_ipv4_subnet() == IPv4Network("10.0.0.0/16")


@pytest.mark.parametrize(
    ("attribute", "reader"),
    [
        (CfgAttribute(CfgAttrType.INTERNAL_IP4_ADDRESS, bytes(5)), CfgAttribute.as_ipv4),
        (CfgAttribute(CfgAttrType.INTERNAL_IP6_DNS, bytes(4)), CfgAttribute.as_ipv6),
        (CfgAttribute(CfgAttrType.INTERNAL_IP6_ADDRESS, bytes(16)), CfgAttribute.as_ipv6_prefixed),
        (
            CfgAttribute(CfgAttrType.INTERNAL_IP6_ADDRESS, bytes(16) + b"\x81"),
            CfgAttribute.as_ipv6_prefixed,
        ),
        (
            CfgAttribute(CfgAttrType.INTERNAL_IP4_SUBNET, bytes.fromhex("0a000000ff00ff00")),
            CfgAttribute.as_ipv4_subnet,
        ),
    ],
)
def test_cfg_attribute_bad_values(attribute: CfgAttribute, reader: object) -> None:
    with pytest.raises(CodecError):
        reader(attribute)  # type: ignore[operator]
