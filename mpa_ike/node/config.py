"""Typed reading of YAML configuration files, shared by mpa-gateway and mpa-mobile.

Every check raises :class:`ConfigError` with a one-line message that starts with the
key path (``gateways.ngw.address: not an IP address: 'x'``), so a CLI can print it as
is. Parsers are plain functions ``(value, path) -> typed value``; :class:`Section`
reads one YAML mapping with them and rejects keys nobody asked for.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mpa_ike.constants import ProtocolId
from mpa_ike.crypto.proposal import parse_proposal
from mpa_ike.errors import ConfigError

T = TypeVar("T")
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Parser = Callable[[object, str], T]

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# The kernel's IFNAMSIZ is 16 including the terminating NUL.
MAX_INTERFACE_NAME = 15
LOG_LEVELS = ("debug", "info", "warning", "error")
DATAPATHS = ("userspace", "xfrm", "auto")


@dataclass(frozen=True)
class Endpoint:
    """An IP address with an optional UDP port (None: the protocol's default ports)."""

    address: IPAddress
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return str(self.address)
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


def join(path: str, key: object) -> str:
    """The key path of ``key`` inside the mapping at ``path``."""
    return f"{path}.{key}" if path else str(key)


def type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


class Section:
    """One YAML mapping, read key by key; keys never asked for are errors."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(
                f"expected a mapping, got {type_name(value)}", key=path or "(top level)"
            )
        self.path = path
        self._data: dict[object, object] = value
        self._asked: set[str] = set()

    def has(self, key: str) -> bool:
        self._asked.add(key)
        return self._data.get(key) is not None

    def required(self, key: str, parse: Parser[T]) -> T:
        if not self.has(key):
            raise ConfigError("required", key=join(self.path, key))
        return parse(self._data[key], join(self.path, key))

    def optional(self, key: str, parse: Parser[T], default: T) -> T:
        if not self.has(key):
            return default
        return parse(self._data[key], join(self.path, key))

    def raw(self, key: str) -> object:
        self._asked.add(key)
        return self._data.get(key)

    def check_unknown(self) -> None:
        """Refuse keys that no parser read: a typo must not be ignored silently."""
        for key in self._data:
            if key not in self._asked:
                raise ConfigError("unknown key" + self._hint(key), key=join(self.path, key))

    def _hint(self, key: object) -> str:
        close = difflib.get_close_matches(str(key), sorted(self._asked), n=1)
        return f" (did you mean '{close[0]}'?)" if close else ""


def mapping_items(value: object, path: str) -> list[tuple[str, object]]:
    """The entries of a mapping with string keys (names of users, gateways...)."""
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {type_name(value)}", key=path)
    for key in value:
        if not isinstance(key, str):
            raise ConfigError("names must be strings", key=join(path, key))
    return list(value.items())


def string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {type_name(value)}", key=path)
    if not value.strip():
        raise ConfigError("must not be empty", key=path)
    return value


def secret(value: object, path: str) -> str:
    """A password: numbers must be quoted, because YAML would mangle ``007``."""
    if not isinstance(value, str):
        raise ConfigError(f"expected a string (quote it), got {type_name(value)}", key=path)
    if not value:
        raise ConfigError("must not be empty", key=path)
    return value


def boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {value!r}", key=path)
    return value


def integer(minimum: int, maximum: int) -> Parser[int]:
    def parse(value: object, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {type_name(value)}", key=path)
        if not minimum <= value <= maximum:
            raise ConfigError(f"must be between {minimum} and {maximum}, got {value}", key=path)
        return value

    return parse


def choice(*options: str) -> Parser[str]:
    def parse(value: object, path: str) -> str:
        if value not in options:
            raise ConfigError(f"expected one of {', '.join(options)}, got {value!r}", key=path)
        assert isinstance(value, str)
        return value

    return parse


def list_of(item: Parser[T], *, non_empty: bool = True) -> Parser[tuple[T, ...]]:
    """A YAML list; a single scalar counts as a list of one."""

    def parse(value: object, path: str) -> tuple[T, ...]:
        if isinstance(value, dict):
            raise ConfigError("expected a list, got a mapping", key=path)
        items = value if isinstance(value, list) else [value]
        if non_empty and not items:
            raise ConfigError("must not be empty", key=path)
        return tuple(item(entry, f"{path}[{index}]") for index, entry in enumerate(items))

    return parse


def address(value: object, path: str) -> IPAddress:
    try:
        return ip_address(string(value, path))
    except ValueError:
        raise ConfigError(f"not an IP address: {value!r}", key=path) from None


def endpoint(value: object, path: str) -> Endpoint:
    """``192.0.2.1``, ``192.0.2.1:4500``, ``2001:db8::1`` or ``[2001:db8::1]:4500``."""
    text = string(value, path)
    host, port = _split_port(text, path)
    try:
        return Endpoint(ip_address(host), port)
    except ValueError:
        raise ConfigError(f"not an IP address: {text!r}", key=path) from None


def _split_port(text: str, path: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"not an IP address: {text!r}", key=path)
        return host, _port(rest[1:], text, path) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, text, path)
    return text, None


def _port(text: str, whole: str, path: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"bad port in {whole!r}", key=path)
    return int(text)


def network(value: object, path: str) -> IPNetwork:
    """A CIDR prefix; a bare address is a /32 or /128."""
    text = string(value, path)
    try:
        return ip_network(text)
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"not a CIDR prefix: {text!r}", key=path) from None
    raise ConfigError(f"host bits set in {text!r} (did you mean {loose}?)", key=path)


def disjoint_networks(value: object, path: str) -> tuple[IPNetwork, ...]:
    networks = list_of(network)(value, path)
    for index, net in enumerate(networks):
        for other in networks[:index]:
            if net.version == other.version and net.overlaps(other):
                raise ConfigError(f"{net} overlaps {other}", key=f"{path}[{index}]")
    return networks


def interface_name(value: object, path: str) -> str:
    """A Linux interface name, by the kernel's rules (dev_valid_name)."""
    name = string(value, path)
    if len(name) > MAX_INTERFACE_NAME:
        raise ConfigError(f"longer than {MAX_INTERFACE_NAME} characters: {name!r}", key=path)
    if name in (".", "..") or re.search(r"[/:\s]", name):
        raise ConfigError(f"not a valid interface name: {name!r}", key=path)
    return name


def psk(value: object, path: str) -> bytes:
    """A pre-shared key as strongSwan writes it: text, ``0x`` hex or ``0s`` base64."""
    text = secret(value, path)
    try:
        if text.startswith("0x"):
            return bytes.fromhex(text[2:])
        if text.startswith("0s"):
            return base64.b64decode(text[2:], validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError("malformed 0x (hex) or 0s (base64) key", key=path) from None
    return text.encode()


def readable_file(base_dir: Path) -> Parser[Path]:
    """A file that can be opened now; relative paths are relative to the config file."""

    def parse(value: object, path: str) -> Path:
        file = base_dir / string(value, path)
        try:
            with file.open("rb"):
                pass
        except OSError as error:
            raise ConfigError(f"cannot read '{file}': {error.strerror}", key=path) from None
        return file

    return parse


def socket_path(base_dir: Path) -> Parser[Path]:
    def parse(value: object, path: str) -> Path:
        file = base_dir / string(value, path)
        if len(bytes(file)) > MAX_SOCKET_PATH:
            raise ConfigError(f"longer than {MAX_SOCKET_PATH} bytes: '{file}'", key=path)
        return file

    return parse


# Stand-ins for strongSwan's "default" keyword, which the core does not parse: AES with
# SHA-2 and AES-GCM, with X25519, ECP-256 and MODP-3072.
DEFAULT_PROPOSALS = {
    "ike": (
        "aes128-aes256-sha256-sha384-x25519-ecp256-modp3072",
        "aes128gcm16-aes256gcm16-prfsha256-prfsha384-x25519-ecp256-modp3072",
    ),
    "esp": ("aes128gcm16-aes256gcm16", "aes128-aes256-sha256-sha384"),
}
_PROTOCOLS = {"ike": ProtocolId.IKE, "esp": ProtocolId.ESP}


def validate_proposal(text: str, protocol: str) -> str:
    """Check one strongSwan proposal string (``aes128-sha256-modp2048``) for ``protocol``
    ("ike" or "esp") with the core's parser, so that unknown algorithms and incomplete
    proposals are refused at load time. The one place configuration checks proposals.
    Raises mpa_ike.errors.ConfigError."""
    parse_proposal(text, _PROTOCOLS[protocol])
    return text


def proposals(protocol: str) -> Parser[tuple[str, ...]]:
    """A list of proposals; like swanctl, one entry may hold several separated by commas."""

    def parse(value: object, path: str) -> tuple[str, ...]:
        result: list[str] = []
        for index, entry in enumerate(list_of(string)(value, path)):
            for text in entry.split(","):
                try:
                    result.append(validate_proposal(text.strip(), protocol))
                except ConfigError as error:
                    raise ConfigError(str(error), key=f"{path}[{index}]") from None
        return tuple(result)

    return parse


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of duplicate keys silently; a config file must not."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(file: Path) -> object:
    """Parse a YAML file; every failure becomes a one-line ConfigError."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read '{file}': {reason}", key="") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        raise ConfigError(_describe_yaml_error(error), key="") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {' '.join(str(error).split())}", key="") from None


def _describe_yaml_error(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = error.problem or error.context or "invalid YAML"
    return f"{where}{problem}"


def read_control_socket(file: Path, default: Path) -> Path:
    """Only the ``control_socket`` of a config file: what a CLI needs to reach the daemon.

    The rest is not validated, so ``status -c`` works for a user who may not read the
    daemon's private key.
    """
    section = Section(load_yaml(file), "")
    return section.optional("control_socket", socket_path(file.absolute().parent), default)


def daemon_keys(top: Section, base_dir: Path, default_socket: Path) -> dict[str, Any]:
    """The keys every daemon's file has: ``control_socket``, ``datapath``, ``log_level``."""
    return {
        "control_socket": top.optional("control_socket", socket_path(base_dir), default_socket),
        "datapath": top.optional("datapath", choice(*DATAPATHS), "auto"),
        "log_level": top.optional("log_level", choice(*LOG_LEVELS), "info"),
    }
