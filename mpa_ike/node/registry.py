"""What a daemon knows about its SAs, as ``status`` shows it.

The protocol layer fills the registry as IKE SAs come and go (keyed by the same opaque
IKE SA key the address pool uses); the control socket only reads it. Entries are
immutable: a change replaces the entry, so a status snapshot never sees half an update.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mpa_ike.ike_sa import IkeSa


@dataclass(frozen=True)
class ChildSaEntry:
    name: str
    state: str  # e.g. INSTALLED, REKEYING
    spi_in: int
    spi_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "spi_in": f"{self.spi_in:08x}",
            "spi_out": f"{self.spi_out:08x}",
            "local_ts": list(self.local_ts),
            "remote_ts": list(self.remote_ts),
        }


@dataclass(frozen=True)
class IkeSaEntry:
    name: str  # the connection: a gateway name on the mobile node, a peer on the gateway
    state: str  # e.g. CONNECTING, ESTABLISHED
    local: str  # our address and port
    remote: str  # the peer's address and port
    address: str | None = None  # the address assigned by CP, the nCoA
    remote_id: str = ""
    child_sas: tuple[ChildSaEntry, ...] = ()
    peer_addresses: tuple[str, ...] = ()  # the peer's other addresses (RFC 4555 §3.6)
    netmask: str | None = None  # CP's INTERNAL_IP4_NETMASK of ``address``
    subnets: tuple[str, ...] = ()  # CP's INTERNAL_IP4/6_SUBNET: what the tunnel carries

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "local": self.local,
            "remote": self.remote,
            "address": self.address,
            "remote_id": self.remote_id,
            "child_sas": [child.to_json() for child in self.child_sas],
            "peer_addresses": list(self.peer_addresses),
            "netmask": self.netmask,
            "subnets": list(self.subnets),
        }


@dataclass
class Registry:
    """The IKE SAs of a daemon, in the order they appeared."""

    ike_sas: dict[Hashable, IkeSaEntry] = field(default_factory=dict)

    def put(self, key: Hashable, entry: IkeSaEntry) -> None:
        """Add the IKE SA ``key`` or replace what is known about it."""
        self.ike_sas[key] = entry

    def remove(self, key: Hashable) -> IkeSaEntry | None:
        return self.ike_sas.pop(key, None)

    def get(self, key: Hashable) -> IkeSaEntry | None:
        return self.ike_sas.get(key)

    def named(self, name: str) -> list[IkeSaEntry]:
        return [entry for entry in self.ike_sas.values() if entry.name == name]

    def to_json(self) -> list[dict[str, Any]]:
        return [entry.to_json() for entry in self.ike_sas.values()]

    def refresh(self, ike_sas: Iterable[IkeSa]) -> None:
        """Become what ``ike_sas`` (an endpoint's) hold now, keyed by local IKE SPI."""
        self.ike_sas = {
            sa.local_spi: entry_from_snapshot(sa.snapshot()) for sa in ike_sas if not sa.closed
        }


def ts_text(text: str) -> str:
    """A traffic selector as swanctl shows it: ``10.1.0.0/24`` for ``10.1.0.0-10.1.0.255``."""
    addresses, bracket, ports = text.partition("[")
    first, _, last = addresses.partition("-")
    try:
        start = ipaddress.ip_address(first)
        end = ipaddress.ip_address(last) if last else start
        networks = list(ipaddress.summarize_address_range(start, end))
    except (ValueError, TypeError):
        return text
    if len(networks) != 1:
        return text
    return f"{networks[0]}{bracket}{ports}"


def entry_from_snapshot(snapshot: Mapping[str, Any]) -> IkeSaEntry:
    """A status entry from ``IkeSa.snapshot()`` (states upper case, as swanctl shows)."""
    children = tuple(
        ChildSaEntry(
            name=str(snapshot["name"]),
            state=str(child["state"]).upper(),
            spi_in=int(child["spi_in"] or "0", 16),
            spi_out=int(child["spi_out"] or "0", 16),
            local_ts=tuple(map(ts_text, child["local_ts"])),
            remote_ts=tuple(map(ts_text, child["remote_ts"])),
        )
        for child in snapshot.get("child_sas", [])
    )
    return IkeSaEntry(
        name=str(snapshot["name"]),
        state=str(snapshot["state"]).upper(),
        local=str(snapshot["local"]),
        remote=str(snapshot["remote"]),
        address=snapshot.get("address"),
        remote_id=str(snapshot.get("peer_id") or ""),
        child_sas=children,
        peer_addresses=tuple(map(str, snapshot.get("peer_addresses", ()))),
        netmask=snapshot.get("netmask"),
        subnets=tuple(map(str, snapshot.get("subnets", ()))),
    )
