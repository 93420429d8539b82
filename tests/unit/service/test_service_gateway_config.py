"""Gateway configuration: the example loads, and every bad value is refused with one line
that starts with its key path."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from servicehelp import DELETE, EXAMPLES, edited

from gateway.config import GatewayConfig, load_config, parse_config
from mpa_ike.errors import ConfigError
from mpa_ike.mobike import AddressPolicyMode
from mpa_ike.node.config import DEFAULT_PROPOSALS, Endpoint


def parse(data: object, base_dir: Path = Path("/")) -> GatewayConfig:
    return parse_config(data, base_dir)


def test_example_loads() -> None:
    config = load_config(EXAMPLES / "gateway.yaml")
    assert config.id == "ngw.example.net"
    assert config.eap.method == "mschapv2"
    assert config.mobike.address_policy.mode is AddressPolicyMode.ALLOCATED


def test_minimal_config_takes_defaults(gateway_data: dict[str, Any]) -> None:
    config = parse(gateway_data)
    assert config.listen == (
        Endpoint(ip_address("192.0.2.1")),
        Endpoint(ip_address("2001:db8::1"), 4500),
    )
    assert config.psk == b"secret"
    assert config.certificate is None
    assert config.pool == (ip_network("10.9.0.0/24"), ip_network("2001:db8:9::/120"))
    assert config.local_ts == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert config.datapath == "auto"
    assert config.mobike.address_policy.mode is AddressPolicyMode.ALLOCATED
    assert not config.mobike.return_routability
    assert config.half_open_threshold == 30
    assert config.log_level == "info"
    assert dict(config.eap.users) == {"alice": "alice-secret"}
    assert (config.user, config.group, config.control_group) == (None, None, None)


def test_whom_to_run_as(gateway_data: dict[str, Any]) -> None:
    data = gateway_data | {"user": "root", "group": "root", "control_group": "root"}
    config = parse(data)
    assert (config.user, config.group, config.control_group) == ("root", "root", "root")


def test_secrets_stay_out_of_repr(gateway_data: dict[str, Any]) -> None:
    text = repr(parse(gateway_data))
    assert "secret" not in text.replace("ngw.example.net", "")


def test_certificate_paths_are_relative_to_the_config_file(
    tmp_path: Path, gateway_data: dict[str, Any]
) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("gw.crt", "gw.key", "ca.crt"):
        (tmp_path / "certs" / name).write_text("-----BEGIN-----\n")
    data = edited(gateway_data, "psk", DELETE)
    data |= {"certificate": "certs/gw.crt", "private_key": "certs/gw.key", "ca": "certs/ca.crt"}
    file = tmp_path / "gateway.yaml"
    file.write_text(yaml.safe_dump(data))
    config = load_config(file)
    assert config.certificate == tmp_path / "certs" / "gw.crt"
    assert config.private_key == tmp_path / "certs" / "gw.key"
    assert config.ca == tmp_path / "certs" / "ca.crt"
    assert config.psk is None


@pytest.mark.parametrize(
    ("policy", "expected", "prefixes"),
    [
        ("any", AddressPolicyMode.ANY, ()),
        ("allocated", AddressPolicyMode.ALLOCATED, ()),
        (["10.9.0.0/24"], AddressPolicyMode.PREFIXES, (ip_network("10.9.0.0/24"),)),
    ],
)
def test_address_policies(
    gateway_data: dict[str, Any], policy: object, expected: AddressPolicyMode, prefixes: object
) -> None:
    config = parse(edited(gateway_data, "mobike", {"address_policy": policy}))
    assert config.mobike.address_policy.mode is expected
    assert config.mobike.address_policy.prefixes == prefixes


def test_default_proposals_are_valid(gateway_data: dict[str, Any]) -> None:
    data = edited(edited(gateway_data, "ike", DELETE), "esp", DELETE)
    config = parse(data)
    assert config.ike == DEFAULT_PROPOSALS["ike"]
    assert config.esp == DEFAULT_PROPOSALS["esp"]


def test_control_socket_is_relative_to_the_config_file(
    tmp_path: Path, gateway_data: dict[str, Any]
) -> None:
    config = parse(edited(gateway_data, "control_socket", "run/gw.sock"), tmp_path)
    assert config.control_socket == tmp_path / "run" / "gw.sock"


def test_psk_encodings(gateway_data: dict[str, Any]) -> None:
    assert parse(edited(gateway_data, "psk", "0x414243")).psk == b"ABC"
    assert parse(edited(gateway_data, "psk", "0sQUJD")).psk == b"ABC"


def test_proposals_may_be_comma_separated(gateway_data: dict[str, Any]) -> None:
    config = parse(edited(gateway_data, "ike", "aes128-sha256-modp2048, aes256-sha384-ecp384"))
    assert config.ike == ("aes128-sha256-modp2048", "aes256-sha384-ecp384")


def test_own_and_dns_addresses_are_reserved(gateway_data: dict[str, Any]) -> None:
    config = parse(edited(gateway_data, "pool_reserved", ["10.9.0.1"]))
    reserved = config.reserved_addresses()
    for address in ("10.9.0.1", "192.0.2.1", "2001:db8::1", "10.9.0.53"):
        assert ip_address(address) in reserved


BAD_CASES: list[tuple[str, object, str]] = [
    ("listen", ["x"], "listen[0]: not an IP address: 'x'"),
    ("listen", "192.0.2.1:99999", "listen[0]: bad port in '192.0.2.1:99999'"),
    ("listen", ["[2001:db8::1"], "listen[0]: not an IP address: '[2001:db8::1'"),
    ("listen", [], "listen: must not be empty"),
    ("listen", {"a": 1}, "listen: expected a list, got a mapping"),
    ("listen", DELETE, "listen: required"),
    ("id", DELETE, "id: required"),
    ("id", 5, "id: expected a string, got an integer"),
    ("id", " ", "id: must not be empty"),
    ("psk", DELETE, "certificate: required (or psk)"),
    ("certificate", "gw.crt", "psk: give either psk or certificate, not both"),
    ("private_key", "gw.key", "private_key: only used with certificate, not with psk"),
    ("psk", "0xzz", "psk: malformed 0x (hex) or 0s (base64) key"),
    ("psk", 1234, "psk: expected a string (quote it), got an integer"),
    ("ca", "/nonexistent/ca.crt", "ca: cannot read '/nonexistent/ca.crt': No such file or"),
    ("ike", ["aes128-sha256"], "ike[0]: a key exchange method is mandatory in IKE proposal"),
    ("ike", ["aes128-sha256-modp999"], "ike[0]: algorithm 'modp999' not recognized in proposal"),
    ("ike", "aes128-sha256-modp2048,", "ike[0]: empty algorithm keyword in proposal ''"),
    ("esp", ["aes128--sha256"], "esp[0]: empty algorithm keyword in proposal 'aes128--sha256'"),
    ("esp", ["aes128-sha256-noesn-prfsha1-x"], "esp[0]: algorithm 'x' not recognized"),
    ("pool", DELETE, "pool: required"),
    ("pool", ["nonsense"], "pool[0]: not a CIDR prefix: 'nonsense'"),
    (
        "pool",
        ["10.9.0.1/24"],
        "pool[0]: host bits set in '10.9.0.1/24' (did you mean 10.9.0.0/24?)",
    ),
    ("pool", ["10.9.0.0/24", "10.9.0.128/25"], "pool[1]: 10.9.0.128/25 overlaps 10.9.0.0/24"),
    ("pool_reserved", ["10.9.0.x"], "pool_reserved[0]: not an IP address: '10.9.0.x'"),
    ("dns", ["10.9.0.300"], "dns[0]: not an IP address: '10.9.0.300'"),
    ("local_ts", ["10.0.0.0/33"], "local_ts[0]: not a CIDR prefix: '10.0.0.0/33'"),
    ("subnets", ["10.1.0.0/33"], "subnets[0]: not a CIDR prefix: '10.1.0.0/33'"),
    ("eap", DELETE, "eap: required"),
    ("eap", "md5", "eap: expected a mapping, got a string"),
    ("eap.method", "tls", "eap.method: expected one of md5, mschapv2, got 'tls'"),
    ("eap.method", DELETE, "eap.method: required"),
    ("eap.users", {}, "eap.users: at least one user is required"),
    ("eap.users", ["alice"], "eap.users: expected a mapping, got a list"),
    ("eap.users.bob", 1234, "eap.users.bob: expected a string (quote it), got an integer"),
    ("eap.radius", {"server": "x"}, "eap.radius: only with method: radius"),
    ("eap.mehtod", "md5", "eap.mehtod: unknown key (did you mean 'method'?)"),
    ("datapath", "kernel", "datapath: expected one of userspace, xfrm, auto, got 'kernel'"),
    ("mobike.address_policy", "some", "mobike.address_policy: expected allocated, any or a list"),
    ("mobike.address_policy", ["10.0.0.0/33"], "mobike.address_policy[0]: not a CIDR prefix"),
    ("mobike.return_routability", "yes please", "mobike.return_routability: expected true or"),
    ("mobike.nat", True, "mobike.nat: unknown key"),
    ("half_open_threshold", -1, "half_open_threshold: must be between 0 and 1000000, got -1"),
    ("half_open_threshold", True, "half_open_threshold: expected an integer, got a boolean"),
    ("control_socket", "/" + "s" * 120, "control_socket: longer than 107 bytes"),
    ("log_level", "verbose", "log_level: expected one of debug, info, warning, error"),
    ("listn", ["192.0.2.1"], "listn: unknown key (did you mean 'listen'?)"),
    ("user", "no-such-user-of-mpa-ike", "user: no such user: 'no-such-user-of-mpa-ike'"),
    ("user", 0, "user: expected a string, got an integer"),
    ("group", "root", "group: only used with user"),
    ("control_group", "no-such-group", "control_group: no such group: 'no-such-group'"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_CASES)
def test_bad_values_name_their_key(
    gateway_data: dict[str, Any], path: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(edited(gateway_data, path, value))
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_subnets_lie_within_local_ts(gateway_data: dict[str, Any]) -> None:
    narrow = edited(gateway_data, "local_ts", ["10.1.0.0/16", "2001:db8:1::/48"])
    config = parse(edited(narrow, "subnets", ["10.1.2.0/24", "2001:db8:1::/64"]))
    assert config.subnets == (ip_network("10.1.2.0/24"), ip_network("2001:db8:1::/64"))
    assert parse(gateway_data).subnets == ()
    with pytest.raises(ConfigError, match=r"^subnets\[1\]: 10.2.0.0/24 is not within local_ts$"):
        parse(edited(narrow, "subnets", ["10.1.2.0/24", "10.2.0.0/24"]))


def test_certificate_needs_its_key(tmp_path: Path, gateway_data: dict[str, Any]) -> None:
    (tmp_path / "gw.crt").write_text("x")
    data = edited(edited(gateway_data, "psk", DELETE), "certificate", "gw.crt")
    with pytest.raises(ConfigError, match=r"^private_key: required$"):
        parse(data, tmp_path)


def test_unreadable_certificate(tmp_path: Path, gateway_data: dict[str, Any]) -> None:
    (tmp_path / "gw.key").write_text("x")
    data = edited(gateway_data, "psk", DELETE) | {"certificate": "gw.crt", "private_key": "gw.key"}
    with pytest.raises(ConfigError, match=r"^certificate: cannot read '.*gw.crt': No such file"):
        parse(data, tmp_path)


def test_a_directory_is_not_a_certificate(tmp_path: Path, gateway_data: dict[str, Any]) -> None:
    (tmp_path / "gw.key").write_text("x")
    data = edited(gateway_data, "psk", DELETE) | {"certificate": ".", "private_key": "gw.key"}
    with pytest.raises(ConfigError, match=r"^certificate: cannot read .*: Is a directory"):
        parse(data, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just\n- a list\n", "(top level): expected a mapping, got a list"),
        ("", "(top level): expected a mapping, got nothing"),
        ("id: a\nid: b\n", "line 2, column 1: duplicate key 'id'"),
        ("listen: [192.0.2.1\n", "line 2, column 1: expected ',' or ']'"),
        ("id: 'open\n", "line 2, column 1: found unexpected end of stream"),
    ],
)
def test_bad_files_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read '.*nothing.yaml': No such file"):
        load_config(tmp_path / "nothing.yaml")
