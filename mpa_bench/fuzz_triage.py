"""Triage for ``mpa-bench fuzz``: the same probes, in memory, with the tracebacks.

The live gateway counts an exception of its core on a datagram (``internal_errors``)
and logs one line naming the source; the datagram and the traceback stay unknown,
because ``Endpoint.receive_datagram`` never raises, by design. :func:`triage` replays
the probe stream of a seed into an in-memory responder :class:`Endpoint` built from
our core, with the gateway's proposals and a fresh certificate, fed through
``Endpoint._receive`` (the private step under ``receive_datagram``, the one place
that lets the exception out) with a fake clock, so that every failing datagram comes
back as hex with its traceback. The live mobile nodes' SAs are not there: what only
fails on an established SA does not show here.
"""

from __future__ import annotations

import random
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mpa_bench import fuzz_mutators as mutators
from mpa_ike.endpoint import Endpoint

TICK = 0.001  # fake seconds between probes
SOURCES = tuple(f"192.0.2.{64 + n}" for n in range(32))


@dataclass
class Failure:
    index: int
    mutator: str
    seed: str
    route: str
    source: tuple[str, int]
    datagram: str  # hex of the UDP payload as sent
    traceback: str


@dataclass
class Triage:
    probes: int = 0
    fed: int = 0
    failures: list[Failure] = field(default_factory=list)
    by_error: Counter[str] = field(default_factory=Counter)


@dataclass
class Bench:
    """The in-memory gateway and its mobile nodes, connected back to back."""

    gateway: Endpoint
    mobiles: list[Endpoint]
    live: mutators.Live
    sent: list[tuple[str, bytes]]  # what the mobile nodes sent: seeds


def bench(mobiles: int, now: float = 0.0) -> Bench:
    """A responder core with the fuzz gateway's proposals, users and a throw-away
    certificate, and ``mobiles`` initiators connected to it in memory (EAP-MSCHAPv2)."""
    import ipaddress

    from mpa_bench.gateway_rig import (
        ESP,
        GATEWAY_ID,
        GW,
        IKE,
        MN_FIRST,
        PROTECTED_NET,
        initiator_config,
        password_of,
        user_of,
    )
    from mpa_harness.pki import make_ca, make_cert
    from mpa_ike.child_sa import ChildSaConfig
    from mpa_ike.constants import ProtocolId
    from mpa_ike.ike_config import ResponderConfig
    from mpa_ike.node.credentials import credential, load_certificates
    from mpa_ike.node.service import proposal_specs

    users = {user_of(k): password_of(k) for k in range(mobiles)}
    with tempfile.TemporaryDirectory(prefix="mpa-fuzz-triage-") as directory:
        where = Path(directory)
        ca = make_ca(key_type="ecdsa")
        make_cert(ca, GATEWAY_ID, "ecdsa", san_ip=[GW]).write(where / "gw.pem", where / "gw.key")
        ca.write(where / "ca.pem")
        cred = credential(where / "gw.pem", where / "gw.key")
        cas = load_certificates(where / "ca.pem", "ca")
    esp = proposal_specs([ESP], ProtocolId.ESP)
    config = ResponderConfig(
        identity=GATEWAY_ID,
        ike_proposals=proposal_specs([IKE], ProtocolId.IKE),
        child=ChildSaConfig(esp, local_ts=(ipaddress.ip_network(PROTECTED_NET),)),
        credential=cred,
        eap_users=lambda name: users.get(name.decode("utf-8", "replace")),
    )
    gateway = Endpoint(responder=config)
    nodes, spis, sent = [], [], []
    for k in range(mobiles):
        node = Endpoint()
        address = (f"192.0.2.{MN_FIRST + k}", 500)
        sa = node.initiate(initiator_config(k, cas), address, (GW, 500), now)
        for _ in range(20):  # IKE_SA_INIT, IKE_AUTH and the EAP rounds
            for datagram in node.datagrams_to_send(now):
                sent.append((f"mobile:mn{k}", datagram.data))
                gateway.receive_datagram(datagram.data, datagram.src, datagram.dst, now)
            for datagram in gateway.datagrams_to_send(now):
                node.receive_datagram(datagram.data, datagram.src, datagram.dst, now)
        spis.append((sa.spi_i, sa.spi_r))
        nodes.append(node)
    inbound = tuple(
        bytes.fromhex(str(child["spi_in"]))
        for sa in gateway.snapshot()
        for child in sa.get("child_sas", [])  # type: ignore[attr-defined]
    )
    return Bench(gateway, nodes, mutators.Live(tuple(spis), inbound), sent)


def triage(
    seeds: list[mutators.Seed], seed: int, count: int, *, mobiles: int = 2, keep: int = 20
) -> Triage:
    """Replay ``count`` probes of ``seed`` (``seeds`` plus what the in-memory mobile
    nodes sent) at an in-memory gateway; keep up to ``keep`` failures in full."""
    from mpa_bench.gateway_rig import GW

    found_bench = bench(mobiles)
    endpoint = found_bench.gateway
    all_seeds = [*seeds, *mutators.seeds_from(found_bench.sent)]
    generator = mutators.Generator(all_seeds, seed, found_bench.live)
    sources = random.Random(seed ^ 0x7A1A)
    found = Triage()
    now = 1.0
    for index in range(count):
        probe = next(generator)
        found.probes += 1
        now += TICK
        if probe.route == mutators.Route.BARE_4500:
            continue  # ESP: the datapath's, not the core's
        source = (sources.choice(SOURCES), sources.choice([500, 4500, 40000 + index % 1000]))
        found.fed += 1
        try:
            endpoint._receive(probe.message, source, (GW, probe.port), now)
        except Exception as error:
            found.by_error[f"{type(error).__name__}: {error}"] += 1
            if len(found.failures) < keep:
                found.failures.append(
                    Failure(
                        index,
                        probe.mutator,
                        probe.seed,
                        probe.route,
                        source,
                        probe.payload.hex(),
                        traceback.format_exc(),
                    )
                )
        if index % 64 == 0:
            endpoint.handle_timer(now)
            endpoint.datagrams_to_send(now)
            while endpoint.next_event() is not None:
                pass
    return found
