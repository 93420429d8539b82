"""Known answers from strongSwan's charon: ESP-in-UDP packets it sent, with its keys.

Source: ``tests/vectors/charon/*.json`` (charon 5.9.8 with kernel-libipsec, see
that folder's README): UDP echoes from the virtual IP to 10.1.0.1 port 7 and
back, captured on the wire, and the CHILD SA keys from charon's level-4 log.
Decrypting them checks our AES-CBC/HMAC-SHA2-256-128 and AES-GCM-16 inbound
processing (key split, salt, IV, AAD, ICV, padding) against an independent
implementation.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.esp import DropReason, EspTunnels, InboundSa, OutboundSa, make_transform

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "charon"
SCENARIOS = sorted(p.stem for p in VECTORS.glob("*.json"))
ECHO_PEER = "10.1.0.1"


def load(scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / f"{scenario}.json").read_text())
    return data


def algorithms(rec: dict[str, Any]) -> tuple[int, int, int | None]:
    esp = rec["negotiated_esp"]
    encr = {"AES_CBC": EncrId.AES_CBC, "AES_GCM_16": EncrId.AES_GCM_16}[esp["encr-alg"]]
    integ = {None: None, "HMAC_SHA2_256_128": IntegId.HMAC_SHA2_256_128}[esp["integ-alg"]]
    return encr, int(esp["encr-keysize"]), integ


def packet_keys_for(rec: dict[str, Any], pkt: dict[str, Any]) -> tuple[bytes, bytes]:
    child = rec["child_sas"][pkt["child_sa_index"]]
    side = "i" if pkt["direction"] == "i->r" else "r"
    return bytes.fromhex(child[f"encr_{side}"]), bytes.fromhex(child[f"integ_{side}"])


def inbound_for(rec: dict[str, Any], pkt: dict[str, Any]) -> InboundSa:
    encr, bits, integ = algorithms(rec)
    ek, ik = packet_keys_for(rec, pkt)
    return InboundSa(bytes.fromhex(pkt["spi"]), make_transform(encr, bits, integ, ek, ik))


def ipv4_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, len(header), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def check_echo_packet(inner: bytes, rec: dict[str, Any], direction: str) -> None:
    """A valid IPv4/UDP echo datagram between the virtual IP and the echo peer."""
    assert inner[0] == 0x45
    assert int.from_bytes(inner[2:4], "big") == len(inner)
    assert ipv4_checksum(inner[:20]) == 0
    assert inner[9] == 17
    src, dst = str(ipaddress.ip_address(inner[12:16])), str(ipaddress.ip_address(inner[16:20]))
    vip = rec["virtual_ip"]
    assert (src, dst) == ((vip, ECHO_PEER) if direction == "i->r" else (ECHO_PEER, vip))
    udp = inner[20:]
    sport, dport = int.from_bytes(udp[0:2], "big"), int.from_bytes(udp[2:4], "big")
    assert (dport if direction == "i->r" else sport) == 7
    assert int.from_bytes(udp[4:6], "big") == len(udp)
    # The UDP checksum over the pseudo-header verifies to zero.
    pseudo = inner[12:20] + b"\0\x11" + len(udp).to_bytes(2, "big")
    data = pseudo + udp + (b"\0" if len(udp) % 2 else b"")
    assert ipv4_checksum(data) == 0
    assert udp[8:].startswith(b"mpa-ike known answer echo")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_charon_packets_decrypt(scenario: str) -> None:
    rec = load(scenario)
    assert rec["esp_packets"], "the recording has ESP packets"
    sas: dict[str, InboundSa] = {}
    for pkt in rec["esp_packets"]:
        sa = sas.setdefault(pkt["spi"], inbound_for(rec, pkt))
        data = bytes.fromhex(pkt["data"])
        assert int.from_bytes(data[4:8], "big") == pkt["seq"]
        inner = sa.decrypt(data)
        assert isinstance(inner, bytes), inner
        check_echo_packet(inner, rec, pkt["direction"])
        # The same packet again is a replay (RFC 4303 §3.4.3).
        assert sa.decrypt(data) is DropReason.REPLAY
    for sa in sas.values():
        assert sa.stats.packets == sum(1 for p in rec["esp_packets"] if p["spi"] == sa.spi.hex())
        assert sa.stats.drops[DropReason.REPLAY] == sa.stats.packets


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_charon_packets_tampered(scenario: str) -> None:
    rec = load(scenario)
    pkt = rec["esp_packets"][0]
    data = bytes.fromhex(pkt["data"])
    # Every byte after the SPI and sequence number is covered by the ICV.
    for i in range(8, len(data)):
        sa = inbound_for(rec, pkt)
        tampered = data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :]
        assert sa.decrypt(tampered) is DropReason.BAD_ICV, i
    # The sequence number too (in the AAD or under the HMAC).
    sa = inbound_for(rec, pkt)
    assert sa.decrypt(data[:7] + bytes([data[7] ^ 2]) + data[8:]) is DropReason.BAD_ICV


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_our_packets_decrypt_with_charon_keys(scenario: str) -> None:
    """Our outbound SA with charon's keys and SPIs round-trips the recorded inner packets."""
    rec = load(scenario)
    encr, bits, integ = algorithms(rec)
    for pkt in rec["esp_packets"]:
        ek, ik = packet_keys_for(rec, pkt)
        spi = bytes.fromhex(pkt["spi"])
        inner = inbound_for(rec, pkt).decrypt(bytes.fromhex(pkt["data"]))
        assert isinstance(inner, bytes)
        out = OutboundSa(spi, make_transform(encr, bits, integ, ek, ik))
        out.seq = pkt["seq"] - 1
        ours = out.encrypt(inner)
        # Same header and same length as charon's (same padding rule).
        assert ours[:8] == bytes.fromhex(pkt["data"])[:8]
        assert len(ours) == len(pkt["data"]) // 2
        assert inbound_for(rec, pkt).decrypt(ours) == inner


def test_charon_gcm_padding_is_four_byte_alignment() -> None:
    rec = load("eap_mschapv2_ecdsa_x25519_gcm")
    pkt = rec["esp_packets"][0]
    # 8 header + 8 IV + 16 ICV around payload | pad | 2: a 55-byte inner packet
    # takes 3 pad bytes so that 55 + 3 + 2 is a multiple of 4 (RFC 4303 §2.4).
    assert len(pkt["data"]) // 2 == 8 + 8 + 55 + 3 + 2 + 16


def test_charon_tunnel_tables() -> None:
    """The recorded SAs installed as a gateway would: selector checks pass."""
    rec = load("eap_md5_rsa_modp2048")
    encr, bits, integ = algorithms(rec)
    child = rec["child_sas"][0]
    vip = rec["virtual_ip"]
    gw = EspTunnels()
    gw.install(
        ChildSaParams(
            spi_in=bytes.fromhex(child["spi_r"]),
            spi_out=bytes.fromhex(child["spi_i"]),
            encr_id=encr,
            encr_key_bits=bits,
            integ_id=integ,
            encr_key_in=bytes.fromhex(child["encr_i"]),
            integ_key_in=bytes.fromhex(child["integ_i"]),
            encr_key_out=bytes.fromhex(child["encr_r"]),
            integ_key_out=bytes.fromhex(child["integ_r"]),
            esn=False,
            local=(rec["addresses"]["responder"], 4500),
            remote=(rec["addresses"]["initiator"], 4500),
            encap=True,
            local_ts=(TsRange("10.1.0.0", "10.1.0.255"),),
            remote_ts=(TsRange(vip, vip),),
        )
    )
    for pkt in rec["esp_packets"]:
        if pkt["direction"] != "i->r":
            continue
        result = gw.inbound(bytes.fromhex(pkt["data"]))
        assert not isinstance(result, DropReason), result
        pair, inner = result
        # The reply to that request goes back through the same pair.
        reply = inner[:12] + inner[16:20] + inner[12:16] + inner[20:]
        out = gw.outbound(reply)
        assert not isinstance(out, DropReason) and out[0] is pair
