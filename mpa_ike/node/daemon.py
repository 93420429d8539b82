"""The daemon loop of ``mpa-gateway run`` and ``mpa-mobile run``.

In this order: it makes sure the control socket is free, starts the service (which
binds its IKE sockets and opens its datapath), creates the control socket, becomes the
configured user with only the capabilities still needed (:mod:`mpa_ike.node.privileges`)
and tells systemd it is ready (:mod:`mpa_ike.node.systemd`). So a peer or a script that
waits for the control socket or for ``systemctl start`` finds IKE listening. Companions
(the metrics server) start after the service and before the control socket. On SIGHUP
it calls the daemon's reload, if it has one (one reload at a time, on the loop, between
events). On SIGTERM or SIGINT it tells systemd it is stopping, closes the control socket
and stops the service (which sends its DELETEs).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
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
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
Reload = Callable[[], Awaitable[None]]
RELOADING = "RELOADING=1"  # sd_notify(3)
# Container allocations between two collections of the youngest generation (Python's
# default: 700). An IKE exchange allocates some hundreds that die with it; at 700 most
# of them were still alive at a collection, got promoted and had to be walked again.
YOUNG_COLLECTION_THRESHOLD = 10_000


class Companion(Protocol):
    """Something the daemon runs beside its service (the metrics server)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log lines on stderr: text, or JSON objects (:class:`describe.JsonFormatter`).

    Neither format shows the thread or process: a record that leaves them out (the
    logging HOWTO's "Optimization") costs about a sixth less, and a set-up logs several
    lines."""
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from mpa_ike.node.describe import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


async def serve(
    service: Service,
    control_socket: Path,
    run_as: RunAs = AS_STARTED,
    *,
    companions: Sequence[Companion] = (),
    reload: Reload | None = None,
    settle: bool = False,
) -> None:
    """Run ``service`` until SIGTERM or SIGINT; ``reload`` on SIGHUP; with ``settle``
    (a daemon's own process, not a test's), :func:`settle_heap` once it has started.

    Raises ControlError (one line) if the control socket is busy, a companion cannot
    start or the daemon cannot become its user; the service is stopped again if it had
    started.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    reloads = Reloads(reload)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reloads.request)
    started: list[Companion] = []
    try:
        claim(control_socket)
        who, control_gid = _resolve(run_as)
        await service.start()
        try:
            for companion in companions:
                await companion.start()
                started.append(companion)
            owner = (who.uid, who.gid) if who is not None else None
            async with ControlServer(
                control_socket, service.handlers(), owner=owner, group=control_gid
            ):
                if who is not None:
                    _become(who, needed_capabilities(service, run_as.capabilities))
                if settle:
                    settle_heap()
                log.info("running, control socket %s", control_socket)
                systemd.notify(systemd.READY, f"STATUS=control socket {control_socket}")
                await stopping.wait()
                systemd.notify(systemd.STOPPING)
                log.info("stopping")
        finally:
            await reloads.cancel()
            for companion in reversed(started):
                await companion.close()
            await service.stop()
    finally:
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)


class Reloads:
    """SIGHUP: one reload at a time; a SIGHUP during one runs another after it."""

    def __init__(self, reload: Reload | None) -> None:
        self.reload = reload
        self.task: asyncio.Task[None] | None = None
        self.again = False

    def request(self) -> None:
        if self.reload is None:
            return
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.again = False
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            systemd.notify(RELOADING, f"MONOTONIC_USEC={usec}")
            try:
                assert self.reload is not None
                await self.reload()
            except Exception:
                log.exception("reload failed; the configuration in use stays")
            systemd.notify(systemd.READY)
            if not self.again:
                return

    async def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


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


def settle_heap() -> None:
    """Leave what start-up built (modules, configuration, users, certificates) out of
    every later collection: it lives as long as the daemon, and a full collection with
    thousands of IKE SAs held would walk all of it again."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def run(
    service: Service,
    control_socket: Path,
    run_as: RunAs = AS_STARTED,
    *,
    companions: Sequence[Companion] = (),
    reload: Reload | None = None,
) -> None:
    asyncio.run(
        serve(service, control_socket, run_as, companions=companions, reload=reload, settle=True)
    )
