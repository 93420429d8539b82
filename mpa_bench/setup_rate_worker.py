"""One initiator process of ``mpa-bench setup-rate``: many IKE SAs at once over UDP.

Our own initiator code, the sans-I/O core: one :class:`~mpa_ike.endpoint.Endpoint` per
IKE SA (so that what is sent and what times out is looked at per SA, not by a sweep over
every SA the process holds), behind one UDP socket on port 500 and one on 4500 of the
process's own address; a datagram goes to the endpoint of its initiator SPI. Every IKE
SA has its own identity (``<user>@<domain>``, EAP identity ``<user>``) out of the block
of users the process is given, so that no gateway's uniqueness policy closes one for
another, and no identity is in use twice at a time.

Started as ``python -m mpa_bench.setup_rate_worker`` inside the initiators' namespace,
it reads commands as JSON lines on stdin and answers each with one JSON line on stdout
(progress lines, ``{"progress": ...}``, may come before it):

- ``{"cmd": "run", "mode": "closed", "concurrency": C, "start": S, "end": E, "keep":
  false}``: from monotonic time S to E, C set-ups in flight, a new one for each that
  comes up (closed loop); ``mode: "open"`` with ``rate``: one set-up every 1/rate
  seconds from S (open loop; ``phase`` staggers the processes). Each IKE SA that comes
  up is deleted at once, or kept (``keep``) until ``release``. The answer: the times at
  which IKE SAs came up and their set-up latencies (open loop: from the scheduled start).
- ``{"cmd": "hold", "count": K, "concurrency": C, "seconds": T}``: K IKE SAs up and
  kept, none started after T seconds.
- ``{"cmd": "release"}``: DELETE every kept IKE SA, until all are answered.
- ``{"cmd": "quit"}``.

Latency is from ``initiate`` (or the scheduled start) to the IKE_AUTH response that
brings the CHILD SA: IKE_SA_INIT, IKE_AUTH with EAP-MSCHAPv2 (four round trips), CP.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import select
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpa_ike.child_sa import ChildSaConfig
from mpa_ike.constants import ProtocolId
from mpa_ike.datagram import Address, frame_for_socket, unframe_from_socket
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import ChildSaEstablished, IkeSaDeleted, IkeSaEstablished, IkeSaFailed
from mpa_ike.ike_config import InitiatorConfig
from mpa_ike.node.credentials import load_certificates
from mpa_ike.node.service import proposal_specs, wall_clock

IKE_PORT, NAT_T_PORT = 500, 4500
SWEEP = 0.05  # seconds between looks at the timers of the SAs in flight
SETUP_TIMEOUT = 15.0  # an IKE SA not up by then counts as failed and is dropped
DELETE_TIMEOUT = 10.0
PROGRESS = 1.0  # seconds between progress lines
RECV_BUFFER = 4 << 20


@dataclass
class Attempt:
    """One IKE SA of ours, from initiate to its DELETE's answer."""

    endpoint: Endpoint
    spi: bytes
    user: int
    started: float  # when it was started, or was scheduled to be (open loop)
    keep: bool
    up: float | None = None
    ike_up: bool = False
    child_up: bool = False
    deleting: float | None = None


@dataclass
class Tally:
    """What one ``run``, ``hold`` or ``release`` saw."""

    completions: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    skipped: int = 0  # open loop: starts not made, the in-flight limit reached
    deleted: int = 0

    def answer(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Initiators:
    """The IKE SAs of this process and its two sockets."""

    def __init__(self, base: InitiatorConfig, local: str, gateway: str, users: Sequence[str]):
        self.base = base
        self.local = local
        self.gateway: Address = (gateway, IKE_PORT)
        self.users = list(users)
        self.free = list(range(len(users)))  # identities not in use, a queue
        self.sockets = {port: self._bind(port) for port in (IKE_PORT, NAT_T_PORT)}
        self.by_spi: dict[bytes, Attempt] = {}
        self.kept: dict[bytes, Attempt] = {}
        self.tally = Tally()
        self.next_sweep = 0.0
        self.next_progress = 0.0

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((self.local, port))
        return sock

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()

    # -- starting, ending

    @property
    def in_flight(self) -> int:
        return sum(1 for a in self.by_spi.values() if a.up is None)

    def start(self, now: float, scheduled: float | None = None, keep: bool = False) -> bool:
        if not self.free:
            return False
        user = self.free.pop(0)
        name = self.users[user]
        config = dataclasses.replace(
            self.base, name=name, identity=f"{name}@{self.base.identity}", eap_identity=name
        )
        endpoint = Endpoint(random=os.urandom)
        sa = endpoint.initiate(config, (self.local, IKE_PORT), self.gateway, now)
        attempt = Attempt(endpoint, sa.local_spi, user, scheduled or now, keep)
        self.by_spi[sa.local_spi] = attempt
        self._flush(attempt, now)
        return True

    def _established(self, attempt: Attempt, now: float) -> None:
        attempt.up = now
        self.tally.completions.append(now)
        self.tally.latencies.append(now - attempt.started)
        if attempt.keep:
            self.kept[attempt.spi] = attempt
            del self.by_spi[attempt.spi]
        else:
            self.delete(attempt, now)

    def delete(self, attempt: Attempt, now: float) -> None:
        attempt.deleting = now
        self.by_spi[attempt.spi] = attempt
        attempt.endpoint.delete(attempt.spi, now)
        self._flush(attempt, now)

    def _forget(self, attempt: Attempt) -> None:
        self.by_spi.pop(attempt.spi, None)
        self.kept.pop(attempt.spi, None)
        self.free.append(attempt.user)

    # -- the loop

    def pump(self, until: Callable[[float], bool], tick: Callable[[float], None]) -> None:
        """Receive, send and fire timers, calling ``tick(now)`` each round, until
        ``until(now)``."""
        while True:
            now = time.monotonic()
            tick(now)
            if now >= self.next_sweep:
                self._sweep(now)
                self.next_sweep = now + SWEEP
            if now >= self.next_progress:
                self.next_progress = now + PROGRESS
                _say({"progress": len(self.tally.completions), "in_flight": self.in_flight})
            if until(now):
                return
            ready, _, _ = select.select(list(self.sockets.values()), [], [], 0.005)
            for sock in ready:
                self._drain(sock)

    def _drain(self, sock: socket.socket) -> None:
        port = sock.getsockname()[1]
        for _ in range(256):
            try:
                payload, peer = sock.recvfrom(65535, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            message = unframe_from_socket(payload, port)
            if message is None or len(message) < 8:
                continue
            attempt = self.by_spi.get(message[:8]) or self.kept.get(message[:8])
            if attempt is None:
                continue
            now = time.monotonic()
            src = (str(peer[0]), int(peer[1]))
            attempt.endpoint.receive_datagram(message, src, (self.local, port), now)
            self._flush(attempt, now)

    def _sweep(self, now: float) -> None:
        for attempt in list(self.by_spi.values()):
            timer = attempt.endpoint.get_timer()
            if timer is not None and timer <= now:
                attempt.endpoint.handle_timer(now)
                self._flush(attempt, now)
            if attempt.spi not in self.by_spi:
                continue
            if attempt.up is None and now - attempt.started > SETUP_TIMEOUT:
                self.tally.failed += 1
                self._forget(attempt)
            elif attempt.deleting is not None and now - attempt.deleting > DELETE_TIMEOUT:
                self._forget(attempt)

    def _flush(self, attempt: Attempt, now: float) -> None:
        for datagram in attempt.endpoint.datagrams_to_send(now):
            self.sockets[datagram.src[1]].sendto(frame_for_socket(datagram), datagram.dst)
        while (event := attempt.endpoint.next_event()) is not None:
            if isinstance(event, IkeSaEstablished):
                attempt.ike_up = True
            elif isinstance(event, ChildSaEstablished):
                attempt.child_up = True
            elif isinstance(event, IkeSaDeleted):
                self.tally.deleted += 1
                self._forget(attempt)
                return
            elif isinstance(event, IkeSaFailed):
                if attempt.up is None:
                    self.tally.failed += 1
                self._forget(attempt)
                return
            if attempt.up is None and attempt.ike_up and attempt.child_up:
                self._established(attempt, now)

    # -- commands

    def run(self, command: dict[str, Any]) -> Tally:
        self.tally = Tally()
        start, end, keep = float(command["start"]), float(command["end"]), bool(command["keep"])
        if command["mode"] == "closed":
            concurrency = int(command["concurrency"])

            def tick(now: float) -> None:
                while start <= now < end and self.in_flight < concurrency:
                    if not self.start(now, keep=keep):
                        return

        else:
            interval = 1 / float(command["rate"])
            limit = int(command["concurrency"])
            due = start + float(command.get("phase", 0.0)) * interval

            def tick(now: float) -> None:
                nonlocal due
                while due <= now and due < end:
                    if self.in_flight >= limit or not self.start(now, scheduled=due, keep=keep):
                        self.tally.skipped += 1
                    due += interval

        self.pump(lambda now: now >= end and not self.by_spi, tick)
        return self.tally

    def hold(self, count: int, concurrency: int, seconds: float) -> Tally:
        self.tally = Tally()
        wanted = len(self.kept) + count
        # Bounded however slow the gateway gets: no new start after ``seconds``, nor
        # after more failures than a tenth of the SAs asked for.
        last_start = time.monotonic() + seconds
        failures_allowed = max(10, count // 10)

        def starting(now: float) -> bool:
            return now < last_start and self.tally.failed <= failures_allowed

        def tick(now: float) -> None:
            started = len(self.kept) + self.in_flight
            while (
                starting(now)
                and started < wanted
                and self.in_flight < concurrency
                and self.start(now, keep=True)
            ):
                started += 1

        def done(now: float) -> bool:
            return len(self.kept) >= wanted or (not starting(now) and not self.in_flight)

        self.pump(done, tick)
        return self.tally

    def release(self, concurrency: int) -> Tally:
        self.tally = Tally()
        waiting = list(self.kept.values())
        self.kept.clear()
        deadline = time.monotonic() + DELETE_TIMEOUT + len(waiting) / 50

        def tick(now: float) -> None:
            while waiting and len(self.by_spi) < concurrency:
                self.delete(waiting.pop(), now)

        self.pump(lambda now: (not waiting and not self.by_spi) or now > deadline, tick)
        return self.tally


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def base_config(args: argparse.Namespace) -> InitiatorConfig:
    return InitiatorConfig(
        name="bench",
        identity=args.domain,
        eap_password=args.password,
        remote_id=args.gateway_id,
        ike_proposals=proposal_specs([args.ike], ProtocolId.IKE),
        child=ChildSaConfig(
            proposal_specs([args.esp], ProtocolId.ESP),
            remote_ts=(ipaddress.ip_network(args.remote_ts),),
        ),
        ca=load_certificates(Path(args.ca), "ca"),
        wall_clock=wall_clock,
        eap_methods=(EapType.MSCHAPV2,),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpa_bench.setup_rate_worker")
    parser.add_argument("--local", required=True, help="our address (ports 500 and 4500)")
    parser.add_argument("--gateway", required=True, help="the gateway's address")
    parser.add_argument("--gateway-id", required=True)
    parser.add_argument("--ca", required=True, help="the CA certificate of the gateway's")
    parser.add_argument("--ike", required=True)
    parser.add_argument("--esp", required=True)
    parser.add_argument("--remote-ts", required=True)
    parser.add_argument("--domain", required=True, help="IKE identities are user@domain")
    parser.add_argument("--password", required=True, help="every user's EAP password")
    parser.add_argument("--users", required=True, help="first:count of the users u<N>")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    first, count = (int(part) for part in args.users.split(":"))
    users = [f"u{n}" for n in range(first, first + count)]
    initiators = Initiators(base_config(args), args.local, args.gateway, users)
    try:
        _say({"ready": True})
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            if command["cmd"] == "run":
                tally = initiators.run(command)
            elif command["cmd"] == "hold":
                tally = initiators.hold(
                    int(command["count"]), int(command["concurrency"]), float(command["seconds"])
                )
            elif command["cmd"] == "release":
                tally = initiators.release(int(command.get("concurrency", 64)))
            else:
                raise ValueError(f"unknown command {command['cmd']!r}")
            _say({"done": command["cmd"], "kept": len(initiators.kept), **tally.answer()})
    finally:
        initiators.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
