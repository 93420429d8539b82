"""EAP-MSCHAPv2: packets (draft-kamath-pppext-eap-mschapv2-02) and crypto (RFC 2759, RFC 3079).

Type-Data is OpCode (1), MS-CHAPv2-ID (1), MS-Length (2) and the CHAP-style
body of RFC 2759 §3-6; the peer's Success and Failure Responses are the
OpCode alone. MS-Length counts the Type-Data, i.e. EAP Length - 5.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from mpa_ike.constants import OpenIntEnum
from mpa_ike.eap.md4 import md4
from mpa_ike.errors import CodecError

CHALLENGE_LENGTH = 16
NT_RESPONSE_LENGTH = 24
RESPONSE_VALUE_LENGTH = 49
MSK_LENGTH = 64
ERROR_AUTHENTICATION_FAILURE = 691


class OpCode(OpenIntEnum):
    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4
    CHANGE_PASSWORD = 7


# --- packets -----------------------------------------------------------------


@dataclass(frozen=True)
class MsChapChallenge:
    """RFC 2759 §3: 16-octet authenticator challenge and the authenticator's name."""

    ms_id: int
    challenge: bytes
    name: bytes = b""

    def to_bytes(self) -> bytes:
        return _with_header(OpCode.CHALLENGE, self.ms_id, bytes([16]) + self.challenge + self.name)


@dataclass(frozen=True)
class MsChapResponse:
    """RFC 2759 §4: Peer-Challenge, 8 reserved octets, NT-Response, Flags, Name."""

    ms_id: int
    peer_challenge: bytes
    nt_response: bytes
    name: bytes = b""
    flags: int = 0

    def to_bytes(self) -> bytes:
        value = self.peer_challenge + bytes(8) + self.nt_response + bytes([self.flags])
        return _with_header(OpCode.RESPONSE, self.ms_id, bytes([len(value)]) + value + self.name)


@dataclass(frozen=True)
class MsChapMessage:
    """An authenticator's Success or Failure Request: text per RFC 2759 §5-6."""

    opcode: OpCode
    ms_id: int
    message: bytes

    def to_bytes(self) -> bytes:
        return _with_header(self.opcode, self.ms_id, self.message)

    def fields(self) -> dict[str, str]:
        """The ``X=value`` fields of the message; text after a NUL is ignored.

        strongSwan ends its Success message with a NUL octet; M= is free text
        and always last, so it keeps its spaces.
        """
        text = self.message.split(b"\x00", 1)[0].decode("latin-1")
        head, has_text, free_text = text.partition("M=")
        fields = {"M": free_text} if has_text else {}
        for token in head.split():
            key, sep, value = token.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields


@dataclass(frozen=True)
class MsChapAck:
    """The peer's Success or Failure Response: the OpCode alone (draft-kamath §2)."""

    opcode: OpCode

    def to_bytes(self) -> bytes:
        return bytes([self.opcode])


MsChapPacket = MsChapChallenge | MsChapResponse | MsChapMessage | MsChapAck


def _with_header(opcode: OpCode, ms_id: int, body: bytes) -> bytes:
    return struct.pack("!BBH", opcode, ms_id, 4 + len(body)) + body


def parse_mschapv2(data: bytes, *, from_peer: bool) -> MsChapPacket:
    """Parse EAP-MSCHAPv2 Type-Data; ``from_peer`` says it came in a Response."""
    if not data:
        raise CodecError("EAP-MSCHAPv2 without OpCode")
    opcode = OpCode.of(data[0])
    if from_peer and opcode in (OpCode.SUCCESS, OpCode.FAILURE):
        return MsChapAck(opcode)
    if len(data) < 4:
        raise CodecError("EAP-MSCHAPv2 header truncated")
    _, ms_id, ms_length = struct.unpack_from("!BBH", data)
    if ms_length != len(data):
        raise CodecError(f"EAP-MSCHAPv2 MS-Length {ms_length} != {len(data)}")
    body = bytes(data[4:])
    if opcode == OpCode.CHALLENGE and not from_peer:
        value, name = _split_value(body, CHALLENGE_LENGTH)
        return MsChapChallenge(ms_id, value, name)
    if opcode == OpCode.RESPONSE and from_peer:
        value, name = _split_value(body, RESPONSE_VALUE_LENGTH)
        return MsChapResponse(ms_id, value[:16], value[24:48], name, value[48])
    if opcode in (OpCode.SUCCESS, OpCode.FAILURE):
        return MsChapMessage(opcode, ms_id, body)
    raise CodecError(f"unexpected EAP-MSCHAPv2 OpCode {opcode.name}")


def _split_value(body: bytes, size: int) -> tuple[bytes, bytes]:
    if not body or body[0] != size or len(body) < 1 + size:
        raise CodecError(f"EAP-MSCHAPv2 Value-Size is not {size}")
    return body[1 : 1 + size], body[1 + size :]


# --- RFC 2759 §8 crypto -------------------------------------------------------

_MAGIC_SERVER_TO_CLIENT = b"Magic server to client signing constant"
_MAGIC_MORE_THAN_ONE = b"Pad to make it do more than one iteration"


@functools.lru_cache(maxsize=4096)
def nt_password_hash(password: str) -> bytes:
    """RFC 2759 §8.3: MD4 of the UTF-16LE password.

    Cached: a gateway hashes each user's password three times per authentication, and
    MD4 runs in Python (OpenSSL 3 keeps it in its legacy provider)."""
    return md4(password.encode("utf-16-le"))


@functools.lru_cache(maxsize=4096)
def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """RFC 2759 §8.4 (cached like :func:`nt_password_hash`)."""
    return md4(password_hash)


def user_name_of(name: bytes) -> bytes:
    """RFC 2759 §4: the user name without a ``DOMAIN\\`` prefix."""
    _, sep, user = name.partition(b"\\")
    return user if sep else name


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, user: bytes) -> bytes:
    """RFC 2759 §8.2: first 8 octets of SHA1(PeerChallenge | AuthChallenge | UserName)."""
    return _sha1(peer_challenge, authenticator_challenge, user)[:8]


# Each 7-bit key group shifted left, with the odd parity bit at the bottom.
_DES_KEY_OCTETS = bytes(
    (septet << 1) | (bin(septet << 1).count("1") + 1) % 2 for septet in range(128)
)
_ECB = modes.ECB()  # stateless: one for every DES key


def _expand_des_key(key56: bytes) -> bytes:
    """Spread 56 key bits over 8 octets and set odd parity (RFC 2759 §8.6 DesEncrypt)."""
    bits = int.from_bytes(key56, "big")
    return bytes(_DES_KEY_OCTETS[(bits >> shift) & 0x7F] for shift in range(49, -1, -7))


def des_encrypt(clear: bytes, key56: bytes) -> bytes:
    """Single DES-ECB of one block as 3DES with K1 = K2 = K3."""
    key = _expand_des_key(key56)
    return Cipher(TripleDES(key * 3), _ECB).encryptor().update(clear)


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """RFC 2759 §8.5: three DES encryptions keyed by the zero-padded hash."""
    padded = password_hash.ljust(21, b"\x00")
    return b"".join(des_encrypt(challenge, padded[i : i + 7]) for i in (0, 7, 14))


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, user: bytes, password: str
) -> bytes:
    """RFC 2759 §8.1 GenerateNTResponse; ``user`` is without domain."""
    digest = challenge_hash(peer_challenge, authenticator_challenge, user)
    return challenge_response(digest, nt_password_hash(password))


def authenticator_response(
    password: str,
    nt_response: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    user: bytes,
) -> bytes:
    """RFC 2759 §8.7 GenerateAuthenticatorResponse, as 20 raw octets."""
    hash_hash = hash_nt_password_hash(nt_password_hash(password))
    digest = _sha1(hash_hash, nt_response, _MAGIC_SERVER_TO_CLIENT)
    chall = challenge_hash(peer_challenge, authenticator_challenge, user)
    return _sha1(digest, chall, _MAGIC_MORE_THAN_ONE)


def format_authenticator_response(value: bytes) -> str:
    """RFC 2759 §5: ``S=`` and 40 uppercase hex digits."""
    return "S=" + value.hex().upper()


def check_authenticator_response(expected: bytes, received: str) -> bool:
    """RFC 2759 §8.8 CheckAuthenticatorResponse on the S= value (hex, any case)."""
    try:
        value = bytes.fromhex(received)
    except ValueError:
        return False
    return len(value) == 20 and hmac.compare_digest(expected, value)


# --- RFC 3079 §3.4 key derivation and strongSwan's MSK ---------------------------

_MAGIC_MASTER = b"This is the MPPE Master Key"
_MAGIC_CLIENT_SEND = (
    b"On the client side, this is the send key; on the server side, it is the receive key."
)
_MAGIC_CLIENT_RECEIVE = (
    b"On the client side, this is the receive key; on the server side, it is the send key."
)
_SHS_PAD1 = bytes(40)
_SHS_PAD2 = b"\xf2" * 40


def master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """RFC 3079 §3.4 GetMasterKey: 16 octets."""
    return _sha1(password_hash_hash, nt_response, _MAGIC_MASTER)[:16]


def asymmetric_start_key(master: bytes, length: int, *, is_send: bool, is_server: bool) -> bytes:
    """RFC 3079 §3.4 GetAsymmetricStartKey.

    The client's send key is the server's receive key (Magic2) and vice versa.
    """
    client_send = is_send != is_server
    magic = _MAGIC_CLIENT_SEND if client_send else _MAGIC_CLIENT_RECEIVE
    return _sha1(master, _SHS_PAD1, magic, _SHS_PAD2)[:length]


def derive_msk(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """The 64-octet MSK strongSwan's eap-mschapv2 exports, on either side.

    It is the authenticator's MasterReceiveKey | MasterSendKey (16 octets
    each, RFC 3079 §3.4), i.e. the peer's send key then the peer's receive
    key, followed by 32 zero octets. Both ends compute the same string,
    whatever their role, so IKEv2 AUTH (RFC 7296 §2.16) keys agree.
    """
    master = master_key(password_hash_hash, nt_response)
    receive = asymmetric_start_key(master, 16, is_send=False, is_server=True)
    send = asymmetric_start_key(master, 16, is_send=True, is_server=True)
    return (receive + send).ljust(MSK_LENGTH, b"\x00")


def _sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts), usedforsecurity=False).digest()
