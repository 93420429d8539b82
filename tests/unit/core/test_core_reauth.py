"""Re-authentication (RFC 4478) back to back on the fake clock: the gateway's
AUTH_LIFETIME (its reauth_time, or the AAA's Session-Timeout), the mobile node's
ReauthenticationDue a margin before, and the new IKE SA that replaces the old one
make-before-break with the same address."""

from __future__ import annotations

from typing import Any

import pytest
from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded

from gateway.pool import AddressPool
from mpa_ike.config_payload import build_request, parse_request
from mpa_ike.endpoint import Endpoint
from mpa_ike.errors import ConfigError
from mpa_ike.events import (
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaReplaced,
    ReauthenticationDue,
)
from mpa_ike.handshake_initiator import reauthentication_delay
from mpa_ike.ike_config import Lifetimes
from mpa_ike.ike_sa import IkeSa
from mpa_ike.wire import IPAddress

PSK = b"a pre-shared key for the gateway"
QUIET = {"ike_rekey_time": None, "child_rekey_time": None}


def lifetimes(**values: Any) -> Lifetimes:
    return Lifetimes(**{**QUIET, **values})


def connect(link: Link, **mobile: Any) -> IkeSa:
    mobile.setdefault("lifetimes", lifetimes())
    sa = link.mobile.initiate(initiator_config(psk=PSK, **mobile), MOBILE, GATEWAY, link.now)
    link.run(until=link.now + 10.0)
    assert sa.established
    return sa


def up(pool: AddressPool[object], reauth_time: float | None = 100.0, **gw: Any) -> Link:
    gw_lifetimes = lifetimes(ike_reauth_time=reauth_time)
    gateway = Endpoint(
        random=seeded(2), responder=responder_config(pool, psk=PSK, lifetimes=gw_lifetimes, **gw)
    )
    return Link(Endpoint(random=seeded(1)), gateway)


def live(endpoint: Endpoint) -> list[IkeSa]:
    return [sa for sa in endpoint if not sa.closed]


def test_reauthentication_delay_keeps_a_margin() -> None:
    # strongSwan's margin, over_time, when the lifetime is long enough ...
    assert reauthentication_delay(3600.0, Lifetimes(ike_rekey_time=1000.0)) == 3500.0
    # ... at most a fifth of a short one, so that it does not re-authenticate at once.
    assert reauthentication_delay(5.0, Lifetimes()) == 4.0
    assert reauthentication_delay(100.0, lifetimes()) == 80.0  # no rekey, no over_time


def test_gateway_sends_auth_lifetime_and_the_node_schedules_reauthentication(
    pool: AddressPool[object],
) -> None:
    link = up(pool)
    sa = connect(link)
    start = link.now
    assert sa.reauth_deadline == start + 100.0
    assert sa.reauth_at == start + 80.0
    (gw_sa,) = live(link.gateway)
    assert gw_sa.session_end == start + 100.0
    link.run(until=start + 79.9)
    assert not link.of_type(ReauthenticationDue)
    link.run(until=start + 80.0)
    (due,) = link.of_type(ReauthenticationDue)
    assert isinstance(due, ReauthenticationDue)
    assert due.ike_sa == sa.local_spi and due.deadline == start + 100.0
    # Not acted on: the gateway deletes the IKE SA at the end of its AUTH_LIFETIME.
    link.run(until=start + 100.0)
    assert len(link.of_type(ReauthenticationDue)) == 1
    assert sa.closed and link.of_type(IkeSaDeleted)
    assert link.gateway.counters["session_timeouts"] + gw_sa.counters["session_timeouts"] == 1


def test_no_auth_lifetime_without_a_limit(pool: AddressPool[object]) -> None:
    link = up(pool, reauth_time=None)
    sa = connect(link)
    assert sa.reauth_at is None and sa.reauth_deadline is None


def test_the_nodes_own_reauth_time_when_sooner(pool: AddressPool[object]) -> None:
    link = up(pool)
    sa = connect(link, lifetimes=lifetimes(ike_reauth_time=30.0))
    assert sa.reauth_at == link.now + 30.0 and sa.reauth_deadline == link.now + 100.0


@pytest.mark.parametrize("unique", ["replace", "keep", "no"])
def test_reauthentication_is_make_before_break_with_the_same_address(
    pool: AddressPool[object], unique: str
) -> None:
    link = up(pool, unique=unique)
    old = connect(link)
    (address,) = old.assigned_addresses
    (gw_old,) = live(link.gateway)
    link.run(until=link.now + 80.0)
    (due,) = link.of_type(ReauthenticationDue)
    link.mobile_events.clear()
    config = initiator_config(psk=PSK, lifetimes=lifetimes())
    new = link.mobile.initiate(config, MOBILE, GATEWAY, link.now, reauthenticates=due.ike_sa)
    assert not new.initial_contact  # the old IKE SA lives on until the new one is up
    assert new.requested_addresses == (address,)
    link.run(until=link.now + 5.0)
    assert old.closed and new.established
    assert new.assigned_addresses == (address,)
    assert new.spi_i != old.spi_i and new.spi_r != old.spi_r
    kinds = [type(e).__name__ for e in link.mobile_events]
    # The old pair leaves the datapath just before the new one comes in, one batch.
    assert kinds[:4] == [
        "ChildSaDeleted",
        "IkeSaReplaced",
        "IkeSaEstablished",
        "ChildSaEstablished",
    ]
    (replaced,) = link.of_type(IkeSaReplaced)
    assert isinstance(replaced, IkeSaReplaced) and "RFC 4478" in replaced.reason
    # The gateway: only the new IKE SA, holding the same lease, with its own deadline.
    (gw_new,) = live(link.gateway)
    assert gw_old.closed and gw_new.spi_i == new.spi_i
    assert pool.lease_of(gw_new.local_spi) == address
    assert gw_new.session_end == new.reauth_deadline
    assert not link.of_type(IkeSaFailed, "gateway") or unique == "replace"
    # The next re-authentication comes on the new IKE SA, once.
    link.mobile_events.clear()
    link.run(until=link.now + 80.0)
    (again,) = link.of_type(ReauthenticationDue)
    assert again.ike_sa == new.local_spi


def test_a_failed_reauthentication_leaves_the_old_ike_sa(pool: AddressPool[object]) -> None:
    link = up(pool)
    old = connect(link)
    link.run(until=link.now + 80.0)
    config = initiator_config(psk=b"another key", lifetimes=lifetimes())
    new = link.mobile.initiate(config, MOBILE, GATEWAY, link.now, reauthenticates=old.local_spi)
    link.run(until=link.now + 5.0)
    assert new.closed and old.established
    assert not link.of_type(IkeSaReplaced)
    assert [sa.local_spi for sa in live(link.mobile)] == [old.local_spi]


def test_the_cp_request_asks_for_the_addresses_by_value() -> None:
    from ipaddress import ip_address

    wanted: tuple[IPAddress, ...] = (ip_address("10.10.0.3"), ip_address("2001:db8::7"))
    request = parse_request(build_request((4, 6), wanted))
    assert request.addresses == {4: wanted[0], 6: wanted[1]} and request.dns
    assert parse_request(build_request((4,), wanted[1:])).addresses == {4: None}


def test_a_malformed_auth_lifetime_is_ignored(
    pool: AddressPool[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AUTH_LIFETIME of another size than four octets (RFC 4478 §2) is counted."""
    monkeypatch.setattr("mpa_ike.handshake_responder.AUTH_LIFETIME_SIZE", 3)
    link = up(pool)
    sa = connect(link)
    assert sa.reauth_at is None and sa.reauth_deadline is None
    assert sa.counters["dropped_malformed_auth_lifetime"] == 1


def test_reauth_time_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="reauth_time"):
        Lifetimes(ike_reauth_time=0.0)


def test_reauth_time_in_both_daemons_files(
    gateway_data: dict[str, Any], mobile_data: dict[str, Any]
) -> None:
    from pathlib import Path

    from gateway.config import parse_config as parse_gateway
    from mobile.config import parse_config as parse_mobile

    root = Path("/")
    assert parse_gateway(gateway_data, root).lifetimes.ike_reauth_time is None  # off
    assert (
        parse_gateway(gateway_data | {"reauth_time": "1h"}, root).lifetimes.ike_reauth_time == 3600
    )
    assert parse_gateway(gateway_data | {"reauth_time": 0}, root).lifetimes.ike_reauth_time is None
    with pytest.raises(ConfigError, match="reauth_time: expected a time"):
        parse_gateway(gateway_data | {"reauth_time": "soon"}, root)
    mobile_data["gateways"]["ngw"]["reauth_time"] = "90m"
    (entry,) = parse_mobile(mobile_data, root).gateways.values()
    assert entry.lifetimes.ike_reauth_time == 5400
