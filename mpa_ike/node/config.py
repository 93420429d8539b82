"""Typed reading of YAML configuration files, shared by mpa-gateway and mpa-mobile.

Every check raises :class:`ConfigError` with a one-line message that starts with the
key path (``gateways.ngw.address: not an IP address: 'x'``), so a CLI can print it as
is. Parsers are plain functions ``(value, path) -> typed value``; :class:`Section`
reads one YAML mapping with them and rejects keys nobody asked for.

``run`` stops at the first problem. ``check-config`` reads the file inside
:func:`collecting`: there a :class:`Section` records the problem of a key, stands
:data:`INVALID` in for its value and goes on with the next key, so that one run names
every problem of the file (:func:`check`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import grp
import os
import pwd
import re
import stat
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import yaml

from mpa_ike.constants import ProtocolId
from mpa_ike.crypto.proposal import parse_proposal
from mpa_ike.errors import ConfigError
from mpa_ike.io.policy_routing import (
    MAX_MARK,
    MAX_PRIORITY,
    MAX_TABLE,
    MIN_PRIORITY,
    MIN_TABLE,
    Routing,
)

T = TypeVar("T")
C = TypeVar("C")
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Parser = Callable[[object, str], T]

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# The kernel's IFNAMSIZ is 16 including the terminating NUL.
MAX_INTERFACE_NAME = 15
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
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


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics:``: where the Prometheus metrics are served over HTTP (``/metrics``)."""

    listen: Endpoint  # with a port


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """The keys every daemon's file has (:func:`daemon_keys`); each daemon's
    configuration adds its own."""

    control_socket: Path
    routing: Routing  # its own tables, rules and mark
    datapath: str = "auto"
    log_level: str = "info"
    log_format: str = "text"  # text or json lines
    metrics: MetricsConfig | None = None  # Prometheus metrics over HTTP; off without it
    user: str | None = None  # whom to run as once the sockets are open
    group: str | None = None
    control_group: str | None = None
    keylog: Path | None = None  # Wireshark's key tables written there; off without it


def join(path: str, key: object) -> str:
    """The key path of ``key`` inside the mapping at ``path``."""
    return f"{path}.{key}" if path else str(key)


def type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    names |= {int: "an integer", float: "a number", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


class _Invalid:
    """The value of a key that had a problem, while the rest of the file is checked.

    False, and so is what is read of it, so that a check depending on it (``preauth``
    needs ``interface``) keeps quiet rather than adding a line for the same problem."""

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        """What a check reads of an INVALID section is INVALID too."""
        if name.startswith("_"):
            raise AttributeError(name)
        return self

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
_problems: ContextVar[list[ConfigError] | None] = ContextVar("config_problems", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[list[ConfigError]]:
    """Within it, :func:`report` and :func:`guarded` record problems instead of raising."""
    problems: list[ConfigError] = []
    token = _problems.set(problems)
    try:
        yield problems
    finally:
        _problems.reset(token)


def report(error: ConfigError) -> Any:
    """Raise ``error``, or record it while :func:`collecting` and return INVALID."""
    problems = _problems.get()
    if problems is None:
        raise error
    problems.append(error)
    return INVALID


def guarded(check: Callable[[], T], fallback: Any = INVALID) -> T:
    """``check()``; while :func:`collecting`, a ConfigError it raises is recorded and
    ``fallback`` returned, so that the problem of one key hides no other's."""
    try:
        return check()
    except ConfigError as error:
        problems = _problems.get()
        if problems is None:
            raise
        problems.append(error)
        result: T = fallback
        return result


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
            result: T = report(ConfigError("required", key=join(self.path, key)))
            return result
        return self._parse(key, parse)

    def optional(self, key: str, parse: Parser[T], default: T) -> T:
        if not self.has(key):
            return default
        return self._parse(key, parse)

    def _parse(self, key: str, parse: Parser[T]) -> T:
        value = self._data[key]
        result: T = guarded(lambda: parse(value, join(self.path, key)))
        return result

    def raw(self, key: str) -> object:
        self._asked.add(key)
        return self._data.get(key)

    def check_unknown(self) -> None:
        """Refuse keys that no parser read: a typo must not be ignored silently."""
        for key in self._data:
            if key not in self._asked:
                report(ConfigError("unknown key" + self._hint(key), key=join(self.path, key)))

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


def user_name(value: object, path: str) -> str:
    """A user of this host (``pwd``), by name."""
    name = string(value, path)
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"no such user: {name!r}", key=path) from None
    return name


def group_name(value: object, path: str) -> str:
    """A group of this host (``grp``), by name."""
    name = string(value, path)
    try:
        grp.getgrnam(name)
    except KeyError:
        raise ConfigError(f"no such group: {name!r}", key=path) from None
    return name


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
# The EAP methods both daemons speak themselves (``eap.method``).
EAP_METHODS = ("md5", "mschapv2")
# Traffic selectors of everything (the gateway's local_ts, a gateway entry's remote_ts).
FULL_TUNNEL = (network("0.0.0.0/0", ""), network("::/0", ""))


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


def metrics(value: object, path: str) -> MetricsConfig:
    """``metrics: {listen: ADDRESS:PORT}``: the port is required (no default one)."""
    section = Section(value, path)
    listen = section.required("listen", endpoint)
    if listen and listen.port is None:
        listen = report(ConfigError("give a port: ADDRESS:PORT", key=join(path, "listen")))
    section.check_unknown()
    return MetricsConfig(listen)


def routing(default: Routing) -> Parser[Routing]:
    """``routing: {table, priority, mark}``: the instance's own policy routing; what is
    not given keeps ``default`` (derived from the control socket)."""

    def parse(value: object, path: str) -> Routing:
        section = Section(value, path)
        # Below 256: the kernel's own tables (253-255) and charon's 220.
        table = section.optional("table", integer(MIN_TABLE, MAX_TABLE), default.table)
        priority = section.optional(
            "priority", integer(MIN_PRIORITY, MAX_PRIORITY), default.priority
        )
        mark = section.optional("mark", integer(1, MAX_MARK), default.mark)
        section.check_unknown()
        return Routing(table, priority, mark)

    return parse


def keylog_directory(base_dir: Path) -> Parser[Path]:
    """Where Wireshark's ``ikev2_decryption_table`` and ``esp_sa`` are written (created
    at start, mode 0700); a file that is not a directory is refused."""

    def parse(value: object, path: str) -> Path:
        directory = base_dir / string(value, path)
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"not a directory: '{directory}'", key=path)
        return directory

    return parse


def daemon_keys(top: Section, base_dir: Path, default_socket: Path) -> dict[str, Any]:
    """The keys every daemon's file has: ``control_socket``, ``datapath``, ``log_level``,
    ``log_format`` (text or json lines), ``metrics`` (off without it), whom to run as
    once the sockets are open: ``user``, ``group`` (default: the user's) and
    ``control_group`` (who may use the control socket besides root and the daemon's
    user), the instance's policy ``routing`` (default: derived from the control
    socket's path) and ``keylog`` (a directory for Wireshark's key tables; off without
    it)."""
    user = top.optional("user", user_name, None)
    group = top.optional("group", group_name, None)
    if group is not None and user is None:
        group = report(ConfigError("only used with user", key="group"))
    control_socket = top.optional("control_socket", socket_path(base_dir), default_socket)
    derived = Routing.derived(str(control_socket))
    return {
        "control_socket": control_socket,
        "routing": top.optional("routing", routing(derived), derived),
        "keylog": top.optional("keylog", keylog_directory(base_dir), None),
        "datapath": top.optional("datapath", choice(*DATAPATHS), "auto"),
        "log_level": top.optional("log_level", choice(*LOG_LEVELS), "info"),
        "log_format": top.optional("log_format", choice(*LOG_FORMATS), "text"),
        "metrics": top.optional("metrics", metrics, None),
        "user": user,
        "group": group,
        "control_group": top.optional("control_group", group_name, None),
    }


class Report(NamedTuple):
    """What ``check-config`` found: problems (the file is refused) and warnings."""

    problems: list[str]
    warnings: list[str]


class Secret(NamedTuple):
    """A file holding secrets, which only its owner should read; ``key`` names it."""

    key: str
    file: Path


def check(
    file: Path,
    parse: Callable[[object, Path], C],
    at_start: Callable[[C, Path], Iterable[Secret]],
) -> Report:
    """Every problem of a configuration file: those of its keys (:func:`collecting`),
    then those ``run`` would only meet at start: ``at_start`` checks them with
    :func:`guarded`, skipping values that are INVALID (false), and names the files that
    hold secrets."""
    try:
        data = load_yaml(file)
    except ConfigError as error:
        return Report([str(error)], [])
    with collecting() as problems:
        config = guarded(lambda: parse(data, file.absolute().parent), None)
        secrets: list[Secret] = []
        if config is not None:
            secrets = guarded(lambda: list(at_start(config, file)), [])
    return Report([str(problem) for problem in problems], secret_warnings(secrets))


def secret_warnings(secrets: Iterable[Secret]) -> list[str]:
    """A warning for each secret file that its group or other users may read."""
    warnings = []
    for key, file in secrets:
        try:
            mode = os.stat(file).st_mode
        except OSError:
            continue  # a file that cannot be read is a problem reported elsewhere
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            what = f"{key}: '{file}'" if key else "holds secrets and"
            warnings.append(
                f"{what} is readable by group/others (mode {stat.S_IMODE(mode):04o}; chmod 600)"
            )
    return warnings
