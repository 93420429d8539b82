"""mpa-mobile against mpa-gateway, each daemon in its own network namespace.

The two programs run as they would in production (``python -m ... run -c FILE``); the
test drives them through their CLIs only. These tests check the IKE
side only; traffic through the SAs is tested in test_traffic.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servicehelp import DELETE, Daemon, cli, edited, write_yaml

from mpa_harness import guards
from mpa_harness.netns import TwoHosts, two_hosts
from mpa_harness.pki import Credential, KeyType, make_ca, make_cert

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("netns_env")]

GATEWAY_ID = "gw.mpa-ike.test"
CLIENT_ID = "carol@mpa-ike.test"
EAP_USER = "carol"
EAP_PASSWORD = "Ch4ng3-me-Not!"
POOL = "10.3.0.0/24"
PROTECTED_NET = "10.1.0.0/24"
ESP = "aes128-sha256"


@pytest.fixture
def netns_env() -> None:
    """Namespaces need root: skip without it, as the charon tests do (fail when CI=true)."""
    guards.require(guards.namespaces_unavailable(), "mpa-mobile vs mpa-gateway")


def gateway_yaml(
    workdir: Path,
    listen: str | list[str],
    method: str,
    ike: str,
    key: KeyType,
    **extra: object,
) -> tuple[Path, Credential]:
    """A gateway configuration with a fresh CA (also written to ca.pem) and certificate."""
    listen = [listen] if isinstance(listen, str) else listen
    ca = make_ca(key_type=key)
    cred = make_cert(ca, GATEWAY_ID, key, san_ip=listen)
    cred.write(workdir / "gw.pem", workdir / "gw.key")
    ca.write(workdir / "ca.pem")
    data = {
        "listen": listen,
        "id": GATEWAY_ID,
        "certificate": "gw.pem",
        "private_key": "gw.key",
        "ike": [ike],
        "esp": [ESP],
        "pool": [POOL],
        "local_ts": [PROTECTED_NET],
        "eap": {"method": method.removeprefix("eap-"), "users": {EAP_USER: EAP_PASSWORD}},
        "control_socket": "gw.sock",
        "leases": "leases.sqlite3",
        "log_level": "debug",
        **extra,
    }
    return write_yaml(workdir / "gateway.yaml", data), ca


def mobile_yaml(
    workdir: Path,
    gateway: str,
    method: str,
    ike: str,
    *,
    ca: Path | None = None,
    password: str = EAP_PASSWORD,
) -> Path:
    data: dict[str, Any] = {
        "identity": CLIENT_ID,
        "eap": {"method": method.removeprefix("eap-"), "password": password, "identity": EAP_USER},
        "control_socket": "mn.sock",
        "log_level": "debug",
        "gateways": {
            "gw": {
                "address": gateway,
                "id": GATEWAY_ID,
                "ca": str(ca),
                "ike": [ike],
                "esp": [ESP],
                "remote_ts": [PROTECTED_NET],
            }
        },
    }
    return write_yaml(workdir / "mobile.yaml", data)


def start_daemon(module: str, config: Path, ns_name: str) -> Daemon:
    socket = config.parent / ("gw.sock" if module == "gateway.cli" else "mn.sock")
    return Daemon(module, socket, "-c", config, prefix=["ip", "netns", "exec", ns_name])


def status(module: str, config: Path) -> dict[str, Any]:
    result = cli(module, "status", "--json", "-c", config)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def wait_listening(config: Path, timeout: float = 5.0) -> None:
    """The gateway's control socket answers before its IKE sockets are bound."""
    deadline = time.monotonic() + timeout
    while not status("gateway.cli", config).get("listening"):
        assert time.monotonic() < deadline, "the gateway never bound its IKE sockets"
        time.sleep(0.02)


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def use_psk(config: Path, psk: str, *drop: str) -> None:
    data = yaml.safe_load(config.read_text())
    for path in drop:
        data = edited(data, path, DELETE)
    where = "psk" if "gateways.gw.ca" not in drop else "gateways.gw.psk"
    write_yaml(config, edited(data, where, psk))


@dataclass
class Pair:
    hosts: TwoHosts
    gateway: Daemon
    gateway_config: Path
    mobile: Daemon
    mobile_config: Path


@contextlib.contextmanager
def mobile_and_gateway(
    workdir: Path,
    method: str,
    ike: str,
    key: KeyType,
    password: str = EAP_PASSWORD,
    family: int = 4,
    psk: str | None = None,
    mobile_ike: str | None = None,
) -> Iterator[Pair]:
    with two_hosts() as hosts:
        listen = [hosts.link.b.addr(4), hosts.link.b.addr(6)]
        gw_ip = hosts.link.b.addr(family)
        gw_config, _ = gateway_yaml(workdir, listen, method, ike, key)
        ca = workdir / "ca.pem"
        mn_ike = mobile_ike or ike
        mn_config = mobile_yaml(workdir, gw_ip, method, mn_ike, ca=ca, password=password)
        if psk is not None:  # the gateway authenticates with a PSK instead
            use_psk(gw_config, psk, "certificate", "private_key")
            use_psk(mn_config, psk, "gateways.gw.ca")
        gateway = start_daemon("gateway.cli", gw_config, hosts.right.name)
        try:
            mobile = start_daemon("mobile.cli", mn_config, hosts.left.name)
            try:
                wait_listening(gw_config)
                yield Pair(hosts, gateway, gw_config, mobile, mn_config)
            finally:
                print(mobile.stop())
        finally:
            print(gateway.stop())


CASES = [
    ("eap-md5", "aes128-sha256-modp2048", "rsa"),
    ("eap-mschapv2", "aes256gcm16-prfsha384-x25519", "ecdsa"),
]


@pytest.mark.parametrize(("method", "ike", "key"), CASES)
def test_mobile_connects_to_gateway(method: str, ike: str, key: KeyType, short_tmp: Path) -> None:
    with mobile_and_gateway(short_tmp, method, ike, key) as pair:
        result = cli("mobile.cli", "connect", "gw", "-c", pair.mobile_config)
        assert result.returncode == 0, result.stderr
        mobile = status("mobile.cli", pair.mobile_config)
        gateway = status("gateway.cli", pair.gateway_config)

        [mn_sa] = mobile["ike_sas"]
        [gw_sa] = gateway["ike_sas"]
        assert mn_sa["state"] == gw_sa["state"] == "ESTABLISHED"
        address = mn_sa["address"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network(POOL)
        assert result.stdout.strip() == f"gw: established, address {address}"
        assert gateway["leases"] == [{"address": address, "ike_sa": gw_sa["name"]}]
        [mn_child] = mn_sa["child_sas"]
        [gw_child] = gw_sa["child_sas"]
        assert mn_child["state"] == gw_child["state"] == "INSTALLED"
        assert (mn_child["spi_in"], mn_child["spi_out"]) == (
            gw_child["spi_out"],
            gw_child["spi_in"],
        )
        assert mn_child["local_ts"] == [f"{address}/32"] and mn_child["remote_ts"] == [
            PROTECTED_NET
        ]
        assert mn_sa["remote"].endswith("[4500]")  # MOBIKE floats to 4500 (RFC 4555 §3.3)

        result = cli("mobile.cli", "disconnect", "gw", "-c", pair.mobile_config)
        assert result.returncode == 0, result.stderr
        assert status("mobile.cli", pair.mobile_config)["ike_sas"] == []
        wait_until(lambda: not status("gateway.cli", pair.gateway_config)["leases"])


def test_mobile_connects_over_ipv6(short_tmp: Path) -> None:
    method, ike, key = CASES[1]
    with mobile_and_gateway(short_tmp, method, ike, key, family=6) as pair:
        result = cli("mobile.cli", "connect", "gw", "-c", pair.mobile_config)
        assert result.returncode == 0, result.stderr
        [mn_sa] = status("mobile.cli", pair.mobile_config)["ike_sas"]
        gateway = status("gateway.cli", pair.gateway_config)
        [gw_sa] = gateway["ike_sas"]
        assert mn_sa["local"] == "2001:db8::1[4500]" and mn_sa["remote"] == "2001:db8::2[4500]"
        assert gw_sa["local"] == "2001:db8::2[4500]" and gw_sa["remote"] == "2001:db8::1[4500]"
        assert set(gateway["listening"]) == {
            "192.0.2.2[500]",
            "192.0.2.2[4500]",
            "2001:db8::2[500]",
            "2001:db8::2[4500]",
        }
        assert mn_sa["address"] == gw_sa["address"]
        assert ipaddress.ip_address(mn_sa["address"]) in ipaddress.ip_network(POOL)


def test_gateway_authenticated_by_psk(short_tmp: Path) -> None:
    method, ike, key = CASES[0]
    with mobile_and_gateway(short_tmp, method, ike, key, psk="0x" + "a5" * 32) as pair:
        result = cli("mobile.cli", "connect", "gw", "-c", pair.mobile_config)
        assert result.returncode == 0, result.stderr
        again = cli("mobile.cli", "connect", "gw", "-c", pair.mobile_config)
        assert again.returncode == 1
        assert again.stderr.strip() == (
            "mpa-mobile: connect gw: already connected (disconnect first)"
        )
        [gw_sa] = status("gateway.cli", pair.gateway_config)["ike_sas"]
        assert gw_sa["state"] == "ESTABLISHED"


def test_wrong_password_fails_on_both_sides(short_tmp: Path) -> None:
    method, ike, key = CASES[1]
    with mobile_and_gateway(short_tmp, method, ike, key, password="wrong") as pair:
        result = cli("mobile.cli", "connect", "gw", "-c", pair.mobile_config)
        assert result.returncode == 1
        assert result.stderr.strip().startswith("mpa-mobile: connect gw: authentication failed")
        assert status("mobile.cli", pair.mobile_config)["ike_sas"] == []
        wait_until(lambda: not status("gateway.cli", pair.gateway_config)["ike_sas"])
        assert status("gateway.cli", pair.gateway_config)["leases"] == []


def test_gateway_deletes_its_sas_on_sigterm(short_tmp: Path) -> None:
    method, ike, key = CASES[0]
    with mobile_and_gateway(short_tmp, method, ike, key) as pair:
        assert cli("mobile.cli", "connect", "gw", "-c", pair.mobile_config).returncode == 0
        assert pair.gateway.signal(15) == 0
        # The mobile node got the DELETE: its IKE SA is gone without its asking.
        wait_until(lambda: not status("mobile.cli", pair.mobile_config)["ike_sas"])


def test_no_proposal_chosen(short_tmp: Path) -> None:
    method, ike, key = CASES[0]
    other = "aes256-sha384-ecp256"
    with mobile_and_gateway(short_tmp, method, ike, key, mobile_ike=other) as pair:
        result = cli("mobile.cli", "connect", "gw", "-c", pair.mobile_config)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "mpa-mobile: connect gw: IKE_SA_INIT refused: NO_PROPOSAL_CHOSEN"
        )
        assert status("gateway.cli", pair.gateway_config)["ike_sas"] == []
