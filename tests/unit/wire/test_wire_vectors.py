"""Hand-built vectors, laid out field by field after the RFC structure diagrams.

Source: the figures of RFC 7296 §3.1-3.16 and RFC 7383 §2.5, encoded by hand
(RFC 7296 has no wire test vectors). Each vector is parsed, checked field by
field, and re-serialized to the same bytes.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from mpa_ike.constants import (
    AuthMethod,
    CfgAttrType,
    CfgType,
    DhGroup,
    EncrId,
    ExchangeType,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
)
from mpa_ike.wire import (
    AuthPayload,
    CfgAttribute,
    ConfigurationPayload,
    DeletePayload,
    EapPayload,
    EncryptedFragmentPayload,
    EncryptedPayload,
    IdiPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    parse_message,
    parse_payload_chain,
    serialize_message,
    serialize_payload_chain,
)


def hexbytes(*fields: str) -> bytes:
    return bytes.fromhex("".join(fields).replace(" ", ""))


KE_DATA = bytes(range(64))
NONCE = bytes(range(100, 132))
NATD = bytes(range(20))

# RFC 7296 §1.2 IKE_SA_INIT request: HDR, SAi1, KEi, Ni, plus N(NAT_DETECTION_SOURCE_IP).
IKE_SA_INIT_REQUEST = hexbytes(
    # §3.1 IKE header
    "0123456789abcdef",  # IKE SA Initiator's SPI
    "0000000000000000",  # IKE SA Responder's SPI (zero in the first message)
    "21",  # Next Payload: SA (33)
    "20",  # MjVer 2, MnVer 0
    "22",  # Exchange Type: IKE_SA_INIT (34)
    "08",  # Flags: Initiator
    "00000000",  # Message ID
    "000000d4",  # Length: 212
    # §3.3 SA payload
    "22 00 0030",  # Next: KE, not critical, length 48
    # §3.3.1 Proposal substructure
    "00 00 002c",  # Last Substruc 0 (last), RESERVED, Proposal Length 44
    "01 01 00 04",  # Proposal Num 1, Protocol IKE, SPI Size 0, 4 transforms
    # §3.3.2 Transform substructures
    "03 00 000c 01 00 000c",  # more, length 12, ENCR, AES-CBC
    "800e 0100",  # §3.3.5 TV attribute: Key Length 256
    "03 00 0008 02 00 0005",  # more, PRF, HMAC-SHA2-256
    "03 00 0008 03 00 000c",  # more, INTEG, HMAC-SHA2-256-128
    "00 00 0008 04 00 0013",  # last, DH, group 19
    # §3.4 Key Exchange payload
    "28 00 0048",  # Next: Nonce, length 72
    "0013 0000",  # DH Group 19, RESERVED
    KE_DATA.hex(),
    # §3.9 Nonce payload
    "29 00 0024",  # Next: Notify, length 36
    NONCE.hex(),
    # §3.10 Notify payload
    "00 00 001c",  # Next: none, length 28
    "00 00 4004",  # Protocol 0, SPI Size 0, NAT_DETECTION_SOURCE_IP
    NATD.hex(),
)


def test_ike_sa_init_request() -> None:
    msg = parse_message(IKE_SA_INIT_REQUEST)
    header = msg.header
    assert header.spi_i == bytes.fromhex("0123456789abcdef")
    assert header.spi_r == bytes(8)
    assert header.exchange_type is ExchangeType.IKE_SA_INIT
    assert header.is_initiator and not header.is_response
    assert (header.major_version, header.minor_version) == (2, 0)
    assert header.length == len(IKE_SA_INIT_REQUEST) == 212

    sa, ke, nonce, natd = msg.payloads
    assert isinstance(sa, SaPayload)
    (proposal,) = sa.proposals
    assert (proposal.number, proposal.protocol_id, proposal.spi) == (1, ProtocolId.IKE, b"")
    encr, prf, integ, dh = proposal.transforms
    assert (encr.type, encr.id, encr.key_length) == (TransformType.ENCR, EncrId.AES_CBC, 256)
    assert (prf.type, prf.typed_id) == (TransformType.PRF, PrfId.HMAC_SHA2_256)
    assert integ.typed_id is IntegId.HMAC_SHA2_256_128
    assert dh.typed_id is DhGroup.ECP256
    assert ke == KePayload(DhGroup.ECP256, KE_DATA)
    assert nonce == NoncePayload(NONCE)
    assert natd == NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=NATD)
    assert serialize_message(msg) == IKE_SA_INIT_REQUEST


# §3.14 and §1.2: IKE_AUTH request HDR, SK{IDi, ...}, the SK payload carrying IDi first.
IKE_AUTH_REQUEST = hexbytes(
    "0123456789abcdef fedcba9876543210",
    "2e 20 23 08 00000001 00000030",  # Next SK, v2.0, IKE_AUTH, I, MID 1, length 48
    "23 00 0014",  # §3.14: Next Payload = IDi (first inner payload), length 20
    "00" * 16,  # IV|ciphertext|ICV, opaque here
)


def test_ike_auth_request_with_sk() -> None:
    msg = parse_message(IKE_AUTH_REQUEST)
    assert msg.header.message_id == 1
    assert msg.payloads == (EncryptedPayload(PayloadType.IDI, bytes(16)),)
    assert serialize_message(msg) == IKE_AUTH_REQUEST


# RFC 7383 §2.5: Encrypted Fragment payload, first of three.
FRAGMENT_MESSAGE = hexbytes(
    "0123456789abcdef fedcba9876543210",
    "35 20 23 08 00000001 00000030",  # Next SKF (53), IKE_AUTH, length 48
    "23 00 0014",  # Next Payload = IDi in fragment 1, length 20
    "0001 0003",  # Fragment Number 1, Total Fragments 3
    "ff" * 12,
)


def test_encrypted_fragment() -> None:
    msg = parse_message(FRAGMENT_MESSAGE)
    assert msg.payloads == (EncryptedFragmentPayload(1, 3, PayloadType.IDI, b"\xff" * 12),)
    assert serialize_message(msg) == FRAGMENT_MESSAGE


# Decrypted SK contents: IDi, AUTH, N(REKEY_SA), D(ESP), TSi, CP(CFG_REQUEST), EAP.
INNER_PAYLOADS = hexbytes(
    "27 00 000c 02 000000 67772e65",  # §3.5 IDi: Next AUTH, FQDN "gw.e"
    "29 00 0010 02 000000 0001020304050607",  # §3.8 AUTH: Next Notify, PSK
    "2a 00 000c 03 04 4009 c001d00d",  # §3.10 N(REKEY_SA): ESP, SPI size 4, SPI
    "2c 00 0010 03 04 0002 11111111 22222222",  # §3.11 Delete: ESP, 2 SPIs
    "2f 00 0018 01 000000",  # §3.13 TSi: 1 selector
    "07 00 0010 0000 ffff 0a000000 0affffff",  # IPv4 range, any protocol, 10.0.0.0/8
    "30 00 0010 01 000000",  # §3.15 CP: CFG_REQUEST
    "0001 0000 0008 0000",  # INTERNAL_IP4_ADDRESS, INTERNAL_IP6_ADDRESS, both empty
    "00 00 0009 01 07 0005 01",  # §3.16 EAP: Request, id 7, length 5, Identity
)


def test_inner_payload_chain() -> None:
    payloads = parse_payload_chain(PayloadType.IDI, INNER_PAYLOADS)
    expected: list[Payload] = [
        IdiPayload(IdType.FQDN, b"gw.e"),
        AuthPayload(AuthMethod.PSK, bytes(range(8))),
        NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, bytes.fromhex("c001d00d")),
        DeletePayload(ProtocolId.ESP, 4, (b"\x11" * 4, b"\x22" * 4)),
        TsiPayload(
            (
                TrafficSelector(
                    TsType.IPV4_ADDR_RANGE,
                    0,
                    0,
                    65535,
                    IPv4Address("10.0.0.0"),
                    IPv4Address("10.255.255.255"),
                ),
            )
        ),
        ConfigurationPayload(
            CfgType.CFG_REQUEST,
            (
                CfgAttribute(CfgAttrType.INTERNAL_IP4_ADDRESS),
                CfgAttribute(CfgAttrType.INTERNAL_IP6_ADDRESS),
            ),
        ),
        EapPayload(bytes.fromhex("0107000501")),
    ]
    assert payloads == expected
    assert serialize_payload_chain(payloads) == (PayloadType.IDI, INNER_PAYLOADS)


def test_tlv_transform_attribute_and_esp_spi() -> None:
    data = hexbytes(
        "00 00 0024",  # SA, length 36
        "00 00 0020 01 03 04 01",  # last proposal, length 32, #1, ESP, SPI size 4, 1 transform
        "c001d00d",  # SPI
        "00 00 0014 01 00 0014",  # last transform, length 20, ENCR, AES-GCM-16
        "800e 0080",  # TV Key Length 128
        "0063 0004 deadbeef",  # TLV attribute type 99, length 4
    )
    (sa,) = parse_payload_chain(PayloadType.SA, data)
    assert isinstance(sa, SaPayload)
    (transform,) = sa.proposals[0].transforms
    assert transform.key_length == 128
    assert transform.attributes[1].value == bytes.fromhex("deadbeef")
    assert serialize_payload_chain([sa]) == (PayloadType.SA, data)
