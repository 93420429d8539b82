"""``mpa-bench flood --blocking``: how long each request of a set-up holds the gateway's
event loop, the figure that decides whether its crypto needs a worker process.

Back-to-back in memory: our initiator core against a responder :class:`Endpoint` as
mpa-gateway builds it (EAP-MSCHAPv2 with a local user, CP, one CHILD SA), on each of
the proposals of ``PROPOSALS``. The time of one ``receive_datagram`` plus
``datagrams_to_send`` on the responder is what the loop cannot run anything else for
(no await inside): IKE_SA_INIT (DH key pair and shared secret, keys), the first
IKE_AUTH (the gateway's signature over its octets: ECDSA P-256 or RSA-2048), the EAP
rounds and the last IKE_AUTH (MSCHAPv2's hashes, the AUTH from the MSK, the CHILD SA's
keys, CP). Median, 99th percentile and maximum over ``--rounds`` set-ups, in CPU time
of the thread (what the loop waits for on an idle core; a busy machine adds its own).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.config_payload import LeaseRequest
from mpa_ike.constants import ExchangeType, ProtocolId
from mpa_ike.datagram import Datagram
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.ike_config import InitiatorConfig, ResponderConfig
from mpa_ike.wire import parse_header

GATEWAY_ID = "gw.mpa-ike.test"
USER, PASSWORD = "alice", "blocking-Pw-1!"
PROPOSALS = (
    ("x25519 + ECDSA P-256", "aes128gcm16-prfsha256-x25519", "ecdsa"),
    ("x25519 + RSA-2048", "aes128gcm16-prfsha256-x25519", "rsa"),
    ("modp2048 + RSA-2048", "aes128-sha256-modp2048", "rsa"),
)
MOBILE = ("192.0.2.10", 500)
GATEWAY = ("192.0.2.2", 500)


class Pool:
    """Hands out one address per IKE SA (the gateway's pool, without its lease file)."""

    def __init__(self) -> None:
        self.network = ipaddress.ip_network("10.3.0.0/16")
        self.next = 1
        self.owners: dict[object, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}

    def lease(self, request: LeaseRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if request.family != 4:
            return None
        address = self.network[self.next % (self.network.num_addresses - 2) + 1]
        self.next += 1
        self.owners[request.owner] = address
        return address

    def network_of(self, address: object) -> ipaddress.IPv4Network | None:
        return None

    def release(self, owner: object) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        found = self.owners.pop(owner, None)
        return (found,) if found is not None else ()


def configs(ike: str, key_type: str, workdir: Path) -> tuple[InitiatorConfig, ResponderConfig]:
    from mpa_harness.pki import make_ca, make_cert
    from mpa_ike.node.credentials import credential, load_certificates
    from mpa_ike.node.service import proposal_specs

    ca = make_ca(key_type="ecdsa")
    make_cert(ca, GATEWAY_ID, key_type, san_dns=[GATEWAY_ID]).write(  # type: ignore[arg-type]
        workdir / f"{key_type}.pem", workdir / f"{key_type}.key"
    )
    ca.write(workdir / "ca.pem")
    esp = proposal_specs(["aes128gcm16"], ProtocolId.ESP)
    initiator = InitiatorConfig(
        name="gw",
        identity=USER,
        eap_password=PASSWORD,
        remote_id=GATEWAY_ID,
        ike_proposals=proposal_specs([ike], ProtocolId.IKE),
        child=ChildSaConfig(esp, remote_ts=(ipaddress.ip_network("10.1.0.0/24"),)),
        ca=load_certificates(workdir / "ca.pem", "ca"),
        wall_clock=lambda: datetime.datetime.now(datetime.UTC),
        eap_methods=(EapType.MSCHAPV2,),
    )
    responder = ResponderConfig(
        identity=GATEWAY_ID,
        ike_proposals=proposal_specs([ike], ProtocolId.IKE),
        child=ChildSaConfig(esp, local_ts=(ipaddress.ip_network("10.1.0.0/24"),)),
        eap_users=lambda name: PASSWORD if name == USER.encode() else None,
        credential=credential(workdir / f"{key_type}.pem", workdir / f"{key_type}.key"),
        eap_methods=(EapType.MSCHAPV2,),
        allocator=Pool(),
        unique="never",
    )
    return initiator, responder


def step_name(datagram: Datagram, auth_index: int) -> str:
    kind = parse_header(datagram.data).exchange_type
    if kind == ExchangeType.IKE_SA_INIT:
        return "IKE_SA_INIT"
    return f"IKE_AUTH {auth_index}"


def measure(ike: str, key_type: str, rounds: int, workdir: Path) -> dict[str, list[float]]:
    """Seconds the responder spent on each request, by step, over ``rounds`` set-ups."""
    initiator, responder = configs(ike, key_type, workdir)
    gateway = Endpoint(random=os.urandom, responder=responder, half_open_threshold=1_000_000)
    times: dict[str, list[float]] = defaultdict(list)
    for n in range(rounds):
        mobile = Endpoint(random=os.urandom)
        mobile.initiate(initiator, (f"192.0.2.{10 + n % 200}", 500), GATEWAY, 0.0)
        auth_index = 0
        for _ in range(20):
            requests = mobile.datagrams_to_send(0.0)
            if not requests:
                break
            answers: list[Datagram] = []
            for request in requests:
                name = step_name(request, auth_index)
                start = time.thread_time()
                gateway.receive_datagram(request.data, request.src, request.dst, 0.0)
                answers += gateway.datagrams_to_send(0.0)
                times[name].append(time.thread_time() - start)
            if parse_header(requests[0].data).exchange_type == ExchangeType.IKE_AUTH:
                auth_index += 1
            for answer in answers:
                mobile.receive_datagram(answer.data, answer.src, answer.dst, 0.0)
        while gateway.next_event() is not None:
            pass
        for sa in gateway:
            gateway.delete(sa.local_spi, 0.0)
        gateway.datagrams_to_send(0.0)
    return dict(times)


def report(rounds: int) -> list[str]:
    lines = [f"{'proposal':22} {'request':12} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}"]
    with tempfile.TemporaryDirectory(prefix="mpa-blocking-") as directory:
        for label, ike, key_type in PROPOSALS:
            measured = measure(ike, key_type, rounds, Path(directory))
            for name, samples in measured.items():
                ordered = sorted(samples)
                p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
                lines.append(
                    f"{label:22} {name:12} {statistics.median(ordered) * 1000:10.3f}"
                    f" {p99 * 1000:8.3f} {ordered[-1] * 1000:8.3f}"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpa-bench flood --blocking")
    parser.add_argument("--rounds", type=int, default=200, help="set-ups per proposal (200)")
    args = parser.parse_args(argv)
    for line in report(args.rounds):
        print(line)
    return 0
