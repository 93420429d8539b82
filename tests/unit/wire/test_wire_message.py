"""Messages: header rules, chain rules, the protected region, every truncation."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from wire_samples import ALL_PAYLOADS, PROTECTED_PAYLOADS, auth_request, header, sample_messages

from mpa_ike.constants import ExchangeType, HeaderFlag, NotifyType, PayloadType
from mpa_ike.errors import CodecError, LocalProtocolError
from mpa_ike.wire import (
    HEADER_LENGTH,
    EncryptedFragmentPayload,
    EncryptedPayload,
    Message,
    NoncePayload,
    NotifyPayload,
    parse_header,
    parse_message,
    parse_payload_chain,
    protected_prefix,
    serialize_message,
    serialize_payload_chain,
    split_protected,
)

SAMPLES = sample_messages()


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def with_length(data: bytes) -> bytes:
    return patched(data, 24, len(data).to_bytes(4, "big"))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_messages_round_trip(name: str) -> None:
    data = serialize_message(SAMPLES[name])
    msg = parse_message(data)
    assert msg.payloads == SAMPLES[name].payloads
    assert msg.header.length == len(data)
    assert serialize_message(msg) == data


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_raises_codec_error(name: str) -> None:
    data = serialize_message(SAMPLES[name])
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            parse_message(data[:cut])
        with pytest.raises(CodecError):  # header length fixed up: the payloads are truncated
            parse_message(with_length(data[:cut]) if cut >= HEADER_LENGTH else data[:cut])


@pytest.mark.parametrize("name", sorted(ALL_PAYLOADS))
def test_every_payload_truncation_raises_codec_error(name: str) -> None:
    first, data = serialize_payload_chain([ALL_PAYLOADS[name]])
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            parse_payload_chain(first, data[:cut])
        if cut >= 4:  # generic length fixed up: the body itself is truncated
            fixed = patched(data[:cut], 2, cut.to_bytes(2, "big"))
            with contextlib.suppress(CodecError):  # may parse: bodies like Nonce are free-form
                parse_payload_chain(first, fixed)


def test_header_flags() -> None:
    h = header(flags=HeaderFlag.RESPONSE)
    assert h.is_response and not h.is_initiator
    assert header().is_initiator


def test_major_version_is_reported_and_header_still_readable() -> None:
    data = patched(serialize_message(SAMPLES["init_request"]), 17, b"\x30")
    with pytest.raises(CodecError) as info:
        parse_message(data)
    assert info.value.notify == NotifyType.INVALID_MAJOR_VERSION
    h = parse_header(data)
    assert (h.major_version, h.spi_i, h.message_id) == (3, bytes.fromhex("0123456789abcdef"), 0)


def test_higher_minor_version_is_accepted_and_kept() -> None:
    data = patched(serialize_message(SAMPLES["init_request"]), 17, b"\x21")
    msg = parse_message(data)
    assert msg.header.minor_version == 1
    assert serialize_message(msg) == data


def test_reserved_header_flags_are_kept() -> None:
    data = patched(serialize_message(SAMPLES["empty"]), 19, b"\x0f")
    msg = parse_message(data)
    assert msg.header.flags == 0x0F
    assert serialize_message(msg) == data


def test_reserved_generic_header_bits_are_ignored() -> None:
    data = serialize_message(SAMPLES["init_request"])
    msg = parse_message(patched(data, HEADER_LENGTH + 1, b"\x7f"))
    assert msg.payloads == SAMPLES["init_request"].payloads
    assert not msg.payloads[0].critical


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_length_field_must_match_datagram(delta: int) -> None:
    data = serialize_message(SAMPLES["init_request"])
    with pytest.raises(CodecError) as info:
        parse_message(patched(data, 24, (len(data) + delta).to_bytes(4, "big")))
    assert info.value.notify == NotifyType.INVALID_SYNTAX


def test_trailing_bytes_after_last_payload() -> None:
    data = with_length(serialize_message(SAMPLES["init_request"]) + b"\x00\x00\x00\x04")
    with pytest.raises(CodecError, match="after the last payload"):
        parse_message(data)


def test_payload_length_below_generic_header() -> None:
    data = serialize_message(SAMPLES["init_request"])
    with pytest.raises(CodecError):
        parse_message(patched(data, HEADER_LENGTH + 2, b"\x00\x03"))


def test_data_after_sk_payload_is_a_syntax_error() -> None:
    data = serialize_message(auth_request())
    sk_length = len(data) - HEADER_LENGTH
    extended = with_length(data + b"\x00\x00\x00\x04")
    with pytest.raises(CodecError):
        parse_message(extended)
    shrunk = patched(extended, HEADER_LENGTH + 2, (sk_length).to_bytes(2, "big"))
    with pytest.raises(CodecError):
        parse_message(shrunk)


def test_unknown_critical_payload_in_message() -> None:
    msg = Message(header(), (NoncePayload(bytes(16)),))
    data = patched(serialize_message(msg), 16, b"\x63")  # first payload type 99
    data = patched(data, HEADER_LENGTH + 1, b"\x80")
    with pytest.raises(CodecError) as info:
        parse_message(data)
    assert (info.value.notify, info.value.data) == (NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, b"c")


def test_message_lookups() -> None:
    msg = SAMPLES["everything"]
    assert msg.find(EncryptedPayload) == PROTECTED_PAYLOADS["sk"]
    assert msg.find(EncryptedFragmentPayload) is None
    assert len(msg.find_all(NotifyPayload)) == 2
    natd = msg.notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    assert natd is not None and natd.data == bytes(20)
    assert msg.notify(NotifyType.COOKIE) is None


# -- the protected region (§3.14, RFC 5282 §5.1, RFC 7383 §2.5) -------------


@pytest.mark.parametrize("name", ["auth_request", "fragment", "everything"])
def test_split_protected_and_prefix_agree(name: str) -> None:
    msg = SAMPLES[name]
    data = serialize_message(msg)
    associated, body = split_protected(data)
    last = msg.payloads[-1]
    assert isinstance(last, EncryptedPayload | EncryptedFragmentPayload)
    assert body == last.body
    assert associated + body == data
    skf_fields = 4 if isinstance(last, EncryptedFragmentPayload) else 0
    assert associated[-4 - skf_fields] == last.inner_type
    blank = Message(msg.header, (*msg.payloads[:-1], replace(last, body=b"")))
    assert protected_prefix(blank, len(body)) == associated


def test_split_protected_uses_received_bytes() -> None:
    data = serialize_message(auth_request())
    odd = patched(data, HEADER_LENGTH + 1, b"\x01")  # nonzero reserved bit in SK header
    associated, _ = split_protected(odd)
    assert associated == odd[: HEADER_LENGTH + 4]


@pytest.mark.parametrize("name", ["init_request", "empty"])
def test_split_protected_without_sk(name: str) -> None:
    with pytest.raises(CodecError):
        split_protected(serialize_message(SAMPLES[name]))


def test_split_protected_rejects_bad_layouts() -> None:
    data = serialize_message(auth_request())
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            split_protected(data[:cut])
    with pytest.raises(CodecError):
        split_protected(data + b"x")


def test_split_protected_zero_length_payload_terminates() -> None:
    # Found by the fuzz tests: a zero Payload Length once made the walk loop forever.
    data = serialize_message(SAMPLES["init_request"])
    with pytest.raises(CodecError):
        split_protected(patched(data, HEADER_LENGTH + 2, b"\x00\x00"))


def test_protected_prefix_needs_sk_last() -> None:
    with pytest.raises(LocalProtocolError):
        protected_prefix(SAMPLES["init_request"], 10)


def test_serialize_rejects_sk_before_other_payloads() -> None:
    msg = Message(
        header(ExchangeType.IKE_AUTH), (PROTECTED_PAYLOADS["sk"], NoncePayload(bytes(16)))
    )
    with pytest.raises(LocalProtocolError):
        serialize_message(msg)


def test_empty_chain() -> None:
    assert parse_payload_chain(PayloadType.NONE, b"") == []
    assert serialize_payload_chain([]) == (PayloadType.NONE, b"")
    with pytest.raises(CodecError):
        parse_payload_chain(PayloadType.NONE, b"\x00")
