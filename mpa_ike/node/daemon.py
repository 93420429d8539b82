"""The daemon loop of ``mpa-gateway run`` and ``mpa-mobile run``.

It opens the control socket, starts the service, and on SIGTERM or SIGINT stops the
service (which will send its DELETEs) and removes the socket.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from mpa_ike.node.control import ControlServer, Handler

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(Protocol):
    """What a daemon runs: its control commands and its start and stop."""

    def handlers(self) -> Mapping[str, Handler]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(service: Service, control_socket: Path) -> None:
    """Run ``service`` until SIGTERM or SIGINT; raises ControlError if the socket is busy."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    try:
        async with ControlServer(control_socket, service.handlers()):
            await service.start()
            try:
                log.info("running, control socket %s", control_socket)
                await stopping.wait()
                log.info("stopping")
            finally:
                await service.stop()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def run(service: Service, control_socket: Path) -> None:
    asyncio.run(serve(service, control_socket))
