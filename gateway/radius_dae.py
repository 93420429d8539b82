"""Dynamic Authorization for the gateway (RFC 5176): Disconnect-Requests from the AAA.

A Dynamic Authorization Client (a RADIUS server, or ``radclient``) asks the gateway to
end sessions. The listener takes requests on UDP (port 3799 by default) from the
clients ``dae.clients`` names, each with its shared secret; a request from another
address, or whose Request Authenticator or Message-Authenticator does not check, is
dropped and counted (RFC 5176 §3.5). A Disconnect-Request names the sessions by their
identification attributes (User-Name, Acct-Session-Id, Framed-IP-Address,
Framed-IPv6-Address, Calling-Station-Id: every one given must match, §3); the handler
ends the matching IKE SAs and the answer is Disconnect-ACK, or Disconnect-NAK with
Error-Cause 503 (Session-Context-Not-Found) when none matches. CoA-Requests are
answered CoA-NAK, Unsupported-Service (405).

A retransmitted request (same client, Identifier and Request Authenticator) gets the
answer it had, not a second decision (RFC 5080 §2.2.2).

The codec is :mod:`gateway.radius`'s (``encode_answer``, ``decode_packet``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import ip_address
from typing import Any, cast

from gateway.radius import (
    HEADER_LENGTH,
    Attributes,
    AttributeValue,
    Code,
    decode_packet,
    encode_answer,
    verify_request,
)
from mpa_ike.errors import CodecError
from mpa_ike.node.config import (
    Endpoint,
    IPAddress,
    Section,
    address,
    endpoint,
    list_of,
    secret,
)

log = logging.getLogger(__name__)

DAE_PORT = 3799  # RFC 5176 §3.1
# How long an answer is kept for the client's retransmissions (RFC 5080 §2.2.2).
DUPLICATE_WINDOW = 30.0
# The attributes that name a session (RFC 5176 §3): each one present must match.
IDENTIFICATION = (
    "User-Name",
    "Acct-Session-Id",
    "Framed-IP-Address",
    "Framed-IPv6-Address",
    "Calling-Station-Id",
)


class ErrorCause(IntEnum):
    """RFC 5176 §3.6 Error-Cause values the gateway sends."""

    MISSING_ATTRIBUTE = 402
    NAS_IDENTIFICATION_MISMATCH = 403
    INVALID_REQUEST = 404
    UNSUPPORTED_SERVICE = 405
    SESSION_CONTEXT_NOT_FOUND = 503


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DaeClient:
    """A Dynamic Authorization Client allowed to disconnect sessions."""

    address: IPAddress
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class DaeConfig:
    """``dae`` of the gateway's configuration."""

    listen: Endpoint
    clients: tuple[DaeClient, ...]

    @property
    def port(self) -> int:
        return DAE_PORT if self.listen.port is None else self.listen.port


def _client(value: object, path: str) -> DaeClient:
    section = Section(value, path)
    client = DaeClient(
        address=section.required("address", address),
        secret=section.required("secret", secret).encode(),
    )
    section.check_unknown()
    return client


def parse_dae_config(value: object, path: str = "dae") -> DaeConfig:
    """Read ``dae``: ``{listen: ADDRESS[:PORT], clients: [{address, secret}]}``."""
    section = Section(value, path)
    config = DaeConfig(
        listen=section.required("listen", endpoint),
        clients=section.required("clients", list_of(_client)),
    )
    section.check_unknown()
    return config


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class DisconnectRequest:
    """What a Disconnect-Request asks for: the identification attributes it gave, as
    text (addresses in their canonical form), and the NAS it names."""

    identification: Mapping[str, str]
    nas_identifier: str | None = None


# Ends the sessions a request names; returns how many it found.
DisconnectHandler = Callable[[DisconnectRequest], int]


def disconnect_request(attributes: Attributes) -> DisconnectRequest:
    """The request's identification attributes; CodecError when one is not text."""
    found: dict[str, str] = {}
    for name in IDENTIFICATION:
        values = attributes.get(name)
        if not values:
            continue
        if len(values) > 1 or not isinstance(values[0], str):
            raise CodecError(f"{name} given more than once, or not text")
        value = values[0]
        if name.startswith("Framed-"):
            value = str(ip_address(value))
        found[name] = value
    nas = attributes.get("NAS-Identifier")
    return DisconnectRequest(found, str(nas[0]) if nas else None)


class DaeServer(asyncio.DatagramProtocol):
    """The RFC 5176 listener; ``handler`` ends the sessions a Disconnect-Request names.

    ``nas_identifier``: a request naming another NAS is refused (Error-Cause 403).
    ``counters``: requests, answers and drops by reason (in the gateway's status).
    """

    def __init__(
        self,
        config: DaeConfig,
        handler: DisconnectHandler,
        *,
        nas_identifier: str,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.nas_identifier = nas_identifier
        self.transport: asyncio.DatagramTransport | None = None
        self.counters: Counter[str] = Counter()
        self._clients = {client.address: client for client in config.clients}
        self._clock = clock
        self._answers: dict[tuple[Any, int, bytes], tuple[float, bytes]] = {}

    async def open(self) -> None:
        """Bind the listening socket; OSError if the address cannot be had."""
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = loop.time
        await loop.create_datagram_endpoint(
            lambda: self, local_addr=(str(self.config.listen.address), self.config.port)
        )

    @property
    def local_address(self) -> tuple[str, int] | None:
        if self.transport is None:
            return None
        name = self.transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        answer = self.answer(data, addr)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def answer(self, data: bytes, addr: tuple[Any, ...]) -> bytes | None:
        """The answer to one datagram from ``addr``, or None to drop it (counted)."""
        try:
            source = ip_address(str(addr[0]).split("%", 1)[0])
        except ValueError:
            source = None
        client = self._clients.get(source) if source is not None else None
        if client is None:
            return self._drop("dropped_unknown_client", "from unknown client %s", addr[0])
        if len(data) < HEADER_LENGTH or data[0] not in (
            Code.DISCONNECT_REQUEST,
            Code.COA_REQUEST,
        ):
            return self._drop("dropped_malformed", "not a request from %s", addr[0])
        why = verify_request(data, client.secret)
        if why is not None:
            return self._drop("dropped_bad_authenticator", "from %s: %s", addr[0], why)
        key = (addr, data[1], data[4:HEADER_LENGTH])
        now = self._now()
        self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
        kept = self._answers.get(key)
        if kept is not None:
            self.counters["duplicates"] += 1
            return kept[1]
        try:
            attributes = decode_packet(data)
        except CodecError as error:
            return self._drop("dropped_malformed", "from %s: %s", addr[0], error)
        answer = self._decide(data, attributes, client)
        self._answers[key] = (now + DUPLICATE_WINDOW, answer)
        return answer

    def _now(self) -> float:
        return self._clock() if self._clock is not None else 0.0

    def _drop(self, counter: str, message: str, *args: object) -> bytes | None:
        self.counters[counter] += 1
        log.warning("RADIUS DAE: dropped a request " + message, *args)
        return None

    def _decide(self, data: bytes, attributes: Attributes, client: DaeClient) -> bytes:
        with_ma = "Message-Authenticator" in attributes
        if data[0] == Code.COA_REQUEST:
            self.counters["coa_requests"] += 1
            log.info("RADIUS DAE: CoA-Request from %s refused (unsupported)", client.address)
            return self._nak(Code.COA_NAK, data, client, ErrorCause.UNSUPPORTED_SERVICE, with_ma)
        self.counters["disconnect_requests"] += 1
        try:
            request = disconnect_request(attributes)
        except (CodecError, ValueError) as error:
            log.info("RADIUS DAE: Disconnect-Request from %s: %s", client.address, error)
            return self._nak(Code.DISCONNECT_NAK, data, client, ErrorCause.INVALID_REQUEST, with_ma)
        if request.nas_identifier is not None and request.nas_identifier != self.nas_identifier:
            cause = ErrorCause.NAS_IDENTIFICATION_MISMATCH
            return self._nak(Code.DISCONNECT_NAK, data, client, cause, with_ma)
        if not request.identification:
            cause = ErrorCause.MISSING_ATTRIBUTE
            return self._nak(Code.DISCONNECT_NAK, data, client, cause, with_ma)
        found = self.handler(request)
        names = ", ".join(f"{k}={v}" for k, v in request.identification.items())
        log.info(
            "RADIUS DAE: Disconnect-Request from %s (%s): %d IKE SA(s)",
            client.address,
            names,
            found,
        )
        if not found:
            cause = ErrorCause.SESSION_CONTEXT_NOT_FOUND
            return self._nak(Code.DISCONNECT_NAK, data, client, cause, with_ma)
        self.counters["disconnect_acks"] += 1
        return encode_answer(
            Code.DISCONNECT_ACK, data[1], data[4:HEADER_LENGTH], [], client.secret, with_ma=with_ma
        )

    def _nak(
        self, code: Code, data: bytes, client: DaeClient, cause: ErrorCause, with_ma: bool
    ) -> bytes:
        self.counters["naks"] += 1
        items: list[tuple[str, AttributeValue]] = [("Error-Cause", int(cause))]
        return encode_answer(
            code, data[1], data[4:HEADER_LENGTH], items, client.secret, with_ma=with_ma
        )

    def status(self) -> dict[str, Any]:
        local = self.local_address
        return {
            "listening": f"{local[0]}[{local[1]}]" if local else None,
            "counters": dict(sorted(self.counters.items())),
        }
