"""mpa-mobile against a charon gateway (strongSwan 5.9.8, kernel-libipsec), in namespaces.

charon authenticates with a certificate (RSA or ECDSA) and the mobile node with EAP
(MD5 or MSCHAPv2), and assigns a virtual IP from its pool by CP. The four cases cover
every pair of method, IKE proposal and key type. These tests check the IKE side
only; traffic through the SAs is tested in test_traffic.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servicehelp import Daemon, cli

from mpa_harness.charon import Charon
from mpa_harness.netns import TwoHosts, two_hosts
from mpa_harness.pki import KeyType, make_ca, make_cert
from mpa_harness.scenarios import (
    CHILD,
    CONN,
    GATEWAY_ID,
    POOL,
    PROTECTED_ADDR,
    PROTECTED_NET,
    Scenario,
    responder_config,
)
from tests.system.interop.charon_setup import MATRIX, diagnosed
from tests.system.interop.test_mobile_vs_gateway import (
    EAP_PASSWORD,
    mobile_yaml,
    start_daemon,
    status,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.charon, pytest.mark.usefixtures("charon_env")]


@dataclass
class Setup:
    hosts: TwoHosts
    charon: Charon
    mobile: Daemon
    mobile_config: Path


@contextlib.contextmanager
def mobile_against_charon(
    workdir: Path,
    method: str,
    ike: str,
    key: KeyType,
    password: str = EAP_PASSWORD,
    family: int = 4,
    mobile_ike: str | None = None,
) -> Iterator[Setup]:
    sc = Scenario(method, ike_proposal=ike, gateway_key=key)
    with two_hosts() as hosts, contextlib.ExitStack() as stack:
        hosts.right.add_addr("lo", f"{PROTECTED_ADDR}/32")
        gw_ip = hosts.link.b.addr(family)
        charon = stack.enter_context(Charon(hosts.right, workdir / "charon"))
        ca = make_ca(key_type=key)
        cert_file = charon.add_cert(make_cert(ca, GATEWAY_ID, key, san_ip=[gw_ip]), "gw")
        ca.write(workdir / "ca.pem")
        charon.configure(responder_config(sc, gw_ip, cert_file))
        charon.start()
        charon.load()
        ca_file = workdir / "ca.pem"
        mn_ike = mobile_ike or ike
        config = mobile_yaml(workdir, gw_ip, method, mn_ike, ca=ca_file, password=password)
        mobile = start_daemon("mobile.cli", config, hosts.left.name)
        stack.callback(lambda: print(mobile.stop()))
        with diagnosed(charon):
            yield Setup(hosts, charon, mobile, config)


@pytest.mark.parametrize(("method", "ike", "key"), MATRIX)
def test_mobile_connects_to_charon(method: str, ike: str, key: KeyType, short_tmp: Path) -> None:
    with mobile_against_charon(short_tmp, method, ike, key) as setup:
        result = cli("mobile.cli", "connect", "gw", "-c", setup.mobile_config)
        assert result.returncode == 0, result.stderr

        sa = setup.charon.wait_established(CHILD)
        assert sa.state == "ESTABLISHED" and not sa.initiator
        child = sa.child(CHILD)
        assert child.state == "INSTALLED"
        assert sa.remote_eap_id == "carol"
        [vip] = sa.remote_vips
        assert ipaddress.ip_address(vip) in ipaddress.ip_network(POOL)

        [ours] = status("mobile.cli", setup.mobile_config)["ike_sas"]
        assert ours["state"] == "ESTABLISHED"
        assert ours["address"] == vip
        assert result.stdout.strip() == f"gw: established, address {vip}"
        [our_child] = ours["child_sas"]
        assert our_child["state"] == "INSTALLED"
        assert (our_child["spi_in"], our_child["spi_out"]) == (child.spi_out, child.spi_in)
        assert our_child["local_ts"] == [f"{vip}/32"]
        assert our_child["remote_ts"] == [PROTECTED_NET]
        assert child.remote_ts == [f"{vip}/32"]

        result = cli("mobile.cli", "disconnect", "gw", "-c", setup.mobile_config)
        assert result.returncode == 0, result.stderr
        setup.charon.wait_for(lambda sas: not sas)


def test_mobile_connects_to_charon_over_ipv6(short_tmp: Path) -> None:
    method, ike, key = MATRIX[1]
    with mobile_against_charon(short_tmp, method, ike, key, family=6) as setup:
        result = cli("mobile.cli", "connect", "gw", "-c", setup.mobile_config)
        assert result.returncode == 0, result.stderr
        sa = setup.charon.wait_established(CHILD)
        assert (sa.local_host, sa.local_port) == ("2001:db8::2", 4500)
        assert (sa.remote_host, sa.remote_port) == ("2001:db8::1", 4500)
        [ours] = status("mobile.cli", setup.mobile_config)["ike_sas"]
        assert ours["local"] == "2001:db8::1[4500]" and ours["address"] == sa.remote_vips[0]


def test_mobile_retries_with_the_group_charon_asks_for(short_tmp: Path) -> None:
    """Our KE is X25519, charon takes only MODP-2048: INVALID_KE_PAYLOAD, then a retry."""
    method, ike, key = MATRIX[0]
    offer = "aes128-sha256-x25519-modp2048"
    with mobile_against_charon(short_tmp, method, ike, key, mobile_ike=offer) as setup:
        result = cli("mobile.cli", "connect", "gw", "-c", setup.mobile_config)
        assert result.returncode == 0, result.stderr
        sa = setup.charon.wait_established(CHILD)
        assert sa.raw["dh-group"] == "MODP_2048"
        assert "DH group CURVE_25519 unacceptable, requesting MODP_2048" in setup.charon.log_text()


def test_wrong_password_fails_cleanly(short_tmp: Path) -> None:
    method, ike, key = MATRIX[3]
    with mobile_against_charon(short_tmp, method, ike, key, password="wrong") as setup:
        result = cli("mobile.cli", "connect", "gw", "-c", setup.mobile_config)
        assert result.returncode == 1
        assert result.stderr.strip().startswith("mpa-mobile: connect gw: authentication failed")
        assert status("mobile.cli", setup.mobile_config)["ike_sas"] == []
        setup.charon.wait_for(lambda sas: not sas)
        assert "EAP method EAP_MSCHAPV2 failed for peer" in setup.charon.log_text()


def test_mobile_sigterm_deletes_its_sa(short_tmp: Path) -> None:
    method, ike, key = MATRIX[0]
    with mobile_against_charon(short_tmp, method, ike, key) as setup:
        assert cli("mobile.cli", "connect", "gw", "-c", setup.mobile_config).returncode == 0
        setup.charon.wait_established(CHILD)
        assert setup.mobile.signal(15) == 0
        # charon got our DELETE: the SA is gone at once, not after a liveness timeout.
        setup.charon.wait_for(lambda sas: not sas, timeout=2)


def test_charon_deletes_and_the_mobile_follows(short_tmp: Path) -> None:
    method, ike, key = MATRIX[2]
    with mobile_against_charon(short_tmp, method, ike, key) as setup:
        assert cli("mobile.cli", "connect", "gw", "-c", setup.mobile_config).returncode == 0
        setup.charon.wait_established(CHILD)
        setup.charon.terminate(ike=CONN, timeout=5)
        wait_until(lambda: not status("mobile.cli", setup.mobile_config)["ike_sas"])
        # and the gateway can be reached again at once
        assert cli("mobile.cli", "connect", "gw", "-c", setup.mobile_config).returncode == 0
        setup.charon.wait_established(CHILD)
