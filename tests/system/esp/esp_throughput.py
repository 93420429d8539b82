"""Userspace ESP packets per second per core, in CPU time (a measurement, not a test).

    python3 tests/system/esp/esp_throughput.py [--seconds 1.0]

For AES-GCM-16/128 and AES-CBC-128 with HMAC-SHA2-256-128, at 64- and 1400-byte
inner packets: OutboundSa.encrypt and InboundSa.decrypt alone, and the whole
EspTunnels path (selector lookup + ESP) both ways.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.esp import EspTunnels, InboundSa, OutboundSa, make_transform

SUITES = {
    "aes128gcm16": (EncrId.AES_GCM_16, 128, None, bytes(range(20)), b""),
    "aes128-sha256": (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(16), bytes(32)),
}


def inner(size: int) -> bytes:
    payload = bytes(size - 28)
    head = b"\x45\x00" + size.to_bytes(2, "big") + bytes(4) + b"\x40\x11\0\0"
    udp = b"\x03\xe8\x00\x07" + (size - 20).to_bytes(2, "big") + b"\0\0"
    return head + bytes([10, 9, 0, 1, 10, 1, 0, 1]) + udp + payload


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of CPU time of this process (so per core, whatever the load)."""
    n, start = 0, time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            fn()
        n += 1000
        now = time.process_time()
        if now >= deadline:
            return n / (now - start)


def tunnels(suite: str) -> EspTunnels:
    encr, bits, integ, ek, ik = SUITES[suite]
    t = EspTunnels(replay_window=0)
    t.install(
        ChildSaParams(
            spi_in=b"\1\2\3\4",
            spi_out=b"\1\2\3\4",
            encr_id=encr,
            encr_key_bits=bits,
            integ_id=integ,
            encr_key_in=ek,
            integ_key_in=ik,
            encr_key_out=ek,
            integ_key_out=ik,
            esn=False,
            local=("192.0.2.1", 4500),
            remote=("192.0.2.2", 4500),
            encap=True,
            local_ts=(TsRange("10.9.0.1", "10.9.0.1"), TsRange("10.1.0.0", "10.1.0.255")),
            remote_ts=(TsRange("10.1.0.0", "10.1.0.255"), TsRange("10.9.0.1", "10.9.0.1")),
        )
    )
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"{'suite':14} {'size':>5} {'encrypt/s':>10} {'decrypt/s':>10} {'out/s':>10} {'in/s':>10}"
    )
    for suite, (encr, bits, integ, ek, ik) in SUITES.items():
        for size in (64, 1400):
            packet = inner(size)
            out = OutboundSa(b"\1\2\3\4", make_transform(encr, bits, integ, ek, ik))
            inb = InboundSa(b"\1\2\3\4", make_transform(encr, bits, integ, ek, ik), replay_window=0)
            esp = out.encrypt(packet)
            enc = rate(partial(out.encrypt, packet), args.seconds)
            dec = rate(partial(inb.decrypt, esp), args.seconds)
            t = tunnels(suite)
            t_out = rate(partial(t.outbound, packet), args.seconds)
            t_in = rate(partial(t.inbound, esp), args.seconds)
            print(f"{suite:14} {size:5} {enc:10.0f} {dec:10.0f} {t_out:10.0f} {t_in:10.0f}")


if __name__ == "__main__":
    main()
