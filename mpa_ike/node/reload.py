"""SIGHUP: read the configuration file again and give it to the running service.

The file is read as ``check-config`` reads it (:func:`mpa_ike.node.config.collecting`):
a bad file is logged one line per problem and the configuration in use stays. A good
one goes to the service's ``reload``, which applies what it can to new IKE SAs without
touching established ones and refuses the whole change if a key that only a restart
can change differs (:func:`restart_only`), one line per key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mpa_ike.errors import ConfigError
from mpa_ike.node.config import collecting

log = logging.getLogger(__name__)

C = TypeVar("C")
# The keys of both daemons' files that only a restart changes: sockets, files, whom the
# daemon runs as, how it logs and serves metrics.
DAEMON_KEYS = (
    "control_socket",
    "datapath",
    "user",
    "group",
    "control_group",
    "log_format",
    "metrics",
    "routing",
    "keylog",
)
KEPT = "the configuration in use stays"


class Reloadable(Protocol):
    """A service that can take a new configuration while running."""

    def reload(self, config: Any) -> bool:
        """Apply ``config`` (True), or refuse it (False), logging why."""
        ...


def reread(file: Path, load_config: Callable[[Path], C]) -> C | None:
    """The configuration in ``file``, or None after logging each of its problems."""
    with collecting() as problems:
        try:
            config = load_config(file)
        except ConfigError as error:
            problems.append(error)
    if problems:
        for problem in problems:
            log.error("reload: %s: %s", file, problem)
        log.error("reload: %s refused (%d problems); %s", file, len(problems), KEPT)
        return None
    return config


def restart_only(old: Any, new: Any, keys: Iterable[str]) -> list[str]:
    """The ``keys`` whose values differ between two configurations (dataclasses)."""
    return [key for key in keys if getattr(old, key) != getattr(new, key)]


def refuse(keys: Iterable[str]) -> bool:
    """Log one line per key that only a restart can change; False."""
    for key in keys:
        log.error("reload refused: %s cannot change without a restart; %s", key, KEPT)
    return False


def changed(old: Any, new: Any) -> list[str]:
    """The top-level keys whose values differ (for the log line of a reload)."""
    return [
        field.name
        for field in dataclasses.fields(old)
        if getattr(old, field.name) != getattr(new, field.name)
    ]


def reloader(
    service: Reloadable,
    file: Path,
    load_config: Callable[[Path], C],
    adjust: Callable[[C], C] = lambda config: config,
) -> Callable[[], Any]:
    """The daemon's SIGHUP action: read ``file``, ``adjust`` it (the command line's
    overrides), give it to ``service``."""

    async def reload() -> None:
        log.info("reload: reading %s", file)
        config = reread(file, load_config)
        if config is not None:
            service.reload(adjust(config))

    return reload
