"""Smoke test of the charon harness: two charons, EAP with a certified gateway, CP virtual IP.

Checks the harness itself (namespaces, PKI, config rendering, start/load/initiate,
SA listing, cleanup) so later interop tests can rely on it.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from mpa_harness.netns import run
from mpa_harness.scenarios import CHILD, POOL, Scenario, charon_pair

pytestmark = [pytest.mark.netns, pytest.mark.charon, pytest.mark.usefixtures("charon_env")]


@pytest.mark.parametrize("method", ["eap-mschapv2", "eap-md5"])
def test_eap_road_warrior_gets_pool_address(method: str, short_tmp: Path) -> None:
    start = time.monotonic()
    sc = Scenario(method, gateway_key="rsa")
    with charon_pair(sc, short_tmp) as pair:
        pair.initiator.initiate(CHILD, timeout=5)
        ini = pair.initiator.wait_established(CHILD, timeout=5)
        resp = pair.responder.wait_established(CHILD, timeout=5)

        assert ini.initiator and not resp.initiator
        assert ini.initiator_spi == resp.initiator_spi
        assert ini.responder_spi == resp.responder_spi
        assert ini.child(CHILD).state == "INSTALLED"
        assert resp.child(CHILD).state == "INSTALLED"
        # ESP SPIs mirror each other across the two peers.
        assert ini.child(CHILD).spi_in == resp.child(CHILD).spi_out
        assert ini.child(CHILD).spi_out == resp.child(CHILD).spi_in
        assert ini.child(CHILD).encap

        assert len(ini.local_vips) == 1
        vip = ipaddress.ip_address(ini.local_vips[0])
        assert vip in ipaddress.ip_network(POOL)
        assert resp.remote_vips == ini.local_vips
        assert resp.remote_eap_id == "carol"

        pair.initiator.terminate(ike="rw", timeout=5)
        pair.initiator.wait_for(lambda sas: not sas, timeout=5)
        hosts = pair.hosts
    # Everything the harness created is gone after the context exits.
    listed = run(["ip", "netns", "list"]).stdout
    assert hosts.left.name not in listed and hosts.right.name not in listed
    assert time.monotonic() - start < 10


def test_require_charon_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from mpa_harness import charon

    monkeypatch.setattr(charon, "charon_available", lambda: "no charon here")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no charon here"):
        charon.require_charon()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        charon.require_charon()


def test_swanctl_rendering_and_listing_parser() -> None:
    from mpa_harness.charon import parse_list_sas, parse_log_levels, render_settings

    assert parse_log_levels("ike 4, enc 4, net 2, cfg 2") == {
        "ike": 4,
        "enc": 4,
        "net": 2,
        "cfg": 2,
    }

    text = render_settings(
        {"conn": {"id": "C=XX, CN=a b", "addrs": ["192.0.2.1", "%any"], "mobike": False}}
    )
    assert 'id = "C=XX, CN=a b"' in text
    assert "addrs = 192.0.2.1, %any" in text
    assert "mobike = no" in text
    sas = parse_list_sas(
        "list-sa event {\n  rw {\n    state = ESTABLISHED\n    local-vips = [\n"
        "      10.3.0.1\n    ]\n    child-sas {\n      net-1 {\n        name = net\n"
        "        state = INSTALLED\n        spi-in = c0ffee01\n      }\n    }\n  }\n}\n"
        "list-sas reply {\n}\n"
    )
    assert len(sas) == 1
    assert sas[0].state == "ESTABLISHED" and sas[0].local_vips == ["10.3.0.1"]
    assert sas[0].child("net").spi_in == "c0ffee01"
