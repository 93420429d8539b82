"""The mobile node's duties without a command: ``preauth: auto`` in the configuration,
the pauses between failed automatic pre-authentications, and CP's DNS servers given to
the resolver (the ``file`` way in a file of the test's own; the ``resolvectl`` and
``resolvconf`` ways as the command lines they run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from servicehelp import DELETE, edited

from mobile.autopreauth import BACKOFF, backoff
from mobile.config import parse_config
from mobile.resolver import Resolver, choose


def test_preauth_auto_per_gateway(mobile_data: dict[str, Any]) -> None:
    config = parse_config(edited(mobile_data, "gateways.ngw.preauth", "auto"), Path("/"))
    entry = config.gateways["ngw"]
    assert entry.preauth and entry.auto_preauth


def test_preauth_auto_globally_for_gateways_with_an_interface(mobile_data: dict[str, Any]) -> None:
    data = edited(mobile_data, "gateways.ngw.preauth", DELETE)
    data = edited(data, "gateways.cgw", {"address": "192.0.2.9", "id": "cgw", "psk": "k"})
    data = edited(data, "gateways.dgw", {"address": "192.0.2.8", "id": "d", "psk": "k",
                                         "interface": "eth2", "preauth": False})  # fmt: skip
    config = parse_config(edited(data, "preauth", "auto"), Path("/"))
    assert config.gateways["ngw"].auto_preauth  # names its interface
    assert not config.gateways["cgw"].preauth  # no interface: nothing to move to
    assert not config.gateways["dgw"].preauth  # said so itself
    assert not parse_config(data, Path("/")).gateways["ngw"].preauth  # default: manual


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("preauth", "yes", "preauth: expected one of auto, manual, got 'yes'"),
        ("dns", "dnsmasq", "dns: expected one of auto, resolvectl, resolvconf, file, none"),
        ("dns_file", 3, "dns_file: expected a string, got an integer"),
    ],
)
def test_bad_top_level_keys(
    mobile_data: dict[str, Any], key: str, value: object, line: str
) -> None:
    from mpa_ike.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        parse_config(edited(mobile_data, key, value), Path("/"))
    assert str(raised.value).startswith(line)


def test_dns_file_is_relative_to_the_config(mobile_data: dict[str, Any]) -> None:
    config = parse_config(edited(mobile_data, "dns_file", "resolv.conf"), Path("/etc/mpa"))
    assert config.dns_file == Path("/etc/mpa/resolv.conf") and config.dns == "auto"


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert BACKOFF[-1] == 60


def test_file_servers_first_marked_and_removed_alone(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# the host's own\nnameserver 192.0.2.53\nsearch example.net\n")
    resolver = Resolver("file", resolv)
    resolver.apply(b"\x01" * 8, "ngw", "mn-b", ["10.2.0.53", "fd00:2::53"])
    lines = resolv.read_text().splitlines()
    assert lines[0] == "nameserver 10.2.0.53  # mpa-mobile ngw 0101010101010101"
    assert lines[1].startswith("nameserver fd00:2::53  # mpa-mobile ngw")
    assert lines[2:] == ["# the host's own", "nameserver 192.0.2.53", "search example.net"]
    assert resolver.status() == [
        {
            "gateway": "ngw",
            "interface": "mn-b",
            "servers": ["10.2.0.53", "fd00:2::53"],
            "via": "file",
        }
    ]
    # A second IKE SA's servers, then a rekey of the first: each goes with its own SA.
    resolver.apply(b"\x02" * 8, "gwc", "mn-c", ["10.3.0.53"])
    resolver.rekeyed(b"\x01" * 8, b"\x03" * 8)
    resolver.remove(b"\x03" * 8)
    assert resolv.read_text().splitlines()[0].startswith("nameserver 10.3.0.53  # mpa-mobile gwc")
    assert "10.2.0.53" not in resolv.read_text()
    resolver.close()
    assert resolv.read_text() == "# the host's own\nnameserver 192.0.2.53\nsearch example.net\n"


def test_no_servers_and_none_change_nothing(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    Resolver("file", resolv).apply(b"\x01" * 8, "ngw", "mn-b", [])
    Resolver("none", resolv).apply(b"\x01" * 8, "ngw", "mn-b", ["10.2.0.53"])
    assert not resolv.exists()


class Programs:
    """What a resolver would have run (resolvectl and resolvconf are not on the test host)."""

    def __init__(self, fail: bool = False) -> None:
        self.ran: list[tuple[list[str], str | None]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str], text: str | None) -> None:
        self.ran.append((list(argv), text))
        if self.fail:
            raise OSError(f"{argv[0]} exited 1: unit not running")


def test_resolvectl_per_interface_and_revert() -> None:
    ran = Programs()
    resolver = Resolver("resolvectl", Path("/nonexistent"), ran)
    resolver.apply(b"\x01" * 8, "ngw", "mpa0", ["10.2.0.53", "fd00:2::53"])
    resolver.apply(b"\x02" * 8, "ngw", "mpa0", ["10.2.0.54"])  # replaced the first
    resolver.remove(b"\x01" * 8)  # the second is still there: its servers stay
    resolver.remove(b"\x02" * 8)
    assert [argv for argv, _ in ran.ran] == [
        ["resolvectl", "dns", "mpa0", "10.2.0.53", "fd00:2::53"],
        ["resolvectl", "dns", "mpa0", "10.2.0.54"],
        ["resolvectl", "dns", "mpa0", "10.2.0.54"],
        ["resolvectl", "revert", "mpa0"],
    ]


def test_resolvconf_record_per_interface() -> None:
    ran = Programs()
    resolver = Resolver("resolvconf", Path("/nonexistent"), ran)
    resolver.apply(b"\x01" * 8, "ngw", "mn-b", ["10.2.0.53"])
    resolver.close()
    assert ran.ran == [
        (["resolvconf", "-a", "mn-b.mpa-mobile"], "nameserver 10.2.0.53\n"),
        (["resolvconf", "-d", "mn-b.mpa-mobile"], None),
    ]


def test_a_failing_resolver_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    resolver = Resolver("resolvectl", Path("/nonexistent"), Programs(fail=True))
    resolver.apply(b"\x01" * 8, "ngw", "mpa0", ["10.2.0.53"])
    resolver.remove(b"\x01" * 8)
    assert "unit not running" in caplog.text


def test_auto_falls_back_to_the_file_without_resolved_or_resolvconf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert choose("auto") == "file"
    assert choose("resolvconf") == "resolvconf"


def test_mobike_options_reach_the_initiator(mobile_data: dict[str, Any]) -> None:
    from mobile.service import MobileService

    data = mobile_data
    for key in ("no_nats_allowed", "return_routability", "announce_addresses"):
        assert not getattr(parse_config(data, Path("/")).gateways["ngw"], key)
        data = edited(data, f"gateways.ngw.{key}", True)
    config = parse_config(data, Path("/"))
    assert config.gateways["ngw"].announce_addresses
    initiator = MobileService(config).initiator_config(config.gateways["ngw"])
    assert initiator.no_nats_allowed and initiator.return_routability


def test_mobike_options_are_booleans(mobile_data: dict[str, Any]) -> None:
    from mpa_ike.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^gateways\.ngw\.no_nats_allowed: expected true or false"
    ):
        parse_config(edited(mobile_data, "gateways.ngw.no_nats_allowed", "yes"), Path("/"))


def test_preauth_auto_needs_the_interface(mobile_data: dict[str, Any]) -> None:
    from mpa_ike.errors import ConfigError

    data = edited(
        edited(mobile_data, "gateways.ngw.interface", DELETE), "gateways.ngw.preauth", "auto"
    )
    with pytest.raises(
        ConfigError, match=r"^gateways\.ngw\.interface: required when preauth is auto"
    ):
        parse_config(data, Path("/"))


@pytest.mark.parametrize(
    ("flags", "up"),
    [
        (0x1 | 0x10000, True),  # IFF_UP | IFF_LOWER_UP
        (0x1, False),  # no carrier
        (0x10000, False),  # carrier, administratively down
        (0x1 | 0x10000 | 0x20000, False),  # dormant: the WPA handshake is not done
    ],
)
def test_link_events_read_carrier_and_dormancy(flags: int, up: bool) -> None:
    from mpa_ike.io.netlink import Message, push_attribute
    from mpa_ike.io.rtnl import (
        RTM_NEWADDR,
        RTM_NEWLINK,
        IfAddrMsg,
        IfInfoMsg,
        LinkEvent,
        address_events,
        link_events,
    )

    link = Message(RTM_NEWLINK, body=IfInfoMsg(index=3, flags=flags).push())
    address = Message(
        RTM_NEWADDR,
        body=IfAddrMsg(2, 24, 0, 0, 3).push() + push_attribute(2, bytes([10, 2, 0, 70])),
    )
    assert link_events([link, address]) == [LinkEvent(3, up)]
    (event,) = address_events([link, address, Message(RTM_NEWADDR, body=b"\x02")])
    assert (event.index, event.address, event.added) == (3, "10.2.0.70", True)


def test_the_mobile_node_answers_memory_and_its_own_commands(
    mobile_data: dict[str, Any],
) -> None:
    from mobile.service import MobileService

    handlers = MobileService(parse_config(mobile_data, Path("/"))).handlers()
    assert {"status", "memory", "connect", "disconnect", "preauth", "handover"} <= set(handlers)
