"""The mobile node's duties without a command, in the testbed with mpa-gateway as nGW:
``preauth: auto`` pre-authenticates with two candidates by itself; under ``handover:
auto`` the link of A going down while B's is up moves the SA at once, and B coming up
while A still works moves nothing; CP's DNS servers reach the node's resolver
configuration (``dns: file`` pointed at the test's own file, never the host's) once the
node uses them and leave it on disconnect; failed automatic attempts are spaced 1 s,
then 2 s; ``announce_addresses`` keeps the gateway's list of the node's other addresses
current."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mpa_testbed.probe import analyse
from mpa_testbed.programs import MpaPrograms
from mpa_testbed.topology import Testbed, TestbedSpec

pytestmark = pytest.mark.usefixtures("netns_env")

WAIT = 20.0


@pytest.fixture
def bed_for(tmp_path: Path) -> Iterator[Callable[..., tuple[Testbed, MpaPrograms]]]:
    beds: list[Testbed] = []

    def build(family: int = 4, **options: Any) -> tuple[Testbed, MpaPrograms]:
        bed = Testbed(TestbedSpec(family="dual")).up()
        beds.append(bed)
        return bed, bed.start_programs(tmp_path / bed.prefix, family=family, **options)

    yield build
    for bed in beds:
        bed.down()


def until(what: Callable[[], Any], seconds: float = WAIT) -> Any:
    """``what()`` once it is true; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        found = what()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


def phts(programs: MpaPrograms) -> dict[str, dict[str, Any]]:
    return {pht["gateway"]: pht for pht in programs.status()["phts"]}


def test_preauth_auto_two_candidates_without_a_command(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    bed, programs = bed_for(gateways=("ngw", "gwc"), preauth_mode="auto")
    found = until(lambda: (p := phts(programs)) and set(p) == {"ngw", "gwc"} and p)
    assert found["ngw"]["table"] != found["gwc"]["table"]
    status = programs.status()
    assert [g["preauth"] for g in status["gateways"]] == ["auto", "auto"]
    assert all(s["failures"] == 0 for s in status["auto_preauth"].values())
    for gateway in ("ngw", "gwc"):  # each PHT carries its own nCoA's traffic
        flow = bed.probe("cn", "mn", programs.ncoa(gateway), count=30).start()
        assert analyse(flow.wait(20)).forward.received >= 25
    # A PHT the gateway deletes is made again by itself (a new IKE SA, a new lease).
    old = found["gwc"]["ike_sa"]
    programs.cli("gwc", "terminate", found["gwc"]["ncoa"][0])
    again = until(lambda: (p := phts(programs).get("gwc")) and p["ike_sa"] != old and p)
    assert again["ncoa"]


@pytest.mark.parametrize(("family", "loss"), [(4, "link"), (6, "link"), (4, "address")])
def test_link_down_on_a_with_b_up_moves_the_sa(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]], family: int, loss: str
) -> None:
    """The path of the PHT goes (A's carrier, or the address the PHT runs from) while
    B has link: the SA moves to B with no command."""
    bed, programs = bed_for(family, handover="auto")
    programs.preauth("ngw")
    ncoa = programs.ncoa("ngw")
    bed.link("b").set_up()  # B comes up while A works: the node stays on A
    time.sleep(0.5)
    assert phts(programs)["ngw"]["moved_to"] is None and not programs.status()["handovers"]
    flow = bed.probe("cn", "mn", ncoa, duration=30).start()
    time.sleep(0.3)
    down = time.monotonic()
    if loss == "link":  # no command: the kernel's event alone
        bed.link("a").set_down()
    else:
        sa = programs.ike_sa("ngw")
        assert sa is not None
        bed.ip("mn", "addr", "del", f"{sa['local'].split('[')[0]}/24", "dev", "mn-a")
    time.sleep(1.0)  # no status polling (a Python start each) while the flow moves
    moved = until(lambda: programs.status()["handovers"])
    assert moved[0]["address"] == ncoa
    sa = programs.ike_sa("ngw")
    assert sa is not None and sa["local"].startswith(f"{ncoa}[")
    assert phts(programs)["ngw"]["moved_to"] == "mn-b"
    report = analyse(flow.stop())
    for direction in (report.forward, report.reverse):
        assert direction.timeline[-1].received > down + 0.5, "the flow stopped at the move"
        assert direction.longest < 1.0
    # The timeline starts at the event that moved it (A's), not when B came up.
    assert moved[0]["link_up"] >= down
    answered = 1e3 * (moved[0]["answered"] - moved[0]["link_up"])
    gaps = f"{1e3 * report.forward.longest:.1f}/{1e3 * report.reverse.longest:.1f} ms"
    print(f"{loss} lost (IPv{family}): answered {answered:.1f} ms after the event, gaps {gaps}")


def test_cp_dns_servers_in_the_resolver_configuration_until_disconnect(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]], tmp_path: Path
) -> None:
    resolv = tmp_path / "resolv.conf"
    host_own = "# the node's own\nnameserver 10.1.0.1\n"
    resolv.write_text(host_own)
    bed, programs = bed_for(
        extra_gateway={"dns": ["10.2.0.53", "10.2.0.54"]},
        extra_mobile={"dns": "file", "dns_file": str(resolv)},
    )
    programs.preauth("ngw")
    # A PHT only carries the nCoA's own traffic: its servers wait for the move.
    assert resolv.read_text() == host_own and programs.status()["dns"] == []
    command = programs.begin_handover("ngw")
    bed.handover("a", "b")
    programs.end_handover(command)
    lines = resolv.read_text().splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [
        ["nameserver", "10.2.0.53"],
        ["nameserver", "10.2.0.54"],
    ]
    assert lines[2:] == host_own.splitlines()
    assert programs.status()["dns"] == [
        {
            "gateway": "ngw",
            "interface": "mn-b",
            "servers": ["10.2.0.53", "10.2.0.54"],
            "via": "file",
        }
    ]
    programs.disconnect("ngw")
    assert resolv.read_text() == host_own
    # A connection made by connect has them at once, on the datapath's device.
    bed.link("a").set_up()
    programs.connect("ngw")
    assert "nameserver 10.2.0.53" in resolv.read_text()
    assert programs.status()["dns"][0]["interface"] == programs.status()["datapath"]["device"]
    programs.disconnect("ngw")
    assert resolv.read_text() == host_own


def test_other_addresses_announced_and_kept_current(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    """``announce_addresses``: the gateway learns the node's address on B once B has
    link and it is added, and forgets it once removed (RFC 4555 §3.6); with
    ``no_nats_allowed`` and ``return_routability`` the move to it still goes through."""
    bed, programs = bed_for(
        address_policy="any",
        extra_mobile_gateway={
            "announce_addresses": True,
            "no_nats_allowed": True,
            "return_routability": True,
        },
    )
    programs.connect("ngw")

    def announced(version: int = 4) -> list[str]:
        sas = programs.status("ngw")["ike_sas"]
        found = sas[0]["peer_addresses"] if sas else []
        return [a for a in found if (":" in a) == (version == 6)]

    # A's IPv6 address at once (IKE runs over its IPv4 one); B has no link yet.
    until(lambda: announced(6) == [bed.addr("mn", "mn-a", 6)])
    assert announced() == []
    bed.link("b").set_up()
    bed.ip("mn", "addr", "add", "10.2.0.70/24", "dev", "mn-b")
    until(lambda: announced() == ["10.2.0.70"])
    bed.ip("mn", "addr", "del", "10.2.0.70/24", "dev", "mn-b")
    until(lambda: announced() == [])
    bed.ip("mn", "addr", "add", "10.2.0.71/24", "dev", "mn-b")
    until(lambda: announced() == ["10.2.0.71"])
    answer = programs.handover_to("ngw")
    assert "moved to 10.2.0.71 on mn-b" in answer
    # Now on B: A's address is the other one.
    until(lambda: announced() == [bed.addr("mn", "mn-a", 4)])


def test_preauth_auto_backs_off_and_gets_there(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    """The gateway refuses the node's EAP password at first: the automatic attempts are
    spaced by at least 1 s, then 2 s; once the gateway knows the password (its file
    read again on SIGHUP) the next attempt makes the PHT, without a command."""
    wrong = {"eap": {"method": "mschapv2", "users": {"alice": "not-the-node-password"}}}
    _, programs = bed_for(preauth_mode="auto", extra_gateway=wrong)

    def failures() -> int:
        return int(programs.status()["auto_preauth"]["ngw"]["failures"])

    until(lambda: failures() >= 3)
    state = programs.status()["auto_preauth"]["ngw"]
    first, second = state["pauses"][:2]  # the daemon's own clock, not our polling
    assert 0.95 <= first < second and second >= 1.95
    assert "authentication failed" in state["last"]
    assert not phts(programs)
    programs.extra_gateway = {}
    programs.gateway_config("ngw")
    programs.reload("ngw")
    found = until(lambda: phts(programs).get("ngw"))
    assert found["ncoa"] and programs.status()["auto_preauth"]["ngw"]["failures"] == 0


def test_after_a_move_the_other_candidate_is_pre_authenticated_through_the_new_network(
    bed_for: Callable[..., tuple[Testbed, MpaPrograms]],
) -> None:
    """Both candidates pre-authenticated by themselves through A; A goes, the node
    moves to ngw on B by itself and deletes gwc's PHT, then makes it anew through B, from
    the node's own address there (as DHCP would give it; B routes C's gateway)."""
    bed, programs = bed_for(gateways=("ngw", "gwc"), preauth_mode="auto", handover="auto")
    # B's routes count only once B has link (the PHTs run through A until then).
    bed.exec("mn", ["sysctl", "-qw", "net.ipv4.conf.mn-b.ignore_routes_with_linkdown=1"])
    bed.ip("mn", "addr", "add", "10.2.0.80/24", "dev", "mn-b")
    bed.ip("mn", "route", "add", "10.3.0.0/24", "via", "10.2.0.1", "src", "10.2.0.80")
    before = until(lambda: (p := phts(programs)) and set(p) == {"ngw", "gwc"} and p)
    through_a = [programs.ike_sa(gateway) for gateway in before]
    assert all(sa is not None and sa["local"].startswith("10.1.0.100[") for sa in through_a)
    bed.link("b").set_up()
    bed.link("a").set_down()
    until(lambda: programs.status()["handovers"])
    again = until(
        lambda: (p := phts(programs).get("gwc")) and p["ike_sa"] != before["gwc"]["ike_sa"] and p
    )
    sa = programs.ike_sa("gwc")
    assert sa is not None and sa["local"].startswith("10.2.0.80[")  # through B
    assert again["ncoa"] and phts(programs)["ngw"]["moved_to"] == "mn-b"
