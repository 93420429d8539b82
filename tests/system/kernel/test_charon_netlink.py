"""charon with its kernel-netlink plugin (the kernel's own IPsec) against our daemons on
XFRM: mpa-mobile against a charon gateway, a charon mobile node against mpa-gateway.

Both ends put their SAs into XFRM, so the echo between the mobile node's virtual IP and
the correspondent behind the gateway is kernel ESP both ways, routed by each side's own
routes (charon's table 220, our glue's table): the site sets up none.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mpa_harness import guards
from mpa_harness.charon import (
    AuthRound,
    Charon,
    Child,
    Connection,
    Pool,
    Secret,
    SwanctlConfig,
    charon_available,
)
from mpa_harness.netns import Netns
from tests.system.kernel.daemonhelp import (
    CN,
    CN_NET,
    GATEWAY_ID,
    GW_OUTER,
    MN_OUTER,
    PASSWORD,
    POOL,
    PSK,
    USER,
    connect,
    echo,
    echo_server,
    gateway_config,
    mobile_config,
    ours,
    site,
    start,
)

ECHOES = 100

CONN, CHILD = "mpa", "net"
IKE, ESP = "aes128-sha256-x25519", "aes128gcm16"
CHARON_TIMEOUT = 60.0  # charon and our daemons start slowly under UML


def secrets() -> list[Secret]:
    return [Secret("ike", PSK, [GATEWAY_ID]), Secret("eap", PASSWORD, [USER])]


def charon_gateway() -> SwanctlConfig:
    conn = Connection(
        local_addrs=[GW_OUTER[4]],
        remote_addrs=["%any"],
        local=[AuthRound("psk", id=GATEWAY_ID)],
        remote=[AuthRound("eap-md5", id="%any", eap_id="%any")],
        children={CHILD: Child(local_ts=[CN_NET[4]], esp_proposals=[ESP])},
        proposals=[IKE],
        pools=["pool4"],
    )
    pool = Pool(POOL[4].replace("/24", "/25"))
    return SwanctlConfig(connections={CONN: conn}, secrets=secrets(), pools={"pool4": pool})


def charon_mobile() -> SwanctlConfig:
    conn = Connection(
        local_addrs=[MN_OUTER[4]],
        remote_addrs=[GW_OUTER[4]],
        local=[AuthRound("eap-md5", id=USER)],
        remote=[AuthRound("psk", id=GATEWAY_ID)],
        children={CHILD: Child(remote_ts=[CN_NET[4]], esp_proposals=[ESP])},
        proposals=[IKE],
        vips=["0.0.0.0"],
    )
    return SwanctlConfig(connections={CONN: conn}, secrets=secrets())


@contextlib.contextmanager
def kernel_charon(ns: Netns, config: SwanctlConfig) -> Iterator[Charon]:
    """charon on XFRM in ``ns``; its files on /dev/shm (a tmpfs in UML that charon's
    private /run does not hide)."""
    guards.require(charon_available(), "charon")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as workdir:
        daemon = Charon(ns, Path(workdir), kernel="netlink")
        try:
            daemon.configure(config)
            daemon.start(timeout=CHARON_TIMEOUT)
            daemon.load()
            yield daemon
        except BaseException:
            print(daemon.diagnostics())
            raise
        finally:
            daemon.stop()


def dump(*spaces: Netns) -> str:
    """Each namespace's XFRM states and policies, rules and routes (for a failure)."""
    parts = []
    for ns in spaces:
        for args in (
            ("xfrm", "state"),
            ("xfrm", "policy"),
            ("rule",),
            ("route", "show", "table", "all"),
        ):
            parts.append(f"--- {ns.name}: ip {' '.join(args)}\n{ns.ip(*args).stdout}")
    return "\n".join(parts)


def kernel_states(ns: Netns) -> int:
    return ns.ip("xfrm", "state").stdout.count("proto esp")


def test_mobile_against_charon_gateway(tmp_path: Path) -> None:
    with site(tmp_path) as here, kernel_charon(here.gw, charon_gateway()) as charon:
        # charon leaves forwarding to the administrator (ours turns it on itself).
        here.gw.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        start(here, "mn", mobile_config(here, 4, "xfrm"))
        inner = connect(here, 4)
        sa = charon.wait_established(CHILD, timeout=CHARON_TIMEOUT)
        assert sa.remote_vips == [inner]
        with echo_server(here.cn, CN[4]):
            answered, sent = echo(here.mn, inner, CN[4], ECHOES)
        assert (answered, sent) == (ECHOES, ECHOES), dump(here.mn, here.gw)
        assert kernel_states(here.gw) == len(ours(here.mn)[0]) == 2
        assert "table 220" in here.gw.ip("route", "show", "table", "all").stdout


def test_charon_mobile_against_gateway(tmp_path: Path) -> None:
    with site(tmp_path) as here:
        start(here, "gw", gateway_config(here, "xfrm"))
        with kernel_charon(here.mn, charon_mobile()) as charon:
            charon.initiate(CHILD, CONN, timeout=CHARON_TIMEOUT)
            sa = charon.wait_established(CHILD, timeout=CHARON_TIMEOUT)
            [vip] = sa.local_vips
            with echo_server(here.cn, CN[4]):
                answered, sent = echo(here.mn, vip, CN[4], ECHOES)
            assert (answered, sent) == (ECHOES, ECHOES), dump(here.mn, here.gw)
            assert kernel_states(here.mn) == len(ours(here.gw)[0]) == 2
