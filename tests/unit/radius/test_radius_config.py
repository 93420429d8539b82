"""``eap.radius`` of the gateway's YAML: typed, and every error names its key."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
import yaml

from gateway.radius import RadiusConfig, RadiusServer, parse_radius_config
from mpa_ike.errors import ConfigError

GOOD = """
eap:
  method: radius
  radius:
    servers:
      - {address: 192.0.2.5, port: 1812, secret: s3cret}
      - {address: "2001:db8::5", secret: "007", accounting_port: 1646}
    timeout: 1.5
    retries: 3
    accounting: true
"""


def radius_of(text: str) -> object:
    return yaml.safe_load(text)["eap"]["radius"]


def test_full_shape() -> None:
    config = parse_radius_config(radius_of(GOOD))
    assert config == RadiusConfig(
        servers=(
            RadiusServer(ip_address("192.0.2.5"), 1812, b"s3cret"),
            RadiusServer(ip_address("2001:db8::5"), 1812, b"007", 1646),
        ),
        timeout=1.5,
        retries=3,
        accounting=True,
    )
    assert config.servers[0].acct_port == 1813
    assert config.servers[1].acct_port == 1646


def test_defaults() -> None:
    config = parse_radius_config({"servers": [{"address": "127.0.0.1", "secret": "x"}]})
    assert config.timeout == 3.0 and config.retries == 2 and config.accounting is False
    assert config.servers[0].port == 1812


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ({}, "eap.radius.servers"),
        ({"servers": []}, "eap.radius.servers"),
        ({"servers": [{"secret": "x"}]}, "eap.radius.servers[0].address"),
        ({"servers": [{"address": "radius.example", "secret": "x"}]}, "servers[0].address"),
        ({"servers": [{"address": "127.0.0.1"}]}, "eap.radius.servers[0].secret"),
        ({"servers": [{"address": "127.0.0.1", "secret": 7}]}, "eap.radius.servers[0].secret"),
        (
            {"servers": [{"address": "127.0.0.1", "secret": "x", "port": 70000}]},
            "eap.radius.servers[0].port",
        ),
        (
            {"servers": [{"address": "127.0.0.1", "secret": "x", "prot": 1}]},
            "eap.radius.servers[0].prot",
        ),
        ({"servers": [{"address": "::1", "secret": "x"}], "timeout": 0}, "eap.radius.timeout"),
        ({"servers": [{"address": "::1", "secret": "x"}], "timeout": "2"}, "eap.radius.timeout"),
        ({"servers": [{"address": "::1", "secret": "x"}], "retries": -1}, "eap.radius.retries"),
        ({"servers": [{"address": "::1", "secret": "x"}], "accounting": 1}, "radius.accounting"),
        ({"servers": [{"address": "::1", "secret": "x"}], "retry": 1}, "eap.radius.retry"),
        ("radius", "eap.radius"),
    ],
)
def test_errors_name_the_key(value: object, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_radius_config(value)
    assert str(caught.value).startswith(key) or f".{key}" in str(caught.value).split(":")[0]
    assert "\n" not in str(caught.value)
