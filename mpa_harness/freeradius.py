"""FreeRADIUS as a test peer: the AAA server behind the gateway's RADIUS client.

Each :class:`FreeRadius` owns a work directory holding a generated configuration
(one ``radiusd.conf`` with only the modules the tests need: ``eap`` with md5 and
mschapv2, ``mschap``, ``files`` and ``detail``), its ``users`` file, its log and the
``detail`` file of accounting records. The system configuration in ``/etc/freeradius``
is neither read nor changed. The server runs in the foreground (``-f``), logging to a
file, optionally inside a network namespace through an exec prefix such as
``ip netns exec NS``; :meth:`FreeRadius.start` returns once it answers a
Status-Server (RFC 5997), :meth:`FreeRadius.stop` ends it and removes its files.

The inner MSCHAPv2 of EAP-MSCHAPv2 needs the user's ``Cleartext-Password``, which is
what the users file gives every user; EAP-MD5 needs it as well.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mpa_harness import guards

FREERADIUS_BIN = "freeradius"
RADCLIENT_BIN = "radclient"
MODULE_DIR = Path("/usr/lib/freeradius")
MODULES = ("rlm_eap", "rlm_eap_md5", "rlm_eap_mschapv2", "rlm_mschap", "rlm_files", "rlm_detail")
READY_LINE = "Ready to process requests"

_PLAIN = re.compile(r"^[A-Za-z0-9_.\-]+$")


# --------------------------------------------------------------------------- guard


def freeradius_available() -> str | None:
    """None if a FreeRADIUS peer can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "FreeRADIUS tests need root (network namespaces)"
    for tool in (FREERADIUS_BIN, RADCLIENT_BIN, "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install freeradius freeradius-utils)"
    for module in MODULES:
        if not (MODULE_DIR / f"{module}.so").exists():
            return f"FreeRADIUS module {module} missing (run deploy/setup.sh)"
    return None


def require_freeradius() -> None:
    """Skip the calling test when FreeRADIUS cannot run; fail instead when ``CI=true``."""
    guards.require(freeradius_available(), "FreeRADIUS")


def freeradius_version() -> str:
    """The Debian package version, e.g. ``3.2.1+dfsg-4+deb12u1``, or ``unknown``."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "freeradius"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return out or "unknown"


# --------------------------------------------------------------------------- config model


@dataclass(frozen=True)
class RadiusClientSpec:
    """A NAS allowed to talk to the server: an address or prefix and its shared secret."""

    address: str
    secret: str
    name: str = ""

    def render(self, index: int) -> str:
        net = ipaddress.ip_network(self.address, strict=False)
        key = "ipaddr" if net.version == 4 else "ipv6addr"
        name = self.name or f"client{index}"
        return (
            f"client {_word(name)} {{\n"
            f"\t{key} = {net.with_prefixlen}\n"
            f"\tsecret = {_quote(_plain_secret(self.secret))}\n"
            "\trequire_message_authenticator = yes\n"
            "}\n"
        )


@dataclass(frozen=True)
class RadiusUser:
    """A user of the ``files`` module: a cleartext password and the reply attributes."""

    name: str
    password: str
    framed_ip: str | None = None
    framed_ipv6: str | None = None
    session_timeout: int | None = None
    classes: tuple[bytes, ...] = ()
    extra_reply: tuple[tuple[str, str], ...] = ()  # (attribute, value as FreeRADIUS reads it)

    def reply_items(self) -> list[str]:
        items: list[str] = []
        if self.framed_ip is not None:
            items.append(f"Framed-IP-Address = {ipaddress.IPv4Address(self.framed_ip)}")
        if self.framed_ipv6 is not None:
            items.append(f"Framed-IPv6-Address = {ipaddress.IPv6Address(self.framed_ipv6)}")
        if self.session_timeout is not None:
            items.append(f"Session-Timeout = {int(self.session_timeout)}")
        items.extend(f"Class += 0x{value.hex()}" for value in self.classes)
        items.extend(f"{_word(name)} += {value}" for name, value in self.extra_reply)
        return items

    def render(self) -> str:
        # The users file takes the name between its quotes literally, backslashes too.
        if '"' in self.name or any(ord(c) < 0x20 for c in self.name):
            raise ValueError(f"user name not allowed in a users file: {self.name!r}")
        head = f'"{self.name}"\tCleartext-Password := {_quote(self.password)}\n'
        items = self.reply_items()
        return head + ",\n".join(f"\t{item}" for item in items) + ("\n" if items else "")


@dataclass(frozen=True)
class AccountingRecord:
    """One record of the ``detail`` file: its time header and its attributes as text.

    String values are unquoted; octets stay in FreeRADIUS's ``0x...`` form; an
    attribute sent several times has several values.
    """

    header: str
    attributes: dict[str, list[str]]

    def get(self, name: str) -> str | None:
        values = self.attributes.get(name)
        return values[0] if values else None

    def octets(self, name: str) -> list[bytes]:
        """The values of an octets attribute (Class...) as bytes."""
        out = []
        for value in self.attributes.get(name, []):
            out.append(bytes.fromhex(value[2:]) if value.startswith("0x") else value.encode())
        return out


def parse_detail(text: str) -> list[AccountingRecord]:
    """Parse the ``detail`` module's file: a header line, tab-indented ``A = v`` lines."""
    records: list[AccountingRecord] = []
    header: str | None = None
    attributes: dict[str, list[str]] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if header is not None:
                records.append(AccountingRecord(header, attributes))
            header, attributes = None, {}
        elif not line[0].isspace():
            header = line.strip()
        else:
            name, _, value = line.strip().partition(" = ")
            attributes.setdefault(name, []).append(_unquote(value))
    return records


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    if any(ord(c) < 0x20 for c in value):
        raise ValueError(f"control characters are not allowed: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _plain_secret(value: str) -> str:
    """radclient (the readiness probe) and clients.conf read escapes differently: keep
    secrets free of them."""
    if not value or any(c in value for c in '"\\') or not value.isprintable():
        raise ValueError(f"a shared secret without quotes or backslashes, please: {value!r}")
    return value


def _word(value: str) -> str:
    if not _PLAIN.match(value):
        raise ValueError(f"not a plain name: {value!r}")
    return value


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody listens on right now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the server


_RADIUSD_CONF = """\
# Generated by mpa_harness.freeradius: only what the tests need.
prefix = /usr
confdir = {confdir}
raddbdir = ${{confdir}}
logdir = {logdir}
run_dir = {rundir}
libdir = {libdir}
pidfile = ${{run_dir}}/radiusd.pid
name = radiusd
max_request_time = 30
cleanup_delay = 2
max_requests = 1024
hostname_lookups = no

log {{
	destination = stdout
	colourise = no
	auth = yes
	auth_badpass = no
	auth_goodpass = no
}}

security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = yes
}}

thread pool {{
	start_servers = 2
	max_servers = 4
	min_spare_servers = 1
	max_spare_servers = 2
}}

{clients}
modules {{
	files {{
		filename = ${{confdir}}/users
		acctusersfile = ${{confdir}}/acct_users
	}}
	mschap {{
		use_mppe = yes
	}}
	eap {{
		default_eap_type = {default_eap_type}
		timer_expire = 60
		ignore_unknown_eap_types = no
		md5 {{
		}}
		mschapv2 {{
		}}
	}}
	detail {{
		filename = {detail}
		permissions = 0600
		header = "%t"
	}}
}}

server default {{
	listen {{
		type = auth
		{addr_key} = {address}
		port = {auth_port}
	}}
	listen {{
		type = acct
		{addr_key} = {address}
		port = {acct_port}
	}}
	authorize {{
		eap {{
			ok = return
		}}
		files
		mschap
	}}
	authenticate {{
		Auth-Type MS-CHAP {{
			mschap
		}}
		eap
	}}
	preacct {{
	}}
	accounting {{
		detail
	}}
	post-auth {{
	}}
}}
"""


@dataclass
class FreeRadius:
    """One FreeRADIUS server with a generated configuration under ``workdir``.

    ``address`` is the listening address (``127.0.0.1`` by default); ports left None
    are free ports on the host's loopback, or 1812/1813 inside a namespace
    (``exec_prefix``). ``default_eap_type`` is the method the server proposes after
    EAP-Identity (``md5`` or ``mschapv2``); a peer may Nak it for the other.
    """

    workdir: Path
    clients: Sequence[RadiusClientSpec]
    users: Sequence[RadiusUser]
    address: str = "127.0.0.1"
    auth_port: int | None = None
    acct_port: int | None = None
    exec_prefix: Sequence[str] = ()
    default_eap_type: str = "md5"
    debug: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    startup_seconds: float | None = field(default=None, init=False)
    _probe_secret: str = field(default="", init=False)

    @property
    def confdir(self) -> Path:
        return self.workdir / "conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "radiusd.log"

    @property
    def detail_path(self) -> Path:
        return self.workdir / "log" / "detail"

    # ------------------------------------------------------------------ configuration

    def _resolve_ports(self) -> None:
        in_namespace = bool(self.exec_prefix)
        if self.auth_port is None:
            self.auth_port = 1812 if in_namespace else free_udp_port(self._probe_address())
        if self.acct_port is None:
            self.acct_port = 1813 if in_namespace else free_udp_port(self._probe_address())

    def _probe_address(self) -> str:
        """Where the readiness probe goes (and comes from: a local address talks to itself)."""
        ip = ipaddress.ip_address(self.address)
        if ip.is_unspecified:
            return "::1" if ip.version == 6 else "127.0.0.1"
        return str(ip)

    def _clients_text(self) -> str:
        clients = list(self.clients)
        probe = ipaddress.ip_address(self._probe_address())
        covering = [c for c in clients if probe in ipaddress.ip_network(c.address, strict=False)]
        if covering:
            self._probe_secret = covering[0].secret
        else:
            self._probe_secret = secrets.token_hex(8)
            clients.append(RadiusClientSpec(str(probe), self._probe_secret, "harness_probe"))
        return "\n".join(client.render(i) for i, client in enumerate(clients))

    def write_config(self) -> None:
        """Lay out ``conf/radiusd.conf``, ``conf/users`` and the log directories."""
        if self.default_eap_type not in ("md5", "mschapv2"):
            raise ValueError(f"default_eap_type must be md5 or mschapv2: {self.default_eap_type}")
        self._resolve_ports()
        for sub in ("conf", "log", "run"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        ip = ipaddress.ip_address(self.address)
        text = _RADIUSD_CONF.format(
            confdir=self.confdir,
            logdir=self.workdir / "log",
            rundir=self.workdir / "run",
            libdir=MODULE_DIR,
            detail=self.detail_path,
            clients=self._clients_text(),
            default_eap_type=self.default_eap_type,
            addr_key="ipaddr" if ip.version == 4 else "ipv6addr",
            address=self.address if not ip.is_unspecified else "*",
            auth_port=self.auth_port,
            acct_port=self.acct_port,
        )
        (self.confdir / "radiusd.conf").write_text(text)
        (self.confdir / "users").write_text("".join(user.render() for user in self.users))
        (self.confdir / "acct_users").write_text("")

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 15.0) -> None:
        """Write the configuration, start the server and wait until it answers."""
        if self.proc is not None:
            raise RuntimeError("FreeRADIUS already started")
        self.write_config()
        argv = [*self.exec_prefix, FREERADIUS_BIN, "-d", str(self.confdir), "-f", "-l", "stdout"]
        if self.debug:
            argv.append("-xx")
        began = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready(began + timeout)
        except BaseException:
            self.stop(remove=False)
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while READY_LINE not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"FreeRADIUS exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"FreeRADIUS not ready:\n{self.log()}")
            time.sleep(0.02)
        while not self.status_server():
            if time.monotonic() > deadline:
                raise TimeoutError(f"FreeRADIUS does not answer Status-Server:\n{self.log()}")

    def status_server(self, timeout: float = 0.5) -> bool:
        """Send one Status-Server (RFC 5997) with radclient; True if it was answered."""
        target = self._probe_address()
        host = f"[{target}]" if ":" in target else target
        argv = [
            *self.exec_prefix,
            RADCLIENT_BIN,
            "-q",
            "-r",
            "1",
            "-t",
            str(timeout),
            f"{host}:{self.auth_port}",
            "status",
            self._probe_secret,
        ]
        proc = subprocess.run(
            argv,
            input="Message-Authenticator = 0x00\n",
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
        )
        return proc.returncode == 0

    def stop(self, remove: bool = True) -> None:
        """End the server (SIGTERM, then SIGKILL) and, with ``remove``, delete its files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FreeRadius:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ read back

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def accounting_records(self) -> list[AccountingRecord]:
        """The accounting records written so far by the ``detail`` module."""
        try:
            return parse_detail(self.detail_path.read_text(errors="replace"))
        except FileNotFoundError:
            return []
