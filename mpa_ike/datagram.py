"""UDP datagrams in and out of the core, and where the non-ESP marker belongs.

The core speaks IKE messages only (and asks for NAT keepalives, whose data is the
single octet :data:`NAT_KEEPALIVE`): :class:`Datagram` data never carries the
4-byte non-ESP marker. The I/O glue owns the marker because it owns the
sockets: on the NAT-T socket (local port 4500, RFC 3948 §2.2) it strips the
marker from received IKE messages (and hands ESP and NAT keepalives to the
datapath), and prepends it to every datagram whose ``src`` port is not 500.
:func:`frame_for_socket` and :func:`unframe_from_socket` do exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpa_ike.constants import IKE_PORT, NAT_KEEPALIVE, NON_ESP_MARKER
from mpa_ike.records import quick_init

Address = tuple[str, int]


@quick_init
@dataclass(frozen=True, slots=True)
class Datagram:
    """One IKE message to send from ``src`` (our address and port) to ``dst``."""

    data: bytes
    src: Address
    dst: Address


def uses_non_esp_marker(local_port: int) -> bool:
    """RFC 3948 §2.2: IKE on any port but 500 shares it with ESP and needs the marker."""
    return local_port != IKE_PORT


def frame_for_socket(datagram: Datagram) -> bytes:
    """The UDP payload to send for ``datagram``: a NAT keepalive (RFC 3948 §2.3, the
    core's :mod:`mpa_ike.liveness` asks for it) goes as it is, never behind the marker."""
    if uses_non_esp_marker(datagram.src[1]) and datagram.data != NAT_KEEPALIVE:
        return NON_ESP_MARKER + datagram.data
    return datagram.data


def unframe_from_socket(payload: bytes, local_port: int) -> bytes | None:
    """The IKE message in a received UDP payload, or None if it is not IKE.

    On the NAT-T port, a payload without the marker is ESP (or a NAT keepalive,
    a single 0xFF octet) and belongs to the datapath, not to the core.
    """
    if not uses_non_esp_marker(local_port):
        return payload
    if payload == NAT_KEEPALIVE or not payload.startswith(NON_ESP_MARKER):
        return None
    return payload[len(NON_ESP_MARKER) :]
