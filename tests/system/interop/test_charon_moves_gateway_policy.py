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

from pathlib import Path

import pytest

from mpa_harness.scenarios import CHILD
from tests.system.interop.test_mobile_vs_gateway import status
from tests.system.interop.test_traffic import charon_that_moves, three_hosts, traffic_env, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("traffic_env")]
__all__ = ["traffic_env"]  # the fixture, imported to be found here


@pytest.mark.charon
@pytest.mark.usefixtures("charon_env")
def test_charon_moving_elsewhere_is_refused(short_tmp: Path) -> None:
    """charon's address changes to one outside the gateway's allocation: refused with
    UNACCEPTABLE_ADDRESSES, nothing moves on the gateway; charon's rekey from the
    refused address ends the IKE SA and its lease."""
    with three_hosts() as net:
        link = net.hosts.link
        with charon_that_moves(short_tmp, net, "allocated") as setup:
            charon, gw_config = setup.charon, setup.gateway_config
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
