"""The mobile node's configuration file (``mpa-mobile run -c mobile.yaml``).

Relative file paths are relative to the directory of the configuration file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType

from mobile.cli import DEFAULT_CONTROL_SOCKET
from mpa_ike.errors import ConfigError
from mpa_ike.ike_config import Lifetimes
from mpa_ike.node.config import (
    DEFAULT_PROPOSALS,
    EAP_METHODS,
    FULL_TUNNEL,
    DaemonConfig,
    Endpoint,
    IPNetwork,
    Report,
    Secret,
    Section,
    boolean,
    check,
    choice,
    daemon_keys,
    endpoint,
    guarded,
    interface_name,
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
from mpa_ike.node.lifetimes import read_lifetimes

HANDOVER_MODES = ("auto", "manual")
PREAUTH_MODES = ("auto", "manual")
DNS_MODES = ("auto", "resolvectl", "resolvconf", "file", "none")
DEFAULT_DNS_FILE = Path("/etc/resolv.conf")
# Gateway names are typed on the command line and appear in status output.
_GATEWAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class EapPeerConfig:
    method: str  # one of EAP_METHODS
    password: str = field(repr=False)
    identity: str | None = None  # strongSwan's eap_id; default: the IKE identity


@dataclass(frozen=True)
class GatewayEntry:
    """One gateway the mobile node may connect to or pre-authenticate with."""

    name: str
    address: Endpoint
    id: str
    ca: Path | None = None
    psk: bytes | None = field(default=None, repr=False)
    ike: tuple[str, ...] = DEFAULT_PROPOSALS["ike"]
    esp: tuple[str, ...] = DEFAULT_PROPOSALS["esp"]
    remote_ts: tuple[IPNetwork, ...] = FULL_TUNNEL
    interface: str | None = None  # the mobile node's interface on that gateway's network
    preauth: bool = False
    auto_preauth: bool = False  # preauth: auto: the daemon pre-authenticates by itself
    handover: str = "manual"  # one of HANDOVER_MODES
    encap: bool = False  # swanctl's encap: ESP in UDP even without a NAT
    no_nats_allowed: bool = False  # RFC 4555 §3.9: N(NO_NATS_ALLOWED) in our updates
    return_routability: bool = False  # RFC 4555 §3.5: SAs move once the answer came back
    announce_addresses: bool = False  # RFC 4555 §3.6: our other addresses, kept current
    lifetimes: Lifetimes = field(default_factory=Lifetimes)  # rekey_time, dpd_delay, children


@dataclass(frozen=True)
class MobileConfig(DaemonConfig):
    identity: str
    eap: EapPeerConfig
    gateways: Mapping[str, GatewayEntry]
    dns: str = "auto"  # one of DNS_MODES: how CP's DNS servers reach the resolver
    dns_file: Path = DEFAULT_DNS_FILE  # dns: file: the resolv.conf to add them to
    preauth: str = "manual"  # one of PREAUTH_MODES: the default of gateways with interface


def load_config(file: Path) -> MobileConfig:
    """Read and validate a mobile configuration file; raises ConfigError."""
    return parse_config(load_yaml(file), file.absolute().parent)


def check_config(file: Path) -> Report:
    """``mpa-mobile check-config``: every problem of the file, with those a ``connect``
    would only meet later (CA files that hold no certificate)."""
    return check(file, parse_config, _at_start)


def _at_start(config: MobileConfig, file: Path) -> Iterator[Secret]:
    from mpa_ike.node.credentials import load_certificates

    for name, entry in (config.gateways or {}).items():
        ca = entry.ca
        if ca:
            guarded(partial(load_certificates, ca, f"gateways.{name}.ca"))
    yield Secret("", file)  # eap.password


def parse_config(data: object, base_dir: Path) -> MobileConfig:
    top = Section(data, "")
    default_preauth = top.optional("preauth", choice(*PREAUTH_MODES), "manual")
    config = MobileConfig(
        identity=top.required("identity", string),
        eap=top.required("eap", _eap),
        gateways=top.required(
            "gateways", lambda value, path: _gateways(value, path, base_dir, default_preauth)
        ),
        dns=top.optional("dns", choice(*DNS_MODES), "auto"),
        dns_file=top.optional("dns_file", _path(base_dir), DEFAULT_DNS_FILE),
        preauth=default_preauth,
        **daemon_keys(top, base_dir, DEFAULT_CONTROL_SOCKET),
    )
    top.check_unknown()
    return config


def _eap(value: object, path: str) -> EapPeerConfig:
    section = Section(value, path)
    config = EapPeerConfig(
        method=section.required("method", choice(*EAP_METHODS)),
        password=section.required("password", secret),
        identity=section.optional("identity", string, None),
    )
    section.check_unknown()
    return config


def _path(base_dir: Path) -> Callable[[object, str], Path]:
    def parse(value: object, path: str) -> Path:
        return base_dir / string(value, path)

    return parse


def _preauth(value: object, path: str) -> str:
    """``true``, ``false`` or ``auto`` (pre-authenticate by itself, no command)."""
    if value is True or value is False:
        return "true" if value else "false"
    if value == "auto":
        return "auto"
    raise ConfigError(f"expected true, false or auto, got {value!r}", key=path)


def _gateways(
    value: object, path: str, base_dir: Path, default_preauth: str = "manual"
) -> Mapping[str, GatewayEntry]:
    entries = mapping_items(value, path)
    if not entries:
        raise ConfigError("at least one gateway is required", key=path)
    gateways = {}
    for name, entry in entries:
        if not _GATEWAY_NAME.fullmatch(name):
            report(ConfigError("names may hold only letters, digits, _ . -", key=f"{path}.{name}"))
            continue
        gateways[name] = guarded(
            partial(_gateway, name, entry, f"{path}.{name}", base_dir, default_preauth)
        )
    return MappingProxyType(gateways)


def _gateway(
    name: str, value: object, path: str, base_dir: Path, default_preauth: str = "manual"
) -> GatewayEntry:
    """One gateway entry; with the top-level ``preauth: auto`` an entry that names its
    interface and says nothing of ``preauth`` is pre-authenticated by itself."""
    section = Section(value, path)
    ca, key = guarded(lambda: _gateway_authentication(section, base_dir), (None, None))
    fallback = "auto" if default_preauth == "auto" and section.has("interface") else "false"
    preauth = section.optional("preauth", _preauth, fallback)
    entry = GatewayEntry(
        name=name,
        address=section.required("address", endpoint),
        id=section.required("id", string),
        ca=ca,
        psk=key,
        ike=section.optional("ike", proposals("ike"), DEFAULT_PROPOSALS["ike"]),
        esp=section.optional("esp", proposals("esp"), DEFAULT_PROPOSALS["esp"]),
        remote_ts=section.optional("remote_ts", list_of(network), FULL_TUNNEL),
        interface=section.optional("interface", interface_name, None),
        preauth=preauth != "false",
        auto_preauth=preauth == "auto",
        handover=section.optional("handover", choice(*HANDOVER_MODES), "manual"),
        encap=section.optional("encap", boolean, False),
        no_nats_allowed=section.optional("no_nats_allowed", boolean, False),
        return_routability=section.optional("return_routability", boolean, False),
        announce_addresses=section.optional("announce_addresses", boolean, False),
        lifetimes=read_lifetimes(section),
    )
    section.check_unknown()
    guarded(lambda: _check_handover(entry, path), None)
    return entry


def _gateway_authentication(section: Section, base_dir: Path) -> tuple[Path | None, bytes | None]:
    """The gateway is authenticated by a certificate from ``ca`` or by a PSK."""
    if section.has("ca") and section.has("psk"):
        raise ConfigError("give either ca or psk, not both", key=f"{section.path}.psk")
    if section.has("psk"):
        return None, section.required("psk", psk)
    if not section.has("ca"):
        raise ConfigError("required (or psk)", key=f"{section.path}.ca")
    return section.required("ca", readable_file(base_dir)), None


def _check_handover(entry: GatewayEntry, path: str) -> None:
    """Pre-authentication and handover move the nCoA onto ``interface``: it must be known."""
    if entry.interface is None and entry.preauth:
        mode = "auto" if entry.auto_preauth else "true"
        raise ConfigError(f"required when preauth is {mode}", key=f"{path}.interface")
    if entry.interface is None and entry.handover == "auto":
        raise ConfigError("required when handover is auto", key=f"{path}.interface")
