"""mpa-gateway and mpa-mobile in the testbed: configurations, daemons, commands.

``MpaPrograms(bed, workdir).start()`` starts ``mpa-gateway`` in ``ngw`` (and ``gwc``)
as the access router of its network, with the upper half of that network as its pool,
and ``mpa-mobile`` in ``mn`` with one gateway entry per candidate, each naming the
MN's interface on that network. The gateways listen on their access-network address,
which the MN reaches through network A before the handover and directly after it.
Every command goes through the programs' own CLIs, as an operator would type them.

``family``: ``4`` or ``6`` runs IKE, the inner addresses and the probe flow over that
family only; ``split`` (with ``TestbedSpec(family="split")``) has the MN reach the nGW
over IPv4 through A and ask for an IPv6 nCoA on B.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mpa_ike.node import control_client
from mpa_testbed.topology import Testbed

GATEWAYS = {"ngw": ("b", "mn-b"), "gwc": ("c", "mn-c")}
EAP_USER = "alice"
EAP_PASSWORD = "alice-testbed-secret"
PSK = "mpa-ike testbed gateway key"
CN_NETWORKS = {4: "10.0.9.0/24", 6: "fd00:ff:9::/64"}
IKE = "aes128-sha256-x25519"
ESP = "aes128gcm16"
DAEMON_START = 30.0
COMMAND_TIMEOUT = 20.0

ProgramFamily = Literal[4, 6, "split"]


class ProgramError(RuntimeError):
    """A command of mpa-mobile or mpa-gateway failed; the text is its error line."""


def gateway_id(name: str) -> str:
    return f"{name}.mpa-ike.test"


@dataclass
class MpaPrograms:
    """The MPA daemons of one testbed; ``stop`` (or the testbed's ``down``) ends them."""

    bed: Testbed
    workdir: Path
    family: ProgramFamily = 4
    gateways: Sequence[str] = ("ngw",)
    eap: str = "mschapv2"
    address_policy: str | list[str] = "allocated"
    handover: str = "manual"
    preauth_mode: bool | str = True
    """Each gateway entry's ``preauth:`` (true, false or auto)."""
    log_level: str = "info"
    extra_gateway: dict[str, Any] = field(default_factory=dict)
    extra_mobile: dict[str, Any] = field(default_factory=dict)
    """Top-level keys added to the mobile node's file (``dns``, ``dns_file``...)."""
    extra_mobile_gateway: dict[str, Any] = field(default_factory=dict)
    """Keys added to each gateway entry of the mobile node's file."""
    datapath: str = "userspace"
    """Both daemons' ``datapath:`` (userspace, xfrm or auto)."""
    gateway_on_b: bool = False
    """With ``split``: the MN names the gateway by its IPv6 access address, for a MN
    that connects only once on B (IPv6-only) rather than through A."""

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # --- addresses -------------------------------------------------------------

    @property
    def outer_version(self) -> int:
        """The family IKE runs over: the MN's network A (IPv4 when ``split``)."""
        return 4 if self.family == "split" else int(self.family)

    @property
    def inner_version(self) -> int:
        """The family of the nCoA and the probe flow: B's (IPv6 when ``split``)."""
        return 6 if self.family == "split" else int(self.family)

    def gateway_address(self, gateway: str) -> str:
        """Where the MN starts IKE: the gateway's access-network address, or with
        ``split`` its IPv4 core address (its network is IPv6-only; ``gateway_on_b``:
        that IPv6 access address)."""
        access = f"{gateway}-{GATEWAYS[gateway][0]}"
        if self.family == "split":
            if self.gateway_on_b:
                return self.bed.addr(gateway, access, 6)
            return self.bed.addr(gateway, f"{gateway}-core", 4)
        return self.bed.addr(gateway, access, self.outer_version)

    def listen_addresses(self, gateway: str) -> list[str]:
        """With ``split`` the gateway listens on its IPv4 core address and its IPv6
        access address, and announces the other (ADDITIONAL_*_ADDRESS) for a move."""
        if self.family == "split":
            return [
                self.bed.addr(gateway, f"{gateway}-core", 4),
                self.bed.addr(gateway, f"{gateway}-{GATEWAYS[gateway][0]}", 6),
            ]
        return [self.gateway_address(gateway)]

    def cn_address(self) -> str:
        return self.bed.addr("cn", "cn-core", self.inner_version)

    # --- configuration ---------------------------------------------------------

    def gateway_config(self, gateway: str) -> Path:
        data: dict[str, Any] = {
            "listen": self.listen_addresses(gateway),
            "id": gateway_id(gateway),
            "psk": PSK,
            "ike": [IKE],
            "esp": [ESP],
            "pool": [self.bed.pool(gateway, self.inner_version)],
            "local_ts": [CN_NETWORKS[self.inner_version]],
            "eap": {"method": self.eap, "users": {EAP_USER: EAP_PASSWORD}},
            "mobike": {"address_policy": self.address_policy},
            "control_socket": str(self.control_socket(gateway)),
            "leases": str(self.workdir / f"{gateway}-leases.sqlite3"),
            "datapath": self.datapath,
            "log_level": self.log_level,
            **self.extra_gateway,
        }
        return _write_yaml(self.workdir / f"{gateway}.yaml", data)

    def mobile_config(self) -> Path:
        entries = {
            gateway: {
                "address": self.gateway_address(gateway),
                "id": gateway_id(gateway),
                "psk": PSK,
                "ike": [IKE],
                "esp": [ESP],
                "remote_ts": [CN_NETWORKS[self.inner_version]],
                "interface": GATEWAYS[gateway][1],
                "preauth": self.preauth_mode,
                "handover": self.handover,
                **self.extra_mobile_gateway,
            }
            for gateway in self.gateways
        }
        data = {
            "identity": f"{EAP_USER}@mpa-ike.test",
            "eap": {"method": self.eap, "password": EAP_PASSWORD, "identity": EAP_USER},
            "control_socket": str(self.control_socket("mn")),
            "datapath": self.datapath,
            "log_level": self.log_level,
            "gateways": entries,
            **self.extra_mobile,
        }
        return _write_yaml(self.workdir / "mobile.yaml", data)

    # --- daemons ---------------------------------------------------------------

    def start(self) -> MpaPrograms:
        for gateway in self.gateways:
            self._start(gateway, "gateway.cli", self.gateway_config(gateway))
        self._start("mn", "mobile.cli", self.mobile_config())
        for node in [*self.gateways, "mn"]:
            self._wait_ready(node)
        return self

    def _start(self, node: str, module: str, config: Path) -> None:
        log = (self.workdir / f"{node}.log").open("wb")
        self._procs[node] = self.bed.popen(
            node,
            [sys.executable, "-m", module, "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def control_socket(self, node: str) -> Path:
        """The control socket of ``node``'s daemon (a gateway's name, or ``mn``)."""
        return self.workdir / f"{node}.sock"

    def _wait_ready(self, node: str) -> None:
        """Until ``node``'s daemon answers on its control socket, asked from this process
        (a command line per poll would start an interpreter, seconds in a slow kernel)."""
        deadline = time.monotonic() + DAEMON_START
        while True:
            proc = self._procs[node]
            if proc.poll() is not None:
                raise ProgramError(f"{node}: daemon exited: {self.log_tail(node)}")
            try:
                control_client.call(self.control_socket(node), "status", timeout=2.0)
                return
            except control_client.ControlError as error:
                if time.monotonic() > deadline:
                    raise ProgramError(f"{node}: {error}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def reload(self, node: str) -> None:
        """SIGHUP to ``node``'s daemon: it reads its file again (write it first)."""
        self._procs[node].send_signal(signal.SIGHUP)

    def log_tail(self, node: str, lines: int = 20) -> str:
        path = self.workdir / f"{node}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- commands --------------------------------------------------------------

    def cli(self, node: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run ``mpa-mobile`` (node ``mn``) or ``mpa-gateway`` with ``args``; its stdout."""
        module, config = (
            ("mobile.cli", "mobile.yaml") if node == "mn" else ("gateway.cli", f"{node}.yaml")
        )
        cmd = [sys.executable, "-m", module, "-c", str(self.workdir / config), *args]
        proc = subprocess.run(
            ["ip", "netns", "exec", self.bed.ns(node), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise ProgramError((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1])
        return proc.stdout.strip()

    def status(self, node: str = "mn") -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli(node, "status", "--json"))
        return result

    def connect(self, gateway: str) -> str:
        return self.cli("mn", "connect", gateway)

    def preauth(self, gateway: str) -> str:
        return self.cli("mn", "preauth", gateway)

    def handover_to(self, gateway: str) -> str:
        return self.cli("mn", "handover", gateway)

    def begin_handover(self, gateway: str, timeout: float = 15.0) -> subprocess.Popen[str]:
        """``mpa-mobile handover gateway`` in the background, returned once the daemon
        waits for the link (the CLI's own start-up must not count in an outage).

        The daemon is asked on its control socket from this process: a status command
        line per poll would start an interpreter each time, seconds in a slow kernel,
        which the daemon's wait for the link would spend before the link changed."""
        cmd = [sys.executable, "-m", "mobile.cli", "-c", str(self.workdir / "mobile.yaml")]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.bed.ns("mn"), *cmd, "handover", gateway],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = control_client.call(self.control_socket("mn"), "status", timeout=2.0)
                if gateway in status["waiting_for_link"]:
                    return proc
            except control_client.ControlError:  # slow to answer (a loaded machine): again
                pass
            time.sleep(0.02)
        return proc  # it ended already (the link was up, or it failed)

    def end_handover(self, proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
        """The answer of :meth:`begin_handover`'s command; ProgramError if it failed."""
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise ProgramError((err.strip() or out.strip()).splitlines()[-1])
        return out.strip()

    def disconnect(self, gateway: str) -> str:
        return self.cli("mn", "disconnect", gateway)

    def ike_sa(self, gateway: str, node: str = "mn") -> dict[str, Any] | None:
        """The established IKE SA named ``gateway`` in ``node``'s status, if any."""
        for sa in self.status(node)["ike_sas"]:
            if sa["name"] == gateway and sa["state"] == "ESTABLISHED":
                return dict(sa)
        return None

    def ncoa(self, gateway: str) -> str:
        """The address ``gateway`` gave the MN (its nCoA), from ``mpa-mobile status``."""
        sa = self.ike_sa(gateway)
        if sa is None or not sa.get("address"):
            raise ProgramError(f"no address from {gateway}")
        return str(sa["address"]).split(",")[0].strip()

    def __enter__(self) -> MpaPrograms:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
