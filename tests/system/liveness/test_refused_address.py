"""charon keeps using an address mpa-gateway refused: the gateway deletes its IKE SA.

charon's UPDATE_SA_ADDRESSES from 192.0.2.3, an address the gateway did not lease
(``address_policy: allocated``), gets N(UNACCEPTABLE_ADDRESSES); charon ignores it,
carries on from there and rekeys its CHILD SA from it (kernel-libipsec does after a
move). That rekey request from a refused address makes the gateway delete the IKE SA
(a DELETE sent once, also to where charon is) with a line saying why, and free the
lease (RFC 4555 §3.5 leaves the policy to the responder).
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
def test_rekey_from_a_refused_address_deletes_the_ike_sa(short_tmp: Path) -> None:
    from mpa_harness.charon import require_charon

    require_charon()
    logs: list[str] = []
    with three_hosts() as net:
        link = net.hosts.link
        with charon_that_moves(short_tmp, net, "allocated", gateway_log=logs.append) as setup:
            charon, gw_config = setup.charon, setup.gateway_config
            charon.initiate(CHILD, timeout=5)
            charon.wait_established(CHILD)
            assert status("gateway.cli", gw_config)["leases"]
            net.mn.del_addr(link.a.dev, "192.0.2.1/24")
            net.mn.add_addr(link.a.dev, "192.0.2.3/24")
            wait_for(lambda: not status("gateway.cli", gw_config)["ike_sas"], timeout=10)
            after = status("gateway.cli", gw_config)
            assert after["leases"] == []
            assert after["counters"]["updates_refused"] >= 1
            assert after["counters"]["deleted_refused_address"] == 1
            # charon got the DELETE where it is now, or finds out by itself.
            charon.wait_for(lambda sas: not sas, timeout=10)
    print(logs[0])
    assert "rekey request from 192.0.2.3, an address we refused" in logs[0]
