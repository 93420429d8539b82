"""The RADIUS client's wire functions: EAP-Message splitting, Message-Authenticator,
Response Authenticator, MPPE key decryption, the pyrad attribute boundary.

Two kinds of vectors: one computed by hand here, step by step from RFC 2548 §2.4.2,
and one Access-Accept recorded from FreeRADIUS 3.2.1 (Debian 3.2.1+dfsg-4+deb12u1) at
the end of an EAP-MSCHAPv2 conversation driven through this client, with the MPPE keys
in clear as FreeRADIUS's debug log printed them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import struct
from ipaddress import IPv4Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyrad.packet import AuthPacket  # type: ignore[import-untyped]

from gateway.radius import (
    AccessResult,
    AccountingSession,
    AcctStatusType,
    AttributeValue,
    Code,
    TerminateCause,
    Usage,
    _access_answer,
    _dictionary,
    accounting_request_authenticator,
    decode_packet,
    decrypt_mppe_key,
    encode_packet,
    encrypt_mppe_key,
    message_authenticator,
    msk_from_mppe,
    response_authenticator,
    sign_access_request,
    split_eap_message,
    verify_answer,
)
from gateway.radius import RadiusServer as Server
from mpa_ike.errors import CodecError

SECRET = b"s3cret"

# The recorded exchange: the last Access-Request of an EAP-MSCHAPv2 conversation
# (Request Authenticator 0x51..0x60 drawn from a counter) and FreeRADIUS's Accept.
RECORDED_REQUEST = bytes.fromhex(
    "013200725152535455565758595a5b5c5d5e5f605012b3bd321063264f4a187a181958b31f8e0107"
    "616c6963650606000000023d06000000051f123139322e302e322e31305b343530305d200d6d7061"
    "2d676174657761794f08020200061a031812461bf85d4719e236a8fb5de77910574b"
)
RECORDED_ACCEPT = bytes.fromhex(
    "023200a501d916c35daf7c64bd1fc04eb8011bf01906676f6c641a0c000001370706000000011a0c"
    "000001370806000000061a2a00000137102487b669491960fb84864ae0a7e5aec04b4b39dba0068d"
    "901e0d538278bceeee4873b61a2a00000137112489737a9467715ae5f1254ab5748d6efdacc0b580"
    "37138ba44281363da19cc4786d1d4f06030200045012043c155d39e698a04e1249f087045e980107"
    "616c696365"
)
RECORDED_AUTHENTICATOR = RECORDED_REQUEST[4:20]
RECORDED_SEND_KEY = bytes.fromhex("e41e40b4dc3c88fc1a622fb66fe4b82c")
RECORDED_RECV_KEY = bytes.fromhex("d11b29fdab3e5051a10a295d0bd2562e")

# Hand-computed: RFC 2548 §2.4.2 with secret "s3cret", Request Authenticator 00..0f,
# salt 0x8001 and the 16-octet key a0..af. See test_mppe_hand_computed_vector.
HAND_AUTHENTICATOR = bytes(range(16))
HAND_SALT = b"\x80\x01"
HAND_KEY = bytes(range(0xA0, 0xB0))
HAND_CIPHER = bytes.fromhex("8001e62e73fc49e62766025ca645ca3eef6dfeb56730bbfb61522d5d25e14a067e38")


def attributes_of(raw: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 20
    while offset < len(raw):
        kind, size = raw[offset], raw[offset + 1]
        out.append((kind, raw[offset + 2 : offset + size]))
        offset += size
    return out


# --------------------------------------------------------------------------- EAP-Message


@pytest.mark.parametrize(
    ("size", "pieces"), [(1, [1]), (253, [253]), (254, [253, 1]), (506, [253, 253]), (1000, None)]
)
def test_split_eap_message(size: int, pieces: list[int] | None) -> None:
    eap = bytes(i % 251 for i in range(size))
    parts = split_eap_message(eap)
    assert b"".join(parts) == eap
    assert all(len(p) <= 253 for p in parts)
    if pieces is not None:
        assert [len(p) for p in parts] == pieces


def test_split_refuses_empty() -> None:
    with pytest.raises(ValueError):
        split_eap_message(b"")


def test_long_eap_message_goes_in_consecutive_attributes_in_order() -> None:
    """RFC 3579 §3.1: several EAP-Message attributes, in order, none between them."""
    eap = bytes(range(256)) * 3
    items: list[tuple[str, AttributeValue]] = [
        ("Message-Authenticator", bytes(16)),
        ("User-Name", "alice"),
        *(("EAP-Message", part) for part in split_eap_message(eap)),
        ("State", b"st"),
    ]
    raw = encode_packet(Code.ACCESS_REQUEST, 7, bytes(16), items)
    kinds = [kind for kind, _ in attributes_of(raw)]
    assert kinds == [80, 1, 79, 79, 79, 79, 24]
    assert b"".join(v for k, v in attributes_of(raw) if k == 79) == eap
    assert struct.unpack_from("!H", raw, 2)[0] == len(raw)
    assert decode_packet(raw)["EAP-Message"] == split_eap_message(eap)


# --------------------------------------------------------------------------- authenticators


def test_message_authenticator_by_hand() -> None:
    """RFC 3579 §3.2: HMAC-MD5(secret, Type | Identifier | Length | Request Authenticator
    | Attributes) with the Message-Authenticator's value zeroed."""
    authenticator = bytes(range(100, 116))
    items: list[tuple[str, AttributeValue]] = [
        ("Message-Authenticator", bytes(16)),
        ("User-Name", "bob"),
    ]
    raw = sign_access_request(encode_packet(Code.ACCESS_REQUEST, 9, authenticator, items), SECRET)
    attributes = b"\x50\x12" + bytes(16) + b"\x01\x05bob"
    header = bytes([1, 9]) + struct.pack("!H", 20 + len(attributes))
    expected = hmac.new(SECRET, header + authenticator + attributes, hashlib.md5).digest()
    assert raw == header + authenticator + b"\x50\x12" + expected + b"\x01\x05bob"


def test_message_authenticator_agrees_with_pyrad() -> None:
    authenticator = bytes(range(16))
    items: list[tuple[str, AttributeValue]] = [
        ("Message-Authenticator", bytes(16)),
        ("User-Name", "alice"),
        ("State", b"xy"),
    ]
    ours = sign_access_request(encode_packet(Code.ACCESS_REQUEST, 3, authenticator, items), SECRET)
    theirs = AuthPacket(
        packet=ours, secret=SECRET, dict=_dictionary()
    ).verify_message_authenticator()
    assert theirs is True


def test_recorded_request_is_signed_as_we_sign() -> None:
    assert sign_access_request(RECORDED_REQUEST, SECRET) == RECORDED_REQUEST
    assert sign_access_request(RECORDED_REQUEST, b"other") != RECORDED_REQUEST


def test_recorded_accept_verifies() -> None:
    assert verify_answer(RECORDED_ACCEPT, RECORDED_AUTHENTICATOR, SECRET, require_ma=True) is None
    expected = response_authenticator(RECORDED_ACCEPT, RECORDED_AUTHENTICATOR, SECRET)
    assert expected == RECORDED_ACCEPT[4:20]
    assert message_authenticator(RECORDED_ACCEPT, SECRET, RECORDED_AUTHENTICATOR) == next(
        v for k, v in attributes_of(RECORDED_ACCEPT) if k == 80
    )


def test_answer_with_the_wrong_secret_is_refused() -> None:
    why = verify_answer(RECORDED_ACCEPT, RECORDED_AUTHENTICATOR, b"forged", require_ma=True)
    assert why == "wrong Response Authenticator"
    why = verify_answer(RECORDED_ACCEPT, bytes(16), SECRET, require_ma=True)
    assert why == "wrong Response Authenticator"


def resign_response(raw: bytes, secret: bytes) -> bytes:
    """The answer with only its Response Authenticator recomputed."""
    return raw[:4] + response_authenticator(raw, RECORDED_AUTHENTICATOR, secret) + raw[20:]


def test_answer_with_a_wrong_message_authenticator_is_refused() -> None:
    """An attacker who can fix the Response Authenticator (CVE-2024-3596) still cannot
    forge the HMAC."""
    position = RECORDED_ACCEPT.index(b"\x50\x12") + 2
    tampered = bytearray(RECORDED_ACCEPT)
    tampered[position] ^= 1
    forged = resign_response(bytes(tampered), SECRET)
    why = verify_answer(forged, RECORDED_AUTHENTICATOR, SECRET, require_ma=True)
    assert why == "wrong Message-Authenticator"


def test_answer_without_message_authenticator() -> None:
    position = RECORDED_ACCEPT.index(b"\x50\x12")
    stripped = RECORDED_ACCEPT[:position] + RECORDED_ACCEPT[position + 18 :]
    stripped = stripped[:2] + struct.pack("!H", len(stripped)) + stripped[4:]
    stripped = resign_response(stripped, SECRET)
    assert verify_answer(stripped, RECORDED_AUTHENTICATOR, SECRET, require_ma=True) == (
        "no Message-Authenticator"
    )
    assert verify_answer(stripped, RECORDED_AUTHENTICATOR, SECRET, require_ma=False) is None


def test_accounting_request_authenticator_by_hand() -> None:
    """RFC 2866 §3: MD5(Code | Identifier | Length | 16 zero octets | Attributes | secret)."""
    items: list[tuple[str, AttributeValue]] = [("Acct-Status-Type", 1), ("Acct-Session-Id", "s1")]
    raw = encode_packet(Code.ACCOUNTING_REQUEST, 4, bytes(16), items)
    attributes = b"\x28\x06\x00\x00\x00\x01" + b"\x2c\x04s1"
    header = bytes([4, 4]) + struct.pack("!H", 20 + len(attributes))
    expected = hashlib.md5(header + bytes(16) + attributes + SECRET).digest()
    assert raw == header + bytes(16) + attributes
    assert accounting_request_authenticator(raw, SECRET) == expected


# --------------------------------------------------------------------------- MPPE keys


def test_mppe_hand_computed_vector() -> None:
    """RFC 2548 §2.4.2: P = len | key | padding; b(1) = MD5(S + R + A), c(1) = p(1) xor
    b(1); b(2) = MD5(S + c(1)), c(2) = p(2) xor b(2); the attribute is A | c(1) | c(2)."""
    plain = bytes([16]) + HAND_KEY + bytes(15)
    b1 = hashlib.md5(SECRET + HAND_AUTHENTICATOR + HAND_SALT).digest()
    c1 = bytes(p ^ b for p, b in zip(plain[:16], b1, strict=True))
    b2 = hashlib.md5(SECRET + c1).digest()
    c2 = bytes(p ^ b for p, b in zip(plain[16:], b2, strict=True))
    assert HAND_SALT + c1 + c2 == HAND_CIPHER
    assert decrypt_mppe_key(HAND_CIPHER, SECRET, HAND_AUTHENTICATOR) == HAND_KEY
    assert encrypt_mppe_key(HAND_KEY, SECRET, HAND_AUTHENTICATOR, HAND_SALT) == HAND_CIPHER


def test_mppe_keys_recorded_from_freeradius() -> None:
    attributes = decode_packet(RECORDED_ACCEPT)
    recv = attributes["MS-MPPE-Recv-Key"][0]
    send = attributes["MS-MPPE-Send-Key"][0]
    assert decrypt_mppe_key(recv, SECRET, RECORDED_AUTHENTICATOR) == RECORDED_RECV_KEY
    assert decrypt_mppe_key(send, SECRET, RECORDED_AUTHENTICATOR) == RECORDED_SEND_KEY


def test_msk_is_recv_key_then_send_key_padded_to_64() -> None:
    msk = msk_from_mppe(RECORDED_RECV_KEY, RECORDED_SEND_KEY)
    assert msk == RECORDED_RECV_KEY + RECORDED_SEND_KEY + bytes(32)
    long_keys = msk_from_mppe(bytes([1]) * 32, bytes([2]) * 32)
    assert long_keys == bytes([1]) * 32 + bytes([2]) * 32


@pytest.mark.parametrize(
    "value",
    [b"", HAND_CIPHER[:17], HAND_CIPHER + b"\x00", b"\x00\x01" + HAND_CIPHER[2:]],
)
def test_mppe_malformed(value: bytes) -> None:
    with pytest.raises(CodecError):
        decrypt_mppe_key(value, SECRET, HAND_AUTHENTICATOR)


def test_mppe_length_octet_beyond_the_string() -> None:
    plain = bytes([200]) + bytes(15)
    pad = hashlib.md5(SECRET + HAND_AUTHENTICATOR + HAND_SALT).digest()
    cipher = HAND_SALT + bytes(p ^ b for p, b in zip(plain, pad, strict=True))
    with pytest.raises(CodecError):
        decrypt_mppe_key(cipher, SECRET, HAND_AUTHENTICATOR)


@given(
    key=st.binary(max_size=200),
    salt=st.integers(0x8000, 0xFFFF),
    auth=st.binary(min_size=16, max_size=16),
)
def test_mppe_round_trip(key: bytes, salt: int, auth: bytes) -> None:
    cipher = encrypt_mppe_key(key, SECRET, auth, struct.pack("!H", salt))
    assert decrypt_mppe_key(cipher, SECRET, auth) == key


# --------------------------------------------------------------------------- answers


def test_recorded_accept_as_an_answer() -> None:
    server = Server(address=ip_address("127.0.0.1"), secret=SECRET)
    answer = _access_answer(
        RECORDED_ACCEPT[0], decode_packet(RECORDED_ACCEPT), server, RECORDED_AUTHENTICATOR, 2
    )
    assert answer.result == AccessResult.ACCEPT
    assert answer.eap_message == bytes.fromhex("03020004")
    assert answer.classes == (b"gold",)
    assert answer.msk == RECORDED_RECV_KEY + RECORDED_SEND_KEY + bytes(32)


def test_reject_without_eap_message_gets_a_failure() -> None:
    """RFC 3579 §2.6.3: the NAS tells the peer EAP-Failure itself."""
    server = Server(address=ip_address("127.0.0.1"), secret=SECRET)
    answer = _access_answer(Code.ACCESS_REJECT, {}, server, bytes(16), 7)
    assert answer.result == AccessResult.REJECT
    assert answer.eap_message == bytes([4, 7, 0, 4])
    with pytest.raises(CodecError):
        _access_answer(Code.ACCESS_CHALLENGE, {}, server, bytes(16), 7)
    with pytest.raises(CodecError):
        _access_answer(Code.ACCESS_ACCEPT, {"EAP-Message": [bytes([4, 7, 0, 4])]}, server, b"", 7)


# --------------------------------------------------------------------------- accounting


def test_accounting_attributes_of_a_stop() -> None:
    session = AccountingSession(
        "sess-1",
        "alice",
        "192.0.2.10[4500]",
        framed_ip=IPv4Address("10.9.0.5"),
        classes=(b"gold", b"\x01\xff"),
    )
    usage = Usage(61, input_octets=5 * 2**32 + 7, output_octets=9, input_packets=3)
    items = session.attributes(AcctStatusType.STOP, usage, TerminateCause.USER_REQUEST, "gw")
    raw = encode_packet(Code.ACCOUNTING_REQUEST, 1, bytes(16), items)
    decoded = decode_packet(raw)
    assert decoded["Acct-Status-Type"] == [2]
    assert decoded["Acct-Session-Id"] == ["sess-1"]
    assert decoded["Framed-IP-Address"] == ["10.9.0.5"]
    assert decoded["Calling-Station-Id"] == ["192.0.2.10[4500]"]
    assert decoded["Class"] == [b"gold", b"\x01\xff"]
    assert decoded["Acct-Input-Octets"] == [7]
    assert decoded["Acct-Input-Gigawords"] == [5]
    assert decoded["Acct-Output-Octets"] == [9]
    assert "Acct-Output-Gigawords" not in decoded
    assert decoded["Acct-Session-Time"] == [61]
    assert decoded["Acct-Terminate-Cause"] == [1]


def test_start_carries_no_counters() -> None:
    session = AccountingSession("s", "alice", "192.0.2.10[4500]")
    names = [name for name, _ in session.attributes(AcctStatusType.START, None, None, "gw")]
    assert "Acct-Session-Time" not in names and "Acct-Terminate-Cause" not in names


# --------------------------------------------------------------------------- fuzzing


@given(st.binary(max_size=300))
def test_decode_parses_or_raises_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_packet(data)


@given(st.binary(min_size=20, max_size=300), st.booleans())
def test_verify_never_raises(data: bytes, require_ma: bool) -> None:
    assert verify_answer(data, bytes(16), SECRET, require_ma=require_ma) is not None


@given(st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=12))
def test_decode_well_formed_attributes(attributes: list[tuple[int, bytes]]) -> None:
    body = b"".join(bytes([kind, len(value) + 2]) + value for kind, value in attributes)
    raw = bytes([2, 1]) + struct.pack("!H", 20 + len(body)) + bytes(16) + body
    with contextlib.suppress(CodecError):
        decode_packet(raw)
