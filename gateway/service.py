"""The gateway service behind ``mpa-gateway run``.

It turns the configuration into the core's responder policy, serves IKE on UDP 500 and
4500 of every ``listen`` address through :class:`mpa_ike.node.transport.IkeTransport`,
hands CHILD SA keys to the datapath ``datapath:`` names (:class:`DatapathGlue`, shared
with mpa-mobile), and answers ``status`` from the core's snapshot (leases come from the
pool the core allocates from) with each CHILD SA's counters. Decrypted traffic leaves
the TUN device for the LAN by IP forwarding; the routes of leased addresses lead back
into it, where the datapath picks the SA by the peer's traffic selectors. On stop it
deletes every IKE SA with DELETE, waits briefly for the answers, and closes the
datapath (device, routes, forwarding as it was).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from gateway.pool import AddressPool, Family
from mpa_ike.certificates import CertificateCredential
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import NotifyType, ProtocolId
from mpa_ike.crypto.auth import SigningKey
from mpa_ike.crypto.proposal import ProposalSpec, parse_proposal
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaParams, Datapath, RecordingDatapath
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import ConfigError as CoreConfigError
from mpa_ike.errors import LocalProtocolError
from mpa_ike.esp import Expiry
from mpa_ike.events import (
    AddressUpdateAccepted,
    AddressUpdateRefused,
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
from mpa_ike.io.policy_routing import BYPASS_MARK, GATEWAY_TABLE, Rules, gateway_rules
from mpa_ike.io.raw_esp import RawEspSockets
from mpa_ike.io.tun import MAIN_TABLE
from mpa_ike.io.userspace import UserspaceDatapath
from mpa_ike.io.xfrm import XfrmDatapath, XfrmUsageError, select_datapath
from mpa_ike.mobike import AddressPolicy, AddressPolicyMode
from mpa_ike.node.config import ConfigError
from mpa_ike.node.control import ControlError, Handler
from mpa_ike.node.registry import ChildSaEntry, IkeSaEntry, Registry
from mpa_ike.node.transport import IKE_PORTS, EspHandler, IkeTransport, TransportError

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
    """The datapath calls of one core event (without the bookkeeping of :class:`DatapathGlue`)."""
    if isinstance(event, ChildSaEstablished):
        datapath.install_child_sa(event.params)
    elif isinstance(event, ChildSaDeleted):
        datapath.remove_child_sa(event.spi_in, event.spi_out)
    elif isinstance(event, ChildSaAddressesUpdated):
        datapath.move_child_sa(event.spi_in, event.spi_out, event.local, event.remote, event.encap)


FORWARDING = {
    4: Path("/proc/sys/net/ipv4/ip_forward"),
    6: Path("/proc/sys/net/ipv6/conf/all/forwarding"),
}
# What a datapath raises when the kernel or its own checks refuse an SA.
DATAPATH_ERRORS = (LocalProtocolError, XfrmUsageError, OSError, KeyError)


class DatapathGlue:
    """A daemon's datapath and the core events that drive it.

    :meth:`open` builds what ``datapath:`` names. The userspace one (strongSwan's
    kernel-libipsec) reads a TUN device, sends ESP in UDP from the IKE sockets of the
    transport, which hands it the ESP arriving on 4500, and plain ESP over raw sockets
    where allowed. The glue files CHILD SAs and inner addresses under their IKE SA, so
    that an IKE SA that ends takes them along whatever events came before, and a
    shutdown leaves no SA, route or address behind.

    ``inner_addresses`` (the mobile node): the CP-assigned addresses go on the TUN
    device, as charon puts a virtual IP there. ``forward`` (the gateway): IP forwarding
    is turned on with the first CHILD SA of a family, since decrypted traffic goes on to
    the LAN, and back to what it was on close.
    """

    def __init__(
        self,
        datapath: Datapath,
        kind: str = "none",
        *,
        userspace: UserspaceDatapath | None = None,
        raw: RawEspSockets | None = None,
        inner_addresses: bool = False,
        forward: bool = False,
    ) -> None:
        self.datapath = datapath
        self.kind = kind
        self.userspace = userspace
        self.raw = raw
        self.inner_addresses = inner_addresses
        self.forward = forward
        self.errors = 0
        self.transport: IkeTransport | None = None
        self.rules: Rules | None = None
        self._rekeying: set[bytes] = set()  # inbound SPIs rekeyed for their sequence numbers
        self._children: dict[bytes, dict[bytes, bytes]] = {}  # IKE SA -> spi_in -> spi_out
        self._inner: dict[bytes, list[str]] = {}  # IKE SA -> addresses on the device
        self._forwarding_was: dict[int, str] = {}

    @classmethod
    def open(
        cls,
        kind: str,
        transport: IkeTransport,
        *,
        inner_addresses: bool = False,
        forward: bool = False,
        device: str = "mpa%d",
    ) -> DatapathGlue:
        """The datapath ``kind`` (userspace, xfrm, auto) wired to ``transport``.

        ``auto`` without the right to create a TUN device runs without a datapath (a
        warning: SAs are negotiated but carry nothing); ``userspace`` fails then.
        """
        if select_datapath(kind) == "xfrm":
            try:
                xfrm = XfrmDatapath()
            except OSError as error:
                raise ControlError(f"datapath xfrm: {error.strerror or error}") from None
            transport.hand_esp_to_kernel()
            glue = cls(xfrm, "xfrm", inner_addresses=inner_addresses, forward=forward)
            glue.transport = transport
            return glue
        # pyroute2 logs every netlink message at DEBUG: the daemon's debug log drowned.
        logging.getLogger("pyroute2").setLevel(max(logging.INFO, log.getEffectiveLevel()))
        table = GATEWAY_TABLE if forward else MAIN_TABLE
        try:
            userspace = UserspaceDatapath.open(transport.send_raw, name=device, route_table=table)
        except OSError as error:
            reason = f"cannot create a TUN device: {error.strerror or error}"
            if kind == "userspace":
                raise ControlError(f"datapath userspace: {reason}") from None
            log.warning("no datapath (%s): CHILD SAs will carry no traffic", reason)
            return cls(
                RecordingDatapath(), "none", inner_addresses=inner_addresses, forward=forward
            )
        raw = None
        try:
            raw = RawEspSockets(asyncio.get_running_loop(), userspace.esp_received)
            userspace.send_plain = raw.send
        except OSError as error:
            log.warning("ESP in UDP only: no raw socket for plain ESP (%s)", error.strerror)
        transport.esp_handler = userspace.esp_received
        rules = None
        if forward:
            rules = cls._gateway_routing(userspace, transport, raw)
        log.info("userspace datapath on %s", cls._device(userspace))
        glue = cls(
            userspace,
            "userspace",
            userspace=userspace,
            raw=raw,
            inner_addresses=inner_addresses,
            forward=forward,
        )
        glue.transport = transport
        glue.rules = rules
        userspace.on_expire = glue._expired
        userspace.on_mapping = glue._mapped
        return glue

    @staticmethod
    def _gateway_routing(
        userspace: UserspaceDatapath, transport: IkeTransport, raw: RawEspSockets | None
    ) -> Rules | None:
        """Tunnel routes in their own table, our IKE and ESP sockets marked past it: an
        nCoA is both the inner and the outer address after the move."""
        netlink = getattr(userspace.tun, "netlink", None)
        if netlink is None:
            return None
        rules = gateway_rules(netlink)
        transport.mark_sockets(BYPASS_MARK)
        if raw is not None:
            raw.mark_sockets(BYPASS_MARK)
        return rules

    @staticmethod
    def _device(userspace: UserspaceDatapath) -> str:
        return str(getattr(userspace.tun, "name", ""))

    # ------------------------------------------------------------------
    # Events

    def on_event(self, event: Event) -> None:
        """Turn one core event into datapath calls; a refused call is logged and counted."""
        try:
            self._apply(event)
        except DATAPATH_ERRORS as error:
            self.errors += 1
            log.error("%s[%s]: datapath: %s", event.name, event.ike_sa.hex(), error)
            if isinstance(event, ChildSaEstablished):
                self._delete_soon(event.ike_sa, event.params.spi_in)

    def _delete_soon(self, ike_sa: bytes, spi_in: bytes) -> None:
        """A CHILD SA the datapath refused carries nothing: delete it, as charon does when
        the kernel refuses an SA, once the events under way are handled."""
        transport = self.transport
        if transport is None:
            return

        def delete() -> None:
            if self.transport is not transport:  # closed meanwhile
                return
            log.info("deleting CHILD SA %s: the datapath refused it", spi_in.hex())
            try:
                transport.endpoint.delete_child_sa(ike_sa, spi_in, transport.now())
            except Exception as error:  # the IKE SA went away meanwhile
                log.warning("CHILD SA %s: delete refused: %s", spi_in.hex(), error)
            transport.process()

        asyncio.get_running_loop().call_soon(delete)

    def _apply(self, event: Event) -> None:
        if isinstance(event, IkeSaEstablished) and self.inner_addresses:
            self._add_inner(event.ike_sa, [str(a) for a in event.assigned_addresses])
        elif isinstance(event, ChildSaEstablished):
            self._install(event.ike_sa, event.params)
        elif isinstance(event, ChildSaDeleted):
            self._remove(event.ike_sa, event.spi_in)
        elif isinstance(event, ChildSaAddressesUpdated):
            self.datapath.move_child_sa(
                event.spi_in, event.spi_out, event.local, event.remote, event.encap
            )
        elif isinstance(event, IkeSaRekeyed):  # its CHILD SAs and lease move along
            if event.ike_sa in self._children:
                self._children[event.new_ike_sa] = self._children.pop(event.ike_sa)
            if event.ike_sa in self._inner:
                self._inner[event.new_ike_sa] = self._inner.pop(event.ike_sa)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            self._forget(event.ike_sa)

    def _add_inner(self, ike_sa: bytes, addresses: list[str]) -> None:
        if self.userspace is None:
            return
        added = self._inner.setdefault(ike_sa, [])
        for address in addresses:
            self.userspace.add_inner_address(address)
            added.append(address)

    def take_inner_address(self, ike_sa: bytes, address: str) -> None:
        """Take ``address`` off the device: it moved to an interface (MPA handover)."""
        addresses = self._inner.get(ike_sa, [])
        if address in addresses:
            addresses.remove(address)
            if self.userspace is not None:
                self.userspace.del_inner_address(address)

    def _install(self, ike_sa: bytes, params: ChildSaParams) -> None:
        if self.forward:
            self._enable_forwarding(params)
        self.datapath.install_child_sa(params)
        self._children.setdefault(ike_sa, {})[params.spi_in] = params.spi_out

    def _remove(self, ike_sa: bytes, spi_in: bytes) -> None:
        for children in (self._children.get(ike_sa), *self._children.values()):
            if children is not None and spi_in in children:
                self._rekeying.discard(spi_in)
                self.datapath.remove_child_sa(spi_in, children.pop(spi_in))
                return

    def _forget(self, ike_sa: bytes) -> None:
        """Everything of an IKE SA that ended: its CHILD SAs, then its inner addresses."""
        for spi_in in list(self._children.get(ike_sa, {})):
            try:
                self._remove(ike_sa, spi_in)
            except DATAPATH_ERRORS as error:
                self.errors += 1
                log.error("datapath: removing %s: %s", spi_in.hex(), error)
        self._children.pop(ike_sa, None)
        for address in self._inner.pop(ike_sa, []):
            if self.userspace is not None:
                try:
                    self.userspace.del_inner_address(address)
                except DATAPATH_ERRORS as error:
                    log.error("datapath: removing address %s: %s", address, error)

    def ike_sa_of(self, spi_in: bytes) -> bytes | None:
        return next((sa for sa, children in self._children.items() if spi_in in children), None)

    def _expired(self, expiry: Expiry) -> None:
        """Outbound sequence numbers running out: rekey the CHILD SA, once (RFC 4303
        §3.3.3), as charon does on the kernel's soft expire."""
        ike_sa = self.ike_sa_of(expiry.spi_in)
        transport = self.transport
        if ike_sa is None or transport is None or expiry.spi_in in self._rekeying:
            if expiry.hard:
                log.warning("CHILD SA %s: sequence numbers exhausted", expiry.spi_in.hex())
            return
        self._rekeying.add(expiry.spi_in)
        log.info("CHILD SA %s: sequence numbers running out, rekeying", expiry.spi_in.hex())
        try:
            transport.endpoint.rekey_child_sa(ike_sa, expiry.spi_in, transport.now())
        except Exception as error:  # a rekey already under way, an IKE SA going away
            log.warning("CHILD SA %s: rekey refused: %s", expiry.spi_in.hex(), error)
        transport.process()

    def _mapped(self, spi_in: bytes, spi_out: bytes, src: Address) -> None:
        # Authenticated ESP proves nothing about the path (RFC 4555 §3.12): moving the SA
        # is for MOBIKE or NAT detection in IKE to decide; this is only logged.
        log.info("CHILD SA %s: ESP from %s[%d]", spi_in.hex(), *src)

    def _enable_forwarding(self, params: ChildSaParams) -> None:
        versions = {ipaddress.ip_address(ts.start).version for ts in params.remote_ts}
        for version in versions - set(self._forwarding_was):
            knob = FORWARDING[version]
            was = knob.read_text().strip()
            if was != "1":
                knob.write_text("1\n")
                log.info("IPv%d forwarding turned on (was %s)", version, was)
            self._forwarding_was[version] = was

    # ------------------------------------------------------------------
    # Status and shutdown

    def installed(self, spi_in: bytes) -> bool:
        return any(spi_in in children for children in self._children.values())

    def child_counters(self, spi_in: bytes) -> dict[str, Any]:
        """Bytes and packets each way and drops by reason of one installed CHILD SA."""
        found: dict[str, Any] = {}
        try:
            counted = self.datapath.counters(spi_in)
        except DATAPATH_ERRORS:
            return found
        found.update(
            bytes_in=counted.bytes_in,
            bytes_out=counted.bytes_out,
            packets_in=counted.packets_in,
            packets_out=counted.packets_out,
        )
        if self.userspace is not None:
            with contextlib.suppress(*DATAPATH_ERRORS):
                found["drops"] = self.userspace.drops(spi_in)
        return found

    def annotate(self, ike_sas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Status entries of ``Registry.to_json`` with each CHILD SA's counters added."""
        for sa in ike_sas:
            for child in sa.get("child_sas", []):
                spi_in = bytes.fromhex(child["spi_in"])
                if self.installed(spi_in):
                    child.update(self.child_counters(spi_in))
        return ike_sas

    def status(self) -> dict[str, Any]:
        """The datapath's own line: kind, device, drops tied to no SA (unknown SPI, ...)."""
        installed = sum(len(children) for children in self._children.values())
        found: dict[str, Any] = {"kind": self.kind, "child_sas": installed, "errors": self.errors}
        if self.userspace is not None:
            found["device"] = self._device(self.userspace)
            found["drops"] = self.userspace.drops()
            found["tun_write_errors"] = self.userspace.tun_write_errors
        return found

    def close(self) -> None:
        """Remove what is still installed, close the device and sockets, restore forwarding."""
        self.transport = None
        for ike_sa in list(self._children) + list(self._inner):
            self._forget(ike_sa)
        if self.raw is not None:
            self.raw.close()
        if self.rules is not None:
            self.rules.close()
            self.rules = None
        if self.userspace is not None:
            self.userspace.close()
        elif isinstance(self.datapath, XfrmDatapath):
            self.datapath.close()
        for version, was in self._forwarding_was.items():
            if was != "1":
                with contextlib.suppress(OSError):
                    FORWARDING[version].write_text(f"{was}\n")
        self._forwarding_was.clear()


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
    if isinstance(event, ChildSaAddressesUpdated):
        encap = ", ESP in UDP" if event.encap else ""
        return (
            f"{who}: CHILD SA {event.spi_in.hex()}_i {event.spi_out.hex()}_o moved to "
            f"{event.local[0]} === {event.remote[0]}{encap}"
        )
    if isinstance(event, AddressUpdateRefused):
        whose = "the peer refused our" if event.by_peer else "refused the peer's"
        return (
            f"{who}: {whose} move to {event.address[0]}[{event.address[1]}] ({event.notify.name})"
        )
    if isinstance(event, AddressUpdateAccepted):
        return f"{who}: move to {event.local[0]}[{event.local[1]}] accepted by the peer"
    if isinstance(event, LeaseReleased):
        return f"{who}: released {', '.join(str(a) for a in event.addresses)}"
    return f"{who}: {type(event).__name__}"


def counters(endpoint: Endpoint, transport: IkeTransport | None) -> dict[str, int]:
    """What was dropped or refused, and why: the core's counters and the sockets'.

    The core's are :meth:`Endpoint.statistics`, those of the endpoint and of every IKE SA
    (a forged or replayed request is dropped and counted by its SA, a refused MOBIKE
    update too), not only the endpoint's own.
    """
    found = dict(endpoint.statistics())
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
    """``datapath`` replaces the one the configuration names (tests pass a recording one);
    ``esp_handler`` then gets the ESP in UDP arriving on port 4500."""

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
        self._given_datapath = datapath
        self.glue = DatapathGlue(datapath if datapath is not None else RecordingDatapath())
        # Built by start(), so that a bad key file or a busy port ends the daemon with one
        # line (the daemon loop reports ControlError so), not a traceback.
        self.endpoint = Endpoint(random=os.urandom)
        self.transport: IkeTransport | None = None

    @property
    def datapath(self) -> Datapath:
        return self.glue.datapath

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
            additional_addresses=tuple(
                address
                for address in (ipaddress.ip_address(str(x.address)) for x in config.listen)
                if not address.is_unspecified
            ),
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
        if self._given_datapath is None:
            try:
                self.glue = DatapathGlue.open(self.config.datapath, transport, forward=True)
            except BaseException:
                transport.close()
                raise
        self.transport = transport
        log.info("serving IKE on %s", ", ".join(f"{a}[{p}]" for a, p in transport.local_addresses))

    async def stop(self) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        if any(not sa.closed for sa in self.endpoint):
            log.info("deleting %d IKE SAs", sum(1 for sa in self.endpoint if not sa.closed))
            await delete_all_and_wait(transport)
        self.glue.close()
        transport.close()

    def _on_event(self, event: Event) -> None:
        log.info("%s", describe_event(event))
        self.glue.on_event(event)

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """IKE SAs, leases and pool usage: the result of ``mpa-gateway status --json``."""
        refresh_registry(self.registry, self.endpoint)
        listening = self.transport.local_addresses if self.transport is not None else []
        return {
            "listening": [f"{address}[{port}]" for address, port in listening],
            "ike_sas": self.glue.annotate(self.registry.to_json()),
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
            "datapath": self.glue.status(),
        }

    def _describe(self, owner: Hashable) -> str:
        entry = self.registry.get(owner)
        if entry is not None:
            return entry.name
        return owner.hex() if isinstance(owner, bytes) else str(owner)
