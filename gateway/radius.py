"""The gateway's RADIUS client: EAP pass-through and accounting, on asyncio.

EAP messages of a peer are relayed to a RADIUS server in Access-Requests (RFC 3579,
RFC 2865, RFC 2869) and the server's EAP messages come back in Access-Challenge,
Access-Accept or Access-Reject. On Accept the MS-MPPE keys (RFC 2548 §2.4.2/§2.4.3)
become the EAP MSK, and the user's Framed-IP-Address, Framed-IPv6-Address,
Session-Timeout and Class are returned. Accounting-Requests (RFC 2866) report a
session's Start, Interim-Update and Stop.

Layers, from the wire up:

* pure functions over raw packets: EAP-Message splitting, the Message-Authenticator
  (RFC 3579 §3.2), the Response Authenticator (RFC 2865 §3) and the MPPE key
  decryption (RFC 2548 §2.4.2);
* the attribute codec and its dictionary, pyrad's, behind :func:`encode_packet` and
  :func:`decode_packet`, the only functions that touch pyrad;
* :class:`RadiusClient`: one connected UDP socket per server and port, Identifiers
  matched to requests, every answer checked before it is accepted (a forged one is
  dropped with a log line and the wait goes on), retransmission after ``timeout``
  seconds up to ``retries`` times, then the next server; the server that answered last
  is asked first next time;
* :class:`EapRelay`: one EAP conversation (User-Name, State echoed), and
  :class:`AccountingSession` with :meth:`RadiusClient.account`.

Nothing here blocks the event loop: hosts are IP addresses (no name lookup), sockets
are asyncio datagram transports.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import io
import logging
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, cast

from mpa_ike.eap.identity import build_identity_response
from mpa_ike.eap.packet import EapCode, EapPacket, parse_packet
from mpa_ike.errors import CodecError, ConfigError
from mpa_ike.node.config import (
    IPAddress,
    Section,
    address,
    boolean,
    integer,
    list_of,
    secret,
    type_name,
)

log = logging.getLogger(__name__)

HEADER_LENGTH = 20
MAX_PACKET_LENGTH = 4096  # RFC 2865 §3
MAX_ATTRIBUTE_VALUE = 253  # RFC 2865 §5: Length is one octet and counts Type and Length
AUTHENTICATOR_LENGTH = 16
MESSAGE_AUTHENTICATOR = 80  # RFC 2869 §5.14
MSK_LENGTH = 64
DEFAULT_AUTH_PORT = 1812
DEFAULT_TIMEOUT = 3.0
DEFAULT_RETRIES = 2
MAX_TIMEOUT = 60.0
MAX_RETRIES = 10
NAS_PORT_TYPE_VIRTUAL = 5  # RFC 2865 §5.41
SERVICE_TYPE_FRAMED = 2  # RFC 2865 §5.6
ACCT_AUTHENTIC_RADIUS = 1  # RFC 2866 §5.6


class Code(IntEnum):
    """RFC 2865 §3 / RFC 2866 §3 packet codes."""

    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    DISCONNECT_REQUEST = 40  # RFC 5176 §2.1
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


ACCESS_ANSWERS = (Code.ACCESS_ACCEPT, Code.ACCESS_REJECT, Code.ACCESS_CHALLENGE)


class AcctStatusType(IntEnum):
    """RFC 2866 §5.1."""

    START = 1
    STOP = 2
    INTERIM_UPDATE = 3


class TerminateCause(IntEnum):
    """RFC 2866 §5.10 Acct-Terminate-Cause."""

    USER_REQUEST = 1
    LOST_CARRIER = 2
    LOST_SERVICE = 3
    IDLE_TIMEOUT = 4
    SESSION_TIMEOUT = 5
    ADMIN_RESET = 6
    ADMIN_REBOOT = 7
    PORT_ERROR = 8
    NAS_ERROR = 9
    NAS_REQUEST = 10
    NAS_REBOOT = 11
    PORT_UNNEEDED = 12
    PORT_PREEMPTED = 13
    PORT_SUSPENDED = 14
    SERVICE_UNAVAILABLE = 15
    CALLBACK = 16
    USER_ERROR = 17
    HOST_REQUEST = 18


class RadiusError(Exception):
    """A RADIUS exchange failed: no server answered, or an answer made no sense."""


class RadiusTimeout(RadiusError):
    """No server of the list answered, after every retransmission."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RadiusServer:
    """One RADIUS server: its address, authentication port and shared secret.

    Accounting goes to ``accounting_port``, by default the next port (1813 for 1812).
    """

    address: IPAddress
    port: int = DEFAULT_AUTH_PORT
    secret: bytes = b""
    accounting_port: int | None = None

    @property
    def acct_port(self) -> int:
        return self.port + 1 if self.accounting_port is None else self.accounting_port

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class RadiusConfig:
    """``eap.radius`` of the gateway's configuration."""

    servers: tuple[RadiusServer, ...]
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    accounting: bool = False


def _config_error(path: str, message: str) -> ConfigError:
    return ConfigError(message, key=path)


def _seconds(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _config_error(path, f"expected a number of seconds, got {type_name(value)}")
    if not 0 < value <= MAX_TIMEOUT:
        raise _config_error(path, f"must be above 0 and at most {MAX_TIMEOUT:g}, got {value}")
    return float(value)


def _server(value: object, path: str) -> RadiusServer:
    section = Section(value, path)
    port = integer(1, 65535)
    server = RadiusServer(
        address=section.required("address", address),
        port=section.optional("port", port, DEFAULT_AUTH_PORT),
        secret=section.required("secret", secret).encode(),
        accounting_port=section.optional("accounting_port", port, None),
    )
    section.check_unknown()
    return server


def parse_radius_config(value: object, path: str = "eap.radius") -> RadiusConfig:
    """Read ``eap.radius``: ``{servers: [{address, port, secret}], timeout, retries,
    accounting}``; raise :class:`ConfigError` naming the offending key."""
    section = Section(value, path)
    config = RadiusConfig(
        servers=section.required("servers", list_of(_server)),
        timeout=section.optional("timeout", _seconds, DEFAULT_TIMEOUT),
        retries=section.optional("retries", integer(0, MAX_RETRIES), DEFAULT_RETRIES),
        accounting=section.optional("accounting", boolean, False),
    )
    section.check_unknown()
    return config


# --------------------------------------------------------------------------- wire functions


def split_eap_message(eap: bytes) -> list[bytes]:
    """RFC 3579 §3.1: an EAP packet as consecutive EAP-Message values of at most 253 octets."""
    if not eap:
        raise ValueError("empty EAP message")
    return [eap[i : i + MAX_ATTRIBUTE_VALUE] for i in range(0, len(eap), MAX_ATTRIBUTE_VALUE)]


def _attributes(raw: bytes) -> list[tuple[int, int, int]]:
    """(type, offset of the value, value length) of each attribute; CodecError if malformed."""
    if len(raw) < HEADER_LENGTH:
        raise CodecError(f"RADIUS packet of {len(raw)} octets")
    length = struct.unpack_from("!H", raw, 2)[0]
    if not HEADER_LENGTH <= length <= min(len(raw), MAX_PACKET_LENGTH):
        raise CodecError(f"RADIUS Length {length} for {len(raw)} octets")
    out = []
    offset = HEADER_LENGTH
    while offset < length:
        if offset + 2 > length:
            raise CodecError("truncated RADIUS attribute header")
        kind, size = raw[offset], raw[offset + 1]
        if size < 2 or offset + size > length:
            raise CodecError(f"RADIUS attribute {kind} of length {size}")
        out.append((kind, offset + 2, size - 2))
        offset += size
    return out


def _with_zero_message_authenticator(raw: bytes) -> tuple[bytes, bytes | None]:
    """``raw`` with the Message-Authenticator value zeroed, and the value (None if absent)."""
    found = [a for a in _attributes(raw) if a[0] == MESSAGE_AUTHENTICATOR]
    if not found:
        return raw, None
    if len(found) > 1 or found[0][2] != AUTHENTICATOR_LENGTH:
        raise CodecError("more than one Message-Authenticator, or not 16 octets")
    _, start, size = found[0]
    zeroed = raw[:start] + bytes(size) + raw[start + size :]
    return zeroed, raw[start : start + size]


def message_authenticator(raw: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 3579 §3.2: HMAC-MD5 over the packet, its Message-Authenticator zeroed and its
    Authenticator field replaced by ``authenticator`` (a request's own, or the Request
    Authenticator for an answer)."""
    zeroed, _ = _with_zero_message_authenticator(raw)
    length = struct.unpack_from("!H", raw, 2)[0]
    data = zeroed[:4] + authenticator + zeroed[HEADER_LENGTH:length]
    return hmac.new(secret, data, hashlib.md5).digest()


def sign_access_request(raw: bytes, secret: bytes) -> bytes:
    """Fill in the (zeroed) Message-Authenticator of an Access-Request."""
    zeroed, value = _with_zero_message_authenticator(raw)
    if value is None:
        raise ValueError("the request has no Message-Authenticator attribute")
    digest = message_authenticator(zeroed, secret, zeroed[4:HEADER_LENGTH])
    start = zeroed.index(bytes((MESSAGE_AUTHENTICATOR, 18)) + bytes(16), HEADER_LENGTH) + 2
    return zeroed[:start] + digest + zeroed[start + AUTHENTICATOR_LENGTH :]


def response_authenticator(raw: bytes, request_authenticator: bytes, secret: bytes) -> bytes:
    """RFC 2865 §3 (and RFC 2866 §3): MD5(Code, Identifier, Length, Request Authenticator,
    Attributes, Secret)."""
    length = struct.unpack_from("!H", raw, 2)[0]
    data = raw[:4] + request_authenticator + raw[HEADER_LENGTH:length] + secret
    return hashlib.md5(data, usedforsecurity=False).digest()


def accounting_request_authenticator(raw: bytes, secret: bytes) -> bytes:
    """RFC 2866 §3: the Request Authenticator is the MD5 over the packet with 16 zero
    octets in its place, and the secret."""
    return response_authenticator(raw, bytes(AUTHENTICATOR_LENGTH), secret)


def verify_request(raw: bytes, secret: bytes) -> str | None:
    """None if ``raw``, an Accounting-Request or a Dynamic Authorization request, is
    authentic for ``secret``, else why not.

    RFC 5176 §3.5 (as RFC 2866 §3): the Request Authenticator is the MD5 over the packet
    with 16 zero octets in its place, and the secret; a Message-Authenticator, when
    present, is computed with those zeros as the Request Authenticator (RFC 5176 §3.5).
    """
    try:
        _, received_ma = _with_zero_message_authenticator(raw)
    except CodecError as error:
        return f"malformed: {error}"
    expected = accounting_request_authenticator(raw, secret)
    if not hmac.compare_digest(expected, raw[4:HEADER_LENGTH]):
        return "wrong Request Authenticator"
    if received_ma is None:
        return None
    computed = message_authenticator(raw, secret, bytes(AUTHENTICATOR_LENGTH))
    if not hmac.compare_digest(computed, received_ma):
        return "wrong Message-Authenticator"
    return None


def encode_answer(
    code: Code,
    identifier: int,
    request_authenticator: bytes,
    attributes: Sequence[tuple[str, AttributeValue]],
    secret: bytes,
    *,
    with_ma: bool,
) -> bytes:
    """An answer to a request (RFC 2865 §3, RFC 5176 §3.5): its Response Authenticator,
    and with ``with_ma`` a Message-Authenticator keyed by the Request Authenticator
    (RFC 3579 §3.2)."""
    items = list(attributes)
    if with_ma:
        items.insert(0, ("Message-Authenticator", bytes(AUTHENTICATOR_LENGTH)))
    raw = encode_packet(code, identifier, request_authenticator, items)
    if with_ma:
        digest = message_authenticator(raw, secret, request_authenticator)
        start = HEADER_LENGTH + 2  # the first attribute's value
        raw = raw[:start] + digest + raw[start + AUTHENTICATOR_LENGTH :]
    authenticator = response_authenticator(raw, request_authenticator, secret)
    return raw[:4] + authenticator + raw[HEADER_LENGTH:]


def verify_answer(
    raw: bytes, request_authenticator: bytes, secret: bytes, *, require_ma: bool
) -> str | None:
    """None if ``raw`` is an authentic answer to the request, else why not.

    The Message-Authenticator is checked whenever present, and must be present when
    ``require_ma`` (every answer to an Access-Request: RFC 3579 §3.2 makes it
    mandatory with EAP-Message, and it defeats forged answers, CVE-2024-3596).
    """
    try:
        _, received_ma = _with_zero_message_authenticator(raw)
    except CodecError as error:
        return f"malformed: {error}"
    expected = response_authenticator(raw, request_authenticator, secret)
    if not hmac.compare_digest(expected, raw[4:HEADER_LENGTH]):
        return "wrong Response Authenticator"
    if received_ma is None:
        return "no Message-Authenticator" if require_ma else None
    computed = message_authenticator(raw, secret, request_authenticator)
    if not hmac.compare_digest(computed, received_ma):
        return "wrong Message-Authenticator"
    return None


def decrypt_mppe_key(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """RFC 2548 §2.4.2/§2.4.3: decrypt an MS-MPPE-Send-Key or -Recv-Key.

    ``value`` is Salt (2 octets, high bit set) then the String, in blocks of 16
    octets: c(1) = p(1) xor MD5(S + R + A), c(i) = p(i) xor MD5(S + c(i-1)). The plain
    text is the key's length (one octet), the key, and zero padding.
    """
    if len(value) < 2 + 16 or (len(value) - 2) % 16:
        raise CodecError(f"MS-MPPE key of {len(value)} octets")
    salt, cipher = value[:2], value[2:]
    if not salt[0] & 0x80:
        raise CodecError("MS-MPPE key salt without its high bit")
    plain = bytearray()
    chain = request_authenticator + salt
    for i in range(0, len(cipher), 16):
        block = cipher[i : i + 16]
        pad = hashlib.md5(secret + chain, usedforsecurity=False).digest()
        plain += bytes(a ^ b for a, b in zip(block, pad, strict=True))
        chain = block
    size = plain[0]
    if size > len(plain) - 1:
        raise CodecError(f"MS-MPPE key length {size} beyond its {len(plain) - 1} octets")
    return bytes(plain[1 : 1 + size])


def encrypt_mppe_key(key: bytes, secret: bytes, request_authenticator: bytes, salt: bytes) -> bytes:
    """The inverse of :func:`decrypt_mppe_key`, as a server does it (for tests and peers)."""
    if len(salt) != 2 or not salt[0] & 0x80:
        raise ValueError("the salt is 2 octets with the high bit set")
    plain = bytes((len(key),)) + key
    plain += bytes(-len(plain) % 16)
    out = bytearray(salt)
    chain = request_authenticator + salt
    for i in range(0, len(plain), 16):
        pad = hashlib.md5(secret + chain, usedforsecurity=False).digest()
        block = bytes(a ^ b for a, b in zip(plain[i : i + 16], pad, strict=True))
        out += block
        chain = block
    return bytes(out)


def msk_from_mppe(recv_key: bytes, send_key: bytes) -> bytes:
    """The EAP MSK as strongSwan's eap-radius builds it: Recv-Key then Send-Key.

    EAP-MSCHAPv2 servers send 16-octet keys; the 32 octets are padded with zeros to the
    64-octet MSK that the peer (and our own EAP server) derives. The IKE AUTH payload
    uses the MSK as an HMAC key, which HMAC pads with zeros anyway, so strongSwan's
    unpadded 32 octets give the same AUTH (RFC 7296 §2.16).
    """
    return (recv_key + send_key).ljust(MSK_LENGTH, b"\x00")


# --------------------------------------------------------------------------- pyrad boundary

# The attributes this client sends and reads, in FreeRADIUS/pyrad dictionary syntax.
# Values of integer attributes are numbers here (no VALUE lines), so they decode as int.
DICTIONARY = """\
ATTRIBUTE	User-Name		1	string
ATTRIBUTE	NAS-IP-Address		4	ipaddr
ATTRIBUTE	NAS-Port		5	integer
ATTRIBUTE	Service-Type		6	integer
ATTRIBUTE	Framed-IP-Address	8	ipaddr
ATTRIBUTE	Reply-Message		18	string
ATTRIBUTE	State			24	octets
ATTRIBUTE	Class			25	octets
ATTRIBUTE	Vendor-Specific		26	octets
ATTRIBUTE	Session-Timeout		27	integer
ATTRIBUTE	Idle-Timeout		28	integer
ATTRIBUTE	Called-Station-Id	30	string
ATTRIBUTE	Calling-Station-Id	31	string
ATTRIBUTE	NAS-Identifier		32	string
ATTRIBUTE	Proxy-State		33	octets
ATTRIBUTE	Acct-Status-Type	40	integer
ATTRIBUTE	Acct-Delay-Time		41	integer
ATTRIBUTE	Acct-Input-Octets	42	integer
ATTRIBUTE	Acct-Output-Octets	43	integer
ATTRIBUTE	Acct-Session-Id		44	string
ATTRIBUTE	Acct-Authentic		45	integer
ATTRIBUTE	Acct-Session-Time	46	integer
ATTRIBUTE	Acct-Input-Packets	47	integer
ATTRIBUTE	Acct-Output-Packets	48	integer
ATTRIBUTE	Acct-Terminate-Cause	49	integer
ATTRIBUTE	Acct-Input-Gigawords	52	integer
ATTRIBUTE	Acct-Output-Gigawords	53	integer
ATTRIBUTE	Event-Timestamp		55	date
ATTRIBUTE	NAS-Port-Type		61	integer
ATTRIBUTE	EAP-Message		79	octets
ATTRIBUTE	Message-Authenticator	80	octets
ATTRIBUTE	Acct-Interim-Interval	85	integer
ATTRIBUTE	NAS-IPv6-Address	95	ipv6addr
ATTRIBUTE	Error-Cause		101	integer
ATTRIBUTE	Framed-IPv6-Address	168	ipv6addr
VENDOR		Microsoft		311
BEGIN-VENDOR	Microsoft
ATTRIBUTE	MS-MPPE-Send-Key	16	octets
ATTRIBUTE	MS-MPPE-Recv-Key	17	octets
END-VENDOR	Microsoft
"""

AttributeValue = str | int | bytes
Attributes = dict[str, list[Any]]


@functools.cache
def _dictionary() -> Any:
    from pyrad.dictionary import Dictionary  # type: ignore[import-untyped]

    return Dictionary(io.StringIO(DICTIONARY))


def encode_packet(
    code: Code,
    identifier: int,
    authenticator: bytes,
    attributes: Sequence[tuple[str, AttributeValue]],
) -> bytes:
    """The packet's bytes: header with ``authenticator`` and the attributes in order.

    Attributes named twice are sent in the order given (pyrad groups equal names, and
    EAP-Message fragments must stay consecutive and ordered).
    """
    from pyrad.packet import AuthPacket  # type: ignore[import-untyped]

    body = bytearray()
    for name, value in attributes:
        one = AuthPacket(int(code), identifier, authenticator=authenticator, dict=_dictionary())
        one.AddAttribute(name, value)
        body += one.RequestPacket()[HEADER_LENGTH:]
    length = HEADER_LENGTH + len(body)
    if length > MAX_PACKET_LENGTH:
        raise ValueError(f"RADIUS packet of {length} octets")
    return struct.pack("!BBH", code, identifier, length) + authenticator + bytes(body)


def decode_packet(raw: bytes) -> Attributes:
    """The attributes of a packet by dictionary name, values decoded (str, int, bytes);
    attributes the dictionary lacks are left out. CodecError if malformed."""
    from pyrad.packet import Packet, PacketError

    _attributes(raw)  # our own bounds checks first: pyrad's are laxer
    try:
        packet = Packet(packet=raw, dict=_dictionary())
        return {
            name: list(packet[name])
            for name in packet.keys()  # noqa: SIM118 (pyrad's keys() gives names)
            if isinstance(name, str)
        }
    except (PacketError, ValueError, KeyError, IndexError, TypeError, struct.error) as error:
        raise CodecError(f"RADIUS attributes: {error}") from error


def _octets(attributes: Attributes, name: str) -> list[bytes]:
    values = attributes.get(name, [])
    if not all(isinstance(v, bytes) for v in values):
        raise CodecError(f"{name} is not octets")
    return list(values)


def _one_int(attributes: Attributes, name: str) -> int | None:
    values = attributes.get(name)
    if not values:
        return None
    if not isinstance(values[0], int):
        raise CodecError(f"{name} is not an integer")
    return int(values[0])


def _one_str(attributes: Attributes, name: str) -> str | None:
    values = attributes.get(name)
    if not values:
        return None
    if not isinstance(values[0], str):
        raise CodecError(f"{name} is not text")
    return str(values[0])


# --------------------------------------------------------------------------- answers


class AccessResult(IntEnum):
    CHALLENGE = Code.ACCESS_CHALLENGE
    ACCEPT = Code.ACCESS_ACCEPT
    REJECT = Code.ACCESS_REJECT


@dataclass(frozen=True)
class AccessAnswer:
    """A verified answer to an Access-Request.

    ``eap_message`` is the EAP packet for the peer: the server's Request on Challenge,
    its Success on Accept and Failure on Reject (synthesized when the server sent none,
    RFC 3579 §2.6.3). The rest is filled on Accept only; ``msk`` is None when the
    server sent no MPPE keys (EAP-MD5 generates none).
    """

    result: AccessResult
    eap_message: bytes
    server: RadiusServer
    state: bytes | None = None
    msk: bytes | None = None
    framed_ip: IPv4Address | None = None
    framed_ipv6: IPv6Address | None = None
    session_timeout: int | None = None
    classes: tuple[bytes, ...] = ()
    reply_message: str | None = None


def _eap_of(
    attributes: Attributes, result: AccessResult, last_identifier: int
) -> tuple[bytes, EapPacket | None]:
    fragments = _octets(attributes, "EAP-Message")
    if not fragments:
        if result == AccessResult.CHALLENGE:
            raise CodecError("Access-Challenge without EAP-Message")
        code = EapCode.SUCCESS if result == AccessResult.ACCEPT else EapCode.FAILURE
        return EapPacket(code, last_identifier).to_bytes(), None
    eap = b"".join(fragments)
    return eap, parse_packet(eap)


def _access_answer(
    code: int,
    attributes: Attributes,
    server: RadiusServer,
    request_authenticator: bytes,
    last_identifier: int,
) -> AccessAnswer:
    """Turn a verified answer's attributes into an :class:`AccessAnswer`; CodecError if
    they contradict the code."""
    result = AccessResult(code)
    eap, packet = _eap_of(attributes, result, last_identifier)
    expected = {
        AccessResult.CHALLENGE: EapCode.REQUEST,
        AccessResult.ACCEPT: EapCode.SUCCESS,
        AccessResult.REJECT: EapCode.FAILURE,
    }[result]
    if packet is not None and packet.code != expected:
        raise CodecError(f"{result.name} carries an EAP {packet.code.name}")
    states = _octets(attributes, "State")
    state = states[0] if states else None
    if result != AccessResult.ACCEPT:
        return AccessAnswer(result, eap, server, state, reply_message=_reply(attributes))
    framed = _one_str(attributes, "Framed-IP-Address")
    framed6 = _one_str(attributes, "Framed-IPv6-Address")
    return AccessAnswer(
        result,
        eap,
        server,
        state,
        msk=_msk(attributes, server.secret, request_authenticator),
        framed_ip=IPv4Address(framed) if framed else None,
        framed_ipv6=IPv6Address(framed6) if framed6 else None,
        session_timeout=_one_int(attributes, "Session-Timeout"),
        classes=tuple(_octets(attributes, "Class")),
        reply_message=_reply(attributes),
    )


def _reply(attributes: Attributes) -> str | None:
    messages = attributes.get("Reply-Message", [])
    return "".join(m for m in messages if isinstance(m, str)) or None


def _msk(attributes: Attributes, secret: bytes, request_authenticator: bytes) -> bytes | None:
    recv = _octets(attributes, "MS-MPPE-Recv-Key")
    send = _octets(attributes, "MS-MPPE-Send-Key")
    if not recv or not send:
        return None
    return msk_from_mppe(
        decrypt_mppe_key(recv[0], secret, request_authenticator),
        decrypt_mppe_key(send[0], secret, request_authenticator),
    )


# --------------------------------------------------------------------------- transport


@dataclass
class _Pending:
    authenticator: bytes
    secret: bytes
    require_ma: bool
    answer: asyncio.Future[bytes]


class _Channel(asyncio.DatagramProtocol):
    """One connected UDP socket to one server port; answers matched by Identifier and
    checked before they are taken (RFC 2865 §3: an invalid one is silently discarded)."""

    def __init__(self, name: str, first_identifier: int) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, _Pending] = {}
        self._next = first_identifier

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # selector transports do not subclass DatagramTransport, though they are one
        self.transport = cast(asyncio.DatagramTransport, transport)

    def allocate(self) -> int:
        for step in range(256):
            identifier = (self._next + step) % 256
            if identifier not in self.pending:
                self._next = identifier + 1
                return identifier
        raise RadiusError(f"256 requests outstanding at {self.name}")

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) < HEADER_LENGTH:
            log.warning("RADIUS: dropped a %d-octet datagram from %s", len(data), self.name)
            return
        pending = self.pending.get(data[1])
        if pending is None or pending.answer.done():
            log.info("RADIUS: dropped an answer with unknown Identifier %d from %s", data[1], self)
            return
        why = verify_answer(
            data, pending.authenticator, pending.secret, require_ma=pending.require_ma
        )
        if why is not None:
            log.warning("RADIUS: dropped an answer from %s (Identifier %d): %s", self, data[1], why)
            return
        pending.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable...): the retransmission timer decides.
        log.debug("RADIUS: %s: %s", self.name, exc)

    def send(self, raw: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise RadiusError(f"RADIUS socket to {self.name} closed")
        self.transport.sendto(raw)

    def close(self) -> None:
        for pending in self.pending.values():
            if not pending.answer.done():
                pending.answer.cancel()
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()

    def __str__(self) -> str:
        return self.name


# A function of (server, Identifier) giving the bytes to send and the Request
# Authenticator that answers are checked against.
_Builder = Callable[[RadiusServer, int], tuple[bytes, bytes]]


class RadiusClient:
    """RADIUS client of the gateway for EAP pass-through and accounting.

    ``nas_identifier`` names the gateway in every request (RFC 2865 §5.32). ``random``
    draws Request Authenticators (they must be unpredictable, RFC 2865 §3).
    """

    def __init__(
        self,
        config: RadiusConfig,
        *,
        nas_identifier: str = "mpa-gateway",
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not config.servers:
            raise ValueError("no RADIUS server configured")
        self.config = config
        self.nas_identifier = nas_identifier
        self._random = random
        self._channels: dict[tuple[RadiusServer, int], _Channel] = {}
        self._lock = asyncio.Lock()
        self.active = 0  # index of the server that answered last

    @property
    def active_server(self) -> RadiusServer:
        return self.config.servers[self.active]

    async def __aenter__(self) -> RadiusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket; requests still waiting fail with RadiusError."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    async def _channel(self, server: RadiusServer, port: int) -> _Channel:
        key = (server, port)
        async with self._lock:
            channel = self._channels.get(key)
            if channel is None:
                channel = await self._open(server, port)
                self._channels[key] = channel
            return channel

    async def _open(self, server: RadiusServer, port: int) -> _Channel:
        name = str(RadiusServer(server.address, port))
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: _Channel(name, self._random(1)[0]),
                remote_addr=(str(server.address), port),
            )
        except OSError as error:
            raise RadiusError(f"RADIUS socket to {name}: {error}") from error
        assert isinstance(protocol, _Channel)
        return protocol

    async def exchange(
        self, build: _Builder, *, accounting: bool
    ) -> tuple[RadiusServer, bytes, bytes]:
        """Send a request built for each server in turn, starting at the one that answered
        last; return the server, its verified answer and the Request Authenticator."""
        servers = self.config.servers
        for step in range(len(servers)):
            index = (self.active + step) % len(servers)
            server = servers[index]
            port = server.acct_port if accounting else server.port
            try:
                channel = await self._channel(server, port)
            except RadiusError as error:  # no route, no address of that family...
                log.warning("RADIUS: %s", error)
                continue
            answer = await self._ask(channel, server, build, accounting)
            if answer is not None:
                if index != self.active:
                    log.warning(
                        "RADIUS: server %s answers, %s did not", channel, self.active_server
                    )
                self.active = index
                return server, answer[0], answer[1]
            log.warning(
                "RADIUS: no answer from %s after %d transmissions",
                channel,
                1 + self.config.retries,
            )
        raise RadiusTimeout(f"no RADIUS server answered ({len(servers)} tried)")

    async def _ask(
        self, channel: _Channel, server: RadiusServer, build: _Builder, accounting: bool
    ) -> tuple[bytes, bytes] | None:
        identifier = channel.allocate()
        raw, authenticator = build(server, identifier)
        loop = asyncio.get_running_loop()
        pending = _Pending(authenticator, server.secret, not accounting, loop.create_future())
        channel.pending[identifier] = pending
        try:
            for _ in range(1 + self.config.retries):
                channel.send(raw)  # a retransmission is the same packet (RFC 5080 §2.2.1)
                try:
                    data = await asyncio.wait_for(
                        asyncio.shield(pending.answer), self.config.timeout
                    )
                except TimeoutError:
                    continue
                except asyncio.CancelledError:
                    if pending.answer.cancelled():
                        raise RadiusError(f"RADIUS client closed while asking {channel}") from None
                    raise
                return data, authenticator
            return None
        finally:
            if channel.pending.get(identifier) is pending:
                del channel.pending[identifier]
            if not pending.answer.done():
                pending.answer.cancel()

    # ------------------------------------------------------------------ access

    async def access_request(
        self,
        attributes: Sequence[tuple[str, AttributeValue]],
        eap_message: bytes,
        state: bytes | None,
    ) -> tuple[RadiusServer, int, Attributes, bytes]:
        """Send one Access-Request with the EAP message, State and Message-Authenticator;
        return the answering server, the answer's code and attributes and the Request
        Authenticator (needed to decrypt the MPPE keys)."""
        extra = [("EAP-Message", fragment) for fragment in split_eap_message(eap_message)]
        if state is not None:
            extra.append(("State", state))

        def build(server: RadiusServer, identifier: int) -> tuple[bytes, bytes]:
            authenticator = self._random(AUTHENTICATOR_LENGTH)
            items = [
                ("Message-Authenticator", bytes(AUTHENTICATOR_LENGTH)),
                *attributes,
                ("NAS-Identifier", self.nas_identifier),
                *extra,
            ]
            raw = encode_packet(Code.ACCESS_REQUEST, identifier, authenticator, items)
            return sign_access_request(raw, server.secret), authenticator

        server, raw, authenticator = await self.exchange(build, accounting=False)
        if raw[0] not in ACCESS_ANSWERS:
            raise RadiusError(f"RADIUS server {server} answered with code {raw[0]}")
        return server, raw[0], decode_packet(raw), authenticator

    def eap_relay(
        self,
        user_name: bytes | str,
        calling_station_id: str,
        called_station_id: str | None = None,
    ) -> EapRelay:
        """A new EAP conversation of one peer (``calling_station_id``: its outer address)."""
        return EapRelay(self, user_name, calling_station_id, called_station_id)

    # ------------------------------------------------------------------ accounting

    async def account(
        self,
        status: AcctStatusType,
        session: AccountingSession,
        usage: Usage | None = None,
        cause: TerminateCause | None = None,
    ) -> bool:
        """Send one Accounting-Request and wait for its Accounting-Response.

        False, without sending, when accounting is off in the configuration; raises
        RadiusTimeout when no server answers.
        """
        if not self.config.accounting:
            return False
        items = session.attributes(status, usage, cause, self.nas_identifier)

        def build(server: RadiusServer, identifier: int) -> tuple[bytes, bytes]:
            raw = encode_packet(
                Code.ACCOUNTING_REQUEST, identifier, bytes(AUTHENTICATOR_LENGTH), items
            )
            authenticator = accounting_request_authenticator(raw, server.secret)
            return raw[:4] + authenticator + raw[HEADER_LENGTH:], authenticator

        server, raw, _ = await self.exchange(build, accounting=True)
        if raw[0] != Code.ACCOUNTING_RESPONSE:
            raise RadiusError(f"RADIUS server {server} answered accounting with code {raw[0]}")
        return True

    async def account_start(self, session: AccountingSession) -> bool:
        return await self.account(AcctStatusType.START, session)

    async def account_interim(self, session: AccountingSession, usage: Usage) -> bool:
        return await self.account(AcctStatusType.INTERIM_UPDATE, session, usage)

    async def account_stop(
        self, session: AccountingSession, usage: Usage, cause: TerminateCause
    ) -> bool:
        return await self.account(AcctStatusType.STOP, session, usage, cause)


def station_id(address: IPAddress | str, port: int | None = None) -> str:
    """A Called/Calling-Station-Id for an IKE endpoint, as strongSwan writes it:
    ``192.0.2.1[4500]``."""
    text = str(ip_address(address))
    return text if port is None else f"{text}[{port}]"


class EapRelay:
    """One peer's EAP conversation relayed to RADIUS (RFC 3579 §2.1).

    Feed each EAP Response of the peer to :meth:`relay` (or begin with :meth:`start`,
    which sends an EAP-Response/Identity built from the IKE identity, as strongSwan's
    eap-radius does) and hand the answer's ``eap_message`` to the peer. The State of a
    Challenge is echoed in the next request. The conversation stays with the server
    that answered; if it stops answering, the next server sees an unknown State and
    rejects, and the peer must authenticate again.
    """

    def __init__(
        self,
        client: RadiusClient,
        user_name: bytes | str,
        calling_station_id: str,
        called_station_id: str | None = None,
    ) -> None:
        self.client = client
        self.user_name = user_name.decode() if isinstance(user_name, bytes) else user_name
        self.calling_station_id = calling_station_id
        self.called_station_id = called_station_id
        self.state: bytes | None = None
        self.answer: AccessAnswer | None = None

    async def start(self, identifier: int = 0) -> AccessAnswer:
        identity = build_identity_response(identifier, self.user_name.encode())
        return await self.relay(identity.to_bytes())

    async def relay(self, eap_response: bytes) -> AccessAnswer:
        """Send the peer's EAP message; return the server's verified answer.

        Raises RadiusTimeout when no server answers, RadiusError when the answer is
        authentic but malformed, and ValueError when the conversation has ended.
        """
        if self.answer is not None and self.answer.result != AccessResult.CHALLENGE:
            raise ValueError("the EAP conversation has ended")
        try:
            last_identifier = parse_packet(eap_response).identifier
        except CodecError as error:
            raise ValueError(f"not an EAP packet: {error}") from error
        server, code, attributes, authenticator = await self.client.access_request(
            self._attributes(), eap_response, self.state
        )
        try:
            answer = _access_answer(code, attributes, server, authenticator, last_identifier)
        except (CodecError, ValueError) as error:
            raise RadiusError(f"RADIUS server {server}: {error}") from error
        self.state = answer.state
        self.answer = answer
        return answer

    def _attributes(self) -> list[tuple[str, AttributeValue]]:
        items: list[tuple[str, AttributeValue]] = [
            ("User-Name", self.user_name),
            ("Service-Type", SERVICE_TYPE_FRAMED),
            ("NAS-Port-Type", NAS_PORT_TYPE_VIRTUAL),
            ("Calling-Station-Id", self.calling_station_id),
        ]
        if self.called_station_id is not None:
            items.append(("Called-Station-Id", self.called_station_id))
        return items


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class Usage:
    """A session's counters so far. Input is what the peer sent, output what it was sent
    (RFC 2866 §5.3/§5.4, seen from the gateway's port)."""

    session_time: int = 0
    input_octets: int = 0
    output_octets: int = 0
    input_packets: int = 0
    output_packets: int = 0


@dataclass(frozen=True)
class AccountingSession:
    """What every Accounting-Request of one session carries.

    ``classes`` are the Class values of the Access-Accept, echoed (RFC 2865 §5.25);
    ``calling_station_id`` is the peer's outer address.
    """

    session_id: str
    user_name: str
    calling_station_id: str
    called_station_id: str | None = None
    framed_ip: IPv4Address | None = None
    framed_ipv6: IPv6Address | None = None
    classes: tuple[bytes, ...] = field(default=())

    def attributes(
        self,
        status: AcctStatusType,
        usage: Usage | None,
        cause: TerminateCause | None,
        nas_identifier: str,
    ) -> list[tuple[str, AttributeValue]]:
        items: list[tuple[str, AttributeValue]] = [
            ("Acct-Status-Type", int(status)),
            ("Acct-Session-Id", self.session_id),
            ("Acct-Authentic", ACCT_AUTHENTIC_RADIUS),
            ("User-Name", self.user_name),
            ("NAS-Identifier", nas_identifier),
            ("NAS-Port-Type", NAS_PORT_TYPE_VIRTUAL),
            ("Service-Type", SERVICE_TYPE_FRAMED),
            ("Calling-Station-Id", self.calling_station_id),
        ]
        if self.called_station_id is not None:
            items.append(("Called-Station-Id", self.called_station_id))
        if self.framed_ip is not None:
            items.append(("Framed-IP-Address", str(self.framed_ip)))
        if self.framed_ipv6 is not None:
            items.append(("Framed-IPv6-Address", str(self.framed_ipv6)))
        items.extend(("Class", value) for value in self.classes)
        if status != AcctStatusType.START:
            items.extend(_usage_attributes(usage or Usage()))
        if status == AcctStatusType.STOP:
            items.append(("Acct-Terminate-Cause", int(cause or TerminateCause.NAS_REQUEST)))
        return items


def _usage_attributes(usage: Usage) -> list[tuple[str, AttributeValue]]:
    """RFC 2866 §5.3-§5.7, §5.8; RFC 2869 §5.1/§5.2 for octets past 2**32."""
    items: list[tuple[str, AttributeValue]] = [
        ("Acct-Session-Time", usage.session_time),
        ("Acct-Input-Octets", usage.input_octets & 0xFFFFFFFF),
        ("Acct-Output-Octets", usage.output_octets & 0xFFFFFFFF),
        ("Acct-Input-Packets", usage.input_packets & 0xFFFFFFFF),
        ("Acct-Output-Packets", usage.output_packets & 0xFFFFFFFF),
    ]
    if usage.input_octets >> 32:
        items.append(("Acct-Input-Gigawords", usage.input_octets >> 32))
    if usage.output_octets >> 32:
        items.append(("Acct-Output-Gigawords", usage.output_octets >> 32))
    return items
