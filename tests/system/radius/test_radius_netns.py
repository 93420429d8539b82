"""FreeRADIUS in a network namespace, the gateway's client in another, over a veth link:
the harness's exec prefix, and the client from a separate process as the gateway runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mpa_harness.freeradius import FreeRadius, RadiusClientSpec, RadiusUser, require_freeradius
from mpa_harness.netns import two_hosts

pytestmark = pytest.mark.netns

CLIENT = """
import asyncio, json, sys
from ipaddress import ip_address
from gateway.radius import (
    AccessResult, AccountingSession, RadiusClient, RadiusConfig, RadiusServer, station_id,
)
from mpa_ike.eap import EapPeer, EapType
from mpa_ike.eap.packet import request

async def main():
    server = RadiusServer(ip_address(sys.argv[1]), 1812, sys.argv[2].encode())
    config = RadiusConfig((server,), timeout=1.0, retries=2, accounting=True)
    async with RadiusClient(config) as client:
        peer = EapPeer("alice", "correct horse", methods=[EapType.MSCHAPV2])
        relay = client.eap_relay("alice", station_id("198.51.100.7", 4500))
        message = peer.handle(request(0, EapType.IDENTITY).to_bytes())
        while True:
            answer = await relay.relay(message)
            message = peer.handle(answer.eap_message)
            if answer.result != AccessResult.CHALLENGE:
                break
        session = AccountingSession("ns-1", "alice", station_id("198.51.100.7", 4500))
        accounted = await client.account_start(session)
        return {
            "result": answer.result.name,
            "msk_matches": answer.msk == peer.msk,
            "framed_ip": str(answer.framed_ip),
            "accounted": accounted,
        }

print(json.dumps(asyncio.run(main())))
"""


def test_client_and_server_in_namespaces(tmp_path: Path) -> None:
    require_freeradius()
    with two_hosts(("192.0.2.1/24",), ("192.0.2.2/24",)) as hosts:
        server = FreeRadius(
            tmp_path / "freeradius",
            clients=[RadiusClientSpec("192.0.2.1", "ns-secret")],
            users=[RadiusUser("alice", "correct horse", framed_ip="10.9.0.9")],
            address="192.0.2.2",
            exec_prefix=hosts.right.exec_args([]),
        )
        server.start()
        try:
            proc = hosts.left.run(
                [sys.executable, "-c", CLIENT, "192.0.2.2", "ns-secret"], check=False, timeout=60
            )
            assert proc.returncode == 0, proc.stderr + server.log()
            outcome = json.loads(proc.stdout)
            records = server.accounting_records()
        finally:
            server.stop()
    assert outcome == {
        "result": "ACCEPT",
        "msk_matches": True,
        "framed_ip": "10.9.0.9",
        "accounted": True,
    }
    assert [r.get("Acct-Session-Id") for r in records] == ["ns-1"]
    assert records[0].get("Calling-Station-Id") == "198.51.100.7[4500]"
