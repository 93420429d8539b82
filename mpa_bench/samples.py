"""A deterministic sample IKE_SA_INIT + IKE_AUTH exchange, built with this package's code.

Pure functions: fixed SPIs, nonces, DH private keys, PSK and IV source, so the
same call gives the same bytes every time (except ECDSA/RSA-PSS signatures,
which the library randomises). Used by the micro-benchmark
(``mobile/bench_micro.py``), the Wireshark cross-check (``tests/tshark``) and the
demo (``python3 -m mpa_bench.samples``, which prints each message).

The exchange is the first round of an MPA pre-authentication (RFC 7296 §1.2,
§2.16 with EAP): the mobile node asks for an address by CP(CFG_REQUEST) and
omits AUTH; the gateway answers with IDr, AUTH and an EAP Identity request.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address

from mpa_ike.constants import (
    AuthMethod,
    CfgAttrType,
    CfgType,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    NotifyType,
    ProtocolId,
    TransformType,
)
from mpa_ike.crypto.auth import (
    SigningKey,
    auth_octets,
    encode_hash_algorithms,
    psk_auth,
    sign_auth,
)
from mpa_ike.crypto.dh import KeyExchange, generate_key_exchange
from mpa_ike.crypto.keys import IkeKeys
from mpa_ike.crypto.natd import nat_detection_hash
from mpa_ike.crypto.proposal import ProposalSpec, parse_proposal
from mpa_ike.crypto.sk import SkCipherPair, sk_cipher_pair
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.protection import Reassembler, seal_message
from mpa_ike.wire import (
    AuthPayload,
    CfgAttribute,
    ConfigurationPayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    IkeHeader,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsiPayload,
    TsrPayload,
    parse_message,
    serialize_message,
)

IKE_PROPOSAL = "aes128-sha256-x25519"
ESP_PROPOSAL = "aes128-sha256"
SPI_I = bytes.fromhex("8a1b2c3d4e5f6071")
SPI_R = bytes.fromhex("1928374655647382")
ESP_SPI_I = bytes.fromhex("c1a0c1a0")
NONCE_I = hashlib.sha256(b"mpa-ike sample Ni").digest()
NONCE_R = hashlib.sha256(b"mpa-ike sample Nr").digest()
PSK = b"mpa-ike sample pre-shared key"
INITIATOR_ID = b"mobile@mpa-ike.test"
RESPONDER_ID = b"gw.mpa-ike.test"
INITIATOR_ADDRESS = IPv4Address("127.0.0.1")
RESPONDER_ADDRESS = IPv4Address("127.0.0.2")
IKE_PORT, NAT_T_PORT = 500, 4500
PROTECTED_NETWORK = IPv4Network("10.1.0.0/16")
EAP_IDENTITY_REQUEST = bytes.fromhex("0101000501")  # Request, id 1, Identity (RFC 3748 §5.1)


def deterministic_random(label: bytes) -> Callable[[int], bytes]:
    """A reproducible byte source (SHA-256 in counter mode): never use it for real keys."""
    counter = 0

    def draw(size: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < size:
            counter += 1
            out += hashlib.sha256(label + counter.to_bytes(8, "big")).digest()
        return out[:size]

    return draw


def sample_key_exchange(group: int, initiator: bool) -> KeyExchange:
    """A fixed private key for ``group`` (one per side)."""
    label = b"mpa-ike sample DH " + (b"initiator" if initiator else b"responder")
    return generate_key_exchange(group, deterministic_random(label))


def sa_payload(proposal: ProposalSpec, spi: bytes = b"", number: int = 1) -> SaPayload:
    """The wire SA payload of one proposal (RFC 7296 §3.3)."""
    transforms = tuple(
        Transform(
            t.type,
            t.id,
            (TransformAttribute.key_length(t.key_length),) if t.key_length else (),
        )
        for t in proposal.transforms
    )
    return SaPayload((Proposal(number, proposal.protocol, spi, transforms),))


def ike_sa_init_request(
    proposal: ProposalSpec,
    key_exchange: KeyExchange,
    *,
    spi_i: bytes = SPI_I,
    nonce: bytes = NONCE_I,
    source: tuple[IPv4Address, int] = (INITIATOR_ADDRESS, IKE_PORT),
    destination: tuple[IPv4Address, int] = (RESPONDER_ADDRESS, IKE_PORT),
) -> Message:
    """SA, KE, Ni, NAT-D, fragmentation and signature-hash notifies (§1.2, RFC 7383, 7427)."""
    zero = bytes(8)
    header = IkeHeader(spi_i, zero, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0)
    payloads: list[Payload] = [
        sa_payload(proposal),
        KePayload(key_exchange.group, key_exchange.public_bytes),
        NoncePayload(nonce),
        *_nat_detection(spi_i, zero, source, destination),
        NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
        NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=encode_hash_algorithms()),
    ]
    return Message(header, tuple(payloads))


def ike_sa_init_response(
    selected: ProposalSpec,
    key_exchange: KeyExchange,
    *,
    spi_i: bytes = SPI_I,
    spi_r: bytes = SPI_R,
    nonce: bytes = NONCE_R,
    source: tuple[IPv4Address, int] = (RESPONDER_ADDRESS, IKE_PORT),
    destination: tuple[IPv4Address, int] = (INITIATOR_ADDRESS, IKE_PORT),
) -> Message:
    header = IkeHeader(spi_i, spi_r, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0)
    payloads: list[Payload] = [
        sa_payload(selected),
        KePayload(key_exchange.group, key_exchange.public_bytes),
        NoncePayload(nonce),
        *_nat_detection(spi_i, spi_r, source, destination),
        NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
        NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, data=encode_hash_algorithms()),
    ]
    return Message(header, tuple(payloads))


def _nat_detection(
    spi_i: bytes,
    spi_r: bytes,
    source: tuple[IPv4Address, int],
    destination: tuple[IPv4Address, int],
) -> list[Payload]:
    return [
        NotifyPayload(
            NotifyType.NAT_DETECTION_SOURCE_IP, data=nat_detection_hash(spi_i, spi_r, *source)
        ),
        NotifyPayload(
            NotifyType.NAT_DETECTION_DESTINATION_IP,
            data=nat_detection_hash(spi_i, spi_r, *destination),
        ),
    ]


def ike_auth_request_payloads(
    esp_proposal: ProposalSpec, esp_spi: bytes = ESP_SPI_I
) -> list[Payload]:
    """IDi, IDr, CP(CFG_REQUEST), SA, TSi, TSr and notifies; no AUTH: EAP follows (§2.16)."""
    return [
        IdiPayload(IdType.RFC822_ADDR, INITIATOR_ID),
        NotifyPayload(NotifyType.INITIAL_CONTACT),
        IdrPayload(IdType.FQDN, RESPONDER_ID),
        ConfigurationPayload(
            CfgType.CFG_REQUEST,
            (
                CfgAttribute(CfgAttrType.INTERNAL_IP4_ADDRESS),
                CfgAttribute(CfgAttrType.INTERNAL_IP4_DNS),
            ),
        ),
        sa_payload(esp_proposal, esp_spi),
        TsiPayload((TrafficSelector.from_network(IPv4Network("0.0.0.0/0")),)),
        TsrPayload((TrafficSelector.from_network(PROTECTED_NETWORK),)),
        NotifyPayload(NotifyType.MOBIKE_SUPPORTED),
    ]


def ike_auth_response_payloads(auth: AuthPayload) -> list[Payload]:
    """IDr, AUTH and EAP Request/Identity (§2.16: SA and TS come after EAP)."""
    return [IdrPayload(IdType.FQDN, RESPONDER_ID), auth, EapPayload(EAP_IDENTITY_REQUEST)]


def responder_auth(
    suite: IkeSuite,
    keys: IkeKeys,
    init_response: bytes,
    signing_key: SigningKey | None = None,
) -> AuthPayload:
    """The gateway's AUTH over its IKE_SA_INIT response (§2.15): PSK, or RFC 7427 signature."""
    idr = IdrPayload(IdType.FQDN, RESPONDER_ID)
    octets = auth_octets(init_response, NONCE_I, suite.prf, keys.sk_pr, idr.rest_of_id_payload())
    if signing_key is None:
        return AuthPayload(AuthMethod.PSK, psk_auth(suite.prf, PSK, octets))
    data = sign_auth(AuthMethod.DIGITAL_SIGNATURE, signing_key, octets, HashAlgorithm.SHA2_256)
    return AuthPayload(AuthMethod.DIGITAL_SIGNATURE, data)


@dataclass(frozen=True, slots=True)
class SampleDatagram:
    """One UDP datagram of the sample exchange (``data`` without the non-ESP marker)."""

    name: str
    source: tuple[IPv4Address, int]
    destination: tuple[IPv4Address, int]
    data: bytes
    plaintext: Message
    """The message as built (for SK messages: the inner payloads, not the SK payload)."""

    @property
    def non_esp_marker(self) -> bool:
        """Port 4500 carries IKE behind four zero octets (RFC 3948 §2.2)."""
        return NAT_T_PORT in (self.source[1], self.destination[1])


@dataclass(frozen=True, slots=True)
class SampleExchange:
    ike_proposal: str
    suite: IkeSuite
    keys: IkeKeys
    ciphers: SkCipherPair
    datagrams: tuple[SampleDatagram, ...]


def build_exchange(
    ike_proposal: str = IKE_PROPOSAL,
    esp_proposal: str = ESP_PROPOSAL,
    *,
    signing_key: SigningKey | None = None,
    max_message_size: int | None = None,
) -> SampleExchange:
    """IKE_SA_INIT request/response, then the first IKE_AUTH request/response.

    The IKE_SA_INIT messages go 500 -> 500, IKE_AUTH moves to 4500 (RFC 7296
    §2.23, RFC 4555 §3.3). ``max_message_size`` fragments IKE_AUTH (RFC 7383).
    """
    proposal = parse_proposal(ike_proposal)
    suite = IkeSuite.from_proposal(proposal)
    group = suite.dh_group
    dh_i, dh_r = sample_key_exchange(group, True), sample_key_exchange(group, False)
    init_request = ike_sa_init_request(proposal, dh_i)
    init_response = ike_sa_init_response(proposal, dh_r)
    request_data, response_data = serialize_message(init_request), serialize_message(init_response)
    keys = suite.derive_keys(NONCE_I, NONCE_R, SPI_I, SPI_R, dh_i.shared_secret(dh_r.public_bytes))
    ciphers = sk_cipher_pair(suite, keys, deterministic_random(b"mpa-ike sample IV"))
    esp = parse_proposal(esp_proposal, ProtocolId.ESP)
    auth = responder_auth(suite, keys, response_data, signing_key)
    i_500, r_500 = (INITIATOR_ADDRESS, IKE_PORT), (RESPONDER_ADDRESS, IKE_PORT)
    i_4500, r_4500 = (INITIATOR_ADDRESS, NAT_T_PORT), (RESPONDER_ADDRESS, NAT_T_PORT)
    datagrams = [
        SampleDatagram("IKE_SA_INIT request", i_500, r_500, request_data, init_request),
        SampleDatagram("IKE_SA_INIT response", r_500, i_500, response_data, init_response),
    ]
    auth_header = IkeHeader(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
    response_header = IkeHeader(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.RESPONSE, 1)
    for name, header, payloads, cipher, route in (
        (
            "IKE_AUTH request",
            auth_header,
            ike_auth_request_payloads(esp),
            ciphers.outbound(True),
            (i_4500, r_4500),
        ),
        (
            "IKE_AUTH response",
            response_header,
            ike_auth_response_payloads(auth),
            ciphers.outbound(False),
            (r_4500, i_4500),
        ),
    ):
        sealed = seal_message(header, payloads, cipher, max_message_size=max_message_size)
        for index, data in enumerate(sealed, start=1):
            label = name if len(sealed) == 1 else f"{name} fragment {index}/{len(sealed)}"
            datagrams.append(SampleDatagram(label, *route, data, Message(header, tuple(payloads))))
    return SampleExchange(ike_proposal, suite, keys, ciphers, tuple(datagrams))


# ---------------------------------------------------------------------------
# Demo: python3 -m mpa_bench.samples


def describe(message: Message) -> list[str]:
    """One line per payload: type name and a short summary."""
    lines = []
    for payload in message.payloads:
        name = type(payload).__name__.removesuffix("Payload")
        detail = ""
        if isinstance(payload, NotifyPayload):
            detail = payload.notify_type.name
        elif isinstance(payload, SaPayload):
            detail = ", ".join(
                f"{p.protocol_id.name} #{p.number}: "
                + " ".join(_transform_name(t) for t in p.transforms)
                for p in payload.proposals
            )
        elif isinstance(payload, KePayload):
            detail = f"{payload.group.name}, {len(payload.data)} octets"
        elif isinstance(payload, IdiPayload | IdrPayload):
            detail = f"{payload.id_type.name} {payload.data.decode(errors='replace')}"
        elif isinstance(payload, AuthPayload):
            detail = f"{payload.method.name}, {len(payload.data)} octets"
        elif isinstance(payload, ConfigurationPayload):
            detail = (
                payload.cfg_type.name + " " + " ".join(a.attr_type.name for a in payload.attributes)
            )
        elif isinstance(payload, TsiPayload | TsrPayload):
            detail = " ".join(
                f"{s.start_addr}-{s.end_addr}"
                for s in payload.selectors
                if isinstance(s, TrafficSelector)
            )
        lines.append(f"    {name:<18} {detail}".rstrip())
    return lines


def _transform_name(transform: Transform) -> str:
    typed = transform.typed_id
    name = typed.name if hasattr(typed, "name") else str(typed)
    bits = f"/{transform.key_length}" if transform.key_length else ""
    return f"{TransformType(transform.type).name}:{name}{bits}"


def demo(out: Callable[[str], object] = print, proposals: Sequence[str] = (IKE_PROPOSAL,)) -> None:
    """Build, encode, decode and decrypt the sample exchange; print every message."""
    for ike_proposal in proposals:
        exchange = build_exchange(ike_proposal)
        out(f"== sample exchange, IKE {ike_proposal}, ESP {ESP_PROPOSAL}")
        reassemblers = {True: Reassembler(), False: Reassembler()}
        for datagram in exchange.datagrams:
            header = parse_message(datagram.data).header
            src, dst = datagram.source, datagram.destination
            marker = 4 if datagram.non_esp_marker else 0
            out(
                f"{datagram.name}: {ip_address(src[0])}:{src[1]} -> {ip_address(dst[0])}:{dst[1]}, "
                f"{len(datagram.data) + marker} octets UDP payload, message ID {header.message_id}"
            )
            if header.exchange_type == ExchangeType.IKE_SA_INIT:
                decoded = parse_message(datagram.data)
                assert serialize_message(decoded) == datagram.data
            else:
                cipher = exchange.ciphers.inbound(not header.is_initiator)
                opened = reassemblers[header.is_initiator].add(datagram.data, cipher)
                if opened is None:
                    out("    (fragment kept for reassembly)")
                    continue
                decoded = opened
                out("    SK payload decrypted and verified; inner payloads:")
            assert list(decoded.payloads) == list(datagram.plaintext.payloads)
            for line in describe(decoded):
                out(line)
        out(f"   SK_ei {exchange.keys.sk_ei.hex()}  SK_ai {exchange.keys.sk_ai.hex()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    demo(proposals=args or (IKE_PROPOSAL, "aes256gcm16-prfsha384-modp2048"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
