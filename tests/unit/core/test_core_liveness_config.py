"""The lifetime and liveness keys of both daemons' files (mpa_ike.node.lifetimes): names
and defaults as strongSwan's, checked like every other key, handed to the core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config as parse_gateway
from mobile.config import parse_config as parse_mobile
from mpa_ike.errors import ConfigError
from mpa_ike.ike_config import Lifetimes
from mpa_ike.node.lifetimes import amount, duration

ROOT = Path("/")


def test_gateway_defaults(gateway_data: dict[str, Any]) -> None:
    config = parse_gateway(gateway_data, ROOT)
    lifetimes = config.lifetimes
    assert lifetimes.ike_rekey_time == 4 * 3600 and lifetimes.ike_over_time == 1440
    assert lifetimes.ike_rand_time == 1440
    assert lifetimes.child_rekey_time == 3600 and lifetimes.child_life_time == 3960
    assert lifetimes.dpd_delay == 30.0 and lifetimes.dpd_timeout is None
    assert lifetimes.keep_alive == 20.0
    assert config.unique == "replace" and config.mobike.max_refused_updates == 3


def test_gateway_keys(gateway_data: dict[str, Any]) -> None:
    data = gateway_data | {
        "rekey_time": "2h",
        "over_time": "10m",
        "rand_time": "5m",
        "dpd_delay": 2,
        "dpd_timeout": "10s",
        "keep_alive": 0,
        "unique": "keep",
        "mobike": {"max_refused_updates": 5},
        "children": {
            "rekey_time": "30m",
            "life_time": "40m",
            "rand_time": "1m",
            "rekey_bytes": "500M",
            "life_bytes": "1G",
            "rekey_packets": 1000,
            "life_packets": "2k",
        },
    }
    config = parse_gateway(data, ROOT)
    assert config.lifetimes == Lifetimes(
        ike_rekey_time=7200.0,
        ike_over_time=600.0,
        ike_rand_time=300.0,
        dpd_delay=2.0,
        dpd_timeout=10.0,
        keep_alive=None,
        child_rekey_time=1800.0,
        child_life_time=2400.0,
        child_rand_time=60.0,
        child_rekey_bytes=500 * 1024**2,
        child_life_bytes=1024**3,
        child_rekey_packets=1000,
        child_life_packets=2048,
    )
    assert config.unique == "keep" and config.mobike.max_refused_updates == 5


def test_mobile_keys_per_gateway(mobile_data: dict[str, Any]) -> None:
    mobile_data["gateways"]["ngw"] |= {"dpd_delay": "0", "children": {"rekey_time": 0}}
    entry = parse_mobile(mobile_data, ROOT).gateways["ngw"]
    assert entry.lifetimes.dpd_delay is None  # 0: off, as strongSwan
    assert entry.lifetimes.child_rekey_time is None
    assert entry.lifetimes.keep_alive == 20.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dpd_delay": "soon"}, "dpd_delay: expected a time"),
        ({"rekey_time": "4x"}, "rekey_time: expected a time"),
        ({"unique": "yes"}, "unique: expected one of no, never, keep, replace"),
        ({"children": {"rekey_time": "1h", "life_time": "30m"}}, "life_time must be above"),
        ({"children": {"rekey_bytes": "1.5"}}, "children.rekey_bytes: expected a whole"),
        ({"children": {"rekey_tim": "1h"}}, "children.rekey_tim: unknown key"),
        ({"rand_time": "5h"}, "^rand_time: IKE SA rand_time must be below rekey_time"),
        (
            {"children": {"rekey_bytes": "20k", "life_bytes": "10k"}},
            "^children.rekey_bytes: CHILD SA rekey_bytes must be below life_bytes",
        ),
        (
            {"children": {"rekey_time": "1h", "life_time": "1h"}},
            "^children.life_time: CHILD SA life_time must be above rekey_time",
        ),
    ],
)
def test_bad_values_name_their_key(
    gateway_data: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_gateway(gateway_data | change, ROOT)


def test_units() -> None:
    assert duration("1d", "x") == 86400 and duration(1.5, "x") == 1.5
    assert amount("10k", "x") == 10240 and amount(0, "x") == 0
    with pytest.raises(ConfigError):
        duration(True, "x")
    with pytest.raises(ConfigError):
        amount("-1", "x")
