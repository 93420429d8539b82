"""mpa-mobile with ``metrics:`` and ``log_format: json``: a daemon in a subprocess,
no namespace needed."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from servicehelp import Daemon, edited, write_yaml


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_mobile_serves_metrics_and_logs_json(short_dir: Path, mobile_data: dict[str, Any]) -> None:
    port = free_tcp_port()
    data = edited(mobile_data, "metrics", {"listen": f"127.0.0.1:{port}"})
    config = write_yaml(short_dir / "mobile.yaml", edited(data, "log_format", "json"))
    daemon = Daemon("mobile.cli", short_dir / "mn.sock", "-c", config)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    finally:
        stderr = daemon.stop()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"mpa_ike_sas", "mpa_ike_sas_established", "mpa_handovers", "mpa_eap"} <= names
    assert "mpa_pool_size" not in names  # the gateway's only
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert any(line["message"].startswith("running, control socket") for line in lines)
