"""The mobile node's link watcher when the kernel's link events were lost (its
netlink socket overflowed): the states read anew reach the listeners and the waiters
of a handover, which would otherwise wait out their time for an event already gone."""

from __future__ import annotations

import asyncio

import pytest

from mpa_ike.io import links
from mpa_ike.io.links import LinkWatcher


def test_states_read_anew_wake_a_waiter_and_the_listeners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> list[tuple[str, bool]]:
        seen: list[tuple[str, bool]] = []
        monkeypatch.setattr(links, "link_is_up", lambda name: False)
        watcher = LinkWatcher()
        try:
            watcher.listeners.append(lambda name, up: seen.append((name, up)))
            waiting = asyncio.ensure_future(watcher.wait_up("lo", timeout=5.0))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            monkeypatch.setattr(links, "link_is_up", lambda name: name == "lo")
            watcher.read_anew()
            await asyncio.wait_for(waiting, 1.0)
            watcher.read_anew()  # no change now: nothing reported twice
            return seen
        finally:
            watcher.close()

    assert asyncio.run(scenario()) == [("lo", True)]
