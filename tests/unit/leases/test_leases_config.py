"""The ``leases`` and ``lease_grace`` keys, and a gateway refusing a bad lease file with
one line at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import DEFAULT_LEASE_GRACE, DEFAULT_LEASES, parse_config
from mpa_ike.errors import ConfigError


def gateway_data(tmp_path: Path, **extra: object) -> dict[str, Any]:
    return {
        "listen": ["127.0.0.1:45001"],  # never bound: the lease file fails first
        "id": "ngw.example.net",
        "psk": "secret",
        "pool": ["10.9.0.0/24", "2001:db8:9::/120"],
        "eap": {"method": "md5", "users": {"alice": "alice-secret"}},
        "control_socket": str(tmp_path / "gw.sock"),
        **extra,
    }


def test_defaults(tmp_path: Path) -> None:
    config = parse_config(gateway_data(tmp_path), tmp_path)
    assert config.leases == DEFAULT_LEASES == Path("/var/lib/mpa-ike/leases.sqlite3")
    assert config.lease_grace == DEFAULT_LEASE_GRACE == 300


def test_a_relative_lease_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = parse_config(gateway_data(tmp_path, leases="state/l.db", lease_grace=0), tmp_path)
    assert config.leases == tmp_path / "state" / "l.db"
    assert config.lease_grace == 0
    absolute = parse_config(gateway_data(tmp_path, leases="/srv/l.db"), tmp_path)
    assert absolute.leases == Path("/srv/l.db")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("leases", 5, "leases: expected a string"),
        ("leases", ".", "leases: a directory, not a file"),
        ("lease_grace", -1, "lease_grace: must be between 0 and 604800"),
        ("lease_grace", "5m", "lease_grace: expected an integer"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(gateway_data(tmp_path, **{key: value}), tmp_path)
    assert str(raised.value).startswith(message)


def test_the_gateway_refuses_a_corrupt_lease_file_with_one_line(tmp_path: Path) -> None:
    leases = tmp_path / "leases.sqlite3"
    leases.write_bytes(b"garbage, not SQLite\n" * 200)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_data(tmp_path, leases="leases.sqlite3")))
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode != 0
    assert run.stderr.splitlines() == [f"mpa-gateway: leases: {leases}: file is not a database"], (
        run.stderr
    )
