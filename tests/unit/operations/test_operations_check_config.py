"""``check-config``: every problem of a file on a line of its own, naming its key, with
what ``run`` would only meet at start (key files that do not parse or match) and
warnings for secrets others may read; ``run`` still stops at the first problem."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cli as gateway_cli
from gateway.config import check_config as check_gateway
from gateway.config import load_config as load_gateway
from mobile import cli as mobile_cli
from mobile.config import check_config as check_mobile
from mobile.config import load_config as load_mobile
from mpa_harness import pki
from mpa_ike.errors import ConfigError
from mpa_ike.node.config import Report

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "examples"

GATEWAY: dict[str, Any] = {
    "listen": ["192.0.2.1"],
    "id": "ngw.example.net",
    "psk": "secret",
    "pool": ["10.9.0.0/24"],
    "eap": {"method": "md5", "users": {"alice": "alice-secret"}},
    "control_socket": "/tmp/mpa-check.sock",
}
MOBILE: dict[str, Any] = {
    "identity": "alice",
    "eap": {"method": "mschapv2", "password": "alice-secret"},
    "control_socket": "/tmp/mpa-check-mn.sock",
    "gateways": {
        "ngw": {"address": "192.0.2.1", "id": "ngw", "psk": "s", "interface": "eth1"},
    },
}


def write(directory: Path, data: object, name: str = "config.yaml", mode: int = 0o600) -> Path:
    file = directory / name
    file.write_text(yaml.safe_dump(data))
    file.chmod(mode)
    return file


def merged(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(data)
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = result
        for parent in parents:
            node = node[parent]
        node[last] = value
    return result


def test_examples_are_clean(tmp_path: Path) -> None:
    for name, check in (("gateway.yaml", check_gateway), ("mobile.yaml", check_mobile)):
        file = tmp_path / name
        file.write_text((EXAMPLES / name).read_text())
        file.chmod(0o600)
        assert check(file) == Report([], [])


def test_every_problem_of_the_gateway_file(tmp_path: Path) -> None:
    data = merged(
        GATEWAY,
        {
            "listen": ["192.0.2.1", "x"],
            "pool": ["10.9.0.1/24"],
            "ike": ["aes128-sha256"],
            "eap.method": "tls",
            "eap.users": {"alice": 1234, "bob": "b"},
            "half_open_threshold": -1,
            "log_levl": "info",
            "user": "no-such-user-of-mpa-ike",
        },
    )
    report = check_gateway(write(tmp_path, data))
    assert report.problems == [
        "listen[1]: not an IP address: 'x'",
        "ike[0]: a key exchange method is mandatory in IKE proposal 'aes128-sha256'",
        "pool[0]: host bits set in '10.9.0.1/24' (did you mean 10.9.0.0/24?)",
        "eap.method: expected one of md5, mschapv2, got 'tls'",
        "eap.users.alice: expected a string (quote it), got an integer",
        "half_open_threshold: must be between 0 and 1000000, got -1",
        "user: no such user: 'no-such-user-of-mpa-ike'",
        "log_levl: unknown key (did you mean 'log_level'?)",
    ]


def test_every_problem_of_the_mobile_file(tmp_path: Path) -> None:
    data = merged(MOBILE, {"eap.password": 7, "group": "root"})
    data["gateways"] |= {
        "bad name": {},
        "cgw": {"address": "x", "id": "cgw", "psk": "s", "preauth": True, "handover": "maybe"},
        "dgw": {"address": "192.0.2.4", "id": "dgw"},
    }
    report = check_mobile(write(tmp_path, data))
    assert report.problems == [
        "eap.password: expected a string (quote it), got an integer",
        "gateways.bad name: names may hold only letters, digits, _ . -",
        "gateways.cgw.address: not an IP address: 'x'",
        "gateways.cgw.handover: expected one of auto, manual, got 'maybe'",
        "gateways.cgw.interface: required when preauth is true",
        "gateways.dgw.ca: required (or psk)",
        "group: only used with user",
    ]


def test_run_still_stops_at_the_first_problem(tmp_path: Path) -> None:
    data = merged(GATEWAY, {"listen": ["x"], "pool": ["nonsense"]})
    with pytest.raises(ConfigError, match=r"^listen\[0\]: not an IP address: 'x'$"):
        load_gateway(write(tmp_path, data))


def credential_files(tmp_path: Path, *, matching: bool = True) -> dict[str, Any]:
    ca = pki.make_ca(key_type="ecdsa")
    gateway = pki.make_cert(ca, "ngw.example.net", "ecdsa")
    other = pki.make_cert(ca, "other.example.net", "ecdsa")
    gateway.write(tmp_path / "gw.crt", tmp_path / "gw.key")
    if not matching:
        other.write(tmp_path / "other.crt", tmp_path / "gw.key")
    ca.write(tmp_path / "ca.crt")
    data = {key: value for key, value in GATEWAY.items() if key != "psk"}
    return data | {"certificate": "gw.crt", "private_key": "gw.key", "ca": "ca.crt"}


def test_key_files_that_parse_and_match(tmp_path: Path) -> None:
    assert check_gateway(write(tmp_path, credential_files(tmp_path))) == Report([], [])


def test_a_key_of_another_certificate(tmp_path: Path) -> None:
    file = write(tmp_path, credential_files(tmp_path, matching=False))
    load_gateway(file)  # run meets it only at start
    assert check_gateway(file).problems == [
        "private_key: does not match the certificate's public key"
    ]


def test_files_that_hold_no_certificate_or_key(tmp_path: Path) -> None:
    data = credential_files(tmp_path)
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    (tmp_path / "gw.key").write_text("not a key\n")
    assert check_gateway(write(tmp_path, data)).problems == [
        f"private_key: no unencrypted private key in '{tmp_path / 'gw.key'}'",
        f"ca: no X.509 certificate in '{tmp_path / 'ca.crt'}'",
    ]


def test_a_mobile_ca_file_without_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("nothing\n")
    data = copy.deepcopy(MOBILE)
    del data["gateways"]["ngw"]["psk"]
    data["gateways"]["ngw"]["ca"] = "ca.crt"
    assert check_mobile(write(tmp_path, data)).problems == [
        f"gateways.ngw.ca: no X.509 certificate in '{tmp_path / 'ca.crt'}'"
    ]


def test_secrets_readable_by_others_are_warnings(tmp_path: Path) -> None:
    data = credential_files(tmp_path)
    (tmp_path / "gw.key").chmod(0o640)
    report = check_gateway(write(tmp_path, data, mode=0o644))
    assert report.problems == []
    assert report.warnings == [
        f"private_key: '{tmp_path / 'gw.key'}' is readable by group/others (mode 0640; chmod 600)",
        "holds secrets and is readable by group/others (mode 0644; chmod 600)",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "(top level): expected a mapping, got nothing"),
        ("id: [\n", "line 2, column 1: expected the node content, but found '<stream end>'"),
        ("id: a\nid: b\n", "line 2, column 1: duplicate key 'id'"),
    ],
)
def test_a_file_that_is_no_configuration(tmp_path: Path, text: str, problem: str) -> None:
    file = tmp_path / "config.yaml"
    file.write_text(text)
    assert check_gateway(file).problems == [problem]


def test_a_missing_file(tmp_path: Path) -> None:
    problems = check_mobile(tmp_path / "nothing.yaml").problems
    assert problems == [f"cannot read '{tmp_path / 'nothing.yaml'}': No such file or directory"]


MainFunction = Callable[[list[str]], int]


@pytest.mark.parametrize("main", [gateway_cli.main, mobile_cli.main])
def test_the_command_prints_ok(
    main: MainFunction, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = GATEWAY if main is gateway_cli.main else MOBILE
    file = write(tmp_path, data)
    assert main(["check-config", "-c", str(file)]) == 0
    assert capsys.readouterr().out == f"{file}: OK\n"


def test_the_command_prints_a_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write(tmp_path, merged(GATEWAY, {"pool": ["x"], "id": 5}), mode=0o644)
    assert gateway_cli.main(["check-config", "-c", str(file)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{file}: warning: holds secrets and is readable by group/others (mode 0644; chmod 600)",
        f"{file}: id: expected a string, got an integer",
        f"{file}: pool[0]: not a CIDR prefix: 'x'",
    ]


def test_warnings_alone_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, MOBILE, mode=0o604)
    assert mobile_cli.main(["-c", str(file), "check-config"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [f"{file}: OK"]


# Values for the keys of both files: good ones, bad ones, wrong types.
VALUES = st.one_of(
    st.sampled_from(["192.0.2.1", "x", "10.9.0.0/24", "md5", "auto", "", "0xzz", "eth1"]),
    st.integers(-2, 70000),
    st.booleans(),
    st.none(),
    st.lists(st.sampled_from(["192.0.2.1", "10.9.0.0/24", "aes128gcm16", 3]), max_size=3),
    st.dictionaries(st.sampled_from(["method", "users", "alice", "x"]), st.just("md5")),
)


def mutations(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    paths = [*sorted(_paths(base)), "extra", "user", "group", "control_group"]
    return st.dictionaries(st.sampled_from(paths), VALUES, max_size=5).map(
        lambda changes: _apply(base, changes)
    )


def _paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in data.items():
        found.append(prefix + key)
        if isinstance(value, dict):
            found += _paths(value, f"{prefix}{key}.")
    return found


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for path, value in sorted(changes.items()):
        *parents, last = path.split(".")
        node: Any = result
        for parent in parents:
            if not isinstance(node, dict) or not isinstance(node.get(parent), dict):
                break
            node = node[parent]
        else:
            node[last] = value
    return result


@settings(max_examples=150)
@given(st.sampled_from(["gateway", "mobile"]), st.data())
def test_check_agrees_with_run(which: str, data: st.DataObject) -> None:
    """Whatever the file holds, check-config names the problem run stops at first, and
    finds none where run loads the file; neither raises anything but ConfigError."""
    base = GATEWAY if which == "gateway" else MOBILE
    check: Callable[[Path], Report] = check_gateway if which == "gateway" else check_mobile
    load: Callable[[Path], object] = load_gateway if which == "gateway" else load_mobile
    content = data.draw(mutations(base))
    with tempfile.TemporaryDirectory() as directory:
        file = write(Path(directory), content, f"{which}.yaml")
        report = check(file)
        try:
            load(file)
        except ConfigError as error:
            assert report.problems and report.problems[0] == str(error)
        else:
            assert report.problems == []
