"""EAP packet, EAP-MD5 and EAP-MSCHAPv2 codecs: round trips, truncation, fuzzing."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpa_ike.eap.md5 import Md5Value, md5_response, parse_md5
from mpa_ike.eap.mschapv2 import (
    MsChapAck,
    MsChapChallenge,
    MsChapMessage,
    MsChapResponse,
    OpCode,
    parse_mschapv2,
)
from mpa_ike.eap.packet import (
    EapCode,
    EapPacket,
    EapType,
    build_nak,
    failure,
    parse_nak,
    parse_packet,
    request,
    success,
)
from mpa_ike.errors import CodecError


def test_request_wire_format() -> None:
    packet = request(7, EapType.IDENTITY)
    assert packet.to_bytes() == bytes.fromhex("0107000501")
    assert parse_packet(packet.to_bytes()) == packet


def test_success_and_failure_are_four_octets() -> None:
    assert success(9).to_bytes() == bytes.fromhex("03090004")
    assert parse_packet(bytes.fromhex("04090004")) == failure(9)
    with pytest.raises(CodecError):
        parse_packet(bytes.fromhex("0309000500"))


def test_octets_beyond_length_are_padding() -> None:
    """RFC 3748 §4: data-link padding after Length is ignored."""
    assert parse_packet(bytes.fromhex("0107000501ffff")) == request(7, EapType.IDENTITY)


@pytest.mark.parametrize(
    "raw",
    ["", "0107", "01070006 01", "01070003", "01070004", "05070004", "07070005 01"],
)
def test_malformed_packets(raw: str) -> None:
    with pytest.raises(CodecError):
        parse_packet(bytes.fromhex(raw.replace(" ", "")))


def test_unknown_type_is_tolerated() -> None:
    packet = parse_packet(bytes.fromhex("01070006c8aa"))
    assert packet.type == 200 and not EapType(200).known and packet.data == b"\xaa"


def test_nak_lists_types_or_zero() -> None:
    nak = build_nak(3, (EapType.MSCHAPV2, EapType.MD5_CHALLENGE))
    assert nak.to_bytes() == bytes.fromhex("0203000703" + "1a04")
    assert parse_nak(nak) == (EapType.MSCHAPV2, EapType.MD5_CHALLENGE)
    assert build_nak(3, ()).data == b"\x00"
    assert parse_nak(build_nak(3, ())) == ()


def test_packet_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError):
        EapPacket(EapCode.SUCCESS, 1, EapType.IDENTITY)
    with pytest.raises(ValueError):
        EapPacket(EapCode.REQUEST, 1)
    with pytest.raises(ValueError):
        EapPacket(EapCode.REQUEST, 256, EapType.IDENTITY)


def test_md5_response_is_md5_of_id_secret_challenge() -> None:
    """RFC 1994 §4.1, computed independently with hashlib."""
    challenge = bytes(range(16))
    expected = hashlib.md5(b"\x2a" + b"secret" + challenge).digest()
    assert md5_response(0x2A, b"secret", challenge) == expected


def test_md5_value_codec() -> None:
    value = Md5Value(b"\x01" * 16, b"gw")
    assert value.to_bytes() == b"\x10" + b"\x01" * 16 + b"gw"
    assert parse_md5(value.to_bytes()) == value
    for bad in (b"", b"\x00", b"\x10" + b"\x01" * 15):
        with pytest.raises(CodecError):
            parse_md5(bad)


def test_mschapv2_round_trips() -> None:
    challenge = MsChapChallenge(5, bytes(16), b"gw")
    assert parse_mschapv2(challenge.to_bytes(), from_peer=False) == challenge
    reply = MsChapResponse(5, bytes(range(16)), bytes(range(24)), b"DOM\\user")
    assert parse_mschapv2(reply.to_bytes(), from_peer=True) == reply
    message = MsChapMessage(OpCode.SUCCESS, 5, b"S=00 M=hi")
    assert parse_mschapv2(message.to_bytes(), from_peer=False) == message
    assert parse_mschapv2(b"\x03", from_peer=True) == MsChapAck(OpCode.SUCCESS)


def test_mschapv2_ms_length_counts_type_data() -> None:
    data = MsChapChallenge(1, bytes(16)).to_bytes()
    assert int.from_bytes(data[2:4], "big") == len(data) == 21
    with pytest.raises(CodecError):
        parse_mschapv2(data[:2] + b"\x00\x20" + data[4:], from_peer=False)


def test_mschapv2_message_fields_stop_at_nul() -> None:
    """strongSwan's Success message ends with a NUL octet."""
    text = b"S=" + b"AB" * 20 + b" M=Welcome2strongSwan\x00"
    fields = MsChapMessage(OpCode.SUCCESS, 1, text).fields()
    assert fields == {"S": "AB" * 20, "M": "Welcome2strongSwan"}
    failure_text = b"E=691 R=0 C=" + b"00" * 16 + b" V=3 M=Authentication failed"
    fields = MsChapMessage(OpCode.FAILURE, 1, failure_text).fields()
    assert fields["E"] == "691" and fields["R"] == "0" and fields["M"] == "Authentication failed"


@given(st.binary(max_size=80))
def test_parse_packet_raises_only_codec_error(raw: bytes) -> None:
    try:
        packet = parse_packet(raw)
    except CodecError:
        return
    length = int.from_bytes(raw[2:4], "big")
    assert packet.to_bytes() == raw[:length]


@given(st.binary(max_size=80), st.booleans())
def test_method_parsers_raise_only_codec_error(raw: bytes, from_peer: bool) -> None:
    with contextlib.suppress(CodecError):
        parse_md5(raw)
    try:
        packet = parse_mschapv2(raw, from_peer=from_peer)
    except CodecError:
        return
    if isinstance(packet, MsChapMessage):
        packet.fields()


@given(
    st.sampled_from([EapCode.REQUEST, EapCode.RESPONSE]),
    st.integers(0, 255),
    st.integers(1, 255),
    st.binary(max_size=40),
)
def test_request_response_round_trip(code: EapCode, ident: int, type_: int, data: bytes) -> None:
    packet = EapPacket(code, ident, EapType(type_), data)
    assert parse_packet(packet.to_bytes()) == packet
