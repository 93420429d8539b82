"""mpa-gateway or mpa-mobile as a background process, for tests and benchmarks.

:func:`running` starts ``python -m MODULE run -c CONFIG`` (through an exec prefix such
as ``ip netns exec NS``), waits until its control socket answers a request, and on exit
stops it with SIGTERM (the daemon deletes its SAs) or, if that takes too long, SIGKILL.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


class DaemonError(RuntimeError):
    """The daemon exited or did not answer in time; the message holds its log."""


def answers(path: Path) -> bool:
    """Whether a daemon answers on the control socket ``path``.

    A whole request, not a bare connect: the socket file exists a moment before the
    daemon listens, and a connection still open when it stops makes its control server
    log a cancelled task.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(str(path))
            probe.sendall(b'{"cmd": "status"}\n')
            return probe.makefile("rb").readline().startswith(b"{")
        except OSError:
            return False


def command(module: str, config: Path, python: Sequence[str] = ()) -> list[str]:
    """``python [python options] -m module run -c config``."""
    return [sys.executable, *python, "-m", module, "run", "-c", str(config)]


def start(
    argv: Sequence[str],
    control_socket: Path,
    log_file: Path,
    *,
    timeout: float = START_TIMEOUT,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output in ``log_file``; return once its socket answers."""
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while not answers(control_socket):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise DaemonError(f"{argv[-4]} did not start: {log_file.read_text().strip()}")
        time.sleep(0.02)
    return process


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (the daemon deletes its SAs), then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running(
    argv: Sequence[str], control_socket: Path, log_file: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start`, then :func:`stop` on the way out."""
    process = start(argv, control_socket, log_file)
    try:
        yield process
    finally:
        stop(process)
