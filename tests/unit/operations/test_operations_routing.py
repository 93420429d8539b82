"""Each daemon instance's own policy routing (:class:`mpa_ike.io.policy_routing.Routing`):
defaults derived from the control socket that keep two instances apart, the table held
while an instance runs, rules removed by their priority, table and mark so that closing
one instance leaves another's in place, and ``routing:`` checked key by key."""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import DEFAULT_CONTROL_SOCKET
from gateway.config import check_config as check_gateway
from gateway.config import load_config as load_gateway
from mobile.config import load_config as load_mobile
from mpa_ike.io.netlink import Message, pull_attributes, push_u32
from mpa_ike.io.policy_routing import (
    MAX_PRIORITY,
    MAX_TABLE,
    MIN_PRIORITY,
    MIN_TABLE,
    PREAUTH_TABLES,
    NextHop,
    Routing,
    RoutingInUse,
    TableClaim,
    XfrmRoutes,
    gateway_rules,
    held_tables,
    source_rule,
)
from mpa_ike.io.rtnl import (
    MAIN_TABLE,
    RTA_OIF,
    RTA_TABLE,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    Request,
    RtMsg,
    RtnlError,
)

GATEWAY: dict[str, Any] = {
    "listen": ["192.0.2.1"],
    "id": "ngw.example.net",
    "psk": "secret",
    "pool": ["10.9.0.0/24"],
    "eap": {"method": "md5", "users": {"alice": "alice-secret"}},
}


class KernelRules:
    """The kernel's rule list as ``ip rule`` treats it: an identical rule is EEXIST, a
    deletion removes the first rule matching every attribute it names."""

    def __init__(self) -> None:
        self.rules: list[dict[str, Any]] = []

    def call(self, method: str, command: str, **rule: Any) -> None:
        assert method == "rule"
        if command == "add":
            if rule in self.rules:
                raise RtnlError(errno.EEXIST)
            self.rules.append(rule)
            return
        for index, present in enumerate(self.rules):
            if all(present.get(key) == value for key, value in rule.items()):
                del self.rules[index]
                return
        raise RtnlError(errno.ENOENT)


def test_derived_defaults_differ_and_stay_in_range() -> None:
    names = [f"/run/mpa-ike/gw{n}.sock" for n in range(2000)]
    derived = [Routing.derived(name) for name in names]
    assert derived[0] == Routing.derived(names[0])  # the same instance, the same routing
    assert derived[0] != derived[1]
    for routing in derived:
        assert routing.table >= MIN_TABLE and routing.preauth_tables.stop - 1 <= MAX_TABLE
        assert MIN_PRIORITY <= routing.source_priority < routing.priority <= MAX_PRIORITY
        assert routing.bypass_priority == routing.priority - 1
    # Two instances of different slots share no table and no rule priority.
    a, b = derived[0], derived[1]
    tables_a = {a.table, *a.preauth_tables}
    assert not tables_a & {b.table, *b.preauth_tables}
    priorities = {(r.source_priority, r.bypass_priority, r.priority) for r in (a, b)}
    assert len({p for triple in priorities for p in triple}) == 6
    assert len(list(a.preauth_tables)) == PREAUTH_TABLES


def test_closing_one_instance_leaves_the_others_rules() -> None:
    kernel = KernelRules()
    first = Routing.derived("/run/mpa-ike/a.sock")
    second = Routing.derived("/run/mpa-ike/b.sock")
    rules_a = gateway_rules(kernel, first)
    rules_b = gateway_rules(kernel, second)
    assert len(kernel.rules) == 8  # bypass and table rule, both families, each
    rules_b.close()
    assert kernel.rules == rules_a.added
    assert {r["table"] for r in kernel.rules} == {MAIN_TABLE, first.table}
    assert {r.get("fwmark") for r in kernel.rules} == {None, first.mark}
    rules_a.close()
    assert kernel.rules == []


def test_one_shared_routing_is_what_broke_the_other_instance() -> None:
    """With the same table, priority and mark (as fixed values once gave every
    instance), the second instance's rules are the first one's, and its close takes
    them away: what the claim on the table now prevents."""
    kernel = KernelRules()
    shared = Routing(table=4096, priority=2000, mark=0x4D500001)
    gateway_rules(kernel, shared)
    gateway_rules(kernel, shared).close()
    assert kernel.rules == []


def test_source_rules_of_a_mobile_node_take_its_priority() -> None:
    routing = Routing(table=8192, priority=3000, mark=0x4D500002)
    rule = source_rule("10.9.0.5", routing.source_priority)
    assert rule == {
        "family": socket.AF_INET,
        "priority": 2998,
        "src": "10.9.0.5",
        "src_len": 32,
    }
    assert source_rule("2001:db8::5", 2998)["src_len"] == 128


def test_a_table_is_held_by_one_instance_at_a_time() -> None:
    table = random.randrange(MAX_TABLE // 2, MAX_TABLE)
    claim = TableClaim(table)
    try:
        assert table in held_tables()  # what a closing instance sees of the others
        with pytest.raises(RoutingInUse, match=rf"^routing\.table: table {table} is held"):
            TableClaim(table)
        other = TableClaim(table + 1)
        other.close()
    finally:
        claim.close()
    assert table not in held_tables()
    TableClaim(table).close()  # free again once its holder let go


def write(directory: Path, data: dict[str, Any]) -> Path:
    file = directory / "config.yaml"
    file.write_text(yaml.safe_dump(data))
    file.chmod(0o600)
    return file


def test_defaults_follow_the_control_socket(tmp_path: Path) -> None:
    a = load_gateway(write(tmp_path, GATEWAY | {"control_socket": "/run/a.sock"}))
    b = load_gateway(write(tmp_path, GATEWAY | {"control_socket": "/run/b.sock"}))
    assert a.routing == Routing.derived("/run/a.sock")
    assert b.routing == Routing.derived("/run/b.sock")
    assert a.routing.table != b.routing.table
    explicit = {"table": 5000, "priority": 4000, "mark": 77}
    c = load_gateway(write(tmp_path, GATEWAY | {"routing": explicit}))
    assert c.routing == Routing(5000, 4000, 77)
    partial = load_gateway(write(tmp_path, GATEWAY | {"routing": {"table": 6000}}))
    derived = Routing.derived(str(DEFAULT_CONTROL_SOCKET))
    assert partial.routing == Routing(6000, derived.priority, derived.mark)
    mobile = {
        "identity": "alice",
        "eap": {"method": "md5", "password": "p"},
        "gateways": {"ngw": {"address": "192.0.2.1", "id": "ngw", "psk": "s"}},
        "control_socket": "/run/mn.sock",
        "routing": {"priority": 900},
    }
    config = load_mobile(write(tmp_path, mobile))
    assert config.routing == Routing(
        Routing.derived("/run/mn.sock").table, 900, config.routing.mark
    )


@pytest.mark.parametrize(
    ("routing", "problem"),
    [
        ({"table": 254}, f"routing.table: must be between {MIN_TABLE} and {MAX_TABLE}, got 254"),
        ({"table": "x"}, "routing.table: expected an integer, got a string"),
        (
            {"priority": 32766},
            f"routing.priority: must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got 32766",
        ),
        ({"mark": 0}, "routing.mark: must be between 1 and 4294967295, got 0"),
        ({"tabel": 300}, "routing.tabel: unknown key (did you mean 'table'?)"),
        (300, "routing: expected a mapping, got an integer"),
    ],
)
def test_check_config_names_the_routing_key(tmp_path: Path, routing: object, problem: str) -> None:
    assert check_gateway(write(tmp_path, GATEWAY | {"routing": routing})).problems == [problem]


def test_a_keylog_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("")
    problems = check_gateway(write(tmp_path, GATEWAY | {"keylog": "keys"})).problems
    assert problems == [f"keylog: not a directory: '{tmp_path / 'keys'}'"]
    assert load_gateway(write(tmp_path, GATEWAY | {"keylog": "new"})).keylog == tmp_path / "new"


@pytest.mark.parametrize("name", ["gateway.yaml", "mobile.yaml"])
def test_the_examples_show_their_derived_routing(name: str) -> None:
    """The commented ``routing:`` of each example is the default of its control socket."""
    text = (Path(__file__).resolve().parents[3] / "deploy" / "examples" / name).read_text()
    [line] = [line[1:] for line in text.splitlines() if line.startswith("#routing:")]
    shown = yaml.safe_load(line)["routing"]
    socket_path = yaml.safe_load(text)["control_socket"]
    assert Routing(**shown) == Routing.derived(socket_path)


class RouteRecorder:
    """What :class:`XfrmRoutes` sends: each route request's command and table, and the
    rules it asks for."""

    def __init__(self) -> None:
        self.routes: list[tuple[int, int]] = []
        self.rules: list[tuple[str, dict[str, Any]]] = []
        self.netlink = self

    def request(self, *args: Any, **rule: Any) -> Any:
        if args and isinstance(args[0], int):  # a route lookup
            body = RtMsg(socket.AF_INET).push() + push_u32(RTA_OIF, 7)
            return [Message(RTM_NEWROUTE, 0, 1, 0, body)]
        self.rules.append((args[1], rule))
        return None

    def send(self, request: Request) -> list[Message]:
        table = pull_attributes(request.body, RtMsg.LAYOUT.size).get(RTA_TABLE) or b""
        self.routes.append((request.kind, int.from_bytes(table, "little")))
        return []


def test_xfrm_routes_come_and_go_in_the_own_table_only() -> None:
    recorder = RouteRecorder()
    routing = Routing.derived("/run/mpa-ike/c.sock")
    routes = XfrmRoutes(recorder, routing, bypass=True)  # type: ignore[arg-type]
    routes.add(b"a", [("10.9.0.5/32", None), ("fd00:99::5/128", None)], NextHop(7))
    routes.add(b"b", [("10.9.0.6/32", None)], NextHop(7, "192.0.2.1"))
    routes.close()
    assert {table for _, table in recorder.routes} == {routing.table}
    assert [kind for kind, _ in recorder.routes].count(RTM_DELROUTE) == 3
    deleted = [rule for command, rule in recorder.rules if command == "del"]
    added = [rule for command, rule in recorder.rules if command == "add"]
    assert sorted(map(str, deleted)) == sorted(map(str, added))
    assert all(rule["priority"] in (routing.priority, routing.bypass_priority) for rule in added)
