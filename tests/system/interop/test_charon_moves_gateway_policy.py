"""charon as the mobile node moves to an address mpa-gateway did not allocate.

Under ``mobike: {address_policy: allocated}`` (the default) only the CP lease of the
IKE SA (the nCoA) is an acceptable new address (RFC 4555 §3.5 lets the responder refuse
by local policy): charon's UPDATE_SA_ADDRESSES from 192.0.2.3 gets
N(UNACCEPTABLE_ADDRESSES), and the gateway's IKE SA stays at the old address with its
lease; charon carries on from the refused address regardless, and the gateway then
deletes the IKE SA. The ``any`` policy, strongSwan's behaviour, is
test_traffic.py::test_echo_goes_on_after_charon_moves (the same move, accepted);
test_gateway_mobike_checks.py shows the checks with our own initiator core.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from mpa_harness.charon import Charon
from mpa_harness.scenarios import CHILD, Scenario, initiator_config
from tests.system.interop.test_mobile_vs_gateway import (
    gateway_yaml,
    start_daemon,
    status,
    wait_listening,
)
from tests.system.interop.test_traffic import IKE, KEY, METHOD, three_hosts, traffic_env, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]
__all__ = ["traffic_env"]  # the fixture, imported to be found here


@pytest.mark.charon
@pytest.mark.usefixtures("charon_env")
def test_charon_moving_elsewhere_is_refused(short_tmp: Path) -> None:
    """charon's address changes to one outside the gateway's allocation: refused with
    UNACCEPTABLE_ADDRESSES, nothing moves on the gateway; charon's rekey from the
    refused address ends the IKE SA and its lease."""
    sc = Scenario(METHOD, ike_proposal=IKE, gateway_key=KEY, encap=True)
    with three_hosts() as net, contextlib.ExitStack() as stack:
        link = net.hosts.link
        (short_tmp / "gw").mkdir()
        gw_config, ca = gateway_yaml(
            short_tmp / "gw",
            [link.b.addr(4)],
            METHOD,
            IKE,
            KEY,
            datapath="userspace",
            mobike={"address_policy": "allocated"},
        )
        gateway = start_daemon("gateway.cli", gw_config, net.gw.name)
        stack.callback(lambda: print(gateway.stop()))
        wait_listening(gw_config)
        charon = stack.enter_context(Charon(net.mn, short_tmp / "charon"))
        charon.add_cacert(ca)
        charon.configure(initiator_config(sc, "%any", link.b.addr(4)))
        charon.start()
        charon.load()
        try:
            charon.initiate(CHILD, timeout=5)
            [vip] = charon.wait_established(CHILD).local_vips
            before = status("gateway.cli", gw_config)
            [sa] = before["ike_sas"]
            assert sa["remote"] == "192.0.2.1[4500]" and sa["address"] == vip
            assert before["leases"] == [{"address": vip, "ike_sa": sa["name"]}]

            # As in test_echo_goes_on_after_charon_moves: 192.0.2.3 is not the lease.
            net.mn.del_addr(link.a.dev, "192.0.2.1/24")
            net.mn.add_addr(link.a.dev, "192.0.2.3/24")

            wait_for(
                lambda: status("gateway.cli", gw_config)["counters"].get("updates_refused", 0) >= 1,
                timeout=5,
            )
            wait_for(lambda: "N(UNACCEPT_ADDR)" in charon.log_text(), timeout=5)
            # charon carries on from 192.0.2.3 regardless and rekeys the CHILD SA from
            # there (kernel-libipsec does after a move): the gateway, rather than keep a
            # tunnel that drops the peer's traffic, deletes the IKE SA and its lease, so
            # that charon sets up a new one (tests/system/liveness/test_refused_address.py
            # follows it further).
            wait_for(lambda: not status("gateway.cli", gw_config)["ike_sas"], timeout=10)
            after = status("gateway.cli", gw_config)
            assert "updates_accepted" not in after["counters"]
            assert after["counters"]["updates_refused"] >= 1
            assert not after["leases"]
        except BaseException:
            print(charon.diagnostics())
            raise
