"""Helpers of the service tests: paths, and editing configuration dictionaries by key path."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mpa_harness.daemon import answers

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "deploy" / "examples"

DELETE = object()


def edited(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of ``data`` with ``path`` (dot-separated) set to ``value`` or DELETEd."""
    result = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = result
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return result


def cli(module: str, *args: str | Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args``."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=timeout,
    )


def environment() -> dict[str, str]:
    return dict(os.environ)


def write_yaml(file: Path, data: dict[str, Any]) -> Path:
    file.write_text(yaml.safe_dump(data))
    return file


class Daemon:
    """``python -m module run ...`` in the background, ready once its socket answers.

    ``prefix`` runs it through another command (``ip netns exec NS`` in interop tests).
    """

    def __init__(
        self, module: str, socket: Path, *args: str | Path, prefix: Sequence[str] = ()
    ) -> None:
        self.module = module
        self.socket = socket
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", module, "run", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20) -> None:
        """Until the socket accepts connections (it exists a moment before it listens)."""
        deadline = time.monotonic() + timeout
        while not answers(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                stderr = self.stop()
                raise AssertionError(f"{self.module} did not start: {stderr}")
            time.sleep(0.02)

    def signal(self, signum: int) -> int:
        """Send ``signum`` and return the exit code."""
        self.process.send_signal(signum)
        return self.process.wait(timeout=10)

    def stop(self) -> str:
        """Terminate if still running; returns what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr
