"""Mobile configuration: the example loads, and every bad value is refused with one line
that starts with its key path."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from servicehelp import DELETE, EXAMPLES, edited

from mobile.config import MobileConfig, load_config, parse_config
from mpa_ike.errors import ConfigError
from mpa_ike.node.config import DEFAULT_PROPOSALS, Endpoint


def parse(data: object, base_dir: Path = Path("/")) -> MobileConfig:
    return parse_config(data, base_dir)


def test_example_loads() -> None:
    config = load_config(EXAMPLES / "mobile.yaml")
    assert set(config.gateways) == {"ngw", "cgw"}
    assert config.gateways["cgw"].address == Endpoint(ip_address("2001:db8:a::2"), 500)
    assert config.gateways["ngw"].ike == (
        "aes128-sha256-modp2048",
        "aes256gcm16-prfsha384-x25519",
    )


def test_minimal_config_takes_defaults(mobile_data: dict[str, Any]) -> None:
    config = parse(mobile_data)
    gateway = config.gateways["ngw"]
    assert gateway.name == "ngw"
    assert gateway.address == Endpoint(ip_address("192.0.2.1"))
    assert gateway.psk == b"secret"
    assert gateway.ca is None
    assert gateway.ike == DEFAULT_PROPOSALS["ike"]
    assert gateway.handover == "manual"
    assert gateway.preauth
    assert config.eap.password == "alice-secret"
    assert "alice-secret" not in repr(config)


def test_ca_is_relative_to_the_config_file(tmp_path: Path, mobile_data: dict[str, Any]) -> None:
    (tmp_path / "ca.crt").write_text("x")
    data = edited(edited(mobile_data, "gateways.ngw.psk", DELETE), "gateways.ngw.ca", "ca.crt")
    assert parse(data, tmp_path).gateways["ngw"].ca == tmp_path / "ca.crt"


BAD_CASES: list[tuple[str, object, str]] = [
    ("identity", DELETE, "identity: required"),
    ("identity", ["alice"], "identity: expected a string, got a list"),
    ("eap.method", "md6", "eap.method: expected one of md5, mschapv2, got 'md6'"),
    ("eap.password", 1234, "eap.password: expected a string (quote it), got an integer"),
    ("eap.password", DELETE, "eap.password: required"),
    ("eap.users", {}, "eap.users: unknown key"),
    ("datapath", "tun", "datapath: expected one of userspace, xfrm, auto, got 'tun'"),
    ("gateways", DELETE, "gateways: required"),
    ("gateways", {}, "gateways: at least one gateway is required"),
    ("gateways", ["ngw"], "gateways: expected a mapping, got a list"),
    ("gateways.n gw", {}, "gateways.n gw: names may hold only letters, digits, _ . -"),
    ("gateways.ngw", "192.0.2.1", "gateways.ngw: expected a mapping, got a string"),
    ("gateways.ngw.address", "x", "gateways.ngw.address: not an IP address: 'x'"),
    ("gateways.ngw.address", "gw.example.net", "gateways.ngw.address: not an IP address"),
    ("gateways.ngw.address", "[::1]:0", "gateways.ngw.address: bad port in '[::1]:0'"),
    ("gateways.ngw.address", DELETE, "gateways.ngw.address: required"),
    ("gateways.ngw.id", DELETE, "gateways.ngw.id: required"),
    ("gateways.ngw.psk", DELETE, "gateways.ngw.ca: required (or psk)"),
    ("gateways.ngw.ca", "ca.crt", "gateways.ngw.psk: give either ca or psk, not both"),
    ("gateways.ngw.ike", ["aes128-sha256-modp2047"], "gateways.ngw.ike[0]: algorithm 'modp2047"),
    ("gateways.ngw.esp", [], "gateways.ngw.esp: must not be empty"),
    ("gateways.ngw.remote_ts", ["10.0.0.1/8"], "gateways.ngw.remote_ts[0]: host bits set"),
    ("gateways.ngw.interface", "a-very-long-name0", "gateways.ngw.interface: longer than 15"),
    ("gateways.ngw.interface", "eth/1", "gateways.ngw.interface: not a valid interface name"),
    ("gateways.ngw.interface", DELETE, "gateways.ngw.interface: required when preauth is true"),
    ("gateways.ngw.preauth", "yes", "gateways.ngw.preauth: expected true, false or auto, got"),
    ("gateways.ngw.handover", "now", "gateways.ngw.handover: expected one of auto, manual"),
    ("gateways.ngw.adress", "192.0.2.1", "gateways.ngw.adress: unknown key (did you mean 'addr"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_CASES)
def test_bad_values_name_their_key(
    mobile_data: dict[str, Any], path: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(edited(mobile_data, path, value))
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_missing_ca_file(tmp_path: Path, mobile_data: dict[str, Any]) -> None:
    data = edited(mobile_data, "gateways.ngw.psk", DELETE)
    data = edited(data, "gateways.ngw.ca", "nothing.crt")
    with pytest.raises(ConfigError, match=r"^gateways\.ngw\.ca: cannot read '.*nothing.crt'"):
        parse(data, tmp_path)


def test_automatic_handover_needs_the_interface(mobile_data: dict[str, Any]) -> None:
    data = edited(mobile_data, "gateways.ngw.preauth", False)
    data = edited(edited(data, "gateways.ngw.interface", DELETE), "gateways.ngw.handover", "auto")
    with pytest.raises(ConfigError, match=r"^gateways\.ngw\.interface: required when handover"):
        parse(data)


def test_numeric_gateway_names_are_refused(mobile_data: dict[str, Any]) -> None:
    data = edited(mobile_data, "gateways", {1: mobile_data["gateways"]["ngw"]})
    with pytest.raises(ConfigError, match=r"^gateways\.1: names must be strings$"):
        parse(data)
