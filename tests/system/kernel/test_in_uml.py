"""Boot user-mode-linux and run the kernel group there (see conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpa_harness import guards

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
RUN = REPO / "deploy" / "uml" / "run"
UML_MODULES = Path("/usr/lib/uml/modules")
# The whole group inside, boot included; the runner stops the kernel after it.
INNER_TIMEOUT = 540


def uml_unavailable() -> str | None:
    """Why user-mode-linux cannot run the group here, or None.

    The kernel runs as an ordinary process, so root is not needed on the host
    (inside, the command is root); only the package and its modules are.
    """
    if shutil.which("linux.uml") is None:
        return "needs user-mode-linux (linux.uml): apt-get install user-mode-linux kmod"
    if not UML_MODULES.is_dir() or not any(UML_MODULES.iterdir()):
        return f"needs user-mode-linux's modules in {UML_MODULES}"
    if shutil.which("modprobe") is None and not Path("/sbin/modprobe").exists():
        return "needs kmod's modprobe"
    return None


# The suite's per-test limit (300 s) is shorter than the group may take in a slow kernel.
@pytest.mark.timeout(INNER_TIMEOUT + 60)
def test_kernel_group_in_uml() -> None:
    guards.require(uml_unavailable(), "the kernel group (user-mode-linux)")
    inner = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no"]
    # The inner pytest's temporary files on the kernel's own tmpfs, not on hostfs.
    inner += ["--basetemp=/run/pytest", str(HERE)]
    proc = subprocess.run(
        [str(RUN), "--timeout", str(INNER_TIMEOUT), *inner],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT + 30,
        check=False,
    )
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, f"the kernel group failed in UML:\n{output}"
