"""Valid payloads and messages shared by the wire tests (one of every payload type)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Interface, ip_network

from mpa_ike.constants import (
    AuthMethod,
    CertEncoding,
    CfgAttrType,
    CfgType,
    DhGroup,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttrType,
    TransformType,
    TsType,
)
from mpa_ike.wire import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CfgAttribute,
    ConfigurationPayload,
    DeletePayload,
    EapPayload,
    EncryptedFragmentPayload,
    EncryptedPayload,
    GspmPayload,
    IdiPayload,
    IdrPayload,
    IkeHeader,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    RawTrafficSelector,
    SaPayload,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
    VendorIdPayload,
)

IKE_PROPOSAL = Proposal(
    1,
    ProtocolId.IKE,
    b"",
    (
        Transform(TransformType.ENCR, EncrId.AES_CBC, (TransformAttribute.key_length(256),)),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
        Transform(TransformType.DH, DhGroup.ECP256),
    ),
)
ESP_PROPOSAL = Proposal(
    2,
    ProtocolId.ESP,
    b"\xc0\x01\xd0\x0d",
    (
        Transform(
            TransformType.ENCR,
            EncrId.AES_GCM_16,
            (TransformAttribute.key_length(128), TransformAttribute(TransformAttrType(99), b"x")),
        ),
        Transform(TransformType.ESN, 0),
    ),
)

# Payloads allowed anywhere in a chain (SK and SKF must be last: see PROTECTED_PAYLOADS).
PLAIN_PAYLOADS: dict[str, Payload] = {
    "sa": SaPayload((IKE_PROPOSAL, ESP_PROPOSAL)),
    "sa_rekey_ike": SaPayload((Proposal(1, ProtocolId.IKE, bytes(range(8)), ()),)),
    "ke": KePayload(DhGroup.ECP256, bytes(range(64))),
    "idi": IdiPayload(IdType.FQDN, b"mobile.example"),
    "idr": IdrPayload(IdType.IPV4_ADDR, b"\xc0\x00\x02\x01"),
    "id_reserved": IdiPayload(IdType.RFC822_ADDR, b"a@b", reserved=0x010203),
    "cert": CertPayload(CertEncoding.X509_SIGNATURE, b"\x30\x82\x01\x00" + bytes(20)),
    "certreq": CertReqPayload(CertEncoding.X509_SIGNATURE, bytes(range(40))),
    "auth": AuthPayload(AuthMethod.PSK, bytes(32)),
    "nonce": NoncePayload(bytes(range(32))),
    "notify": NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=bytes(20)),
    "notify_spi": NotifyPayload(NotifyType.REKEY_SA, ProtocolId.ESP, b"\x01\x02\x03\x04"),
    "delete_ike": DeletePayload.for_ike_sa(),
    "delete_esp": DeletePayload.for_child_sas((b"\x01\x02\x03\x04", b"\x05\x06\x07\x08")),
    "vendor": VendorIdPayload(b"strongSwan"),
    "tsi": TsiPayload(
        (
            TrafficSelector.from_network(ip_network("10.1.0.0/16")),
            TrafficSelector(
                TsType.IPV6_ADDR_RANGE,
                17,
                500,
                4500,
                IPv6Address("2001:db8::1"),
                IPv6Address("2001:db8::ffff"),
            ),
        )
    ),
    "tsr": TsrPayload((RawTrafficSelector(TsType(10), 0, b"\x00\x05label"),)),
    "cp": ConfigurationPayload(
        CfgType.CFG_REPLY,
        (
            CfgAttribute.ipv4(CfgAttrType.INTERNAL_IP4_ADDRESS, IPv4Address("10.1.2.3")),
            CfgAttribute.ipv6_prefixed(
                CfgAttrType.INTERNAL_IP6_ADDRESS, IPv6Interface("2001:db8::5/64")
            ),
            CfgAttribute(CfgAttrType.INTERNAL_IP4_DNS),
        ),
    ),
    "eap": EapPayload(b"\x01\x07\x00\x05\x01"),
    "gspm": GspmPayload(b"\x01\x02"),
    "unknown": UnknownPayload(PayloadType(200), b"opaque"),
    "critical_known": NoncePayload(bytes(16), critical=True),
}

PROTECTED_PAYLOADS: dict[str, Payload] = {
    "sk": EncryptedPayload(PayloadType.IDI, bytes(range(48))),
    "skf": EncryptedFragmentPayload(1, 3, PayloadType.IDI, bytes(range(40))),
    "skf_later": EncryptedFragmentPayload(2, 3, PayloadType.NONE, bytes(range(40))),
}

ALL_PAYLOADS: dict[str, Payload] = {**PLAIN_PAYLOADS, **PROTECTED_PAYLOADS}


def header(
    exchange: ExchangeType = ExchangeType.IKE_SA_INIT, flags: int = HeaderFlag.INITIATOR
) -> IkeHeader:
    return IkeHeader(bytes.fromhex("0123456789abcdef"), bytes(8), exchange, flags, 0)


def init_request() -> Message:
    return Message(
        header(),
        (
            PLAIN_PAYLOADS["sa"],
            PLAIN_PAYLOADS["ke"],
            PLAIN_PAYLOADS["nonce"],
            PLAIN_PAYLOADS["notify"],
            PLAIN_PAYLOADS["vendor"],
        ),
    )


def auth_request() -> Message:
    auth_header = IkeHeader(
        bytes.fromhex("0123456789abcdef"),
        bytes.fromhex("fedcba9876543210"),
        ExchangeType.IKE_AUTH,
        HeaderFlag.INITIATOR,
        1,
    )
    return Message(auth_header, (PROTECTED_PAYLOADS["sk"],))


def fragment_message() -> Message:
    return Message(auth_request().header, (PROTECTED_PAYLOADS["skf"],))


def sample_messages() -> dict[str, Message]:
    """Named messages covering every payload type at least once."""
    everything = (*PLAIN_PAYLOADS.values(), PROTECTED_PAYLOADS["sk"])
    return {
        "init_request": init_request(),
        "auth_request": auth_request(),
        "fragment": fragment_message(),
        "everything": Message(header(ExchangeType.INFORMATIONAL, HeaderFlag.RESPONSE), everything),
        "empty": Message(header(ExchangeType.INFORMATIONAL), ()),
    }
