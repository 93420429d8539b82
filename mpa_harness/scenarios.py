"""Ready-made charon-to-charon setups shared by the interop tests and the recorder.

A "road warrior" initiator (``left``) asks a gateway responder (``right``) for a
virtual IP and reaches ``PROTECTED_NET`` (an address on the gateway's ``lo``)
through the tunnel. Authentication is either EAP (gateway signs with a
certificate) or PSK on both sides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .charon import (
    DEFAULT_LOG_LEVELS,
    AuthRound,
    Charon,
    Child,
    Connection,
    Pool,
    Secret,
    SwanctlConfig,
)
from .netns import TwoHosts, two_hosts
from .pki import KeyType, make_ca, make_cert

GATEWAY_ID = "gw.mpa-ike.test"
CLIENT_ID = "carol@mpa-ike.test"
EAP_USER = "carol"
EAP_PASSWORD = "Ch4ng3-me-Not!"
PSK = "0x" + "5a" * 32
POOL = "10.3.0.0/24"
PROTECTED_ADDR = "10.1.0.1"
PROTECTED_NET = "10.1.0.0/24"
CONN = "rw"
CHILD = "net"


@dataclass(frozen=True)
class Scenario:
    """What to configure: ``auth`` is ``eap-md5``, ``eap-mschapv2`` or ``psk``."""

    auth: str
    ike_proposal: str = "aes128-sha256-modp2048"
    esp_proposal: str = "aes128-sha256"
    gateway_key: KeyType = "rsa"
    virtual_ip: bool = True
    encap: bool = True


def initiator_config(sc: Scenario, local: str, remote: str) -> SwanctlConfig:
    if sc.auth == "psk":
        local_auth = AuthRound("psk", id=CLIENT_ID)
        remote_auth = AuthRound("psk", id=GATEWAY_ID)
        secrets = [Secret("ike", PSK, [CLIENT_ID, GATEWAY_ID])]
    else:
        local_auth = AuthRound(sc.auth, id=CLIENT_ID, eap_id=EAP_USER)
        remote_auth = AuthRound("pubkey", id=GATEWAY_ID)
        secrets = [Secret("eap", EAP_PASSWORD, [EAP_USER])]
    conn = Connection(
        local_addrs=[local],
        remote_addrs=[remote],
        local=[local_auth],
        remote=[remote_auth],
        children={
            CHILD: Child(
                remote_ts=[PROTECTED_NET],
                esp_proposals=[sc.esp_proposal],
            )
        },
        proposals=[sc.ike_proposal],
        vips=["0.0.0.0"] if sc.virtual_ip else [],
        encap=sc.encap,
    )
    return SwanctlConfig(connections={CONN: conn}, secrets=secrets)


def responder_config(sc: Scenario, local: str, cert_file: str | None) -> SwanctlConfig:
    if sc.auth == "psk":
        local_auth = AuthRound("psk", id=GATEWAY_ID)
        remote_auth = AuthRound("psk", id=CLIENT_ID)
        secrets = [Secret("ike", PSK, [CLIENT_ID, GATEWAY_ID])]
    else:
        local_auth = AuthRound("pubkey", id=GATEWAY_ID, certs=[cert_file or "gw.pem"])
        remote_auth = AuthRound(sc.auth, id=CLIENT_ID, eap_id="%any")
        secrets = [Secret("eap", EAP_PASSWORD, [EAP_USER])]
    conn = Connection(
        local_addrs=[local],
        remote_addrs=["%any"],
        local=[local_auth],
        remote=[remote_auth],
        children={CHILD: Child(local_ts=[PROTECTED_NET], esp_proposals=[sc.esp_proposal])},
        proposals=[sc.ike_proposal],
        pools=["pool4"] if sc.virtual_ip else [],
    )
    pools = {"pool4": Pool(POOL)} if sc.virtual_ip else {}
    return SwanctlConfig(connections={CONN: conn}, secrets=secrets, pools=pools)


@dataclass(frozen=True)
class Pair:
    hosts: TwoHosts
    initiator: Charon
    responder: Charon


@contextlib.contextmanager
def charon_pair(
    sc: Scenario,
    workdir: Path,
    *,
    log_levels: Mapping[str, int] | str = DEFAULT_LOG_LEVELS,
) -> Iterator[Pair]:
    """Two namespaces, a gateway charon and a road-warrior charon, configs loaded.

    Nothing is initiated yet. Everything is stopped and deleted on exit.
    """
    with two_hosts() as hosts, contextlib.ExitStack() as stack:
        hosts.right.add_addr("lo", f"{PROTECTED_ADDR}/32")
        left_ip, right_ip = hosts.link.a.addr(4), hosts.link.b.addr(4)
        responder = stack.enter_context(
            Charon(hosts.right, workdir / "right", log_levels=log_levels)
        )
        initiator = stack.enter_context(Charon(hosts.left, workdir / "left", log_levels=log_levels))
        cert_file = None
        if sc.auth != "psk":
            ca = make_ca(key_type=sc.gateway_key)
            gw = make_cert(ca, GATEWAY_ID, sc.gateway_key, san_ip=[right_ip])
            cert_file = responder.add_cert(gw, "gw")
            responder.add_cacert(ca)
            initiator.add_cacert(ca)
        responder.configure(responder_config(sc, right_ip, cert_file))
        initiator.configure(initiator_config(sc, left_ip, right_ip))
        responder.start()
        initiator.start()
        responder.load()
        initiator.load()
        yield Pair(hosts, initiator, responder)
