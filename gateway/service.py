"""The gateway service behind ``mpa-gateway run``.

It turns the configuration into the core's responder policy, serves IKE on UDP 500 and
4500 of every ``listen`` address through :class:`gateway.ike_transport.IkeTransport`,
hands CHILD SA keys to the datapath, and answers ``status`` from the core's snapshot
(leases come from the pool the core allocates from). On stop it deletes every IKE SA
with DELETE and waits briefly for the answers.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import GatewayConfig
from gateway.control import ControlError, Handler
from gateway.ike_transport import IKE_PORTS, EspHandler, IkeTransport, TransportError
from gateway.pool import AddressPool, Family
from gateway.registry import ChildSaEntry, IkeSaEntry, Registry
from gateway.validation import ConfigError
from mpa_ike.certificates import CertificateCredential
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import NotifyType, ProtocolId
from mpa_ike.crypto.auth import SigningKey
from mpa_ike.crypto.proposal import ProposalSpec, parse_proposal
from mpa_ike.datapath import Datapath, RecordingDatapath
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import ConfigError as CoreConfigError
from mpa_ike.events import (
    ChildSaAddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeSaAddressesUpdated,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    LeaseReleased,
)
from mpa_ike.ike_config import ResponderConfig
from mpa_ike.mobike import AddressPolicy, AddressPolicyMode

log = logging.getLogger(__name__)

FAMILIES: tuple[Family, ...] = (4, 6)
EAP_TYPES = {"md5": EapType.MD5_CHALLENGE, "mschapv2": EapType.MSCHAPV2}
# How long a stopping daemon waits for the answers to its DELETEs.
DELETE_GRACE = 1.5


def proposal_specs(texts: Iterable[str], protocol: ProtocolId) -> tuple[ProposalSpec, ...]:
    return tuple(parse_proposal(text, protocol) for text in texts)


def load_certificates(file: Path, key: str) -> tuple[x509.Certificate, ...]:
    """Every PEM (or the one DER) certificate in ``file``; ConfigError naming ``key``."""
    data = _read(file, key)
    try:
        if b"-----BEGIN" in data:
            return tuple(x509.load_pem_x509_certificates(data))
        return (x509.load_der_x509_certificate(data),)
    except ValueError:
        raise ConfigError(key, f"no X.509 certificate in '{file}'") from None


def load_private_key(file: Path, key: str) -> SigningKey:
    data = _read(file, key)
    try:
        if b"-----BEGIN" in data:
            loaded = serialization.load_pem_private_key(data, password=None)
        else:
            loaded = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(key, f"no unencrypted private key in '{file}'") from None
    if not isinstance(
        loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(key, f"unsupported key type in '{file}' (RSA, ECDSA or Ed25519)")
    return loaded


def _read(file: Path, key: str) -> bytes:
    try:
        return file.read_bytes()
    except OSError as error:
        raise ConfigError(key, f"cannot read '{file}': {error.strerror}") from None


def credential(certificate: Path, private_key: Path) -> CertificateCredential:
    """The gateway's key and chain; the key must belong to the first certificate."""
    chain = load_certificates(certificate, "certificate")
    key = load_private_key(private_key, "private_key")
    der = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, der)
    theirs = chain[0].public_key().public_bytes(serialization.Encoding.DER, der)
    if ours != theirs:
        raise ConfigError("private_key", "does not match the certificate's public key")
    return CertificateCredential(key, chain)


def wall_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


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
    )


def refresh_registry(registry: Registry, endpoint: Endpoint) -> None:
    """Make the registry what the endpoint holds now, keyed by local IKE SPI."""
    registry.ike_sas = {
        sa.local_spi: entry_from_snapshot(sa.snapshot()) for sa in endpoint if not sa.closed
    }


def apply_to_datapath(datapath: Datapath, event: Event) -> None:
    if isinstance(event, ChildSaEstablished):
        datapath.install_child_sa(event.params)
    elif isinstance(event, ChildSaDeleted):
        datapath.remove_child_sa(event.spi_in, event.spi_out)
    elif isinstance(event, ChildSaAddressesUpdated):
        datapath.update_addresses(
            event.spi_in, event.spi_out, event.local, event.remote, event.encap
        )


def describe_event(event: Event) -> str:
    """One log line per core event."""
    who = f"{event.name}[{event.ike_sa.hex()}]"
    if isinstance(event, IkeSaEstablished):
        addresses = ", ".join(str(a) for a in event.assigned_addresses) or "none"
        nat = ", NAT" if event.nat_detected else ""
        return (
            f"{who}: IKE SA established {event.local[0]}[{event.local[1]}] === "
            f"{event.remote[0]}[{event.remote[1]}], peer {event.peer_identity}, "
            f"address {addresses}{nat}"
        )
    if isinstance(event, ChildSaEstablished):
        p = event.params
        return (
            f"{who}: CHILD SA installed, SPIs {p.spi_in.hex()}_i {p.spi_out.hex()}_o, "
            f"{' '.join(map(str, p.local_ts))} === {' '.join(map(str, p.remote_ts))}"
        )
    if isinstance(event, IkeSaFailed):
        return f"{who}: IKE SA failed: {with_notify(event.reason, event.notify)}"
    if isinstance(event, ChildSaFailed):
        return f"{who}: CHILD SA failed: {with_notify(event.reason, event.notify)}"
    if isinstance(event, IkeSaDeleted):
        return f"{who}: IKE SA deleted{' by the peer' if event.by_peer else ''}"
    if isinstance(event, ChildSaDeleted):
        by = " by the peer" if event.by_peer else ""
        return f"{who}: CHILD SA {event.spi_in.hex()}_i {event.spi_out.hex()}_o deleted{by}"
    if isinstance(event, ChildSaRekeyed):
        return (
            f"{who}: CHILD SA {event.old_spi_in.hex()}_i {event.old_spi_out.hex()}_o rekeyed "
            f"into {event.new_spi_in.hex()}_i {event.new_spi_out.hex()}_o"
        )
    if isinstance(event, IkeSaRekeyed):
        return f"{who}: IKE SA rekeyed into {event.new_ike_sa.hex()}"
    if isinstance(event, IkeSaAddressesUpdated):
        return (
            f"{who}: IKE SA moved to {event.local[0]}[{event.local[1]}] === "
            f"{event.remote[0]}[{event.remote[1]}]"
        )
    if isinstance(event, LeaseReleased):
        return f"{who}: released {', '.join(str(a) for a in event.addresses)}"
    return f"{who}: {type(event).__name__}"


def counters(endpoint: Endpoint, transport: IkeTransport | None) -> dict[str, int]:
    """What was dropped or refused, and why: the core's counters and the sockets'."""
    found = dict(endpoint.counters)
    if transport is not None:
        found.update((f"udp_{name}", value) for name, value in transport.counters.items())
    return dict(sorted(found.items()))


def with_notify(reason: str, notify: NotifyType | None) -> str:
    """``reason (NOTIFY)``, unless the reason names the notify already."""
    if notify is None or notify.name in reason:
        return reason
    return f"{reason} ({notify.name})"


async def delete_all_and_wait(transport: IkeTransport, grace: float = DELETE_GRACE) -> None:
    """Send DELETE for every IKE SA and wait up to ``grace`` seconds for them to close."""
    endpoint = transport.endpoint
    endpoint.delete_all(transport.now())
    transport.process()
    deadline = transport.now() + grace
    while any(not sa.closed for sa in endpoint) and transport.now() < deadline:
        await asyncio.sleep(0.01)
    transport.process()


class GatewayService:
    """``datapath`` gets the CHILD SAs (recorded only, until a real one is wired);
    ``esp_handler`` the ESP in UDP arriving on port 4500 (``transport.send_raw`` sends)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        datapath: Datapath | None = None,
        esp_handler: EspHandler | None = None,
    ) -> None:
        self.config = config
        self.esp_handler = esp_handler
        self.registry = Registry()
        self.pool: AddressPool[Hashable] = AddressPool(config.pool, config.reserved_addresses())
        self.datapath: Datapath = datapath if datapath is not None else RecordingDatapath()
        # Built by start(), so that a bad key file or a busy port ends the daemon with one
        # line (the daemon loop reports ControlError so), not a traceback.
        self.endpoint = Endpoint(random=os.urandom)
        self.transport: IkeTransport | None = None

    def _responder_config(self) -> ResponderConfig:
        config = self.config
        users = dict(config.eap.users)
        child = ChildSaConfig(
            proposal_specs(config.esp, ProtocolId.ESP), local_ts=tuple(config.local_ts)
        )
        cred = None
        if config.certificate is not None and config.private_key is not None:
            cred = credential(config.certificate, config.private_key)
        return ResponderConfig(
            identity=config.id,
            ike_proposals=proposal_specs(config.ike, ProtocolId.IKE),
            child=child,
            eap_users=lambda name: users.get(name.decode("utf-8", "replace")),
            credential=cred,
            psk=config.psk,
            eap_methods=(EAP_TYPES[config.eap.method],),
            allocator=self.pool,
            dns=tuple(config.dns),
            address_policy=AddressPolicy(
                AddressPolicyMode(config.mobike.address_policy.value),
                tuple(config.mobike.prefixes),
            ),
            return_routability=config.mobike.return_routability,
        )

    def handlers(self) -> Mapping[str, Handler]:
        return {"status": self.status}

    async def start(self) -> None:
        try:
            responder = self._responder_config()
        except CoreConfigError as error:
            raise ControlError(str(error)) from None
        self.endpoint = Endpoint(
            random=os.urandom,
            responder=responder,
            half_open_threshold=self.config.half_open_threshold,
        )
        transport = IkeTransport(self.endpoint, self._on_event, esp_handler=self.esp_handler)
        try:
            for listen in self.config.listen:
                ports = IKE_PORTS if listen.port is None else (listen.port,)
                await transport.bind(str(listen.address), ports, freebind=True)
        except TransportError as error:
            transport.close()
            raise ControlError(str(error)) from None
        self.transport = transport
        log.info("serving IKE on %s", ", ".join(f"{a}[{p}]" for a, p in transport.local_addresses))

    async def stop(self) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        if any(not sa.closed for sa in self.endpoint):
            log.info("deleting %d IKE SAs", sum(1 for sa in self.endpoint if not sa.closed))
            await delete_all_and_wait(transport)
        transport.close()

    def _on_event(self, event: Event) -> None:
        log.info("%s", describe_event(event))
        apply_to_datapath(self.datapath, event)

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """IKE SAs, leases and pool usage: the result of ``mpa-gateway status --json``."""
        refresh_registry(self.registry, self.endpoint)
        listening = self.transport.local_addresses if self.transport is not None else []
        return {
            "listening": [f"{address}[{port}]" for address, port in listening],
            "ike_sas": self.registry.to_json(),
            "leases": [
                {"address": str(address), "ike_sa": self._describe(owner)}
                for address, owner in self.pool.leases()
            ],
            "pool": {
                f"ipv{family}": {
                    "size": self.pool.size(family),
                    "available": self.pool.available(family),
                }
                for family in FAMILIES
            },
            "counters": counters(self.endpoint, self.transport),
        }

    def _describe(self, owner: Hashable) -> str:
        entry = self.registry.get(owner)
        if entry is not None:
            return entry.name
        return owner.hex() if isinstance(owner, bytes) else str(owner)
