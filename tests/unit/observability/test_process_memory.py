"""The control socket's ``memory``: RSS always, Python's traced allocations when traced."""

from __future__ import annotations

import asyncio
import tracemalloc

from mpa_ike.node.service import NodeService, process_memory


def test_rss_without_tracing() -> None:
    assert not tracemalloc.is_tracing()
    found = process_memory()
    assert found["rss_kib"] > 1024  # an interpreter with this project loaded
    assert found["traced_kib"] is None
    assert found["traced_peak_kib"] is None


def test_traced_memory_follows_what_is_held() -> None:
    tracemalloc.start()
    try:
        before = process_memory()["traced_kib"]
        held = [bytes(1024) for _ in range(2048)]  # about 2 MiB more
        after = process_memory()
        assert len(held) == 2048
    finally:
        tracemalloc.stop()
    assert after["traced_kib"] - before >= 2048
    assert after["traced_peak_kib"] >= after["traced_kib"]


def test_a_command_of_every_daemon() -> None:
    service = NodeService()
    answer = asyncio.run(service.handlers()["memory"]({}))
    assert set(answer) == {"rss_kib", "traced_kib", "traced_peak_kib"}
