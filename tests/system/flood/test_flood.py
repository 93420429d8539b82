"""``mpa-bench flood`` for a few seconds: IKE_SA_INIT from random SPIs and source
addresses of 198.18.0.0/15 (a raw socket in a namespace) against a live mpa-gateway
with its default limits, while mobile nodes pre-authenticate.

Two floods, each run once for the module: one as fast as the sender can (more than the
gateway answers: the kernel drops the rest from its receive queue, a mobile node's
request among them, which it then retransmits), one at a rate the gateway answers in
full. Each test asserts one check of a flood, so that a failure names what broke.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpa_bench import flood
from mpa_harness import guards

pytestmark = [pytest.mark.netns]

SECONDS = 5.0
ANSWERED_RATE = 1000.0  # IKE_SA_INIT a second: a flood (COOKIEs throughout), well under
# what the gateway answers even on a machine busy with other tests


def run(rate: float) -> flood.Report:
    guards.require(guards.namespaces_unavailable(), "the IKE_SA_INIT flood")
    # The control socket's path must stay short (sun_path): not under pytest's tmp.
    workdir = Path(tempfile.mkdtemp(prefix="mpa-flood-", dir="/tmp"))
    argv = ["--seconds", str(SECONDS), "--rate", str(rate), "--mobile-every", "1.5"]
    argv += ["--settle", "2", "--workdir", str(workdir / "run")]
    try:
        found = flood.run(flood.build_parser().parse_args(argv))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    flood.print_report(found)
    return found


@pytest.fixture(scope="module")
def maximal() -> Iterator[flood.Report]:
    yield run(0.0)


@pytest.fixture(scope="module")
def answered() -> Iterator[flood.Report]:
    yield run(ANSWERED_RATE)


def check(report: flood.Report, name: str) -> None:
    [found] = [c for c in report.checks if c.name.startswith(name)]
    assert found.passed, f"{found.name}: {found.detail}"


def test_the_flood_was_sent(maximal: flood.Report) -> None:
    assert maximal.rate > 5 * ANSWERED_RATE, f"{maximal.sent} sent in {maximal.flood_seconds} s"


def test_cookies_are_sent(maximal: flood.Report) -> None:
    check(maximal, "COOKIEs sent")


def test_half_open_sas_stay_at_the_threshold(maximal: flood.Report) -> None:
    check(maximal, "half-open SAs held")


def test_memory_returns_to_its_baseline(maximal: flood.Report) -> None:
    check(maximal, "RSS back within")


def test_mobile_nodes_get_through_the_flood(maximal: flood.Report) -> None:
    check(maximal, "mobile nodes up (within")


def test_mobile_nodes_preauthenticate_within_a_second(answered: flood.Report) -> None:
    assert answered.counter("cookies_sent") > ANSWERED_RATE  # COOKIEs throughout
    assert len(answered.setups) >= 2
    check(answered, "mobile nodes up within")
