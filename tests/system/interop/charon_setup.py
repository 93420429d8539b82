"""What the tests against charon share: the four cases of EAP method, IKE proposal and
key type, charon initiating towards a running mpa-gateway, and charon's diagnostics
printed when a test fails inside."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from servicehelp import Daemon

from mpa_harness.charon import Charon
from mpa_harness.netns import TwoHosts
from mpa_harness.pki import KeyType
from mpa_harness.scenarios import CONN, Scenario, initiator_config
from tests.system.interop.test_mobile_vs_gateway import gateway_yaml, start_daemon, wait_listening

# Every pair of method, IKE proposal and key type.
MATRIX: list[tuple[str, str, KeyType]] = [
    ("eap-md5", "aes128-sha256-modp2048", "rsa"),
    ("eap-md5", "aes256gcm16-prfsha384-x25519", "ecdsa"),
    ("eap-mschapv2", "aes128-sha256-modp2048", "ecdsa"),
    ("eap-mschapv2", "aes256gcm16-prfsha384-x25519", "rsa"),
]


@contextlib.contextmanager
def diagnosed(charon: Charon) -> Iterator[None]:
    """charon's state and log printed if what runs inside fails."""
    try:
        yield
    except BaseException:
        print(charon.diagnostics())
        raise


@dataclass
class CharonAndGateway:
    hosts: TwoHosts
    charon: Charon
    gateway: Daemon
    gateway_config: Path


@contextlib.contextmanager
def charon_and_gateway(
    workdir: Path,
    hosts: TwoHosts,
    method: str,
    ike: str,
    key: KeyType,
    *,
    family: int = 4,
    listen: Sequence[str] | None = None,
    charon_local: str | None = None,
    charon_remote: str | None = None,
    charon_ike: str | None = None,
    password: str | None = None,
    connection: Mapping[str, str] | None = None,
    gateway_log: Callable[[str], object] = print,
    **gateway_extra: object,
) -> Iterator[CharonAndGateway]:
    """mpa-gateway in ``hosts.right`` listening on ``listen`` (default: its IPv4 and
    IPv6 addresses; a fresh CA and certificate of ``key``), charon in ``hosts.left``
    configured as a road warrior (``encap = yes``) from ``charon_local`` to
    ``charon_remote`` (default: the link's addresses of ``family``) and loaded, not yet
    initiating (``connection``: more keys of its connection); the gateway's log goes to
    ``gateway_log`` when it stops."""
    sc = Scenario(method, ike_proposal=charon_ike or ike, gateway_key=key, encap=True)
    link = hosts.link
    listen = [link.b.addr(4), link.b.addr(6)] if listen is None else listen
    with contextlib.ExitStack() as stack:
        (workdir / "gw").mkdir()
        config, ca = gateway_yaml(workdir / "gw", list(listen), method, ike, key, **gateway_extra)
        gateway = start_daemon("gateway.cli", config, hosts.right.name)
        stack.callback(lambda: gateway_log(gateway.stop()))
        wait_listening(config)
        charon = stack.enter_context(Charon(hosts.left, workdir / "charon"))
        charon.add_cacert(ca)
        local, remote = charon_local or link.a.addr(family), charon_remote or link.b.addr(family)
        swanctl = initiator_config(sc, local, remote)
        if password is not None:
            swanctl.secrets[0].secret = password
        swanctl.connections[CONN].extra.update(connection or {})
        charon.configure(swanctl)
        charon.start()
        charon.load()
        with diagnosed(charon):
            yield CharonAndGateway(hosts, charon, gateway, config)
