"""Event records and their JSON lines, the metrics and log_format keys, the metrics
server's answers, the growing pool and what a reload refuses, without a daemon."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from servicehelp import REPO, edited

from gateway.config import GatewayConfig, parse_config
from gateway.leases import open_pool
from gateway.service import GatewayService, GrowingPool
from mpa_ike.config_payload import LeaseRequest
from mpa_ike.constants import NotifyType
from mpa_ike.errors import ConfigError
from mpa_ike.events import AddressUpdateRefused, IkeSaEstablished
from mpa_ike.node.config import collecting
from mpa_ike.node.describe import EVENT_FIELDS, JsonFormatter, Subject, describe
from mpa_ike.node.metrics import MetricsServer, NodeMetrics

SPI = bytes.fromhex("0011223344556677")
SUBJECT = Subject("aa" * 8, "0011223344556677", "carol@example.net", False)


def established() -> IkeSaEstablished:
    return IkeSaEstablished(
        SPI,
        "carol@example.net",
        ("192.0.2.2", 4500),
        ("192.0.2.1", 4500),
        "carol@example.net",
        (ip_address("10.3.0.1"),),
        (),
        True,
        False,
    )


def test_text_line_keeps_the_sentence_and_appends_spis_and_peer() -> None:
    record = describe(established(), SUBJECT)
    assert record.event == "ike_sa_established"
    assert record.text == (
        "carol@example.net[0011223344556677]: IKE SA established 192.0.2.2[4500] === "
        "192.0.2.1[4500], peer carol@example.net, address 10.3.0.1"
    )
    assert record.text_line() == (
        f"{record.text} spi_i={'aa' * 8} spi_r=0011223344556677 peer=carol@example.net"
    )


def test_unknown_spis_are_left_out_of_the_text_line() -> None:
    refused = AddressUpdateRefused(
        SPI, "x", NotifyType.UNACCEPTABLE_ADDRESSES, ("192.0.2.3", 4500), False
    )
    record = describe(refused, Subject(spi_r=SPI.hex()))
    assert record.text_line().endswith("(UNACCEPTABLE_ADDRESSES) spi_r=0011223344556677")
    assert record.fields["notify"] == "UNACCEPTABLE_ADDRESSES"


def test_json_formatter_writes_the_event_fields() -> None:
    record = describe(established(), SUBJECT)
    log_record = logging.LogRecord("svc", logging.INFO, __file__, 1, "%s", ("x",), None)
    setattr(log_record, EVENT_FIELDS, record.json_fields())
    line = json.loads(JsonFormatter().format(log_record))
    assert line["event"] == "ike_sa_established"
    assert (line["spi_i"], line["spi_r"], line["peer"]) == ("aa" * 8, SPI.hex(), SUBJECT.peer)
    assert line["local"] == "192.0.2.2[4500]" and line["addresses"] == ["10.3.0.1"]
    assert line["message"] == record.text and line["level"] == "INFO"
    plain = logging.LogRecord("svc", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    assert json.loads(JsonFormatter().format(plain))["message"] == "a b"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"listen": "127.0.0.1"}, "metrics.listen: give a port: ADDRESS:PORT"),
        ({"listen": "x:1"}, "metrics.listen: not an IP address: 'x:1'"),
        ({"port": 1}, "metrics.listen: required"),
    ],
)
def test_metrics_key_problems(
    gateway_data: dict[str, Any], short_dir: Path, value: object, message: str
) -> None:
    with collecting() as problems:
        parse_config(edited(gateway_data, "metrics", value), short_dir)
    assert message in [str(problem) for problem in problems]


def test_metrics_and_log_format_keys(gateway_data: dict[str, Any], short_dir: Path) -> None:
    data = edited(gateway_data, "metrics", {"listen": "[::1]:9108"})
    config = parse_config(edited(data, "log_format", "json"), short_dir)
    assert config.log_format == "json"
    assert config.metrics is not None and str(config.metrics.listen) == "[::1]:9108"
    with pytest.raises(ConfigError, match="log_format: expected one of text, json"):
        parse_config(edited(gateway_data, "log_format", "xml"), short_dir)


def gateway(data: dict[str, Any], short_dir: Path) -> GatewayConfig:
    return parse_config(data, short_dir)


def test_metrics_server_answers(gateway_data: dict[str, Any], short_dir: Path) -> None:
    service = GatewayService(gateway(gateway_data, short_dir))
    server = MetricsServer(NodeMetrics(service), ("127.0.0.1", 0))
    answer = server.answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b'mpa_pool_size{family="ipv4"} 253.0' in body
    assert b'mpa_ike_sas{state="ESTABLISHED"} 0.0' in body
    assert server.answer(b"GET /x HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert server.answer(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert server.answer(b"HEAD /metrics HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")


def test_no_prometheus_without_metrics() -> None:
    """Start-up: the daemons and their command lines import prometheus_client only for
    a configuration with metrics."""
    code = (
        "import sys, gateway.service, mobile.service, gateway.cli, mobile.cli, "
        "mpa_ike.node.daemon, mpa_ike.node.reload; "
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- pool


def opened(data: dict[str, Any], short_dir: Path) -> tuple[GatewayConfig, GrowingPool]:
    config = gateway(data, short_dir)
    return config, GrowingPool(open_pool(config), config.pool)


def test_pool_grows_and_lends_from_the_new_part(
    gateway_data: dict[str, Any], short_dir: Path
) -> None:
    data = edited(gateway_data, "pool", ["10.9.0.0/30"])
    old, pool = opened(data, short_dir)
    assert pool.lease(LeaseRequest(b"a", 4)) == ip_address("10.9.0.1")
    assert pool.lease(LeaseRequest(b"b", 4)) == ip_address("10.9.0.2")
    assert pool.lease(LeaseRequest(b"c", 4)) is None
    new = gateway(edited(data, "pool", ["10.9.0.0/30", "10.9.1.0/30"]), short_dir)
    pool.change(old, new, lambda owner: None).apply()
    assert (pool.size(4), pool.available(4)) == (4, 2)
    assert pool.lease(LeaseRequest(b"c", 4)) == ip_address("10.9.1.1")
    assert pool.lease(LeaseRequest(b"a", 4)) == ip_address("10.9.0.1")  # what it holds
    assert pool.release(b"c") == (ip_address("10.9.1.1"),)
    pool.close()


def test_pool_shrinks_only_where_nothing_is_leased(
    gateway_data: dict[str, Any], short_dir: Path
) -> None:
    data = edited(gateway_data, "pool", ["10.9.0.0/30"])
    old, pool = opened(data, short_dir)
    grown = gateway(edited(data, "pool", ["10.9.0.0/30", "10.9.1.0/30"]), short_dir)
    pool.change(old, grown, lambda owner: None).apply()
    pool.lease(LeaseRequest(b"a", 4))
    shrunk = gateway(edited(data, "pool", ["10.9.1.0/30"]), short_dir)
    with pytest.raises(ConfigError, match=r"10.9.0.0/30 cannot leave the pool: 10.9.0.1"):
        pool.change(grown, shrunk, lambda owner: None)
    pool.change(grown, old, lambda owner: None).apply()  # 10.9.1.0/30 holds nothing
    assert pool.networks() == [ip_network("10.9.0.0/30")]
    assert pool.size(4) == 2
    pool.close()


def test_reload_refuses_restart_only_keys(
    gateway_data: dict[str, Any], short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = GatewayService(gateway(gateway_data, short_dir))
    moved = gateway(edited(gateway_data, "leases", str(short_dir / "other.sqlite3")), short_dir)
    with caplog.at_level(logging.ERROR):
        assert not service.reload(moved)
    assert caplog.messages == [
        "reload refused: leases cannot change without a restart; the configuration in use stays"
    ]
    assert service.config.leases == short_dir / "leases.sqlite3"
