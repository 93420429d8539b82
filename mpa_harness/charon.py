"""strongSwan's charon as a test peer, one instance per network namespace.

Each ``Charon`` owns a work directory holding its ``strongswan.conf``, a swanctl
directory (``swanctl.conf``, ``x509``, ``x509ca``, ``private``), its vici socket and
its log. charon runs in its own mount namespace with a private tmpfs on ``/run``
because its pid file path is compiled in (see ``shared/notes/strongswan-interop.md``).
``swanctl`` runs on the host and talks to the instance over ``--uri unix://...``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import guards
from .netns import Netns
from .pki import Credential

CHARON_BIN = Path("/usr/lib/ipsec/charon")
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")

# kernel-libipsec must register before kernel-netlink or SA installs hit XFRM (ENOSYS);
# kdf provides KDF_PRF; eap-identity lets an initiator answer EAP-Identity requests.
PLUGINS = (
    "random nonce openssl kdf pem pkcs1 pkcs8 x509 pubkey constraints revocation "
    "kernel-libipsec kernel-netlink socket-default vici eap-identity eap-md5 eap-mschapv2"
)
# kernel="netlink": the kernel's own IPsec (XFRM states and policies), no kernel-libipsec.
NETLINK_PLUGINS = PLUGINS.replace("kernel-libipsec ", "")

DEFAULT_LOG_LEVELS: Mapping[str, int] = {"ike": 2, "cfg": 2, "net": 1, "enc": 1, "chd": 1}
KEYS_LOG_LEVELS: Mapping[str, int] = {
    "ike": 4,
    "enc": 4,
    "net": 2,
    "cfg": 2,
    "chd": 4,
    "esp": 2,
    "knl": 2,
    "lib": 1,
}

_PLAIN = re.compile(r"^[A-Za-z0-9_.:/%@+\-*]+$")


# --------------------------------------------------------------------------- config model


@dataclass
class AuthRound:
    """One ``local``/``remote`` authentication round of a swanctl connection.

    ``auth`` is a swanctl auth method: ``pubkey``, ``psk``, ``eap-md5``,
    ``eap-mschapv2``, ``eap-identity``, ``eap`` (any) ...
    """

    auth: str
    id: str | None = None
    eap_id: str | None = None
    certs: list[str] = field(default_factory=list)
    cacerts: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"auth": self.auth}
        if self.id is not None:
            out["id"] = self.id
        if self.eap_id is not None:
            out["eap_id"] = self.eap_id
        if self.certs:
            out["certs"] = self.certs
        if self.cacerts:
            out["cacerts"] = self.cacerts
        out.update(self.extra)
        return out


@dataclass
class Child:
    """A CHILD_SA configuration."""

    local_ts: list[str] = field(default_factory=lambda: ["dynamic"])
    remote_ts: list[str] = field(default_factory=lambda: ["dynamic"])
    esp_proposals: list[str] = field(default_factory=lambda: ["default"])
    start_action: str = "none"
    mode: str = "tunnel"
    rekey_time: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "local_ts": self.local_ts,
            "remote_ts": self.remote_ts,
            "esp_proposals": self.esp_proposals,
            "start_action": self.start_action,
            "mode": self.mode,
        }
        if self.rekey_time is not None:
            out["rekey_time"] = self.rekey_time
        out.update(self.extra)
        return out


@dataclass
class Connection:
    """An IKE connection; auth rounds become ``local``/``local-2``... sections."""

    local_addrs: list[str]
    remote_addrs: list[str]
    local: list[AuthRound]
    remote: list[AuthRound]
    children: dict[str, Child]
    proposals: list[str] = field(default_factory=lambda: ["default"])
    version: int = 2
    pools: list[str] = field(default_factory=list)
    vips: list[str] = field(default_factory=list)
    encap: bool = False
    mobike: bool = True
    fragmentation: str = "yes"
    send_certreq: bool = True
    rekey_time: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "local_addrs": self.local_addrs,
            "remote_addrs": self.remote_addrs,
            "proposals": self.proposals,
            "encap": self.encap,
            "mobike": self.mobike,
            "fragmentation": self.fragmentation,
            "send_certreq": self.send_certreq,
        }
        if self.pools:
            out["pools"] = self.pools
        if self.vips:
            out["vips"] = self.vips
        if self.rekey_time is not None:
            out["rekey_time"] = self.rekey_time
        out.update(self.extra)
        for side, rounds in (("local", self.local), ("remote", self.remote)):
            for i, rnd in enumerate(rounds, start=1):
                out[side if i == 1 else f"{side}-{i}"] = rnd.render()
        out["children"] = {name: child.render() for name, child in self.children.items()}
        return out


@dataclass
class Secret:
    """A ``secrets`` entry: ``type`` is ``eap``, ``ike``, ``xauth`` or ``ntlm``."""

    type: Literal["eap", "ike", "xauth", "ntlm"]
    secret: str
    ids: list[str] = field(default_factory=list)


@dataclass
class Pool:
    addrs: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SwanctlConfig:
    connections: dict[str, Connection] = field(default_factory=dict)
    secrets: list[Secret] = field(default_factory=list)
    pools: dict[str, Pool] = field(default_factory=dict)

    def render_tree(self) -> dict[str, Any]:
        secrets: dict[str, Any] = {}
        for n, s in enumerate(self.secrets, start=1):
            entry: dict[str, Any] = {"secret": s.secret}
            for i, ident in enumerate(s.ids, start=1):
                entry[f"id-{i}"] = ident
            secrets[f"{s.type}-{n}"] = entry
        return {
            "connections": {name: c.render() for name, c in self.connections.items()},
            "secrets": secrets,
            "pools": {name: {"addrs": p.addrs, **p.extra} for name, p in self.pools.items()},
        }

    def render(self) -> str:
        return render_settings(self.render_tree())


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if _PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_settings(tree: Mapping[str, Any], indent: int = 0) -> str:
    """Render a nested mapping in strongSwan's settings syntax (strongswan.conf/swanctl.conf).

    Mappings become sections, lists become comma-separated values, bools yes/no.
    """
    pad = "    " * indent
    lines: list[str] = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key} {{")
            body = render_settings(value, indent + 1)
            if body:
                lines.append(body)
            lines.append(f"{pad}}}")
        elif isinstance(value, list | tuple):
            lines.append(f"{pad}{key} = {', '.join(_scalar(v) for v in value)}")
        else:
            lines.append(f"{pad}{key} = {_scalar(value)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- SA listing


@dataclass
class ChildSa:
    name: str
    uniqueid: str
    state: str
    protocol: str
    mode: str
    encap: bool
    spi_in: str
    spi_out: str
    local_ts: list[str]
    remote_ts: list[str]
    raw: dict[str, Any]


@dataclass
class IkeSa:
    name: str
    uniqueid: str
    state: str
    initiator: bool
    initiator_spi: str
    responder_spi: str
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    local_id: str
    remote_id: str
    remote_eap_id: str | None
    local_vips: list[str]
    remote_vips: list[str]
    children: list[ChildSa]
    raw: dict[str, Any]

    def child(self, name: str) -> ChildSa:
        """The first CHILD_SA of that configuration name."""
        for c in self.children:
            if c.name == name:
                return c
        raise LookupError(f"no CHILD_SA {name!r} in IKE_SA {self.name!r}")


def parse_pretty(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``swanctl --pretty`` output into (message name, tree) pairs.

    The format is ``name {`` / ``}`` for sections, ``key = value`` for values
    and ``key = [`` ... ``]`` for lists.
    """
    messages: list[tuple[str, dict[str, Any]]] = []
    stack: list[dict[str, Any]] = []
    current_list: list[str] | None = None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        if current_list is not None:
            if line == "]":
                current_list = None
            else:
                current_list.append(line)
            continue
        if line.endswith("{"):
            section: dict[str, Any] = {}
            name = line[:-1].strip()
            if stack:
                stack[-1][name] = section
            else:
                messages.append((name, section))
            stack.append(section)
        elif line == "}":
            if stack:
                stack.pop()
        elif " = " in line and stack:
            key, value = line.split(" = ", 1)
            if value == "[":
                current_list = []
                stack[-1][key] = current_list
            else:
                stack[-1][key] = value
    return messages


def _child_from_tree(tree: dict[str, Any]) -> ChildSa:
    return ChildSa(
        name=tree.get("name", ""),
        uniqueid=tree.get("uniqueid", ""),
        state=tree.get("state", ""),
        protocol=tree.get("protocol", ""),
        mode=tree.get("mode", ""),
        encap=tree.get("encap", "no") == "yes",
        spi_in=tree.get("spi-in", ""),
        spi_out=tree.get("spi-out", ""),
        local_ts=list(tree.get("local-ts", [])),
        remote_ts=list(tree.get("remote-ts", [])),
        raw=tree,
    )


def parse_list_sas(text: str) -> list[IkeSa]:
    """Structured IKE_SAs from ``swanctl --list-sas --pretty`` output."""
    result: list[IkeSa] = []
    for _, event in parse_pretty(text):
        for name, tree in event.items():
            if not isinstance(tree, dict):
                continue
            children = [
                _child_from_tree(c)
                for c in tree.get("child-sas", {}).values()
                if isinstance(c, dict)
            ]
            result.append(
                IkeSa(
                    name=name,
                    uniqueid=tree.get("uniqueid", ""),
                    state=tree.get("state", ""),
                    initiator=tree.get("initiator", "no") == "yes",
                    initiator_spi=tree.get("initiator-spi", ""),
                    responder_spi=tree.get("responder-spi", ""),
                    local_host=tree.get("local-host", ""),
                    local_port=int(tree.get("local-port", 0)),
                    remote_host=tree.get("remote-host", ""),
                    remote_port=int(tree.get("remote-port", 0)),
                    local_id=tree.get("local-id", ""),
                    remote_id=tree.get("remote-id", ""),
                    remote_eap_id=tree.get("remote-eap-id"),
                    local_vips=list(tree.get("local-vips", [])),
                    remote_vips=list(tree.get("remote-vips", [])),
                    children=children,
                    raw=tree,
                )
            )
    return result


# --------------------------------------------------------------------------- availability


def charon_available() -> str | None:
    """None if charon peers can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "charon interop tests need root (network and mount namespaces)"
    for tool in ("ip", "unshare", "swanctl", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found in PATH"
    if not CHARON_BIN.exists():
        return f"{CHARON_BIN} missing (apt-get install strongswan-charon strongswan-swanctl)"
    for plugin in PLUGINS.split():
        if not (PLUGIN_DIR / f"libstrongswan-{plugin}.so").exists():
            return f"strongSwan plugin {plugin} missing (run deploy/setup.sh)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun missing (kernel-libipsec needs TUN)"
    return None


def require_charon() -> None:
    """Skip the calling test when charon cannot run; fail instead when ``CI=true``."""
    guards.require(charon_available(), "charon")


def charon_version() -> str:
    """e.g. ``Linux strongSwan 5.9.8`` plus the Debian package version when known."""
    out = subprocess.run(
        [str(CHARON_BIN), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    pkg = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "strongswan-charon"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    version = out.splitlines()[0] if out else "unknown"
    return f"{version} (Debian package {pkg})" if pkg else version


# --------------------------------------------------------------------------- the daemon


def parse_log_levels(levels: Mapping[str, int] | str) -> dict[str, int]:
    """``"ike 4, enc 4, net 2"`` (charon's own notation) or a mapping -> {subsystem: level}."""
    if not isinstance(levels, str):
        return dict(levels)
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in levels.split(","))):
        subsystem, level = item.split()
        out[subsystem.lower()] = int(level)
    return out


class CharonError(RuntimeError):
    pass


class Charon:
    """One charon daemon in ``ns`` with all its files under ``workdir``.

    Use as a context manager (``with Charon(...) as c``) or call ``stop()`` in a
    ``finally``: the daemon is stopped and its namespace left clean either way.
    """

    def __init__(
        self,
        ns: Netns,
        workdir: Path,
        *,
        log_levels: Mapping[str, int] | str = DEFAULT_LOG_LEVELS,
        settings: Mapping[str, Any] | None = None,
        kernel: Literal["libipsec", "netlink"] = "libipsec",
    ) -> None:
        if str(workdir.resolve()).startswith("/run"):
            raise ValueError("workdir must not be under /run: charon gets a private tmpfs there")
        self.ns = ns
        self.workdir = workdir
        self.log_levels = parse_log_levels(log_levels)
        self.settings = dict(settings or {})
        self.kernel = kernel
        self.swanctl_dir = workdir / "swanctl"
        self.conf_path = workdir / "strongswan.conf"
        self.log_path = workdir / "charon.log"
        self.stderr_path = workdir / "charon.stderr"
        self.socket_path = workdir / "charon.vici"
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("x509", "x509ca", "private", "pubkey", "rsa", "ecdsa"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > 100:
            raise ValueError(f"vici socket path too long for AF_UNIX: {self.socket_path}")

    # -- files

    @property
    def uri(self) -> str:
        return f"unix://{self.socket_path}"

    def strongswan_conf(self) -> str:
        filelog: dict[str, Any] = {
            "path": str(self.log_path),
            "time_format": "%H:%M:%S",
            "ike_name": True,
            "append": False,
            "flush_line": True,
            "default": 1,
        }
        filelog.update(self.log_levels)
        charon: dict[str, Any] = {
            "load_modular": False,
            "load": NETLINK_PLUGINS if self.kernel == "netlink" else PLUGINS,
            "plugins": {
                "openssl": {"load_legacy": True},
                "vici": {"socket": self.uri},
            },
            "filelog": {"main": filelog},
            "syslog": {"daemon": {"default": -1}},
        }
        _deep_update(charon, self.settings)
        return render_settings({"charon": charon}) + "\n"

    def add_cert(self, cred: Credential, name: str, *, with_key: bool = True) -> str:
        """Install an end-entity certificate (and its key); returns the file name for ``certs``."""
        fname = f"{name}.pem"
        cred.write(
            self.swanctl_dir / "x509" / fname,
            self.swanctl_dir / "private" / fname if with_key else None,
        )
        return fname

    def add_cacert(self, cred: Credential, name: str = "ca") -> str:
        fname = f"{name}.pem"
        cred.write(self.swanctl_dir / "x509ca" / fname)
        return fname

    def configure(self, config: SwanctlConfig | str) -> None:
        """Write swanctl.conf (a ``SwanctlConfig`` or literal text); ``load()`` sends it."""
        text = config if isinstance(config, str) else config.render()
        (self.swanctl_dir / "swanctl.conf").write_text(text + "\n")

    # -- process

    def start(self, timeout: float = 10.0) -> None:
        """Start charon and wait until its vici socket answers."""
        if self.proc is not None:
            raise CharonError("already started")
        self.conf_path.write_text(self.strongswan_conf())
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        inner = f"mount -t tmpfs none /run && exec {CHARON_BIN}"
        cmd = [
            "env",
            f"STRONGSWAN_CONF={self.conf_path}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            inner,
        ]
        with open(self.stderr_path, "wb") as err:
            self.proc = self.ns.popen(
                cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CharonError(
                    f"charon exited with {self.proc.returncode}:\n{self.diagnostics()}"
                )
            if self.socket_path.exists():
                probe = self.swanctl(
                    "--stats", check=False, timeout=max(5.0, deadline - time.monotonic())
                )
                if probe.returncode == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise CharonError(f"charon vici socket not ready after {timeout}s:\n{self.diagnostics()}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, then SIGKILL. Safe to call more than once."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL at once (fast teardown when a clean IKE delete does not matter)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Charon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control

    def swanctl(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``swanctl <command> --uri ...`` against this instance (command first)."""
        if not args:
            raise ValueError("swanctl needs a command option")
        cmd = ["swanctl", args[0], "--uri", self.uri, *args[1:]]
        env = dict(os.environ, SWANCTL_DIR=str(self.swanctl_dir))
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and proc.returncode != 0:
            raise CharonError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def load(self) -> str:
        """``swanctl --load-all`` from this instance's swanctl directory."""
        return self.swanctl(
            "--load-all", "--noprompt", "--file", str(self.swanctl_dir / "swanctl.conf")
        ).stdout

    def initiate(self, child: str, ike: str | None = None, timeout: float = 10.0) -> str:
        """Initiate a CHILD_SA (and its IKE_SA); returns swanctl's log output."""
        args = ["--initiate", "--child", child, "--timeout", str(max(1, int(timeout)))]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, timeout=timeout + 5).stdout

    def terminate(
        self, *, ike: str | None = None, child: str | None = None, timeout: float = 10.0
    ) -> str:
        args = ["--terminate", "--timeout", str(max(1, int(timeout)))]
        if ike:
            args += ["--ike", ike]
        if child:
            args += ["--child", child]
        return self.swanctl(*args, timeout=timeout + 5).stdout

    def rekey(
        self, *, ike: str | None = None, child: str | None = None, reauth: bool = False
    ) -> str:
        """Ask charon to rekey an IKE_SA or CHILD_SA (asynchronous: poll ``list_sas``)."""
        args = ["--rekey"]
        if ike:
            args += ["--ike", ike]
        if child:
            args += ["--child", child]
        if reauth:
            args.append("--reauth")
        return self.swanctl(*args).stdout

    def list_sas(self) -> list[IkeSa]:
        return parse_list_sas(self.swanctl("--list-sas", "--pretty").stdout)

    def wait_for(
        self,
        predicate: Callable[[list[IkeSa]], bool],
        timeout: float = 5.0,
        interval: float = 0.02,
    ) -> list[IkeSa]:
        """Poll ``list_sas`` until ``predicate`` holds; raise with diagnostics on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            sas = self.list_sas()
            if predicate(sas):
                return sas
            if time.monotonic() > deadline:
                raise CharonError(f"condition not met within {timeout}s:\n{self.diagnostics()}")
            time.sleep(interval)

    def wait_established(self, child: str | None = None, timeout: float = 5.0) -> IkeSa:
        """Wait for an ESTABLISHED IKE_SA (with an INSTALLED ``child`` if given)."""

        def ok(sas: list[IkeSa]) -> bool:
            return _established(sas, child) is not None

        sa = _established(self.wait_for(ok, timeout), child)
        assert sa is not None
        return sa

    # -- diagnostics

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self, lines: int = 60) -> str:
        parts = []
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(FileNotFoundError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)


def _established(sas: Sequence[IkeSa], child: str | None) -> IkeSa | None:
    for sa in sas:
        if sa.state != "ESTABLISHED":
            continue
        if child is None or any(c.name == child and c.state == "INSTALLED" for c in sa.children):
            return sa
    return None


def _deep_update(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


@contextlib.contextmanager
def running_charon(
    ns: Netns,
    workdir: Path,
    config: SwanctlConfig | str,
    *,
    log_levels: Mapping[str, int] | str = DEFAULT_LOG_LEVELS,
    setup: Callable[[Charon], None] | None = None,
) -> Iterator[Charon]:
    """Start, configure and load a charon; always stop it on exit.

    ``setup`` runs before start (install certificates there).
    """
    daemon = Charon(ns, workdir, log_levels=log_levels)
    try:
        if setup is not None:
            setup(daemon)
        daemon.configure(config)
        daemon.start()
        daemon.load()
        yield daemon
    finally:
        daemon.stop()
