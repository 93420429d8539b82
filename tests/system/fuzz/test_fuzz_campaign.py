"""``mpa-bench fuzz`` against a live mpa-gateway with two mobile nodes connected.

One short campaign (20 000 datagrams at 1 000 per second, every mutator of
mpa_bench/fuzz_mutators.py, to port 500, port 4500 behind the non-ESP marker and port
4500 without it) is run once for the module; each test asserts one of its checks, so
that a failure names what broke. Then one datagram the campaign found, sent alone.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpa_bench import fuzz, gateway_rig
from mpa_bench import fuzz_mutators as mutators
from mpa_bench.fuzz_mobile import inside
from mpa_harness import guards
from mpa_ike.constants import NotifyType

pytestmark = [pytest.mark.netns]

SEED = 7
COUNT = 20_000
RATE = 1_000.0
SIGNATURE_HASH_ALGORITHMS = struct.pack("!H", NotifyType.SIGNATURE_HASH_ALGORITHMS)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    guards.require(guards.namespaces_unavailable(), "the fuzz campaign")
    # The control socket's path must stay short (sun_path): not under pytest's tmp.
    path = Path(tempfile.mkdtemp(prefix="mpa-fuzz-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def report(workdir: Path) -> fuzz.Report:
    args = fuzz.build_parser().parse_args(
        ["--count", str(COUNT), "--rate", str(RATE), "--seed", str(SEED)]
    )
    found = fuzz.run(args, workdir / "campaign")
    fuzz.print_report(found)
    return found


def check(report: fuzz.Report, name: str) -> None:
    [found] = [c for c in report.checks if c.name.startswith(name)]
    assert found.passed, f"{found.name}: {found.detail}"


def test_every_datagram_went_out(report: fuzz.Report) -> None:
    assert report.sent == COUNT and report.send_errors == 0
    assert set(report.by_mutator) == set(mutators.BY_NAME)
    assert set(report.by_route) == set(mutators.Route.ALL)
    assert report.seconds < 60


def test_gateway_alive_and_no_traceback(report: fuzz.Report) -> None:
    check(report, "gateway alive")
    check(report, "no traceback")


def test_errors_logged_once_or_rate_limited(report: fuzz.Report) -> None:
    check(report, "each warning/error logged at most")


def test_core_never_failed_on_a_datagram(report: fuzz.Report) -> None:
    check(report, "no internal error of the core")


def test_drop_counters_moved(report: fuzz.Report) -> None:
    check(report, "drop and refusal counters moved")
    moved = {k for k, v in report.counters_after.items() if v > report.counters_before.get(k, 0)}
    assert {"dropped_unknown_spi", "dropped_short", "init_malformed"} <= moved
    assert {"esp_unknown-spi"} <= moved  # ESP-looking datagrams on 4500 without marker


def test_mobile_nodes_untouched_and_still_carry_traffic(report: fuzz.Report) -> None:
    check(report, "echo through every mobile node before")
    check(report, "mobile nodes' echoes answered during the campaign")
    check(report, "echo through every mobile node after")
    check(report, "mobile nodes' IKE SAs, CHILD SAs and leases untouched")
    check(report, "no mobile node lost its IKE SA")
    assert len(report.mobiles) == 2


def test_memory_flat(report: fuzz.Report) -> None:
    check(report, "RSS flat")
    assert len(report.rss_kib) >= COUNT / RATE / fuzz.STATUS_EVERY


def test_half_open_sas_time_out(report: fuzz.Report) -> None:
    check(report, "half-open IKE SAs back to 0")
    assert report.half_open_peak > 0  # the campaign did open some


# --------------------------------------------------------------------------- one case


def odd_signature_hash_algorithms(init: bytes) -> bytes:
    """Our core's IKE_SA_INIT request with one octet more in its last payload,
    N(SIGNATURE_HASH_ALGORITHMS) (RFC 7427 §4): data of odd length, lengths true."""
    last = mutators.payload_spans(init)[-1]
    assert init[last.offset + 6 : last.offset + 8] == SIGNATURE_HASH_ALGORITHMS
    data = init + b"\x06"
    data = data[: last.offset + 2] + struct.pack("!H", last.length + 1) + data[last.offset + 4 :]
    return data[:24] + struct.pack("!I", len(data)) + data[28:]


def test_odd_signature_hash_algorithms_is_answered_invalid_syntax(workdir: Path) -> None:
    """Found by the campaign (mutator ``huge`` on the mobile nodes' IKE_SA_INIT): the
    codec's CodecError from read_signature_hash_algorithms escapes the responder's
    handshake; the core counts an internal error and logs a line per datagram instead
    of answering INVALID_SYNTAX (RFC 7296 §2.21.1), as other malformed IKE_SA_INIT
    requests are."""
    where = workdir / "odd"
    where.mkdir()
    with fuzz.rig(where, 1) as rig:
        [node] = fuzz.mobile_nodes(rig, 1)
        datagram = odd_signature_hash_algorithms(node.sent[0])
        before = rig.status()["counters"]
        with contextlib.closing(source(rig)) as sock:
            sock.sendto(datagram, (gateway_rig.GW, 500))
            answer = receive(sock)
        after = rig.status()["counters"]
        node.close()
    assert after.get("internal_errors", 0) == before.get("internal_errors", 0), datagram.hex()
    assert answer is not None, "not answered"
    assert struct.pack("!H", NotifyType.INVALID_SYNTAX) in answer[28:]


def source(rig: gateway_rig.Rig) -> socket.socket:
    with inside(rig.mn.name):
        rig.mn.add_addr(rig.mn.links[0], "192.0.2.200/32")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("192.0.2.200", 500))
    return sock


def receive(sock: socket.socket, timeout: float = 2.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            return sock.recv(65535)
    return None


def test_report_as_json(report: fuzz.Report) -> None:
    data = report.to_json()
    assert data["sent"] == COUNT and data["rate"] > RATE * 0.9
    assert data["verdict"] in ("pass", "FAIL")
    assert [c["name"] for c in data["checks"]] == [c.name for c in report.checks]
