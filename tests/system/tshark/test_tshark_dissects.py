"""Wireshark agrees with our codec: tshark dissects messages built by mpa_ike.

The sample exchange (mpa_bench.samples: IKE_SA_INIT with SA/KE/Nonce/NAT-D/
fragmentation/signature-hash notifies, and IKE_AUTH with IDi, IDr, CP, SA,
TSi, TSr, AUTH, EAP and notifies, protected with SK) is written as a pcap of
UDP 500/4500 packets between loopback addresses, with an
``ikev2_decryption_table`` holding the derived keys. One tshark run per case
(CBC+HMAC, AES-GCM-16, and CBC+HMAC fragmented per RFC 7383, which Wireshark
reassembles) must report no malformed packet and no expert error or warning,
verify every ICV, and show the same payload chain, field by field, as the one
we encoded (including the decrypted SK contents).

tshark is installed if missing (root only); without it the test skips, except
under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tshark_pcap import NON_ESP_MARKER, UdpPacket, write_pcap

from mpa_bench.samples import SampleExchange, build_exchange
from mpa_harness import guards
from mpa_ike.wire import (
    AuthPayload,
    ConfigurationPayload,
    EapPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsPayload,
    serialize_payload_chain,
)

PI_ERROR = 0x00800000
PI_WARN = 0x00600000


@dataclass(frozen=True)
class Case:
    name: str
    ike_proposal: str
    encryption: str  # Wireshark's names in the decryption table (packet-isakmp.c)
    integrity: str
    max_message_size: int | None = None


CASES = [
    Case(
        "aes-cbc-hmac",
        "aes128-sha256-modp2048",
        "AES-CBC-128 [RFC3602]",
        "HMAC_SHA2_256_128 [RFC4868]",
    ),
    Case(
        "aes-gcm-16",
        "aes256gcm16-prfsha384-x25519",
        "AES-GCM-256 with 16 octet ICV [RFC5282]",
        "NONE [RFC4306]",
    ),
    Case(
        "fragmented",
        "aes128-sha256-x25519",
        "AES-CBC-128 [RFC3602]",
        "HMAC_SHA2_256_128 [RFC4868]",
        max_message_size=150,
    ),
]


# --- tshark --------------------------------------------------------------------------


def _install_tshark() -> str | None:
    """apt-get install tshark without the setuid question; the reason it failed, or None."""
    if os.geteuid() != 0:
        return "tshark is not installed and installing it needs root"
    if shutil.which("apt-get") is None:
        return "tshark is not installed and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    preseed = "wireshark-common wireshark-common/install-setuid boolean false\n"
    steps = [
        (["debconf-set-selections"], preseed),
        (["apt-get", "update", "-q"], None),
        (["apt-get", "install", "-y", "-q", "--no-install-recommends", "tshark"], None),
    ]
    for command, stdin in steps:
        result = subprocess.run(
            command, input=stdin, env=env, capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            return f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        reason = _install_tshark()
        path = shutil.which("tshark")
        if path is None:
            guards.require(reason or "tshark not found after installing it", "tshark")
    return path


def decryption_table(exchange: SampleExchange, case: Case) -> str:
    """One UAT record: hex byte fields unquoted, the algorithm names quoted."""
    keys, first = exchange.keys, exchange.datagrams[0].data
    spi_i, spi_r = first[:8].hex(), exchange.datagrams[1].data[8:16].hex()
    fields = [
        spi_i,
        spi_r,
        keys.sk_ei.hex(),
        keys.sk_er.hex(),
        f'"{case.encryption}"',
        keys.sk_ai.hex(),
        keys.sk_ar.hex(),
        f'"{case.integrity}"',
    ]
    return ",".join(fields) + "\n"


def dissect(tshark: str, exchange: SampleExchange, case: Case, workdir: Path) -> ET.Element:
    packets = [
        UdpPacket(d.source, d.destination, (NON_ESP_MARKER if d.non_esp_marker else b"") + d.data)
        for d in exchange.datagrams
    ]
    capture = workdir / f"{case.name}.pcap"
    write_pcap(capture, packets)
    config = workdir / "wireshark"
    config.mkdir(exist_ok=True)
    (config / "ikev2_decryption_table").write_text(decryption_table(exchange, case))
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config), HOME=str(workdir))
    result = subprocess.run(
        [tshark, "-n", "-r", str(capture), "-T", "pdml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # tshark reports a table it cannot load on stderr and carries on without keys.
    assert "Error" not in result.stderr, result.stderr
    return ET.fromstring(result.stdout)


# --- PDML ----------------------------------------------------------------------------


def _children(element: ET.Element) -> Iterator[ET.Element]:
    """Descendants of a payload, not entering nested payloads (proposals, transforms)."""
    for child in element:
        yield child
        if child.get("name") != "isakmp.typepayload":
            yield from _children(child)


def _shows(element: ET.Element, name: str) -> list[str]:
    return [str(c.get("show")) for c in _children(element) if c.get("name") == name]


def _show(element: ET.Element, name: str) -> str:
    values = _shows(element, name)
    assert len(values) == 1, (name, values)
    return values[0]


def _value(element: ET.Element, name: str) -> str:
    (value,) = [str(c.get("value")) for c in _children(element) if c.get("name") == name]
    return value


def _payloads(element: ET.Element) -> list[ET.Element]:
    return [c for c in _children(element) if c.get("name") == "isakmp.typepayload"]


def _chain(isakmp: ET.Element) -> tuple[list[ET.Element], list[ET.Element]]:
    """(outer payloads, inner payloads inside SK/SKF, decrypted or reassembled)."""
    outer = _payloads(isakmp)
    inner: list[ET.Element] = []
    for payload in outer:
        if payload.get("show") in ("46", "53"):
            inner = _payloads(payload)
    return outer, inner


def _tshark_summary(element: ET.Element) -> tuple[Any, ...]:
    kind = int(str(element.get("show")))
    length = int(_show(element, "isakmp.payloadlength"))
    details: Any = None
    if kind == 33:
        details = [
            (
                int(_show(p, "isakmp.prop.number")),
                int(_show(p, "isakmp.prop.protoid")),
                "".join(_value(p, "isakmp.spi").split(":")) if _shows(p, "isakmp.spi") else "",
                [
                    (
                        int(_show(t, "isakmp.tf.type")),
                        int(
                            next(
                                str(c.get("show"))
                                for c in _children(t)
                                if str(c.get("name")).startswith("isakmp.tf.id.")
                            )
                        ),
                        int(_show(t, "isakmp.ike2.attr.key_length"))
                        if _shows(t, "isakmp.ike2.attr.key_length")
                        else None,
                    )
                    for t in _payloads(p)
                ],
            )
            for p in _payloads(element)
        ]
    elif kind == 34:
        details = (
            int(_show(element, "isakmp.key_exchange.dh_group")),
            _value(element, "isakmp.key_exchange.data"),
        )
    elif kind in (35, 36):
        data = [
            s
            for c in _children(element)
            if str(c.get("name")).startswith("isakmp.id.data.")
            for s in [str(c.get("show"))]
        ]
        details = (int(_show(element, "isakmp.id.type")), data)
    elif kind == 39:
        details = (int(_show(element, "isakmp.auth.method")), _value(element, "isakmp.auth.data"))
    elif kind == 40:
        details = _value(element, "isakmp.nonce")
    elif kind == 41:
        details = int(_show(element, "isakmp.notify.msgtype"))
    elif kind in (44, 45):
        details = list(
            zip(
                map(int, _shows(element, "isakmp.ts.type")),
                _shows(element, "isakmp.ts.start_ipv4"),
                _shows(element, "isakmp.ts.end_ipv4"),
                map(int, _shows(element, "isakmp.ts.start_port")),
                map(int, _shows(element, "isakmp.ts.end_port")),
                strict=True,
            )
        )
    elif kind == 47:
        details = (
            int(_show(element, "isakmp.cfg.type")),
            [int(v) for v in _shows(element, "isakmp.cfg.attr.type")],
        )
    elif kind == 48:
        details = tuple(int(_show(element, f"eap.{f}")) for f in ("code", "id", "type"))
    return kind, length, details


def _our_summary(payload: Payload) -> tuple[Any, ...]:
    length = len(serialize_payload_chain([payload])[1])
    details: Any = None
    if isinstance(payload, SaPayload):
        details = [
            (
                p.number,
                int(p.protocol_id),
                p.spi.hex(),
                [(int(t.type), t.id, t.key_length) for t in p.transforms],
            )
            for p in payload.proposals
        ]
    elif isinstance(payload, KePayload):
        details = (int(payload.group), payload.data.hex())
    elif isinstance(payload, IdPayload):
        details = (int(payload.id_type), [payload.data.decode()])
    elif isinstance(payload, AuthPayload):
        details = (int(payload.method), payload.data.hex())
    elif isinstance(payload, NoncePayload):
        details = payload.data.hex()
    elif isinstance(payload, NotifyPayload):
        details = int(payload.notify_type)
    elif isinstance(payload, TsPayload):
        details = [
            (int(s.ts_type), str(s.start_addr), str(s.end_addr), s.start_port, s.end_port)
            for s in payload.selectors
            if isinstance(s, TrafficSelector)
        ]
    elif isinstance(payload, ConfigurationPayload):
        details = (int(payload.cfg_type), [int(a.attr_type) for a in payload.attributes])
    elif isinstance(payload, EapPayload):
        details = (payload.data[0], payload.data[1], payload.data[4])
    return int(payload.payload_type), length, details


def _problems(packet: ET.Element) -> list[str]:
    found = []
    for element in packet.iter():
        name = str(element.get("name"))
        if name == "_ws.malformed":
            found.append(f"malformed: {element.get('showname')}")
        if name == "_ws.expert":
            severity = _shows(element, "_ws.expert.severity")
            if any(int(s) >= PI_WARN for s in severity):
                found.append(
                    f"expert: {element.get('showname')} {_shows(element, '_ws.expert.message')}"
                )
    return found


# --- the test ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tshark_dissects_sample_exchange(tshark: str, case: Case, tmp_path: Path) -> None:
    exchange = build_exchange(case.ike_proposal, max_message_size=case.max_message_size)
    pdml = dissect(tshark, exchange, case, tmp_path)
    packets = pdml.findall("packet")
    assert len(packets) == len(exchange.datagrams)
    complete = 0
    for packet, datagram in zip(packets, exchange.datagrams, strict=True):
        assert _problems(packet) == [], datagram.name
        (isakmp,) = [p for p in packet.findall("proto") if p.get("name") == "isakmp"]
        assert int(_show(isakmp, "isakmp.length")) == len(datagram.data)
        assert int(_show(isakmp, "isakmp.messageid"), 16) == datagram.plaintext.header.message_id
        outer, inner = _chain(isakmp)
        if datagram.plaintext.header.message_id == 0:
            ours = list(datagram.plaintext.payloads)
            assert [_tshark_summary(p) for p in outer] == [_our_summary(p) for p in ours]
            complete += 1
            continue
        # Every SK/SKF payload was decrypted and its ICV verified by Wireshark.
        (protected,) = outer
        icv = [c for c in _children(protected) if c.get("name") == "isakmp.enc.icd"]
        assert len(icv) == 1 and str(icv[0].get("showname")).endswith("[correct]"), datagram.name
        assert _shows(protected, "isakmp.enc.decrypted") is not None
        if "fragment" in datagram.name and not datagram.name.endswith(
            _last_fragment(datagram.name)
        ):
            assert inner == [], "payloads before the last fragment arrived"
            continue
        ours = list(datagram.plaintext.payloads)
        assert [_tshark_summary(p) for p in inner] == [_our_summary(p) for p in ours], datagram.name
        complete += 1
    assert complete == 4  # two IKE_SA_INIT and two IKE_AUTH messages, whole or reassembled
    if case.max_message_size is not None:
        assert len(exchange.datagrams) > 4


def _last_fragment(name: str) -> str:
    total = name.rsplit("/", 1)[1]
    return f"{total}/{total}"
