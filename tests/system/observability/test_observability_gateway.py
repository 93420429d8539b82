"""mpa-gateway observed and administered: Prometheus metrics, JSON log lines, the
``terminate``, ``reauth`` and ``leases`` commands, and a SIGHUP reload, with a real
daemon in a network namespace.

The mobile node is our sans-I/O core over real sockets in the other namespace
(:class:`MobileNode` of the MOBIKE checks), so that a test chooses the address of an
update and the EAP user of each IKE SA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from servicehelp import Daemon, cli, edited, environment, write_yaml

from mpa_harness.netns import TwoHosts, two_hosts
from mpa_ike.events import (
    AddressUpdateRefused,
    ChildSaEstablished,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from tests.system.interop.test_gateway_mobike_checks import (
    ELSEWHERE,
    GW,
    MN,
    NAT_T,
    NCOA,
    POOL,
    MobileNode,
    initiator_config,
    inside,
)
from tests.system.interop.test_mobile_vs_gateway import (
    CLIENT_ID,
    EAP_USER,
    gateway_yaml,
    start_daemon,
    status,
    wait_listening,
)
from tests.system.interop.test_traffic import IKE, KEY, METHOD, traffic_env

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]
__all__ = ["traffic_env"]

METRICS_PORT = 9108
GATEWAY = "gateway.cli"
DAVE, DAVE_PASSWORD = "dave", "Dave-s3cret!"
GROWN = "10.78.0.0/29"


@dataclass
class Gateway:
    hosts: TwoHosts
    daemon: Daemon
    config: Path
    mobile: MobileNode

    def metrics(self) -> dict[str, float]:
        """``/metrics`` fetched with urllib in the gateway's namespace, parsed."""
        with inside(self.hosts.right):
            url = f"http://{GW}:{METRICS_PORT}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def status(self) -> dict[str, Any]:
        return status(GATEWAY, self.config)

    def connect(self, user: str = EAP_USER, password: str | None = None) -> bytes:
        """An IKE SA and its CHILD SA from MN as ``user``; our SPI."""
        config = initiator_config(self.config.parent)
        # Another user is another peer (IDi) too: the gateway's uniqueness policy
        # (replace) would otherwise close the first user's IKE SA for the second.
        identity = config.identity if user == EAP_USER else f"{user}@mpa-ike.test"
        config = dataclasses.replace(
            config,
            name=user,
            identity=identity,
            eap_identity=user,
            eap_password=password or config.eap_password,
        )
        sa = self.mobile.endpoint.initiate(config, (MN, 500), (GW, 500), time.monotonic())
        self.mobile.pump(lambda: self._settled(sa.local_spi))
        return sa.local_spi

    def _settled(self, spi: bytes) -> bool:
        return any(
            e.ike_sa == spi and isinstance(e, ChildSaEstablished | IkeSaFailed)
            for e in self.mobile.events
        )


@contextlib.contextmanager
def gateway(workdir: Path, **extra: object) -> Iterator[Gateway]:
    """mpa-gateway in ``right`` with metrics and JSON logs; our core in ``left``."""
    with two_hosts() as hosts, contextlib.ExitStack() as stack:
        config, _ = gateway_yaml(
            workdir,
            [GW],
            METHOD,
            IKE,
            KEY,
            **{
                "pool": [POOL],
                "datapath": "userspace",
                "mobike": {"address_policy": "allocated"},
                "metrics": {"listen": f"{GW}:{METRICS_PORT}"},
                "log_format": "json",
                "log_level": "info",
                **extra,
            },
        )
        daemon = start_daemon(GATEWAY, config, hosts.right.name)
        stack.callback(daemon.stop)
        wait_listening(config)
        hosts.right.add_route(POOL, dev=hosts.link.b.dev)
        hosts.left.add_addr(hosts.link.a.dev, f"{NCOA}/32")
        hosts.left.add_addr(hosts.link.a.dev, f"{ELSEWHERE}/24")
        mobile = MobileNode(hosts.left)
        stack.callback(mobile.close)
        for local in ((MN, 500), (MN, NAT_T), (NCOA, NAT_T), (ELSEWHERE, NAT_T)):
            mobile.bind(*local)
        yield Gateway(hosts, daemon, config, mobile)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


def answered_by_mobile(gw: Gateway, *args: str, spi: bytes) -> subprocess.CompletedProcess[str]:
    """``mpa-gateway ARGS`` while our core answers the DELETE of its IKE SA ``spi``."""
    process = subprocess.Popen(
        [sys.executable, "-m", GATEWAY, *args, "-c", str(gw.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    gw.mobile.pump(lambda: any(e.ike_sa == spi for e in gw.mobile.of_type(IkeSaDeleted)))
    stdout, stderr = process.communicate(timeout=10)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    return lines


# --------------------------------------------------------------------------- metrics


def test_metrics_follow_set_up_updates_and_failures(short_dir: Path) -> None:
    with gateway(short_dir) as gw:
        before = gw.metrics()
        assert before["mpa_ike_sas_established_total"] == 0
        assert before["mpa_ike_sas{state=ESTABLISHED}"] == 0
        assert before["mpa_pool_size{family=ipv4}"] == 126
        assert before["mpa_pool_available{family=ipv4}"] == 126

        spi = gw.connect()
        established = gw.metrics()
        assert established["mpa_ike_sas_established_total"] == 1
        assert established["mpa_child_sas_established_total"] == 1
        assert established["mpa_ike_sas{state=ESTABLISHED}"] == 1
        assert established["mpa_child_sas{state=INSTALLED}"] == 1
        assert established["mpa_eap_total{outcome=success}"] == 1
        assert established["mpa_pool_available{family=ipv4}"] == 125
        assert established["mpa_ike_setup_seconds_count"] == 1
        assert 0 < established["mpa_ike_setup_seconds_sum"] < 5

        # A refused update (the address was not leased to the SA), then an accepted one.
        gw.mobile.endpoint.update_addresses(spi, (ELSEWHERE, NAT_T), time.monotonic())
        gw.mobile.pump(lambda: bool(gw.mobile.of_type(AddressUpdateRefused)))
        refused = gw.metrics()
        key = "mpa_handovers_total{reason=UNACCEPTABLE_ADDRESSES,result=refused}"
        assert refused[key] == 1
        assert refused["mpa_handover_update_seconds_count{result=refused}"] == 1
        assert refused["mpa_ike_core_events_total{name=updates_refused}"] == 1

        answered = len(gw.mobile.received)
        gw.mobile.endpoint.update_addresses(spi, (NCOA, NAT_T), time.monotonic())
        gw.mobile.pump(lambda: len(gw.mobile.received) > answered)
        moved = gw.metrics()
        assert moved["mpa_handovers_total{reason=none,result=accepted}"] == 1
        assert moved["mpa_handover_update_seconds_count{result=accepted}"] == 1

        # A wrong password: an EAP failure, the IKE SA failed with AUTHENTICATION_FAILED.
        gw.connect(user=EAP_USER, password="wrong")
        failed = gw.metrics()
        assert failed["mpa_eap_total{outcome=failure}"] == 1
        assert failed["mpa_ike_sas_failed_total{notify=AUTHENTICATION_FAILED}"] == 1
        assert failed["mpa_ike_sas_established_total"] == 1


def test_json_log_lines_name_the_event_spis_and_peer(short_dir: Path) -> None:
    with gateway(short_dir) as gw:
        spi = gw.connect()
        [ours] = [sa for sa in gw.mobile.endpoint if sa.local_spi == spi]
        result = answered_by_mobile(gw, "terminate", CLIENT_ID, spi=spi)
        assert result.returncode == 0, result.stderr
        stderr = gw.daemon.stop()
    lines = json_lines(stderr)
    [up] = [line for line in lines if line.get("event") == "ike_sa_established"]
    assert up["spi_i"] == ours.spi_i.hex() and up["spi_r"] == ours.spi_r.hex()
    assert up["peer"] == CLIENT_ID
    assert up["local"] == f"{GW}[{NAT_T}]" and up["remote"] == f"{MN}[{NAT_T}]"
    assert up["addresses"] == [NCOA]
    assert up["level"] == "INFO" and up["message"].startswith(up["name"])
    [deleted] = [line for line in lines if line.get("event") == "ike_sa_deleted"]
    assert deleted["spi_i"] == ours.spi_i.hex() and deleted["by_peer"] is False
    assert all("time" in line and "logger" in line for line in lines)


# --------------------------------------------------------------------------- commands


def test_terminate_by_identity_and_by_address(short_dir: Path) -> None:
    with gateway(short_dir) as gw:
        first = gw.connect()
        result = answered_by_mobile(gw, "terminate", NCOA, spi=first)  # the leased address
        assert result.returncode == 0, result.stderr
        [line] = result.stdout.splitlines()
        assert line.startswith("deleted IKE SA ") and f"with {MN}[{NAT_T}], {NCOA}" in line
        wait_for(lambda: gw.status()["ike_sas"] == [])

        second = gw.connect()
        result = answered_by_mobile(gw, "terminate", MN, spi=second)  # the outer address
        assert result.returncode == 0, result.stderr
        wait_for(lambda: gw.status()["ike_sas"] == [])
        assert gw.metrics()["mpa_ike_sas_deleted_total{by=local}"] == 2

        result = cli(GATEWAY, "terminate", "nobody", "-c", gw.config)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "mpa-gateway: no IKE SA of nobody (an identity, outer or leased address)"
        )


def test_reauth_deletes_and_says_so(short_dir: Path) -> None:
    with gateway(short_dir) as gw:
        spi = gw.connect()
        result = answered_by_mobile(gw, "reauth", CLIENT_ID, spi=spi)
        assert result.returncode == 0, result.stderr
        deleted, why = result.stdout.splitlines()
        assert deleted.startswith("deleted IKE SA ")
        assert why == "no re-authentication request in IKEv2 for a responder: deleted instead"


def test_lease_table(short_dir: Path) -> None:
    with gateway(short_dir) as gw:
        assert cli(GATEWAY, "leases", "-c", gw.config).stdout.strip() == "no leases"
        spi = gw.connect()
        [ours] = [sa for sa in gw.mobile.endpoint if sa.local_spi == spi]
        result = cli(GATEWAY, "leases", "-c", gw.config)
        assert result.returncode == 0, result.stderr
        header, row = result.stdout.splitlines()
        assert header.split() == ["ADDRESS", "IDENTITY", "IKE", "SA", "STATE", "SINCE"]
        address, who, ike_sa, state, since = row.split(None, 4)
        # Who EAP authenticated (carol), not the IDi.
        assert (address, who, ike_sa) == (NCOA, EAP_USER, ours.spi_r.hex())
        assert state == "active" and since.startswith("(ESTABLISHED)")
        [entry] = json.loads(cli(GATEWAY, "leases", "--json", "-c", gw.config).stdout)
        assert entry["since"].endswith("Z") and entry["ike_sa_state"] == "ESTABLISHED"


# --------------------------------------------------------------------------- reload


def reload(gw: Gateway, data: dict[str, Any]) -> None:
    """Rewrite the file and send SIGHUP, then give the daemon time to read it: SIGHUPs
    that come during a reload make one more, of the file as it is by then."""
    write_yaml(gw.config, data)
    gw.daemon.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)


def test_sighup_adds_a_user_and_grows_the_pool_under_a_live_sa(short_dir: Path) -> None:
    with gateway(short_dir) as gw:
        first = gw.connect()
        data = yaml.safe_load(gw.config.read_text())
        data = edited(data, f"eap.users.{DAVE}", DAVE_PASSWORD)
        data = edited(data, "pool", [POOL, GROWN])
        reload(gw, data)
        wait_for(lambda: gw.status()["pool"]["ipv4"]["size"] == 126 + 6)

        report = gw.status()
        [sa] = report["ike_sas"]
        assert sa["state"] == "ESTABLISHED" and sa["address"] == NCOA
        assert report["pool"]["ipv4"] == {"size": 132, "available": 131}
        assert first not in {e.ike_sa for e in gw.mobile.of_type(IkeSaDeleted)}

        dave = gw.connect(DAVE, DAVE_PASSWORD)
        assert any(e.ike_sa == dave for e in gw.mobile.of_type(IkeSaEstablished))
        assert len(gw.status()["ike_sas"]) == 2
        assert gw.metrics()["mpa_pool_size{family=ipv4}"] == 132


def test_sighup_refuses_what_needs_a_restart_and_bad_files(short_dir: Path) -> None:
    with gateway(short_dir) as gw:
        gw.connect()
        good = yaml.safe_load(gw.config.read_text())
        reload(gw, edited(good, "listen", [GW, MN]))
        reload(gw, edited(edited(good, "pool", ["10.77.1.0/24"]), "eap.method", "tls"))
        reload(gw, edited(good, "pool", ["10.79.0.0/24"]))  # the live lease is in POOL
        time.sleep(1.0)
        report = gw.status()
        assert report["pool"]["ipv4"]["size"] == 126 and len(report["ike_sas"]) == 1
        stderr = gw.daemon.stop()
    messages = [line["message"] for line in json_lines(stderr)]
    assert (
        "reload refused: listen cannot change without a restart; the configuration in use stays"
    ) in messages
    assert any("eap.method: expected one of md5, mschapv2" in m for m in messages)
    assert any(
        m.startswith("reload refused: pool: 10.77.0.128/25 cannot leave the pool: 10.77.0.129")
        for m in messages
    )
