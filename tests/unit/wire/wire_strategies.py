"""Hypothesis strategies for valid payloads, chains and messages."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import strategies as st

from mpa_ike.constants import (
    AuthMethod,
    CertEncoding,
    CfgAttrType,
    CfgType,
    DhGroup,
    ExchangeType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformAttrType,
    TransformType,
    TsType,
)
from mpa_ike.wire import (
    AnyTrafficSelector,
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

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
blobs = st.binary(max_size=24)
critical = st.booleans()
protocols = st.one_of(
    st.sampled_from([ProtocolId.NONE, ProtocolId.IKE, ProtocolId.AH, ProtocolId.ESP]),
    u8.map(ProtocolId),
)

KNOWN_TYPES = {int(t) for t in PayloadType}
unknown_types = u8.filter(lambda v: v not in KNOWN_TYPES).map(PayloadType)


def spi_for(sizes: dict[int, list[int]], protocol: int) -> st.SearchStrategy[bytes]:
    allowed = sizes.get(protocol)
    size = st.sampled_from(allowed) if allowed else st.integers(0, 8)
    return size.flatmap(lambda n: st.binary(min_size=n, max_size=n))


PROPOSAL_SPI_SIZES = {1: [0, 8], 2: [4], 3: [4]}
NOTIFY_SPI_SIZES = {1: [0, 8], 2: [0, 4], 3: [0, 4]}
DELETE_SPI_SIZES = {1: [0], 2: [4], 3: [4]}

attr_types = st.integers(0, 0x7FFF).map(TransformAttrType)
transform_attributes = st.builds(TransformAttribute, attr_types, st.one_of(u16, blobs))
transforms = st.builds(
    Transform,
    u8.map(TransformType),
    u16,
    st.lists(transform_attributes, max_size=3).map(tuple),
)


@st.composite
def proposals(draw: st.DrawFn) -> Proposal:
    protocol = draw(protocols)
    spi = draw(spi_for(PROPOSAL_SPI_SIZES, protocol))
    chosen = draw(st.lists(transforms, max_size=5))
    return Proposal(draw(u8), protocol, spi, tuple(chosen))


@st.composite
def notifies(draw: st.DrawFn) -> NotifyPayload:
    protocol = draw(protocols)
    notify_type = draw(st.one_of(st.sampled_from(list(NotifyType)), u16.map(NotifyType)))
    spi = draw(spi_for(NOTIFY_SPI_SIZES, protocol))
    return NotifyPayload(notify_type, protocol, spi, draw(blobs), draw(critical))


@st.composite
def deletes(draw: st.DrawFn) -> DeletePayload:
    protocol = draw(protocols)
    allowed = DELETE_SPI_SIZES.get(protocol)
    size = draw(st.sampled_from(allowed) if allowed else st.integers(0, 8))
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=4))
    return DeletePayload(protocol, size, tuple(spis), draw(critical))


@st.composite
def address_selectors(draw: st.DrawFn) -> TrafficSelector:
    if draw(st.booleans()):
        ts_type, make, width = TsType.IPV4_ADDR_RANGE, IPv4Address, 32
    else:
        ts_type, make, width = TsType.IPV6_ADDR_RANGE, IPv6Address, 128  # type: ignore[assignment]
    start = make(draw(st.integers(0, 2**width - 1)))
    end = make(draw(st.integers(0, 2**width - 1)))
    return TrafficSelector(ts_type, draw(u8), draw(u16), draw(u16), start, end)


raw_selectors = st.builds(
    RawTrafficSelector,
    u8.filter(lambda v: v not in (7, 8)).map(TsType),
    u8,
    blobs,
)
selectors: st.SearchStrategy[AnyTrafficSelector] = st.one_of(address_selectors(), raw_selectors)
selector_tuples = st.lists(selectors, max_size=3).map(tuple)
cfg_attributes = st.builds(CfgAttribute, st.integers(0, 0x7FFF).map(CfgAttrType), blobs)

plain_payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(SaPayload, st.lists(proposals(), min_size=1, max_size=3).map(tuple), critical),
    st.builds(KePayload, u16.map(DhGroup), blobs, critical),
    st.builds(IdiPayload, u8.map(IdType), blobs, critical, st.integers(0, 2**24 - 1)),
    st.builds(IdrPayload, u8.map(IdType), blobs, critical, st.integers(0, 2**24 - 1)),
    st.builds(CertPayload, u8.map(CertEncoding), blobs, critical),
    st.builds(CertReqPayload, u8.map(CertEncoding), blobs, critical),
    st.builds(AuthPayload, u8.map(AuthMethod), blobs, critical),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=256), critical),
    notifies(),
    deletes(),
    st.builds(VendorIdPayload, blobs, critical),
    st.builds(TsiPayload, selector_tuples, critical),
    st.builds(TsrPayload, selector_tuples, critical),
    st.builds(
        ConfigurationPayload,
        u8.map(CfgType),
        st.lists(cfg_attributes, max_size=4).map(tuple),
        critical,
    ),
    st.builds(EapPayload, blobs, critical),
    st.builds(GspmPayload, blobs, critical),
    st.builds(UnknownPayload, unknown_types, blobs),
)

inner_types = st.one_of(st.sampled_from(list(PayloadType)), u8.map(PayloadType))
protected_payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(EncryptedPayload, inner_types, st.binary(max_size=64), critical),
    st.builds(EncryptedFragmentPayload, u16, u16, inner_types, st.binary(max_size=64), critical),
)


@st.composite
def chains(draw: st.DrawFn) -> list[Payload]:
    payloads = draw(st.lists(plain_payloads, max_size=6))
    if draw(st.booleans()):
        payloads.append(draw(protected_payloads))
    return payloads


headers = st.builds(
    IkeHeader,
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=8, max_size=8),
    u8.map(ExchangeType),
    u8,
    u32,
    minor_version=st.integers(0, 15),
)
messages = st.builds(Message, headers, chains().map(tuple))
