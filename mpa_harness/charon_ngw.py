"""strongSwan's charon as the nGW of the handover testbed, and mpa-mobile against it.

``CharonNgw(bed, workdir)`` runs charon (kernel-libipsec) in the testbed's ``ngw``
namespace as the gateway and access router of network B: IKE on ``ngw``'s B address,
virtual IPs from ``ngw``'s pool (the upper half of B), the correspondent's network as
its local traffic selector, EAP for the mobile node and a PSK for itself, MOBIKE on.
charon's own MOBIKE policy accepts any address the peer moves to.

``MobileAgainstCharon`` is ``MpaPrograms`` with only ``mpa-mobile`` started and its
gateway entry marked ``encap: true``: kernel-libipsec does ESP in UDP only
(``shared/notes/strongswan-interop.md``).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mpa_testbed.programs import (
    CN_NETWORKS,
    EAP_PASSWORD,
    EAP_USER,
    ESP,
    IKE,
    PSK,
    MpaPrograms,
    gateway_id,
)
from mpa_testbed.topology import Testbed

from .charon import (
    AuthRound,
    Charon,
    Child,
    Connection,
    IkeSa,
    Pool,
    Secret,
    SwanctlConfig,
)
from .netns import Netns

CONN = "ngw"
CHILD = "pht"
NGW_LOG_LEVELS = {"ike": 2, "cfg": 2, "net": 1, "enc": 1, "chd": 2, "knl": 2, "esp": 1}
# kernel-libipsec routes a CHILD SA's traffic into its TUN device from table 220 with
# a source address it must find inside the local traffic selector; charon installs no
# route, and fails the CHILD SA (TS_UNACCEPTABLE), when ngw has no address there.
LOCAL_TS_ADDRESS = "10.0.9.254/32"
# After the move the MN's outer address is its inner one (the nCoA), and the route
# "nCoA/32 dev ipsec0" in table 220 (rule "from all lookup 220") would take charon's
# own IKE and ESP packets to the nCoA into the tunnel too: its answer to the MN's
# UPDATE_SA_ADDRESSES vanishes there and the handover fails. So charon's sockets mark
# their packets (0x42) and its rule to table 220 skips marked packets: they leave by
# ngw-b, while the correspondent's packets to the nCoA still take the tunnel.
# allow_peer_ts: kernel-libipsec refuses to install that route for a CHILD SA whose
# peer is the nCoA ("conflicts with IKE traffic"). The rekey after the update keeps
# the PHT's route (same policy, same route), but a CHILD SA set up from B would not.
FWMARK = "0x42"
NGW_SETTINGS: dict[str, Any] = {
    "plugins": {
        "kernel-libipsec": {"allow_peer_ts": True},
        "kernel-netlink": {"fwmark": f"!{FWMARK}"},
        "socket-default": {"fwmark": FWMARK},
    },
    "filelog": {"main": {"time_add_ms": True}},
}


def ngw_config(bed: Testbed, eap: str = "mschapv2") -> SwanctlConfig:
    """One connection: EAP from any MN, PSK for the gateway, a CP address from B's pool."""
    gateway = gateway_id("ngw")
    conn = Connection(
        local_addrs=[bed.addr("ngw", "ngw-b")],
        remote_addrs=["%any"],
        local=[AuthRound("psk", id=gateway)],
        remote=[AuthRound(f"eap-{eap}", eap_id="%any")],
        children={CHILD: Child(local_ts=[CN_NETWORKS[4]], esp_proposals=[ESP])},
        proposals=[IKE],
        pools=["b"],
        mobike=True,
    )
    return SwanctlConfig(
        connections={CONN: conn},
        secrets=[Secret("ike", PSK, [gateway]), Secret("eap", EAP_PASSWORD, [EAP_USER])],
        pools={"b": Pool(bed.pool("ngw"))},
    )


class CharonNgw(Charon):
    """charon in ``ngw``: ``with CharonNgw(bed, workdir) as ngw: ...`` starts and loads it."""

    def __init__(self, bed: Testbed, workdir: Path, *, eap: str = "mschapv2") -> None:
        super().__init__(
            Netns(bed.ns("ngw")), workdir, log_levels=NGW_LOG_LEVELS, settings=NGW_SETTINGS
        )
        self.bed = bed
        self.configure(ngw_config(bed, eap))

    def __enter__(self) -> CharonNgw:
        try:
            self.bed.ip("ngw", "addr", "add", LOCAL_TS_ADDRESS, "dev", "lo")
            self.start()
            self.load()
        except BaseException:
            self.stop()
            raise
        return self

    def ike_sa(self) -> IkeSa | None:
        """The established IKE SA, if any."""
        for sa in self.list_sas():
            if sa.state == "ESTABLISHED":
                return sa
        return None

    def routes(self, table: str = "220") -> str:
        """``ip route show table TABLE`` in ``ngw`` (charon's routes go to table 220)."""
        return self.bed.ip("ngw", "route", "show", "table", table)


@dataclass
class MobileAgainstCharon(MpaPrograms):
    """mpa-mobile in ``mn`` with one gateway entry, ``ngw``, pointing at charon."""

    def mobile_config(self) -> Path:
        path = super().mobile_config()
        data: dict[str, Any] = yaml.safe_load(path.read_text())
        for entry in data["gateways"].values():
            entry["encap"] = True  # kernel-libipsec does ESP in UDP only
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self) -> MobileAgainstCharon:
        """Only the mobile node: the gateway is charon."""
        self._start("mn", "mobile.cli", self.mobile_config())
        self._wait_ready("mn")
        return self

    def background(self, *args: str) -> subprocess.Popen[str]:
        """``mpa-mobile ARGS`` started without waiting for its answer (``handover``
        waits for the link to come up); ``communicate()`` collects it."""
        cmd = [sys.executable, "-m", "mobile.cli", "-c", str(self.workdir / "mobile.yaml")]
        return subprocess.Popen(
            ["ip", "netns", "exec", self.bed.ns("mn"), *cmd, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
