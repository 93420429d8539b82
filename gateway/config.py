"""The gateway's configuration file (``mpa-gateway run -c gateway.yaml``).

Relative file paths are relative to the directory of the configuration file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.cli import DEFAULT_CONTROL_SOCKET
from gateway.radius import RadiusConfig, parse_radius_config
from gateway.radius_dae import DaeConfig, parse_dae_config
from mpa_ike.errors import ConfigError
from mpa_ike.ike_config import (
    DEFAULT_MAX_REFUSED_UPDATES,
    UNIQUE_POLICIES,
    AdmissionLimits,
    Lifetimes,
)
from mpa_ike.mobike import AddressPolicy, AddressPolicyMode
from mpa_ike.node.config import (
    DEFAULT_PROPOSALS,
    EAP_METHODS,
    FULL_TUNNEL,
    DaemonConfig,
    Endpoint,
    IPAddress,
    IPNetwork,
    Report,
    Secret,
    Section,
    address,
    boolean,
    check,
    choice,
    daemon_keys,
    disjoint_networks,
    endpoint,
    guarded,
    integer,
    list_of,
    load_yaml,
    mapping_items,
    network,
    proposals,
    psk,
    readable_file,
    report,
    secret,
    string,
)
from mpa_ike.node.lifetimes import duration, read_lifetimes

RADIUS = "radius"  # eap.method: every EAP message relayed to eap.radius (gateway/aaa.py)
# strongSwan's charon.cookie_threshold.
DEFAULT_HALF_OPEN_THRESHOLD = 30
DEFAULT_LEASES = Path("/var/lib/mpa-ike/leases.sqlite3")  # the pool's leases, kept across restarts
DEFAULT_LEASE_GRACE = 300  # seconds the leases of the last run stay held for their peers


@dataclass(frozen=True)
class MobikeConfig:
    address_policy: AddressPolicy = field(default_factory=AddressPolicy)
    return_routability: bool = False
    max_refused_updates: int = DEFAULT_MAX_REFUSED_UPDATES  # then the IKE SA goes (0: never)


@dataclass(frozen=True)
class EapServerConfig:
    method: str  # one of EAP_METHODS, or RADIUS
    users: Mapping[str, str] = field(repr=False)  # name -> password
    radius: RadiusConfig | None = field(default=None, repr=False)  # with method RADIUS


@dataclass(frozen=True)
class GatewayConfig(DaemonConfig):
    listen: tuple[Endpoint, ...]
    id: str
    eap: EapServerConfig
    pool: tuple[IPNetwork, ...]
    certificate: Path | None = None
    private_key: Path | None = None
    psk: bytes | None = field(default=None, repr=False)
    ca: Path | None = None
    ike: tuple[str, ...] = DEFAULT_PROPOSALS["ike"]
    esp: tuple[str, ...] = DEFAULT_PROPOSALS["esp"]
    pool_reserved: tuple[IPAddress, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    local_ts: tuple[IPNetwork, ...] = FULL_TUNNEL
    subnets: tuple[IPNetwork, ...] = ()  # sent as INTERNAL_IP4/6_SUBNET (RFC 7296 §3.15.2)
    mobike: MobikeConfig = MobikeConfig()
    half_open_threshold: int = DEFAULT_HALF_OPEN_THRESHOLD
    leases: Path = DEFAULT_LEASES
    lease_grace: int = DEFAULT_LEASE_GRACE
    dae: DaeConfig | None = field(default=None, repr=False)  # RFC 5176 Disconnect-Requests
    lifetimes: Lifetimes = field(default_factory=Lifetimes)  # rekey_time, dpd_delay, children
    unique: str = "replace"  # strongSwan's unique: no, never, keep or replace
    # The half-open cap, the COOKIE secret's schedule, rate limits (mpa_ike.admission).
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)

    def reserved_addresses(self) -> tuple[IPAddress, ...]:
        """Pool addresses never to lease: the explicit list, our own and the DNS servers."""
        own = tuple(listen.address for listen in self.listen)
        return self.pool_reserved + own + self.dns


def load_config(file: Path) -> GatewayConfig:
    """Read and validate a gateway configuration file; raises ConfigError."""
    return parse_config(load_yaml(file), file.absolute().parent)


def check_config(file: Path) -> Report:
    """``mpa-gateway check-config``: every problem of the file, with those ``run`` would
    only meet at start."""
    return check(file, parse_config, _at_start)


def _at_start(config: GatewayConfig, file: Path) -> Iterator[Secret]:
    """The key files parse and match, as :meth:`GatewayService.start` needs them."""
    from mpa_ike.node.credentials import credential, load_certificates

    certificate, private_key, ca = config.certificate, config.private_key, config.ca
    if certificate and private_key:
        guarded(lambda: credential(certificate, private_key), None)
        yield Secret("private_key", private_key)
    if ca:
        guarded(lambda: load_certificates(ca, "ca"))
    if config.psk or config.eap.users or config.eap.radius or config.dae:
        yield Secret("", file)


def parse_config(data: object, base_dir: Path) -> GatewayConfig:
    top = Section(data, "")
    certificate, private_key, key = guarded(
        lambda: _authentication(top, base_dir), (None, None, None)
    )
    config = GatewayConfig(
        listen=top.required("listen", list_of(endpoint)),
        id=top.required("id", string),
        certificate=certificate,
        private_key=private_key,
        psk=key,
        ca=top.optional("ca", readable_file(base_dir), None),
        ike=top.optional("ike", proposals("ike"), DEFAULT_PROPOSALS["ike"]),
        esp=top.optional("esp", proposals("esp"), DEFAULT_PROPOSALS["esp"]),
        pool=top.required("pool", disjoint_networks),
        pool_reserved=top.optional("pool_reserved", list_of(address, non_empty=False), ()),
        dns=top.optional("dns", list_of(address, non_empty=False), ()),
        local_ts=top.optional("local_ts", list_of(network), FULL_TUNNEL),
        subnets=top.optional("subnets", list_of(network, non_empty=False), ()),
        eap=top.required("eap", _eap),
        mobike=top.optional("mobike", _mobike, MobikeConfig()),
        half_open_threshold=top.optional(
            "half_open_threshold", integer(0, 1_000_000), DEFAULT_HALF_OPEN_THRESHOLD
        ),
        leases=top.optional("leases", _lease_file(base_dir), DEFAULT_LEASES),
        lease_grace=top.optional("lease_grace", integer(0, 7 * 86_400), DEFAULT_LEASE_GRACE),
        dae=top.optional("dae", parse_dae_config, None),
        lifetimes=read_lifetimes(top),
        unique=top.optional("unique", choice(*UNIQUE_POLICIES), "replace"),
        limits=top.optional("limits", _limits, AdmissionLimits()),
        **daemon_keys(top, base_dir, DEFAULT_CONTROL_SOCKET),
    )
    guarded(lambda: _subnets_within_local_ts(config))
    top.check_unknown()
    return config


def _subnets_within_local_ts(config: GatewayConfig) -> None:
    """A subnet the CHILD SA does not carry would be routed into a tunnel that drops it."""
    if not isinstance(config.subnets, tuple) or not isinstance(config.local_ts, tuple):
        return  # already reported
    for index, subnet in enumerate(config.subnets):
        if not any(s.version == subnet.version and subnet.subnet_of(s) for s in config.local_ts):  # type: ignore[arg-type]
            raise ConfigError(f"{subnet} is not within local_ts", key=f"subnets[{index}]")


def _authentication(top: Section, base_dir: Path) -> tuple[Path | None, Path | None, bytes | None]:
    """The gateway proves its identity with a certificate and its key, or with a PSK."""
    if top.has("psk"):
        if top.has("certificate"):
            raise ConfigError("give either psk or certificate, not both", key="psk")
        if top.has("private_key"):
            raise ConfigError("only used with certificate, not with psk", key="private_key")
        return None, None, top.required("psk", psk)
    if not top.has("certificate"):
        raise ConfigError("required (or psk)", key="certificate")
    certificate = top.required("certificate", readable_file(base_dir))
    private_key = top.required("private_key", readable_file(base_dir))
    return certificate, private_key, None


def _eap(value: object, path: str) -> EapServerConfig:
    section = Section(value, path)
    if section.raw("method") == RADIUS:  # the RADIUS server holds the users
        radius = section.required("radius", parse_radius_config)
        config = EapServerConfig(RADIUS, MappingProxyType({}), radius)
    else:
        if section.has("radius"):
            raise ConfigError(f"only with method: {RADIUS}", key=f"{path}.radius")
        config = EapServerConfig(
            method=section.required("method", choice(*EAP_METHODS)),
            users=section.required("users", _users),
        )
    section.check_unknown()
    return config


def _users(value: object, path: str) -> Mapping[str, str]:
    users = {
        name: secret(password, f"{path}.{name}") for name, password in mapping_items(value, path)
    }
    if not users:
        raise ConfigError("at least one user is required", key=path)
    return MappingProxyType(users)


def _lease_file(base_dir: Path) -> Callable[[object, str], Path]:
    """The SQLite file of the pool's leases (created at start with its directory)."""

    def parse(value: object, path: str) -> Path:
        file = base_dir / string(value, path)
        if file.is_dir():
            raise ConfigError(f"a directory, not a file: '{file}'", key=path)
        return file

    return parse


def _mobike(value: object, path: str) -> MobikeConfig:
    section = Section(value, path)
    config = MobikeConfig(
        address_policy=section.optional("address_policy", _address_policy, AddressPolicy()),
        return_routability=section.optional("return_routability", boolean, False),
        max_refused_updates=section.optional(
            "max_refused_updates", integer(0, 1000), DEFAULT_MAX_REFUSED_UPDATES
        ),
    )
    section.check_unknown()
    return config


def _address_policy(value: object, path: str) -> AddressPolicy:
    """``allocated`` (only the address leased to that IKE SA), ``any`` (strongSwan's
    behaviour) or a list of prefixes."""
    if isinstance(value, list):
        return AddressPolicy(AddressPolicyMode.PREFIXES, list_of(network)(value, path))
    if value in ("allocated", "any"):
        return AddressPolicy(AddressPolicyMode(value))
    raise ConfigError(f"expected allocated, any or a list of prefixes, got {value!r}", key=path)


def _limits(value: object, path: str) -> AdmissionLimits:
    """``limits:``, what a peer may take of the gateway (mpa_ike.admission)."""
    section, default = Section(value, path), AdmissionLimits()
    counts = integer(1, 10_000_000)
    read: dict[str, Any] = {
        "half_open_limit": section.optional("half_open_limit", counts, default.half_open_limit),
        "cookie_lifetime": section.optional(
            "cookie_lifetime", _positive_duration, default.cookie_lifetime
        ),
        "cookie_grace": section.optional("cookie_grace", duration, default.cookie_grace),
        "init_rate": section.optional("init_rate", _rate, default.init_rate),
        "init_burst": section.optional("init_burst", counts, default.init_burst),
        "rate_sources": section.optional("rate_sources", counts, default.rate_sources),
        "ike_sas_per_identity": section.optional(
            "ike_sas_per_identity", integer(0, 10_000_000), default.ike_sas_per_identity
        ),
    }
    section.check_unknown()
    valid: dict[str, Any] = {k: v for k, v in read.items() if isinstance(v, int | float)}
    lifetime = valid.get("cookie_lifetime", default.cookie_lifetime)
    if valid.get("cookie_grace", 0.0) > lifetime:
        report(
            ConfigError(
                f"must not exceed cookie_lifetime ({lifetime:g} s)", key=f"{path}.cookie_grace"
            )
        )
        del valid["cookie_grace"]
    return AdmissionLimits(**valid)


def _positive_duration(value: object, path: str) -> float:
    seconds = duration(value, path)
    if seconds <= 0:
        raise ConfigError("must be above 0", key=path)
    return seconds


def _rate(value: object, path: str) -> float:
    """Requests a second (0: no limit)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(
            f"expected a number of requests a second (0: no limit), got {value!r}", key=path
        )
    return float(value)
