"""The gateway's ``limits:`` keys (mpa_ike.admission): defaults, values read into the
core's AdmissionLimits, and one line per bad key from ``check-config``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import check_config, load_config
from mpa_ike.ike_config import AdmissionLimits

GATEWAY: dict[str, Any] = {
    "listen": ["192.0.2.1"],
    "id": "ngw.example.net",
    "psk": "secret",
    "pool": ["10.9.0.0/24"],
    "eap": {"method": "md5", "users": {"alice": "alice-secret"}},
    "control_socket": "/tmp/mpa-limits-check.sock",
}


def write(directory: Path, limits: object | None) -> Path:
    data = dict(GATEWAY)
    if limits is not None:
        data["limits"] = limits
    file = directory / "gateway.yaml"
    file.write_text(yaml.safe_dump(data))
    file.chmod(0o600)
    return file


def test_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, None)).limits == AdmissionLimits()


def test_values(tmp_path: Path) -> None:
    limits = {
        "half_open_limit": 50,
        "cookie_lifetime": "2m",
        "cookie_grace": "15s",
        "init_rate": 2.5,
        "init_burst": 4,
        "rate_sources": 100,
        "ike_sas_per_identity": 0,
    }
    assert load_config(write(tmp_path, limits)).limits == AdmissionLimits(
        half_open_limit=50,
        cookie_lifetime=120.0,
        cookie_grace=15.0,
        init_rate=2.5,
        init_burst=4,
        rate_sources=100,
        ike_sas_per_identity=0,
    )


@pytest.mark.parametrize(
    ("limits", "problems"),
    [
        ({"half_open_limit": 0}, ["limits.half_open_limit: must be between 1 and 10000000, got 0"]),
        ({"cookie_lifetime": 0}, ["limits.cookie_lifetime: must be above 0"]),
        (
            {"cookie_lifetime": "10s", "cookie_grace": "1m"},
            ["limits.cookie_grace: must not exceed cookie_lifetime (10 s)"],
        ),
        (
            {"init_rate": "fast"},
            ["limits.init_rate: expected a number of requests a second (0: no limit), got 'fast'"],
        ),
        ({"init_burst": True}, ["limits.init_burst: expected an integer, got a boolean"]),
        (
            {"ike_sas_per_identity": -1, "rate_sources": 0},
            [
                "limits.rate_sources: must be between 1 and 10000000, got 0",
                "limits.ike_sas_per_identity: must be between 0 and 10000000, got -1",
            ],
        ),
        (
            {"half_open_limt": 5},
            ["limits.half_open_limt: unknown key (did you mean 'half_open_limit'?)"],
        ),
        ("many", ["limits: expected a mapping, got a string"]),
    ],
)
def test_bad_limits_name_their_key(tmp_path: Path, limits: object, problems: list[str]) -> None:
    report = check_config(write(tmp_path, limits))
    assert report.problems == problems
