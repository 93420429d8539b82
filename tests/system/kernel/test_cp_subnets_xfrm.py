"""mpa-mobile on the kernel's XFRM honouring CP's netmask and subnets (RFC 7296 §3.15.1,
§3.15.2): the leased address on lo with the pool's prefix and no prefix route, only the
gateway's subnet routed in the instance's own table, an echo with the correspondent in
that subnet through the kernel's ESP, address and route gone on disconnect."""

from __future__ import annotations

from pathlib import Path

from tests.system.kernel.daemonhelp import (
    CN,
    command,
    connect,
    echo,
    echo_server,
    established,
    gateway_config,
    mobile_config,
    site,
    start,
)

SUBNET = "10.0.9.0/25"  # of CN_NET, the correspondent in it
ECHOES = 20


def test_xfrm_mobile_routes_the_subnet_and_puts_the_netmask_on(tmp_path: Path) -> None:
    with site(tmp_path) as here:
        start(here, "gw", gateway_config(here, subnets=[SUBNET]))
        start(here, "mn", mobile_config(here, 4))
        inner = connect(here, 4)
        sa = established(here, "mn")
        assert (sa["netmask"], sa["subnets"]) == ("255.255.255.0", [SUBNET])
        assert f"inet {inner}/24 " in here.mn.ip("-o", "addr", "show", "dev", "lo").stdout
        assert "10.9.0.0/24" not in here.mn.ip("route", "show", "table", "all").stdout
        table = str(command(here, "mn", "status")["datapath"]["routing"]["table"])
        routes = here.mn.ip("route", "show", "table", table).stdout
        assert [line.split()[0] for line in routes.splitlines()] == [SUBNET], routes
        with echo_server(here.cn, CN[4]):
            assert echo(here.mn, inner, CN[4], ECHOES, wait=5.0) == (ECHOES, ECHOES)

        command(here, "mn", "disconnect", name="gw")
        assert inner not in here.mn.ip("-o", "addr", "show").stdout
        assert here.mn.ip("route", "show", "table", table, check=False).stdout.strip() == ""
