"""A charon road warrior (strongSwan 5.9.8, kernel-libipsec) against mpa-gateway.

charon initiates with ``encap = yes`` (kernel-libipsec only does ESP in UDP),
authenticates with EAP (MD5 or MSCHAPv2) and asks for a virtual IP; mpa-gateway signs
with an RSA or ECDSA certificate and leases the address from its pool. The four cases
cover every pair of method, IKE proposal and key type. These tests check the IKE side
only; traffic through the SAs is tested in test_traffic.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpa_harness.netns import two_hosts
from mpa_harness.pki import KeyType
from mpa_harness.scenarios import CHILD, CONN, PROTECTED_NET
from tests.system.interop.charon_setup import MATRIX, CharonAndGateway, charon_and_gateway
from tests.system.interop.test_mobile_vs_gateway import POOL, status, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.charon, pytest.mark.usefixtures("charon_env")]


@contextlib.contextmanager
def charon_against_gateway(
    workdir: Path,
    method: str,
    ike: str,
    key: KeyType,
    password: str | None = None,
    family: int = 4,
    charon_ike: str | None = None,
    **gateway_extra: object,
) -> Iterator[CharonAndGateway]:
    with (
        two_hosts() as hosts,
        charon_and_gateway(
            workdir,
            hosts,
            method,
            ike,
            key,
            family=family,
            charon_ike=charon_ike,
            password=password,
            **gateway_extra,
        ) as setup,
    ):
        yield setup


@pytest.mark.parametrize(("method", "ike", "key"), MATRIX)
def test_charon_connects_to_gateway(method: str, ike: str, key: KeyType, short_tmp: Path) -> None:
    with charon_against_gateway(short_tmp, method, ike, key) as setup:
        setup.charon.initiate(CHILD, timeout=5)
        sa = setup.charon.wait_established(CHILD)
        assert sa.initiator and sa.state == "ESTABLISHED"
        child = sa.child(CHILD)
        assert child.state == "INSTALLED" and child.encap
        assert child.remote_ts == [PROTECTED_NET]
        [vip] = sa.local_vips
        assert ipaddress.ip_address(vip) in ipaddress.ip_network(POOL)
        assert child.local_ts == [f"{vip}/32"]

        gateway = status("gateway.cli", setup.gateway_config)
        [ours] = gateway["ike_sas"]
        assert ours["state"] == "ESTABLISHED" and ours["address"] == vip
        assert gateway["leases"] == [{"address": vip, "ike_sa": ours["name"]}]
        [our_child] = ours["child_sas"]
        assert our_child["state"] == "INSTALLED"
        assert (our_child["spi_in"], our_child["spi_out"]) == (child.spi_out, child.spi_in)

        setup.charon.terminate(ike=CONN, timeout=5)
        setup.charon.wait_for(lambda sas: not sas)
        wait_until(lambda: not status("gateway.cli", setup.gateway_config)["leases"])
        assert status("gateway.cli", setup.gateway_config)["ike_sas"] == []


def test_charon_connects_to_gateway_over_ipv6(short_tmp: Path) -> None:
    method, ike, key = MATRIX[3]
    with charon_against_gateway(short_tmp, method, ike, key, family=6) as setup:
        setup.charon.initiate(CHILD, timeout=5)
        sa = setup.charon.wait_established(CHILD)
        assert (sa.remote_host, sa.remote_port) == ("2001:db8::2", 4500)
        [ours] = status("gateway.cli", setup.gateway_config)["ike_sas"]
        assert ours["local"] == "2001:db8::2[4500]" and ours["remote"] == "2001:db8::1[4500]"
        assert ours["address"] == sa.local_vips[0]


def test_charon_answers_a_cookie(short_tmp: Path) -> None:
    """With no half-open SA allowed, every IKE_SA_INIT must come back with a COOKIE (§2.6)."""
    method, ike, key = MATRIX[1]
    with charon_against_gateway(short_tmp, method, ike, key, half_open_threshold=0) as setup:
        setup.charon.initiate(CHILD, timeout=5)
        setup.charon.wait_established(CHILD)
        assert "received COOKIE notify" in setup.charon.log_text()
        counters = status("gateway.cli", setup.gateway_config)["counters"]
        assert counters["cookies_sent"] == 1


def test_charon_retries_with_the_group_we_ask_for(short_tmp: Path) -> None:
    """charon's KE is X25519, we take only MODP-2048: INVALID_KE_PAYLOAD, then a retry."""
    method, ike, key = MATRIX[0]
    offer = "aes128-sha256-x25519-modp2048"
    with charon_against_gateway(short_tmp, method, ike, key, charon_ike=offer) as setup:
        setup.charon.initiate(CHILD, timeout=5)
        sa = setup.charon.wait_established(CHILD)
        assert sa.raw["dh-group"] == "MODP_2048"
        assert "peer didn't accept DH group CURVE_25519" in setup.charon.log_text()


def test_wrong_password_fails_cleanly(short_tmp: Path) -> None:
    method, ike, key = MATRIX[2]
    with charon_against_gateway(short_tmp, method, ike, key, password="wrong") as setup:
        result = setup.charon.swanctl(
            "--initiate", "--child", CHILD, "--timeout", "5", check=False, timeout=10
        )
        assert result.returncode != 0
        assert "establishing CHILD_SA 'net' failed" in result.stdout + result.stderr
        setup.charon.wait_for(lambda sas: not sas)
        wait_until(lambda: not status("gateway.cli", setup.gateway_config)["ike_sas"])
        gateway = status("gateway.cli", setup.gateway_config)
        assert gateway["leases"] == []
        assert gateway["pool"]["ipv4"]["available"] == gateway["pool"]["ipv4"]["size"]


def test_gateway_sigterm_deletes_charon_sa(short_tmp: Path) -> None:
    method, ike, key = MATRIX[0]
    with charon_against_gateway(short_tmp, method, ike, key) as setup:
        setup.charon.initiate(CHILD, timeout=5)
        setup.charon.wait_established(CHILD)
        assert setup.gateway.signal(15) == 0
        # charon received our DELETE: its IKE SA is gone at once, not after a DPD timeout.
        setup.charon.wait_for(lambda sas: not sas, timeout=2)
