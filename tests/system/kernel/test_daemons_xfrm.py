"""mpa-mobile and mpa-gateway on the kernel's XFRM: traffic, counters, clean-up, rekeying.

The mobile node connects (datapath: xfrm), the gateway runs with ``datapath: auto``
and must pick XFRM in this kernel. A UDP echo between the mobile node's leased address
and a correspondent behind the gateway crosses the tunnel as kernel ESP, and ``ip -s
xfrm state`` counts it alike on both ends. Stopping or killing a daemon leaves nothing of
it in the kernel (a killed one's leftovers are flushed when it starts again), and
another instance's entries in the same namespace stay. The configured CHILD lifetimes are
the kernel's soft and hard limits; the soft byte limit reached by the echo makes the
gateway rekey the CHILD SA (new SPIs) while the echo goes on.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest

from mpa_ike.io.xfrm import InstanceSlot
from tests.system.kernel.daemonhelp import (
    CN,
    GW_OUTER,
    MN_OUTER,
    Site,
    connect,
    echo,
    echo_server,
    established,
    gateway_config,
    mobile_config,
    ours,
    site,
    start,
    stop,
)
from tests.system.kernel.kernelhelp import ip_batch, ns_socket

ECHOES = 200


OTHER_SPI = 0x7001  # the other instance's state (take_other_slot)


def spis(here: Site, node: str) -> set[int]:
    """The SPIs of the daemon's states in ``node`` (the other instance's left out)."""
    return set(ours(here.ns(node))[0]) - {OTHER_SPI}


@pytest.mark.parametrize("version", [4, 6])
def test_echo_through_kernel_esp(tmp_path: Path, version: int) -> None:
    with site(tmp_path) as here:
        start(here, "gw", gateway_config(here))
        start(here, "mn", mobile_config(here, version))
        assert "datapath: xfrm (the kernel has ESP)" in here.log("gw")
        assert "datapath: xfrm (configured)" in here.log("mn")
        inner = connect(here, version)
        with echo_server(here.cn, CN[version]):
            # A user-mode kernel on a busy host may take over a second for one answer.
            answered, sent = echo(here.mn, inner, CN[version], ECHOES, wait=5.0)
        assert (answered, sent) == (ECHOES, ECHOES)

        mn_states, gw_states = ours(here.mn)[0], ours(here.gw)[0]
        assert len(mn_states) == len(gw_states) == 2
        (mn_out,) = [s for s in mn_states.values() if s.src == MN_OUTER[version]]
        (mn_in,) = [s for s in mn_states.values() if s.dst == MN_OUTER[version]]
        assert (mn_out.packets, mn_in.packets) == (ECHOES, ECHOES)
        # The same SAs seen from the other end: same SPIs, same counts.
        assert gw_states[mn_out.spi].packets == ECHOES and gw_states[mn_in.spi].packets == ECHOES
        assert gw_states[mn_out.spi].bytes == mn_out.bytes
        assert gw_states[mn_in.spi].bytes == mn_in.bytes
        assert (gw_states[mn_out.spi].src, gw_states[mn_out.spi].dst) == (
            MN_OUTER[version],
            GW_OUTER[version],
        )
        # The daemons' status counts what the kernel counted.
        (child,) = established(here, "mn")["child_sas"]
        assert (child["packets_out"], child["packets_in"]) == (ECHOES, ECHOES)
        print(f"v{version}: {answered}/{sent} answered; mn out {mn_out}, in {mn_in}")


def take_other_slot(here: Site) -> tuple[socket.socket, int]:
    """Another instance in the gateway's namespace: its slot held, a state and a policy
    with its reqids; and one with reqid 5, as strongSwan would have. The slot's socket."""
    sock = ns_socket(here.gw, socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for number in range(1, 8):
        try:
            sock.bind(InstanceSlot.PREFIX + str(number).encode())
            break
        except OSError:
            continue
    reqid = InstanceSlot(number, sock).reqids.start
    key = "0x" + "11" * 20
    lines = []
    for spi, rid, net in ((OTHER_SPI, reqid, "10.77.0.0/24"), (0x7002, 5, "10.78.0.0/24")):
        lines += [
            f"xfrm state add src 198.51.100.1 dst 198.51.100.2 proto esp spi {spi} reqid {rid} "
            f"mode tunnel aead 'rfc4106(gcm(aes))' {key} 128",
            f"xfrm policy add src {net} dst 10.79.0.0/24 dir out "
            f"tmpl src 198.51.100.1 dst 198.51.100.2 proto esp reqid {rid} mode tunnel",
        ]
    ip_batch(lines, here.gw)
    return sock, reqid


def foreign(here: Site) -> tuple[int, int]:
    """The other instance's and strongSwan's entries still there: (states, policies)."""
    states = here.gw.ip("xfrm", "state").stdout.count("spi 0x0000700")
    return states, here.gw.ip("xfrm", "policy").stdout.count("dst 10.79.0.0/24")


def test_stop_delete_and_crash_leave_nothing(tmp_path: Path) -> None:
    with site(tmp_path) as here:
        start(here, "gw", gateway_config(here, "xfrm"))
        start(here, "mn", mobile_config(here))
        slot_socket, other_reqid = take_other_slot(here)
        try:
            connect(here, 4)
            assert len(spis(here, "gw")) == len(spis(here, "mn")) == 2

            # A clean stop: the gateway deletes the IKE SA (the mobile node removes its
            # CHILD SA on the DELETE) and leaves nothing of its own.
            assert stop(here, "gw") == 0
            assert spis(here, "gw") == set(), here.gw.ip("xfrm", "state").stdout
            assert ours(here.mn) == ({}, ""), here.mn.ip("xfrm", "state").stdout
            assert foreign(here) == (2, 2)

            # A crash: SIGKILL leaves the SAs; the next start flushes exactly them.
            start(here, "gw", gateway_config(here, "xfrm"))
            connect(here, 4)
            crashed = spis(here, "gw")
            assert len(crashed) == 2
            stop(here, "gw", signal.SIGKILL)
            assert spis(here, "gw") == crashed
            start(here, "gw", gateway_config(here, "xfrm"))
            assert spis(here, "gw") == set()
            assert "removed 2 states and 3 policies left by an earlier run" in here.log("gw")
            assert foreign(here) == (2, 2)
            assert "10.77.0.0/24" in here.gw.ip("xfrm", "policy").stdout
            assert stop(here, "gw") == 0
            assert stop(here, "mn") == 0
            assert ours(here.mn) == ({}, "")
            assert foreign(here) == (2, 2)
            print(f"other instance's reqid {other_reqid:#x} kept; crashed SPIs {crashed}")
        finally:
            slot_socket.close()


def test_soft_byte_limit_rekeys(tmp_path: Path) -> None:
    with site(tmp_path) as here:
        children = {"rekey_time": "1h", "life_time": "66m", "rekey_bytes": 16000}
        start(here, "gw", gateway_config(here, "xfrm", children=children))
        start(here, "mn", mobile_config(here))
        inner = connect(here, 4)
        before = spis(here, "gw")
        # The configured CHILD lifetimes are the kernel's: soft 16000 bytes, no hard
        # byte limit (no life_bytes), rekey_time less up to rand_time (6 min), life_time.
        states = here.gw.ip("-s", "xfrm", "state").stdout
        assert states.count("limit: soft 16000(bytes), hard (INF)(bytes)") == 2, states
        soft = [int(t) for t in re.findall(r"expire add: soft (\d+)\(sec\)", states)]
        assert len(soft) == 2 and all(3240 <= t <= 3600 for t in soft), states
        assert states.count("hard 3960(sec)") == 2, states
        with echo_server(here.cn, CN[4]):
            answered, sent = echo(here.mn, inner, CN[4], ECHOES, retries=2)
            deadline = time.monotonic() + 10
            while spis(here, "gw") & before and time.monotonic() < deadline:
                time.sleep(0.2)  # the old CHILD SA goes once the rekey is done
            after = spis(here, "gw")
            more, _ = echo(here.mn, inner, CN[4], 20)
        assert answered == ECHOES, (answered, sent)
        assert more == 20
        assert len(after) == 2 and not after & before, (before, after)
        assert spis(here, "mn") == after
        assert "the kernel's soft limit" in here.log("gw"), here.log("gw")[-2000:]
        assert "rekeying" in here.log("gw")
        print(f"rekeyed: {sorted(map(hex, before))} -> {sorted(map(hex, after))}; sent {sent}")
