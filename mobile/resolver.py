"""The DNS servers a gateway hands out by CP (INTERNAL_IP4_DNS, INTERNAL_IP6_DNS, RFC
7296 §3.15.1), given to the mobile node's resolver per interface, and taken back.

``dns:`` in the configuration says how:

- ``resolvectl`` (systemd-resolved): ``resolvectl dns IFACE SERVER...`` while the IKE
  SA lives, ``resolvectl revert IFACE`` at its end;
- ``resolvconf`` (Debian's resolvconf or openresolv): ``resolvconf -a IFACE.mpa-mobile``
  with ``nameserver`` lines on its input, ``resolvconf -d IFACE.mpa-mobile`` at the end;
- ``file``: ``nameserver`` lines put first in ``dns_file`` (``/etc/resolv.conf`` by
  default), each marked ``# mpa-mobile NAME SPI``, and only those lines removed at the
  end, as strongSwan's resolve plugin does where neither of the others is installed;
- ``auto`` (the default): ``resolvectl`` where systemd-resolved runs, else
  ``resolvconf`` where installed, else ``file``;
- ``none``: the servers are only shown by ``status``.

The interface is where the CP address lives: the TUN device of the userspace datapath
after ``connect``, the gateway's interface once a pre-authenticated address moved there
(a PHT's servers are applied only then: before, the PHT carries the nCoA's traffic
alone). A failing resolver program is logged, never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARK = "# mpa-mobile"
RESOLVCONF_SUFFIX = "mpa-mobile"
RESOLVED_RUNNING = Path("/run/systemd/resolve")
PROGRAM_TIMEOUT = 5.0

Runner = Callable[[Sequence[str], str | None], None]
"""``runner(argv, input_text)``: runs a resolver program, raises on failure."""


def run_program(argv: Sequence[str], text: str | None) -> None:
    proc = subprocess.run(
        list(argv), input=text, capture_output=True, text=True, timeout=PROGRAM_TIMEOUT
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise OSError(f"{argv[0]} exited {proc.returncode}: {detail[-1] if detail else ''}")


def choose(mode: str) -> str:
    """What ``auto`` means on this host."""
    if mode != "auto":
        return mode
    if shutil.which("resolvectl") and RESOLVED_RUNNING.is_dir():
        return "resolvectl"
    if shutil.which("resolvconf"):
        return "resolvconf"
    return "file"


@dataclass(frozen=True)
class Applied:
    """The servers of one IKE SA, on one interface."""

    name: str
    interface: str
    servers: tuple[str, ...]


class Resolver:
    """CP's DNS servers in the node's resolver configuration, keyed by IKE SA."""

    def __init__(self, mode: str, file: Path, runner: Runner = run_program) -> None:
        self.mode = choose(mode)
        self.file = file
        self.runner = runner
        self.applied: dict[bytes, Applied] = {}
        self._marks: dict[bytes, bytes] = {}  # IKE SA -> the SPI its file lines carry

    def apply(self, ike_sa: bytes, name: str, interface: str, servers: Sequence[object]) -> None:
        if self.mode == "none" or not servers:
            return
        entry = Applied(name, interface, tuple(str(server) for server in servers))
        self.applied[ike_sa] = entry
        self._guarded(lambda: self._add(ike_sa, entry), f"adding {entry.servers}")
        log.info(
            "%s: DNS servers %s on %s (%s)", name, ", ".join(entry.servers), interface, self.mode
        )

    def rekeyed(self, old: bytes, new: bytes) -> None:
        """The servers stay across an IKE SA rekey; only their key changes (a
        ``file`` entry keeps its old mark: :meth:`remove` finds it by the entry)."""
        entry = self.applied.pop(old, None)
        if entry is not None:
            self.applied[new] = entry
            self._marks[new] = self._marks.pop(old, old)

    def remove(self, ike_sa: bytes) -> None:
        entry = self.applied.pop(ike_sa, None)
        if entry is None:
            return
        self._guarded(lambda: self._drop(ike_sa, entry), f"removing {entry.servers}")
        log.info(
            "%s: DNS servers %s removed from %s",
            entry.name,
            ", ".join(entry.servers),
            entry.interface,
        )

    def close(self) -> None:
        for ike_sa in list(self.applied):
            self.remove(ike_sa)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "gateway": e.name,
                "interface": e.interface,
                "servers": list(e.servers),
                "via": self.mode,
            }
            for e in self.applied.values()
        ]

    # ------------------------------------------------------------------

    def _guarded(self, action: Callable[[], None], what: str) -> None:
        try:
            action()
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("DNS (%s): %s: %s", self.mode, what, error)

    def _add(self, ike_sa: bytes, entry: Applied) -> None:
        if self.mode == "resolvectl":
            self.runner(["resolvectl", "dns", entry.interface, *entry.servers], None)
        elif self.mode == "resolvconf":
            lines = "".join(f"nameserver {server}\n" for server in entry.servers)
            self.runner(["resolvconf", "-a", f"{entry.interface}.{RESOLVCONF_SUFFIX}"], lines)
        else:
            self._marks.setdefault(ike_sa, ike_sa)
            self._edit_file(add=self._file_lines(self._marks[ike_sa], entry))

    def _drop(self, ike_sa: bytes, entry: Applied) -> None:
        if self.mode == "file":
            mark = self._marks.pop(ike_sa, ike_sa)
            self._edit_file(drop=self._mark(mark, entry.name))
            return
        # Another IKE SA on the same interface (one that replaced this one): its servers.
        others = [e for e in self.applied.values() if e.interface == entry.interface]
        if others:
            self._add(b"", others[-1])
        elif self.mode == "resolvectl":
            self.runner(["resolvectl", "revert", entry.interface], None)
        else:
            self.runner(["resolvconf", "-d", f"{entry.interface}.{RESOLVCONF_SUFFIX}"], None)

    @staticmethod
    def _mark(ike_sa: bytes, name: str) -> str:
        return f"{MARK} {name} {ike_sa.hex()}"

    def _file_lines(self, mark: bytes, entry: Applied) -> list[str]:
        return [f"nameserver {server}  {self._mark(mark, entry.name)}" for server in entry.servers]

    def _edit_file(self, add: Sequence[str] = (), drop: str | None = None) -> None:
        """Our lines first (the resolver asks the first servers first), the rest as it
        was; written in place, since ``/etc/resolv.conf`` may be a link or a mount."""
        old: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            old = self.file.read_text().splitlines()
        kept = [line for line in old if drop is None or not line.endswith(drop)]
        lines = [*add, *kept]
        if lines != old:
            self.file.write_text("".join(f"{line}\n" for line in lines))
