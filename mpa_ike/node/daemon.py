"""The daemon loop of ``mpa-gateway run`` and ``mpa-mobile run``.

In this order: it makes sure the control socket is free, starts the service (which
binds its IKE sockets and opens its datapath), creates the control socket, becomes the
configured user with only the capabilities still needed (:mod:`mpa_ike.node.privileges`)
and tells systemd it is ready (:mod:`mpa_ike.node.systemd`). So a peer or a script that
waits for the control socket or for ``systemctl start`` finds IKE listening. On SIGTERM
or SIGINT it tells systemd it is stopping, closes the control socket and stops the
service (which sends its DELETEs).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple, Protocol

from mpa_ike.node import privileges, systemd
from mpa_ike.node.control import ControlServer, Handler, claim
from mpa_ike.node.control_client import ControlError

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(Protocol):
    """What a daemon runs: its control commands and its start and stop."""

    def handlers(self) -> Mapping[str, Handler]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RunAs(NamedTuple):
    """Whom the daemon runs as once started (the configuration's ``user``, ``group`` and
    ``control_group``), and the capabilities it keeps whatever its datapath."""

    user: str | None = None
    group: str | None = None
    control_group: str | None = None
    capabilities: tuple[int, ...] = ()


AS_STARTED = RunAs()  # no change of user


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(service: Service, control_socket: Path, run_as: RunAs = AS_STARTED) -> None:
    """Run ``service`` until SIGTERM or SIGINT.

    Raises ControlError (one line) if the control socket is busy or the daemon cannot
    become its user; the service is stopped again if it had started.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    try:
        claim(control_socket)
        who, control_gid = _resolve(run_as)
        await service.start()
        try:
            owner = (who.uid, who.gid) if who is not None else None
            async with ControlServer(
                control_socket, service.handlers(), owner=owner, group=control_gid
            ):
                if who is not None:
                    _become(who, needed_capabilities(service, run_as.capabilities))
                log.info("running, control socket %s", control_socket)
                systemd.notify(systemd.READY, f"STATUS=control socket {control_socket}")
                await stopping.wait()
                systemd.notify(systemd.STOPPING)
                log.info("stopping")
        finally:
            await service.stop()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _resolve(run_as: RunAs) -> tuple[privileges.Identity | None, int | None]:
    try:
        who = None
        if run_as.user is not None:
            who = privileges.identity(run_as.user, run_as.group)
        control_gid = None
        if run_as.control_group is not None:
            control_gid = privileges.group_id(run_as.control_group)
    except privileges.PrivilegeError as error:
        raise ControlError(str(error)) from None
    return who, control_gid


def _become(who: privileges.Identity, keep: Iterable[int]) -> None:
    try:
        privileges.become(who, keep)
    except privileges.PrivilegeError as error:
        raise ControlError(str(error)) from None


def needed_capabilities(service: Service, always: Iterable[int] = ()) -> set[int]:
    """What the service's datapath still needs once open: CAP_NET_ADMIN for the kernel's
    routes, addresses and XFRM states (not without a datapath), CAP_NET_RAW with raw
    ESP sockets; and ``always``."""
    glue = getattr(service, "glue", None)
    needed = set(always)
    if getattr(glue, "kind", "none") != "none":
        needed.add(privileges.CAP_NET_ADMIN)
    if getattr(glue, "raw", None) is not None:
        needed.add(privileges.CAP_NET_RAW)
    return needed


def run(service: Service, control_socket: Path, run_as: RunAs = AS_STARTED) -> None:
    asyncio.run(serve(service, control_socket, run_as))
