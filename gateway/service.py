"""The gateway service behind ``mpa-gateway run``.

It turns the configuration into the core's responder policy, serves IKE on UDP 500 and
4500 of every ``listen`` address, hands CHILD SA keys to the datapath ``datapath:``
names, and answers ``status`` from the core's snapshot (leases come from the pool the
core allocates from) with each CHILD SA's counters (the shared parts are
:class:`mpa_ike.node.service.NodeService`). Decrypted traffic leaves the TUN device for
the LAN by IP forwarding; the routes of leased addresses lead back into it, where the
datapath picks the SA by the peer's traffic selectors. On stop it deletes every IKE SA
with DELETE, waits briefly for the answers, and closes the datapath (device, routes,
forwarding as it was).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

from gateway.aaa import GatewayAaa, eap_authenticator, local_eap_methods
from gateway.config import GatewayConfig
from gateway.leases import LeaseState, LeaseStore, open_pool, peer_identity
from gateway.pool import AddressPool, Family, HeldLease, IPAddress, IPNetwork
from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.config_payload import LeaseRequest
from mpa_ike.constants import ProtocolId
from mpa_ike.datapath import Datapath
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import ConfigError
from mpa_ike.events import Event
from mpa_ike.ike_config import ResponderConfig
from mpa_ike.node import reload as reloading
from mpa_ike.node.control import CommandError, Handler
from mpa_ike.node.control_client import ControlError
from mpa_ike.node.credentials import credential
from mpa_ike.node.service import NodeService, proposal_specs
from mpa_ike.node.transport import IKE_PORTS, EspHandler, TransportError

log = logging.getLogger(__name__)

FAMILIES: tuple[Family, ...] = (4, 6)


class GatewayService(NodeService):
    """The responder: IKE on every ``listen`` address, leases from the pool."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        datapath: Datapath | None = None,
        esp_handler: EspHandler | None = None,
    ) -> None:
        # The responder's endpoint is built by start(), so that a bad key file or a busy
        # port ends the daemon with one line (the daemon loop reports ControlError so).
        super().__init__(datapath=datapath, esp_handler=esp_handler)
        self.config = config
        self.pool = GrowingPool(AddressPool(config.pool, config.reserved_addresses()), config.pool)
        self.aaa = GatewayAaa(config, self)  # RADIUS: EAP relay, accounting, disconnects

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
            eap_methods=local_eap_methods(config.eap),
            eap_authenticator=eap_authenticator(config.eap),
            allocator=self.pool,
            dns=tuple(config.dns),
            subnets=tuple(config.subnets),
            address_policy=config.mobike.address_policy,
            return_routability=config.mobike.return_routability,
            max_refused_updates=config.mobike.max_refused_updates,
            lifetimes=config.lifetimes,
            unique=config.unique,  # type: ignore[arg-type]  # checked by gateway.config
            limits=config.limits,
            additional_addresses=tuple(
                address
                for address in (ipaddress.ip_address(str(x.address)) for x in config.listen)
                if not address.is_unspecified
            ),
        )

    async def start(self) -> None:
        try:
            self.pool = GrowingPool(open_pool(self.config, self.identify), self.config.pool)
            responder = self._responder_config()
        except ConfigError as error:
            raise ControlError(str(error)) from None
        self.endpoint = Endpoint(
            random=os.urandom,
            responder=responder,
            half_open_threshold=self.config.half_open_threshold,
        )
        self.open_keylog(self.config.keylog)
        transport = self.new_transport()
        try:
            for listen in self.config.listen:
                ports = IKE_PORTS if listen.port is None else (listen.port,)
                await transport.bind(str(listen.address), ports, freebind=True)
        except TransportError as error:
            transport.close()
            raise ControlError(str(error)) from None
        try:
            self.open_datapath(
                self.config.datapath, transport, routing=self.config.routing, forward=True
            )
        except BaseException:
            transport.close()
            raise
        self.transport = transport
        try:
            await self.aaa.start()
        except OSError as error:
            await self.stop()
            raise ControlError(f"dae.listen: {error.strerror or error}") from None
        log.info("serving IKE on %s", ", ".join(f"{a}[{p}]" for a, p in transport.local_addresses))

    def on_event(self, event: Event) -> None:
        self.aaa.on_event(event)  # first: the datapath forgets the CHILD SAs' counters
        super().on_event(event)

    async def stop(self) -> None:
        if self.transport is not None:
            await self.aaa.shutdown()  # Accounting-Stops before the DELETEs
        await super().stop()

    def close(self) -> None:
        self.aaa.close()
        self.pool.close()

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """IKE SAs, leases and pool usage: the result of ``mpa-gateway status --json``."""
        found = await super().status(args)
        self.pool.reclaim(time.time())  # held leases past lease_grace are not shown as held
        listening = self.transport.local_addresses if self.transport is not None else []
        return {
            "listening": [f"{address}[{port}]" for address, port in listening],
            "ike_sas": found["ike_sas"],
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
            "counters": found["counters"],
            "datapath": found["datapath"],
            **self.aaa.status(),
        }

    def _describe(self, owner: Hashable) -> str:
        entry = self.registry.get(owner)
        if entry is not None:
            return entry.name
        return owner.hex() if isinstance(owner, bytes) else str(owner)

    def identify(self, owner: Hashable) -> str | None:
        return peer_identity(self.endpoint, owner)

    def metrics_snapshot(self) -> dict[str, Any]:
        found = super().metrics_snapshot()
        found["pool"] = {
            f"ipv{family}": {
                "size": self.pool.size(family),
                "available": self.pool.available(family),
            }
            for family in FAMILIES
        }
        return found

    # ------------------------------------------------------------------ administration

    def handlers(self) -> Mapping[str, Handler]:
        return {
            **super().handlers(),
            "terminate": self.terminate,
            "leases": self.lease_table,
            "reauth": self.reauth,
        }

    async def terminate(self, args: dict[str, Any]) -> str:
        """``mpa-gateway terminate ID|ADDRESS``: DELETE the IKE SAs of that identity, or
        whose outer or leased address it is; one line per IKE SA deleted."""
        lines = await self._delete_matching(_target(args))
        return "\n".join(lines)

    async def reauth(self, args: dict[str, Any]) -> str:
        """``mpa-gateway reauth ID``: IKEv2 gives a responder no way to make the peer
        re-authenticate its IKE SA (RFC 7296 §2.8.3 leaves it to the original
        initiator; RFC 4478's AUTH_LIFETIME is sent only in IKE_AUTH), so, like charon
        for ``swanctl --rekey --reauth`` on a responder, the IKE SA is deleted: the peer
        authenticates again when it connects anew."""
        lines = await self._delete_matching(_target(args))
        lines.append("no re-authentication request in IKEv2 for a responder: deleted instead")
        return "\n".join(lines)

    async def _delete_matching(self, target: str) -> list[str]:
        sas = self.matching(target)
        if not sas:
            raise CommandError(f"no IKE SA of {target} (an identity, outer or leased address)")
        lines = []
        for sa in sas:
            address = ", ".join(str(a) for a in sa.assigned_addresses) or "no address"
            lines.append(
                f"deleted IKE SA {sa.name}[{sa.local_spi.hex()}] with "
                f"{sa.remote[0]}[{sa.remote[1]}], {address}"
            )
        await self.delete_and_wait(sas)
        return lines

    async def lease_table(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """``mpa-gateway leases``: every lease with its identity, IKE SA, state (active,
        or held for a peer of an earlier run) and since when (from the lease file)."""
        self.pool.reclaim(time.time())
        since = self._lease_times()
        rows = []
        for address, owner in self.pool.leases():
            row: dict[str, Any] = {"address": str(address), "since": since.get(str(address))}
            if isinstance(owner, HeldLease):
                until = _utc(owner.until)
                row.update(identity=owner.identity, ike_sa=owner.ike_sa, state="held")
                row["until"] = until
            else:
                sa = self.endpoint.sas.get(owner) if isinstance(owner, bytes) else None
                row.update(identity=self.identify(owner), state="active")
                row["ike_sa"] = owner.hex() if isinstance(owner, bytes) else str(owner)
                row["ike_sa_state"] = sa.state.value.upper() if sa is not None else None
            rows.append(row)
        return rows

    def _lease_times(self) -> dict[str, str]:
        """When each active lease was allocated, as the lease file says (read-only)."""
        path = self.config.leases
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error:
            return {}
        try:
            rows = LeaseStore(connection, path).load()
        except ConfigError:
            return {}
        finally:
            connection.close()
        return {str(r.address): _utc(r.allocated) for r in rows if r.state is LeaseState.ACTIVE}

    # ------------------------------------------------------------------ reload

    def reload(self, config: GatewayConfig) -> bool:
        """SIGHUP: users, pools, proposals, MOBIKE policy... for new IKE SAs, the
        established ones untouched; refused whole, one line per key, if a key that only
        a restart changes differs or the pool cannot change so."""
        old = self.config
        fixed = [key for key in reloading.changed(old, config) if key not in LIVE_KEYS]
        fixed += _radius_changes(old, config)
        if fixed:
            return reloading.refuse(fixed)
        try:
            change = self.pool.change(old, config, self.identify)
        except ConfigError as error:
            log.error("reload refused: %s; %s", error, reloading.KEPT)
            return False
        self.config = config
        try:
            responder = self._responder_config()
        except ConfigError as error:
            self.config = old
            change.cancel()
            log.error("reload refused: %s; %s", error, reloading.KEPT)
            return False
        change.apply()
        self.endpoint.responder = responder
        self.endpoint.half_open_threshold = config.half_open_threshold
        logging.getLogger().setLevel(config.log_level.upper())
        kept = sum(1 for sa in self.endpoint if not sa.closed)
        what = ", ".join(reloading.changed(old, config)) or "nothing"
        log.info("reloaded: changed %s (for new IKE SAs; %d IKE SAs kept as they are)", what, kept)
        return True


# What a reload changes for new IKE SAs; any other key takes a restart.
LIVE_KEYS = frozenset(
    (
        "id",
        "certificate",
        "private_key",
        "psk",
        "ca",
        "ike",
        "esp",
        "pool",
        "pool_reserved",
        "dns",
        "local_ts",
        "subnets",
        "eap",
        "mobike",
        "half_open_threshold",
        "limits",
        "log_level",
    )
)


def _radius_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """EAP through RADIUS is set up at start: eap changes to or from it take a restart."""
    radius = {old.eap.method, new.eap.method} & {"radius"}
    if radius and old.eap != new.eap:
        return ["eap"]
    return []


def _target(args: dict[str, Any]) -> str:
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise CommandError("give an identity or an address")
    return name


def _utc(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


Opener = Callable[[GatewayConfig], AddressPool[Hashable]]


class GrowingPool:
    """The gateway's address pool across reloads: the pool of the start, and one
    :class:`AddressPool` more per reload that added networks, each over the same lease
    file (pools of disjoint networks may share one). The core and ``status`` see one
    pool; a restart makes it one again.

    A network leaves only if no lease, active or held, lies in it: its part is closed
    if all its networks leave, rebuilt without it if nothing at all is leased there.
    """

    def __init__(self, first: AddressPool[Hashable], networks: Iterable[IPNetwork]) -> None:
        self.parts: list[tuple[tuple[IPNetwork, ...], AddressPool[Hashable]]] = [
            (tuple(networks), first)
        ]

    # What the core needs (mpa_ike.config_payload.AddressAllocator), and status.

    def lease(self, request: LeaseRequest) -> IPAddress | None:
        for _, part in self.parts:
            held = part.lease_of(request.owner, request.family)
            if held is not None:
                return held
        # The part holding the requested address first: the others would lend another.
        wanted = request.requested
        ordered = sorted(self.parts, key=lambda p: not (wanted is not None and wanted in p[1]))
        for _, part in ordered:
            got = part.lease(request)
            if got is not None:
                return got
        return None

    def network_of(self, address: IPAddress) -> IPNetwork | None:
        found = (part.network_of(address) for _, part in self.parts)
        return next((network for network in found if network is not None), None)

    def release(self, owner: Hashable) -> tuple[IPAddress, ...]:
        return tuple(itertools.chain.from_iterable(p.release(owner) for _, p in self.parts))

    def reclaim(self, now: float) -> tuple[IPAddress, ...]:
        return tuple(itertools.chain.from_iterable(p.reclaim(now) for _, p in self.parts))

    def leases(self) -> Iterator[tuple[IPAddress, Hashable | HeldLease]]:
        for _, part in self.parts:
            yield from part.leases()

    def size(self, family: Family) -> int:
        return sum(part.size(family) for _, part in self.parts)

    def available(self, family: Family) -> int:
        return sum(part.available(family) for _, part in self.parts)

    def networks(self) -> list[IPNetwork]:
        return [network for networks, _ in self.parts for network in networks]

    def close(self) -> None:
        for _, part in self.parts:
            part.close()

    # Reload.

    def change(
        self,
        old: GatewayConfig,
        new: GatewayConfig,
        identify: Callable[[Hashable], str | None],
    ) -> PoolChange:
        """The change from ``old``'s pool to ``new``'s, checked (ConfigError naming the
        key) and its new parts opened, not yet applied."""

        def opener(networks: tuple[IPNetwork, ...]) -> AddressPool[Hashable]:
            return open_pool(dataclasses.replace(new, pool=networks), identify)

        have, want = self.networks(), list(new.pool)
        removed = [n for n in have if n not in want]
        added = tuple(n for n in want if n not in have)
        self._check_removal(removed)
        self._check_reserved(old, new, [n for n in have if n in want])
        kept: list[tuple[tuple[IPNetwork, ...], AddressPool[Hashable]]] = []
        opened: list[AddressPool[Hashable]] = []
        closing: list[AddressPool[Hashable]] = []
        try:
            for networks, part in self.parts:
                staying = tuple(n for n in networks if n not in removed)
                if staying == networks:
                    kept.append((networks, part))
                    continue
                closing.append(part)
                if staying:
                    opened.append(opener(staying))
                    kept.append((staying, opened[-1]))
            if added:
                opened.append(opener(added))
                kept.append((added, opened[-1]))
        except BaseException:
            for part in opened:
                part.close()
            raise
        return PoolChange(self, kept, opened, closing)

    def _check_removal(self, removed: list[IPNetwork]) -> None:
        for address, owner in self.leases():
            for network in removed:
                if address.version == network.version and address in network:
                    who = owner if isinstance(owner, HeldLease) else "an established IKE SA"
                    raise ConfigError(
                        f"{network} cannot leave the pool: {address} is leased ({who})",
                        key="pool",
                    )
        for networks, part in self.parts:
            leaving = [n for n in networks if n in removed]
            if leaving and len(leaving) < len(networks) and any(True for _ in part.leases()):
                raise ConfigError(
                    f"{leaving[0]} cannot leave the pool while {', '.join(map(str, networks))} "
                    "hold leases in the same part (restart to apply)",
                    key="pool",
                )

    def _check_reserved(
        self, old: GatewayConfig, new: GatewayConfig, kept: list[IPNetwork]
    ) -> None:
        """Reserved addresses are fixed in a part: a change inside a network that stays
        takes a restart."""
        before, after = set(old.reserved_addresses()), set(new.reserved_addresses())
        for address in sorted(before ^ after, key=str):
            if any(address.version == n.version and address in n for n in kept):
                key = "dns" if address in (*old.dns, *new.dns) else "pool_reserved"
                raise ConfigError(
                    f"{address} in the pool's {key} cannot change without a restart", key=key
                )


class PoolChange:
    """A checked change of a :class:`GrowingPool`: :meth:`apply` or :meth:`cancel`."""

    def __init__(
        self,
        pool: GrowingPool,
        parts: list[tuple[tuple[IPNetwork, ...], AddressPool[Hashable]]],
        opened: list[AddressPool[Hashable]],
        closing: list[AddressPool[Hashable]],
    ) -> None:
        self.pool, self.parts, self.opened, self.closing = pool, parts, opened, closing

    def apply(self) -> None:
        self.pool.parts = self.parts
        for part in self.closing:
            part.close()

    def cancel(self) -> None:
        for part in self.opened:
            part.close()
