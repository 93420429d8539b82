"""One side of a hand-keyed userspace ESP tunnel, run inside a test namespace.

    python3 tests/esp/esp_node.py '<json config>'

The config names the inner addresses to put on the TUN device, the UDP 4500 bind addresses, whether
the SAs use plain ESP over raw sockets (``"plain": true``) and the SA pairs
(``ChildSaParams`` fields, bytes in hex, addresses as [host, port], traffic
selectors as [start, end]). The node prints ``ready`` once the device and
SAs are installed, then answers one JSON line per command read on stdin:
``counters``, ``update <spi_in> <spi_out> <local host> <remote host>`` and ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from udp4500 import Udp4500Sockets

from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.io.raw_esp import RawEspSockets
from mpa_ike.io.userspace import UserspaceDatapath


def params_from_json(sa: dict[str, Any]) -> ChildSaParams:
    return ChildSaParams(
        spi_in=bytes.fromhex(sa["spi_in"]),
        spi_out=bytes.fromhex(sa["spi_out"]),
        encr_id=sa["encr_id"],
        encr_key_bits=sa["encr_key_bits"],
        integ_id=sa["integ_id"],
        encr_key_in=bytes.fromhex(sa["encr_key_in"]),
        integ_key_in=bytes.fromhex(sa["integ_key_in"]),
        encr_key_out=bytes.fromhex(sa["encr_key_out"]),
        integ_key_out=bytes.fromhex(sa["integ_key_out"]),
        esn=sa["esn"],
        local=(sa["local"][0], sa["local"][1]),
        remote=(sa["remote"][0], sa["remote"][1]),
        encap=sa.get("encap", True),
        local_ts=tuple(TsRange(a, b) for a, b in sa["local_ts"]),
        remote_ts=tuple(TsRange(a, b) for a, b in sa["remote_ts"]),
    )


def report(dp: UserspaceDatapath, udp: Udp4500Sockets) -> dict[str, Any]:
    sas = {}
    for spi_in, pair in dp.tunnels.by_spi_in.items():
        c = pair.counters()
        sas[spi_in.hex()] = {
            "packets_in": c.packets_in,
            "packets_out": c.packets_out,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "drops": dp.drops(spi_in),
            "remote": list(pair.remote),
        }
    return {
        "sas": sas,
        "drops": dp.drops(),
        "demux": {k.value: v for k, v in udp.demux.counts.items()},
        "tun_write_errors": dp.tun_write_errors,
    }


async def main(config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    udp = Udp4500Sockets(loop, config["bind"], config.get("port", 4500))
    raw = RawEspSockets(loop) if config.get("plain") else None
    dp = UserspaceDatapath.open(
        udp.demux.send_esp,
        name=config.get("tun_name", "mpa%d"),
        mtu=config.get("mtu", 1400),
        send_plain=raw.send if raw else None,
    )
    udp.demux.on_esp = dp.esp_received
    if raw is not None:
        raw.on_esp = dp.esp_received
    try:
        for address in config.get("inner_addresses", []):
            dp.add_inner_address(address)
        for sa in config["sas"]:
            dp.install_child_sa(params_from_json(sa))
        done = asyncio.Event()

        def command() -> None:
            line = sys.stdin.readline()
            words = line.split()
            if not words or words[0] == "quit":
                done.set()
                return
            if words[0] == "counters":
                answer: dict[str, Any] = report(dp, udp)
            elif words[0] == "update":
                spi_in, spi_out, local, remote = words[1:5]
                port = config.get("port", 4500)
                dp.move_child_sa(
                    bytes.fromhex(spi_in),
                    bytes.fromhex(spi_out),
                    (local, port),
                    (remote, port),
                    not config.get("plain"),
                )
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {words[0]}"}
            print(json.dumps(answer), flush=True)

        loop.add_reader(sys.stdin.fileno(), command)
        print("ready", flush=True)
        await done.wait()
    finally:
        udp.close()
        if raw is not None:
            raw.close()
        dp.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
