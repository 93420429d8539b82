"""The datapath interface: where CHILD SA keys go (the ESP side of the SAs).

The core never calls a datapath: it emits events
(:class:`mpa_ike.events.ChildSaEstablished` carries :class:`ChildSaParams`),
and the gateway and mobile glue turn them into calls on a :class:`Datapath`.
The userspace and XFRM datapaths are in :mod:`mpa_ike.io`; :class:`RecordingDatapath`
records what it is given, for tests and for running without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from mpa_ike.datagram import Address
from mpa_ike.records import quick_init

IPNetwork = IPv4Network | IPv6Network


@quick_init
@dataclass(frozen=True, slots=True)
class TsRange:
    """A traffic selector as the datapath sees it (RFC 7296 §3.13.1)."""

    start: str
    end: str
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 0xFFFF

    def __str__(self) -> str:
        text = self.start if self.start == self.end else f"{self.start}-{self.end}"
        if self.ip_protocol or (self.start_port, self.end_port) != (0, 0xFFFF):
            text += f"[{self.ip_protocol}/{self.start_port}-{self.end_port}]"
        return text


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaLimits:
    """A CHILD SA's lifetimes for the datapath to count (RFC 7296 §2.8), strongSwan's
    CHILD SA ``rekey_*`` (soft) and ``life_*`` (hard) after their random part: reaching
    a soft limit asks for a rekey (the kernel's XFRM_MSG_EXPIRE), a hard one ends the SA.
    Seconds from installation; ``None`` or 0: no limit."""

    soft_seconds: float | None = None
    hard_seconds: float | None = None
    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0


NO_LIMITS = ChildSaLimits()


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaParams:
    """Everything a datapath needs to install one tunnel-mode ESP SA pair.

    Keys follow RFC 7296 §2.17: ``*_out`` protect what this side sends (on
    ``spi_out``, the SPI the peer chose), ``*_in`` what it receives on
    ``spi_in``. With an AEAD cipher the encryption keys end with the salt and
    ``integ_id`` is None. ``encap`` asks for ESP in UDP (RFC 3948) between
    ``local`` and ``remote``. ``limits``: when the datapath asks for a rekey or ends
    the SA.
    """

    spi_in: bytes
    spi_out: bytes
    encr_id: int
    encr_key_bits: int | None
    integ_id: int | None
    encr_key_in: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False)
    encr_key_out: bytes = field(repr=False)
    integ_key_out: bytes = field(repr=False)
    esn: bool
    local: Address
    remote: Address
    encap: bool
    local_ts: tuple[TsRange, ...]
    remote_ts: tuple[TsRange, ...]
    mode: str = "tunnel"
    limits: ChildSaLimits = NO_LIMITS


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSaCounters:
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0


class Datapath(Protocol):
    """What the gateway and mobile glue call with the core's CHILD SA events."""

    def install_child_sa(self, params: ChildSaParams) -> None: ...

    def move_child_sa(
        self, spi_in: bytes, spi_out: bytes, local: Address, remote: Address, encap: bool
    ) -> None:
        """Move an installed SA pair to new outer addresses (RFC 4555)."""

    def remove_child_sa(self, spi_in: bytes, spi_out: bytes) -> None: ...

    def counters(self, spi_in: bytes) -> ChildSaCounters: ...


@quick_init
@dataclass(frozen=True, slots=True)
class DatapathCall:
    method: str
    args: tuple[object, ...]


class RecordingDatapath:
    """A datapath that only records its calls and the SAs installed."""

    def __init__(self) -> None:
        self.calls: list[DatapathCall] = []
        self.installed: dict[bytes, ChildSaParams] = {}

    def install_child_sa(self, params: ChildSaParams) -> None:
        self.calls.append(DatapathCall("install_child_sa", (params,)))
        self.installed[params.spi_in] = params

    def move_child_sa(
        self, spi_in: bytes, spi_out: bytes, local: Address, remote: Address, encap: bool
    ) -> None:
        self.calls.append(DatapathCall("move_child_sa", (spi_in, spi_out, local, remote, encap)))

    def remove_child_sa(self, spi_in: bytes, spi_out: bytes) -> None:
        self.calls.append(DatapathCall("remove_child_sa", (spi_in, spi_out)))
        self.installed.pop(spi_in, None)

    def counters(self, spi_in: bytes) -> ChildSaCounters:
        return ChildSaCounters()
