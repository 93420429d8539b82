"""A connect whose IKE SA failed with ``IkeSaFailed.retry`` (an IKE_SA_INIT answer that
may have answered another of our requests, then AUTHENTICATION_FAILED) is set up once
more at once; any other failure, or a second one, is the command's answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mobile.config import parse_config
from mobile.service import MobileService
from mpa_ike.constants import NotifyType
from mpa_ike.datagram import Address
from mpa_ike.events import IkeSaFailed
from mpa_ike.ike_config import InitiatorConfig
from mpa_ike.node.control import CommandError


class Core:
    """Stands for the endpoint and its transport: each set-up fails as ``outcomes`` say."""

    def __init__(self, service: MobileService, outcomes: list[bool]) -> None:
        self.service, self.outcomes = service, outcomes
        self.sas: dict[bytes, Any] = {}
        self.responder = None
        self.initiated: list[bytes] = []

    def find(self, name: str) -> list[Any]:
        return []

    def initiate(
        self, config: InitiatorConfig, local: Address, remote: Address, now: float, **_: Any
    ) -> Any:
        spi = bytes([len(self.initiated) + 1]) * 8
        self.initiated.append(spi)
        retry = self.outcomes.pop(0)
        reason = "IKE_AUTH refused: AUTHENTICATION_FAILED"
        failed = IkeSaFailed(spi, config.name, reason, NotifyType.AUTHENTICATION_FAILED, retry)
        asyncio.get_running_loop().call_soon(self.service.on_event, failed)
        return SimpleNamespace(local_spi=spi)

    def now(self) -> float:
        return 0.0

    async def bind(self, source: str, ports: tuple[int, ...]) -> None:
        return None

    def process(self) -> None:
        return None


def connect(mobile_data: dict[str, Any], outcomes: list[bool]) -> tuple[str, int, int]:
    """The command's answer, the set-ups made, and how often automatic pre-authentication
    was woken because an IKE SA ended."""
    service = MobileService(parse_config(mobile_data, Path("/")))
    core = Core(service, outcomes)
    service.endpoint = core  # type: ignore[assignment]
    service.live_transport = lambda: core  # type: ignore[assignment,method-assign,return-value]
    kicks: list[str] = []
    service.autopreauth.kick = lambda why, **_: kicks.append(why)  # type: ignore[method-assign]

    async def run() -> str:
        try:
            return await service.establish("connect", "ngw", source="192.0.2.10")
        except CommandError as error:
            return str(error)

    return asyncio.run(run()), len(core.initiated), len(kicks)


@pytest.mark.parametrize(
    ("outcomes", "set_ups"),
    [([False], 1), ([True, False], 2), ([True, True], 2)],
)
def test_set_up_once_more_only_when_the_failure_says_so(
    mobile_data: dict[str, Any], outcomes: list[bool], set_ups: int
) -> None:
    answer, initiated, kicks = connect(mobile_data, outcomes)
    assert initiated == set_ups
    assert kicks == 1  # only the failure that ends the command: no rival set-up meanwhile
    assert answer == "connect ngw: authentication failed (IKE_AUTH refused: AUTHENTICATION_FAILED)"
