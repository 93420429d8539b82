"""The key tables the daemons write (``keylog:``) let tshark decrypt a capture.

mpa-gateway (userspace datapath, ``keylog: keys``) and mpa-mobile (``keylog`` too) in
namespaces, a capture on the gateway's link while the mobile node connects
(EAP-MSCHAPv2, AES-GCM IKE SA, AES-CBC/HMAC-SHA-256 CHILD SA) and a UDP echo runs
through the tunnel. With ``WIRESHARK_CONFIG_DIR`` pointing at a key directory, tshark
must show the IKE_AUTH request's IDi (sent only inside SK) and the echo's inner packets
inside ESP, with every ESP ICV verified, with the gateway's tables and with the mobile
node's; without the tables it shows neither. The tables are mode 0600.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from servicehelp import cli

from mpa_harness import guards
from mpa_harness.pcap import capture
from tests.system.interop.test_mobile_vs_gateway import (
    CLIENT_ID,
    status,
)
from tests.system.interop.test_traffic import (
    COUNT,
    LAN_HOST,
    echo_server,
    echoes,
    our_daemons,
    three_hosts,
    traffic_env,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]
__all__ = ["traffic_env"]


@pytest.fixture
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        guards.require("tshark is not installed (deploy/setup.sh installs it)", "tshark")
    assert path is not None
    return path


def dissect(tshark: str, pcap: Path, config_dir: Path, *fields: str) -> list[list[str]]:
    """One row per packet of ``fields`` (values of a field joined by commas)."""
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config_dir), HOME=str(config_dir))
    argv = [tshark, "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE"]
    argv += ["-o", "esp.enable_authentication_check:TRUE", "-T", "fields"]
    for field in fields:
        argv += ["-e", field]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # tshark reports a table it cannot load on stderr and carries on without keys.
    assert "rror" not in result.stderr, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


def test_tshark_decrypts_ike_auth_and_esp_with_the_exported_keys(
    tshark: str, short_dir: Path
) -> None:
    keys = short_dir / "keys"
    pcap = short_dir / "gw.pcap"
    with three_hosts() as net:
        link = net.hosts.link
        address = link.b.addr(4)
        with (
            our_daemons(
                short_dir,
                net.gw,
                net.mn,
                [address],
                address,
                gateway={"datapath": "userspace", "keylog": "keys"},
                mobile={"datapath": "userspace", "keylog": "mn-keys"},
            ) as ours,
            capture(net.gw, link.b.dev, pcap, "udp or esp"),
        ):
            mn_config = ours.mobile_config
            result = cli("mobile.cli", "connect", "gw", "-c", mn_config)
            assert result.returncode == 0, result.stderr
            [sa] = status("mobile.cli", mn_config)["ike_sas"]
            with echo_server(net.lan, LAN_HOST, 7003):
                assert echoes(net.mn, LAN_HOST, 7003, str(sa["address"])) == COUNT
    for name in ("ikev2_decryption_table", "esp_sa"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
    assert len((keys / "ikev2_decryption_table").read_text().splitlines()) == 1
    assert len((keys / "esp_sa").read_text().splitlines()) == 2

    rows = dissect(tshark, pcap, keys, "isakmp.exchangetype", "isakmp.id.data.user_fqdn", "ip.dst")
    auth = [r for r in rows if r[0] == "35"]
    assert auth and CLIENT_ID in auth[0][1], auth  # the IKE_AUTH request's IDi
    esp = dissect(tshark, pcap, keys, "esp.spi", "ip.dst", "esp.icv_good")
    inner = [r for r in esp if r[0] and LAN_HOST in r[1].split(",")]
    assert len(inner) >= COUNT, esp
    assert all(r[2] == "1" for r in esp if r[0]), esp

    # The mobile node's tables hold the same SAs, seen from its side: they decrypt too.
    mn_keys = short_dir / "mn-keys"
    assert (mn_keys / "ikev2_decryption_table").read_text() == (
        keys / "ikev2_decryption_table"
    ).read_text()
    rows = dissect(tshark, pcap, mn_keys, "isakmp.exchangetype", "isakmp.id.data.user_fqdn")
    assert any(CLIENT_ID in r[1] for r in rows if r[0] == "35")
    esp = dissect(tshark, pcap, mn_keys, "esp.spi", "ip.dst", "esp.icv_good")
    assert len([r for r in esp if r[0] and LAN_HOST in r[1].split(",")]) >= COUNT

    nothing = short_dir / "no-keys"
    nothing.mkdir()
    rows = dissect(
        tshark, pcap, nothing, "isakmp.exchangetype", "isakmp.id.data.user_fqdn", "ip.dst"
    )
    assert not any(CLIENT_ID in r[1] for r in rows)
    esp = dissect(tshark, pcap, nothing, "esp.spi", "ip.dst", "esp.icv_good")
    assert not any(r[0] and LAN_HOST in r[1].split(",") for r in esp)
