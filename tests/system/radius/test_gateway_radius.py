"""mpa-gateway relaying EAP to FreeRADIUS, with accounting and Disconnect-Requests.

Three namespaces: the mobile node (``mn``, 192.0.2.1), the gateway (``gw``, 192.0.2.2
towards the mobile node, 10.1.0.1 on its LAN) and a LAN host (``lan``, 10.1.0.10) that
runs FreeRADIUS, the echo server of the traffic checks and ``radclient``. mpa-mobile or
a charon road warrior authenticates with EAP-MD5 or EAP-MSCHAPv2; the gateway relays
every EAP message to FreeRADIUS (``eap.method: radius``), takes the user's
Framed-IP-Address as the mobile node's CP address, and accounts the session
(Start, Interim-Update, Stop) into FreeRADIUS's detail file, which the tests read.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from servicehelp import Daemon, cli

from mpa_harness import guards
from mpa_harness.charon import Charon, require_charon
from mpa_harness.freeradius import (
    RADCLIENT_BIN,
    AccountingRecord,
    FreeRadius,
    RadiusClientSpec,
    RadiusUser,
    require_freeradius,
)
from mpa_harness.pki import Credential
from mpa_harness.scenarios import CHILD, CONN, Scenario, initiator_config
from tests.system.interop.test_mobile_vs_gateway import (
    EAP_PASSWORD,
    EAP_USER,
    gateway_yaml,
    mobile_yaml,
    start_daemon,
    status,
    wait_listening,
    wait_until,
)
from tests.system.interop.test_traffic import (
    GW_LAN,
    LAN_HOST,
    Net,
    echo_both_ways,
    three_hosts,
    with_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("radius_env")]

SECRET = "gw-radius-secret"
DAE_SECRET = "dae-secret"
FRAMED_IP = "10.9.0.7"  # outside the gateway's pool: the AAA's address, not a lease
CLASS = b"tariff-7"
DEAD_SERVER = "10.1.0.99"  # nobody answers there (no such host on the LAN)
IKE = "aes256gcm16-prfsha384-x25519"
METHODS = ["eap-md5", "eap-mschapv2"]


@pytest.fixture
def radius_env() -> None:
    guards.require(guards.namespaces_unavailable(), "the gateway's RADIUS tests")
    require_freeradius()


@dataclass
class Setup:
    net: Net
    radius: FreeRadius
    gateway: Daemon
    gateway_config: Path
    workdir: Path
    ca: Credential

    def records(self, status_type: str | None = None) -> list[AccountingRecord]:
        found = self.radius.accounting_records()
        return [r for r in found if status_type is None or r.get("Acct-Status-Type") == status_type]

    def wait_records(self, status_type: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        wait_until(lambda: len(self.records(status_type)) >= count, timeout)
        return self.records(status_type)

    def gateway_status(self) -> dict[str, Any]:
        return status("gateway.cli", self.gateway_config)


def users(session_timeout: int | None = None) -> list[RadiusUser]:
    return [
        RadiusUser(
            EAP_USER,
            EAP_PASSWORD,
            framed_ip=FRAMED_IP,
            session_timeout=session_timeout,
            classes=(CLASS,),
        )
    ]


@contextlib.contextmanager
def gateway_with_radius(
    workdir: Path,
    servers: Sequence[str] = (LAN_HOST,),
    session_timeout: int | None = None,
    default_eap_type: str = "md5",
    **gateway_extra: object,
) -> Iterator[Setup]:
    """FreeRADIUS in ``lan``, mpa-gateway in ``gw`` relaying to ``servers`` in order."""
    with three_hosts() as net, contextlib.ExitStack() as stack:
        radius = FreeRadius(
            workdir / "freeradius",
            clients=[RadiusClientSpec(GW_LAN, SECRET)],
            users=users(session_timeout),
            address=LAN_HOST,
            exec_prefix=net.lan.exec_args([]),
            default_eap_type=default_eap_type,
        )
        radius.start()
        stack.callback(radius.stop)
        link = net.hosts.link
        eap = {
            "method": "radius",
            "radius": {
                "servers": [{"address": a, "port": 1812, "secret": SECRET} for a in servers],
                "timeout": 1,
                "retries": 1,
                "accounting": True,
            },
        }
        dae = {"listen": f"{GW_LAN}:3799", "clients": [{"address": LAN_HOST, "secret": DAE_SECRET}]}
        (workdir / "gw").mkdir()
        config, ca = gateway_yaml(
            workdir / "gw",
            [link.b.addr(4), link.b.addr(6)],
            "eap-md5",
            IKE,
            "ecdsa",
            eap=eap,
            dae=dae,
            datapath="userspace",
            **gateway_extra,
        )
        gateway = start_daemon("gateway.cli", config, net.gw.name)
        stack.callback(lambda: print(gateway.stop()))
        wait_listening(config)
        try:
            yield Setup(net, radius, gateway, config, workdir, ca)
        except BaseException:
            print(radius.log()[-6000:])
            raise


@contextlib.contextmanager
def mobile(setup: Setup, method: str, password: str = EAP_PASSWORD) -> Iterator[Path]:
    """mpa-mobile in ``mn`` (userspace datapath), not yet connected."""
    workdir = setup.workdir / "mn"
    workdir.mkdir(exist_ok=True)
    config = mobile_yaml(
        workdir,
        setup.net.hosts.link.b.addr(4),
        method,
        IKE,
        ca=setup.workdir / "gw" / "ca.pem",
        password=password,
    )
    with_settings(config, datapath="userspace")
    daemon = start_daemon("mobile.cli", config, setup.net.mn.name)
    try:
        yield config
    finally:
        print(daemon.stop())


def connect(config: Path) -> subprocess.CompletedProcess[str]:
    return cli("mobile.cli", "connect", "gw", "-c", config, timeout=30)


def radclient(setup: Setup, attributes: str, secret: str = DAE_SECRET) -> str:
    """A Disconnect-Request from the LAN host, as an operator sends it; radclient's output."""
    argv = [RADCLIENT_BIN, "-x", "-r", "2", "-t", "2", f"{GW_LAN}:3799", "disconnect", secret]
    proc = subprocess.run(
        setup.net.lan.exec_args(argv),
        input=attributes + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout + proc.stderr


def only(records: list[AccountingRecord]) -> AccountingRecord:
    assert len(records) == 1, [r.attributes for r in records]
    return records[0]


# --------------------------------------------------------------------------- mpa-mobile


@pytest.mark.parametrize("method", METHODS)
def test_mobile_authenticates_through_radius(method: str, short_dir: Path) -> None:
    eap_type = method.removeprefix("eap-")
    with (
        gateway_with_radius(short_dir, default_eap_type=eap_type) as setup,
        mobile(setup, method) as mn_config,
    ):
        result = connect(mn_config)
        assert result.returncode == 0, result.stderr
        # Framed-IP-Address is the CP address (the nCoA), not a lease of the pool.
        [mn_sa] = status("mobile.cli", mn_config)["ike_sas"]
        assert mn_sa["address"] == FRAMED_IP
        gateway = setup.gateway_status()
        [gw_sa] = gateway["ike_sas"]
        assert gw_sa["state"] == "ESTABLISHED" and gw_sa["address"] == FRAMED_IP
        assert gateway["leases"] == []
        assert gateway["radius"]["counters"]["access_accepts"] == 1

        start = only(setup.wait_records("Start"))
        assert start.get("User-Name") == EAP_USER
        assert start.get("Framed-IP-Address") == FRAMED_IP
        assert start.get("Calling-Station-Id") == "192.0.2.1[4500]"
        assert start.octets("Class") == [CLASS]

        echo_both_ways(setup.net, FRAMED_IP, LAN_HOST)

        assert cli("mobile.cli", "disconnect", "gw", "-c", mn_config).returncode == 0
        stop = only(setup.wait_records("Stop"))
        print("Accounting-Stop:", stop.attributes)
        assert stop.get("Acct-Session-Id") == start.get("Acct-Session-Id")
        assert stop.get("Acct-Terminate-Cause") == "User-Request"
        assert stop.get("Framed-IP-Address") == FRAMED_IP
        assert int(stop.get("Acct-Input-Packets") or 0) >= 10
        assert int(stop.get("Acct-Output-Packets") or 0) >= 10
        assert int(stop.get("Acct-Input-Octets") or 0) > 0
        assert int(stop.get("Acct-Output-Octets") or 0) > 0


def test_wrong_password_is_refused(short_dir: Path) -> None:
    with gateway_with_radius(short_dir) as setup, mobile(setup, "eap-md5", "wrong") as mn_config:
        result = connect(mn_config)
        assert result.returncode == 1
        assert result.stderr.strip().startswith("mpa-mobile: connect gw: authentication failed")
        wait_until(lambda: not setup.gateway_status()["ike_sas"])
        assert setup.gateway_status()["radius"]["counters"]["access_rejects"] == 1
        assert setup.records() == []


def test_dead_first_server_fails_over_to_the_second(short_dir: Path) -> None:
    with (
        gateway_with_radius(short_dir, servers=(DEAD_SERVER, LAN_HOST)) as setup,
        mobile(setup, "eap-mschapv2") as mn_config,
    ):
        result = connect(mn_config)
        assert result.returncode == 0, result.stderr
        radius = setup.gateway_status()["radius"]
        assert radius["active_server"] == f"{LAN_HOST}:1812"
        assert radius["servers"] == [f"{DEAD_SERVER}:1812", f"{LAN_HOST}:1812"]
        assert only(setup.wait_records("Start")).get("Framed-IP-Address") == FRAMED_IP


def test_all_servers_dead_ends_the_ike_sa(short_dir: Path) -> None:
    with (
        gateway_with_radius(short_dir, servers=(DEAD_SERVER,)) as setup,
        mobile(setup, "eap-md5") as mn_config,
    ):
        result = connect(mn_config)
        assert result.returncode == 1
        wait_until(lambda: not setup.gateway_status()["ike_sas"])
        assert setup.gateway_status()["radius"]["counters"]["radius_timeouts"] == 1


def test_disconnect_request_deletes_the_sa(short_dir: Path) -> None:
    with gateway_with_radius(short_dir) as setup, mobile(setup, "eap-md5") as mn_config:
        assert connect(mn_config).returncode == 0
        setup.wait_records("Start")

        unknown = radclient(setup, "User-Name = nobody")
        assert "Disconnect-NAK" in unknown and "Session-Context-Not-Found" in unknown, unknown
        forged = radclient(setup, f"User-Name = {EAP_USER}", secret="not-the-secret")
        assert "Disconnect-ACK" not in forged
        assert status("mobile.cli", mn_config)["ike_sas"] != []

        answer = radclient(setup, f"User-Name = {EAP_USER}\nFramed-IP-Address = {FRAMED_IP}")
        assert "Received Disconnect-ACK" in answer, answer
        wait_until(lambda: not status("mobile.cli", mn_config)["ike_sas"])
        wait_until(lambda: not setup.gateway_status()["ike_sas"])
        stop = only(setup.wait_records("Stop"))
        assert stop.get("Acct-Terminate-Cause") == "Admin-Reset"
        dae = setup.gateway_status()["radius"]["dae"]["counters"]
        assert dae["disconnect_acks"] == 1 and dae["naks"] == 1
        assert dae["dropped_bad_authenticator"] >= 1


def test_session_timeout_makes_the_node_reauthenticate(short_dir: Path) -> None:
    """Session-Timeout 3 s, sent as AUTH_LIFETIME: mpa-mobile authenticates again through
    RADIUS a margin before (RFC 4478), the first session stops as the user's (the
    gateway deletes an IKE SA that overstays it: tests/unit/core/test_core_reauth.py)."""
    with (
        gateway_with_radius(short_dir, session_timeout=3) as setup,
        mobile(setup, "eap-md5") as mn_config,
    ):
        began = time.monotonic()
        assert connect(mn_config).returncode == 0
        stop = only(setup.wait_records("Stop", timeout=15))
        assert time.monotonic() - began >= 2.0
        assert stop.get("Acct-Terminate-Cause") == "User-Request"
        first, second = setup.wait_records("Start", count=2)
        assert first.get("Framed-IP-Address") == second.get("Framed-IP-Address") == FRAMED_IP
        assert first.get("Acct-Session-Id") != second.get("Acct-Session-Id")
        (sa,) = status("mobile.cli", mn_config)["ike_sas"]
        assert sa["address"] == FRAMED_IP


def test_gateway_stop_accounts_nas_reboot(short_dir: Path) -> None:
    with gateway_with_radius(short_dir) as setup, mobile(setup, "eap-md5") as mn_config:
        assert connect(mn_config).returncode == 0
        setup.wait_records("Start")
        assert setup.gateway.signal(15) == 0
        stop = only(setup.wait_records("Stop"))
        assert stop.get("Acct-Terminate-Cause") == "NAS-Reboot"
        wait_until(lambda: not status("mobile.cli", mn_config)["ike_sas"])


# --------------------------------------------------------------------------- charon


@pytest.mark.charon
@pytest.mark.parametrize("method", METHODS)
def test_charon_authenticates_through_radius(method: str, short_dir: Path) -> None:
    require_charon()
    with gateway_with_radius(short_dir, default_eap_type=method.removeprefix("eap-")) as setup:
        net = setup.net
        with Charon(net.mn, short_dir / "charon") as charon:
            charon.add_cacert(setup.ca)
            sc = Scenario(method, ike_proposal=IKE, gateway_key="ecdsa", encap=True)
            charon.configure(initiator_config(sc, "192.0.2.1", "192.0.2.2"))
            charon.start()
            charon.load()
            try:
                charon.initiate(CHILD, timeout=10)
                sa = charon.wait_established(CHILD)
                assert sa.local_vips == [FRAMED_IP]
                start = only(setup.wait_records("Start"))
                assert start.get("User-Name") == EAP_USER
                charon.terminate(ike=CONN, timeout=5)
                stop = only(setup.wait_records("Stop"))
                assert stop.get("Acct-Terminate-Cause") == "User-Request"
            except BaseException:
                print(charon.diagnostics())
                raise


@pytest.mark.charon
def test_mobike_move_is_accounted_as_interim_update(short_dir: Path) -> None:
    """charon's address changes: MOBIKE moves the IKE SA, an Interim-Update names the
    new outer address, and the Stop too."""
    require_charon()
    with gateway_with_radius(short_dir, mobike={"address_policy": "any"}) as setup:
        net, link = setup.net, setup.net.hosts.link
        with Charon(net.mn, short_dir / "charon") as charon:
            charon.add_cacert(setup.ca)
            sc = Scenario("eap-md5", ike_proposal=IKE, gateway_key="ecdsa", encap=True)
            charon.configure(initiator_config(sc, "%any", "192.0.2.2"))
            charon.start()
            charon.load()
            try:
                charon.initiate(CHILD, timeout=10)
                charon.wait_established(CHILD)
                start = only(setup.wait_records("Start"))
                assert start.get("Calling-Station-Id") == "192.0.2.1[4500]"

                net.mn.del_addr(link.a.dev, "192.0.2.1/24")
                net.mn.add_addr(link.a.dev, "192.0.2.3/24")
                interim = only(setup.wait_records("Interim-Update"))
                assert interim.get("Calling-Station-Id") == "192.0.2.3[4500]"
                assert interim.get("Acct-Session-Id") == start.get("Acct-Session-Id")
                assert interim.get("Framed-IP-Address") == FRAMED_IP

                charon.terminate(ike=CONN, timeout=5)
                stop = only(setup.wait_records("Stop"))
                assert stop.get("Calling-Station-Id") == "192.0.2.3[4500]"
                assert stop.get("Acct-Terminate-Cause") == "User-Request"
            except BaseException:
                print(charon.diagnostics())
                raise
