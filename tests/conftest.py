"""Suite-wide settings, and the fixtures of the service tests (unit and system):
configuration dictionaries and short socket paths."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# A loaded CI host makes per-example timing meaningless: no deadlines.
settings.register_profile("mpa", deadline=None, print_blob=True)
settings.load_profile("mpa")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose paths fit in sun_path (108 bytes), unlike pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="mpa-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gateway_data(short_dir: Path) -> dict[str, Any]:
    return {
        "listen": ["192.0.2.1", "[2001:db8::1]:4500"],
        "id": "ngw.example.net",
        "psk": "secret",
        "ike": ["aes128-sha256-modp2048"],
        "esp": ["aes128gcm16"],
        "pool": ["10.9.0.0/24", "2001:db8:9::/120"],
        "dns": ["10.9.0.53"],
        "eap": {"method": "md5", "users": {"alice": "alice-secret"}},
        "control_socket": str(short_dir / "gw.sock"),
        "leases": str(short_dir / "leases.sqlite3"),
    }


@pytest.fixture
def mobile_data(short_dir: Path) -> dict[str, Any]:
    return {
        "identity": "alice",
        "eap": {"method": "mschapv2", "password": "alice-secret"},
        "control_socket": str(short_dir / "mn.sock"),
        "gateways": {
            "ngw": {
                "address": "192.0.2.1",
                "id": "ngw.example.net",
                "psk": "secret",
                "interface": "eth1",
                "preauth": True,
            }
        },
    }
