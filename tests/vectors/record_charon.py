#!/usr/bin/env python3
"""Record known-answer IKEv2/ESP exchanges between two real charons (run by hand, as root).

For each scenario two charons run in two network namespaces (see tests/harness). The
initiator logs with ``ike 4, chd 4`` so its file log carries the DH shared secret,
SKEYSEED, SK_*, the EAP MSK and the CHILD_SA keys; tcpdump in the initiator's namespace
captures every IKE message and the ESP-in-UDP packets of a few UDP echoes through the
tunnel. The script joins both into one JSON file per scenario in tests/vectors/charon/
(schema: tests/vectors/charon/README.md).

    sudo python3 tests/vectors/record_charon.py [scenario ...]      # default: all

The encrypted payloads are decrypted here (with ``cryptography``) only to find the
nonces and SPIs of CREATE_CHILD_SA exchanges and to record each message's plaintext.
"""

from __future__ import annotations

import argparse
import hmac
import json
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mpa_harness.charon import KEYS_LOG_LEVELS, Charon, IkeSa, charon_version
from mpa_harness.charonlog import LogEntry, parse_log
from mpa_harness.netns import Netns
from mpa_harness.pcap import UdpDatagram, capture, classify, read_udp
from mpa_harness.scenarios import (
    CHILD,
    CLIENT_ID,
    CONN,
    EAP_PASSWORD,
    EAP_USER,
    GATEWAY_ID,
    PROTECTED_ADDR,
    PSK,
    Scenario,
    charon_pair,
)

OUT_DIR = Path(__file__).resolve().parent / "charon"
ECHO_PORT = 7
SCHEMA_VERSION = 1

EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}
PT_SA, PT_KE, PT_NONCE, PT_SK, PT_SKF = 33, 34, 40, 46, 53
DH_GROUPS = {"MODP_2048": 14, "ECP_256": 19, "CURVE_25519": 31, "ECP_384": 20}
INTEG = {  # charon name -> (hash, ICV length)
    "HMAC_SHA1_96": ("sha1", 12),
    "HMAC_SHA2_256_128": ("sha256", 16),
    "HMAC_SHA2_384_192": ("sha384", 24),
    "HMAC_SHA2_512_256": ("sha512", 32),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    scenario: Scenario
    rekey: bool = False


RECIPES = {
    r.name: r
    for r in [
        Recipe(
            "eap_md5_rsa_modp2048",
            "EAP-MD5 client, RSA-2048 certified gateway, CP virtual IP from a pool, "
            "IKE aes128-sha256-modp2048, ESP aes128-sha256, UDP encapsulation forced",
            Scenario("eap-md5", "aes128-sha256-modp2048", "aes128-sha256", "rsa"),
        ),
        Recipe(
            "eap_mschapv2_ecdsa_x25519_gcm",
            "EAP-MSCHAPv2 client, ECDSA P-256 certified gateway, CP virtual IP, "
            "IKE aes256gcm16-prfsha384-x25519, ESP aes128gcm16, UDP encapsulation forced",
            Scenario("eap-mschapv2", "aes256gcm16-prfsha384-x25519", "aes128gcm16", "ecdsa"),
        ),
        Recipe(
            "psk_ecp256_rekey",
            "PSK on both sides, no EAP, CP virtual IP, IKE aes128-sha256-ecp256, "
            "ESP aes256-sha256; then an IKE_SA rekey and a CHILD_SA rekey (both initiated "
            "by the original initiator), UDP encapsulation forced",
            Scenario("psk", "aes128-sha256-ecp256", "aes256-sha256", "rsa"),
            rekey=True,
        ),
    ]
}


# --------------------------------------------------------------------------- IKE parsing


@dataclass
class IkeMessage:
    dgram: UdpDatagram
    data: bytes
    marker_stripped: bool
    spi_i: bytes = b""
    spi_r: bytes = b""
    exchange: int = 0
    flags: int = 0
    message_id: int = 0
    first_payload: int = 0
    plaintext: bytes | None = None
    inner_first_payload: int | None = None
    ike_sa_index: int | None = None

    def __post_init__(self) -> None:
        d = self.data
        self.spi_i, self.spi_r = d[0:8], d[8:16]
        self.first_payload, self.exchange, self.flags = d[16], d[18], d[19]
        self.message_id = struct.unpack_from("!I", d, 20)[0]

    @property
    def from_original_initiator(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x20)


def walk_payloads(first: int, data: bytes, offset: int = 0) -> list[tuple[int, int, bytes]]:
    """(type, offset of the generic header, body) for a payload chain."""
    out = []
    ptype = first
    while ptype != 0 and offset + 4 <= len(data):
        nxt, length = data[offset], struct.unpack_from("!H", data, offset + 2)[0]
        out.append((ptype, offset, data[offset + 4 : offset + length]))
        if ptype in (PT_SK, PT_SKF):
            break
        offset += length
        ptype = nxt
    return out


def find_payload(first: int, data: bytes, ptype: int, offset: int = 0) -> bytes | None:
    for t, _, body in walk_payloads(first, data, offset):
        if t == ptype:
            return body
    return None


def sa_first_proposal(body: bytes) -> tuple[int, bytes]:
    """(protocol id, SPI) of the first proposal of an SA payload body."""
    proto, spi_size = body[5], body[6]
    return proto, body[8 : 8 + spi_size]


@dataclass
class IkeKeys:
    spi_i: bytes = b""
    spi_r: bytes = b""
    fields: dict[str, bytes] = field(default_factory=dict)


def decrypt(msg: IkeMessage, keys: IkeKeys, integ: str | None, gcm: bool) -> bytes | None:
    """Plaintext inner payloads of an SK/SKF message (None if not encrypted)."""
    payloads = walk_payloads(msg.first_payload, msg.data, 28)
    if not payloads or payloads[-1][0] not in (PT_SK, PT_SKF):
        return None
    ptype, hdr_off, body = payloads[-1]
    iv_off = hdr_off + 4 + (4 if ptype == PT_SKF else 0)
    if ptype == PT_SKF:
        body = body[4:]
    side = "i" if msg.from_original_initiator else "r"
    sk_e = keys.fields[f"sk_e{side}"]
    if gcm:
        iv, ct = body[:8], body[8:]
        aad = msg.data[:iv_off]
        padded = AESGCM(sk_e[:-4]).decrypt(sk_e[-4:] + iv, ct, aad)
    else:
        assert integ is not None
        hname, icv_len = INTEG[integ]
        icv = msg.data[-icv_len:]
        mac = hmac.new(keys.fields[f"sk_a{side}"], msg.data[:-icv_len], hname).digest()
        if mac[:icv_len] != icv:
            raise ValueError(f"ICV mismatch on message {msg.message_id}")
        iv, ct = body[:16], body[16:-icv_len]
        dec = Cipher(algorithms.AES(sk_e), modes.CBC(iv)).decryptor()
        padded = dec.update(ct) + dec.finalize()
    return padded[: -padded[-1] - 1]


# --------------------------------------------------------------------------- log extraction

IKE_LABELS = {
    "shared Diffie Hellman secret": "dh_shared_secret",
    "SKEYSEED": "skeyseed",
    "Sk_d secret": "sk_d",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi",
    "Sk_pr secret": "sk_pr",
}
CHILD_LABELS = {
    "seed": "keymat_seed",
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}


@dataclass
class ChildKeys:
    fields: dict[str, bytes] = field(default_factory=dict)
    dh: bytes | None = None
    spi_in: str = ""
    spi_out: str = ""


@dataclass
class LogFacts:
    ike: list[IkeKeys] = field(default_factory=list)
    child: list[ChildKeys] = field(default_factory=list)
    msk: bytes | None = None
    auth: list[dict[str, str]] = field(default_factory=list)


def extract(entries: list[LogEntry]) -> LogFacts:
    facts = LogFacts()
    last_dh: bytes | None = None
    pending_sa: str | None = None
    want_msk = False
    auth: dict[str, str] = {}
    for e in entries:
        if e.data is None:
            if "MSK established" in e.text and "no MSK" not in e.text:
                want_msk = True
            elif e.text in ("adding inbound ESP SA", "adding outbound ESP SA"):
                pending_sa = "in" if "inbound" in e.text else "out"
            elif pending_sa and e.text.startswith("SPI 0x") and facts.child:
                spi = e.text.split()[1].rstrip(",")[2:]
                setattr(facts.child[-1], f"spi_{pending_sa}", spi)
                pending_sa = None
            continue
        if e.label == "shared Diffie Hellman secret":
            last_dh = e.data
        elif e.label == "SKEYSEED":
            keys = IkeKeys()
            assert last_dh is not None
            keys.fields["dh_shared_secret"] = last_dh
            last_dh = None
            keys.fields["skeyseed"] = e.data
            facts.ike.append(keys)
        elif e.label in IKE_LABELS:
            facts.ike[-1].fields[IKE_LABELS[e.label]] = e.data
        elif e.label == "seed" and e.subsystem == "CHD":
            child = ChildKeys(dh=last_dh)
            last_dh = None
            child.fields["keymat_seed"] = e.data
            facts.child.append(child)
        elif e.label in CHILD_LABELS and e.subsystem == "CHD":
            facts.child[-1].fields[CHILD_LABELS[e.label]] = e.data
        elif e.label == "secret" and want_msk:
            facts.msk, want_msk = e.data, False
        if e.subsystem == "IKE" and e.label in ("IDx'", "SK_p"):
            auth = {} if e.label == "IDx'" else auth
            auth[{"IDx'": "id_payload_body", "SK_p": "sk_p"}[e.label]] = e.data.hex()
        elif e.label.startswith("octets = "):
            auth["octets"] = e.data.hex()
            facts.auth.append(auth)
        elif e.label == "AUTH = prf(prf(secret, keypad), octets)" and facts.auth:
            facts.auth[-1]["auth_data"] = e.data.hex()
        elif e.label == "prf(secret, keypad)" and facts.auth:
            facts.auth[-1]["prf_secret_keypad"] = e.data.hex()
        elif e.label == "secret" and facts.auth:
            facts.auth[-1]["secret"] = e.data.hex()
    return facts


# --------------------------------------------------------------------------- traffic

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
except TimeoutError:
    pass
"""

ECHO_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for i in range(int(sys.argv[3])):
    msg = b"mpa-ike known answer echo %d" % i
    s.sendto(msg, (sys.argv[1], int(sys.argv[2])))
    assert s.recvfrom(2048)[0] == msg
print("ok")
"""


def start_echo_server(ns: Netns) -> subprocess.Popen[bytes]:
    proc = ns.popen(
        ["python3", "-c", ECHO_SERVER, PROTECTED_ADDR, str(ECHO_PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("echo server did not start")
    return proc


def echo(ns: Netns, count: int) -> None:
    ns.run(["python3", "-c", ECHO_CLIENT, PROTECTED_ADDR, str(ECHO_PORT), str(count)])


# --------------------------------------------------------------------------- recording


def wait_new(charon: Charon, pred: Any, timeout: float = 10.0) -> IkeSa:
    sas = charon.wait_for(lambda sas: any(pred(sa) for sa in sas), timeout)
    return next(sa for sa in sas if pred(sa))


def record(recipe: Recipe, workdir: Path) -> dict[str, Any]:
    sc = recipe.scenario
    pcap_path = workdir / "capture.pcap"
    snapshots: list[IkeSa] = []
    with charon_pair(sc, workdir, log_levels=KEYS_LOG_LEVELS) as pair:
        left = pair.hosts.link.a
        server = start_echo_server(pair.hosts.right)
        try:
            with capture(left.ns, left.dev, pcap_path):
                pair.initiator.initiate(CHILD, timeout=10)
                sa = pair.initiator.wait_established(CHILD)
                snapshots.append(sa)
                echo(pair.hosts.left, 3)
                if recipe.rekey:
                    pair.initiator.rekey(ike=CONN)
                    sa = wait_new(
                        pair.initiator,
                        lambda s: (
                            s.state == "ESTABLISHED"
                            and s.initiator_spi != snapshots[0].initiator_spi
                            and any(c.state == "INSTALLED" for c in s.children)
                        ),
                    )
                    snapshots.append(sa)
                    time.sleep(0.3)  # old IKE_SA's DELETE exchange
                    old_spi = sa.child(CHILD).spi_in
                    pair.initiator.rekey(child=CHILD)
                    sa = wait_new(
                        pair.initiator,
                        lambda s: any(
                            c.state == "INSTALLED" and c.spi_in != old_spi for c in s.children
                        ),
                    )
                    snapshots.append(sa)
                    time.sleep(0.3)  # old CHILD_SA's DELETE exchange
                    echo(pair.hosts.left, 3)
                pair.initiator.terminate(ike=CONN, timeout=5)
                pair.initiator.wait_for(lambda sas: not sas, timeout=5)
        finally:
            server.kill()
            server.wait()
        log = pair.initiator.log_text()
        (workdir / "initiator.log").write_text(log)
        (workdir / "responder.log").write_text(pair.responder.log_text())
        return build(recipe, read_udp(pcap_path), parse_log(log), snapshots, left.addr(4))


def build(
    recipe: Recipe,
    dgrams: list[UdpDatagram],
    entries: list[LogEntry],
    snapshots: list[IkeSa],
    initiator_addr: str,
) -> dict[str, Any]:
    sc = recipe.scenario
    facts = extract(entries)
    first = snapshots[0].raw
    integ = first.get("integ-alg")
    gcm = "GCM" in first.get("encr-alg", "")

    msgs: list[IkeMessage] = []
    esp: list[tuple[UdpDatagram, bytes]] = []
    for d in dgrams:
        kind, data, stripped = classify(d)
        if kind == "ike":
            msgs.append(IkeMessage(d, data, stripped))
        elif kind == "esp":
            esp.append((d, data))

    # IKE SA 0 is named by IKE_SA_INIT; later ones by the CREATE_CHILD_SA that made them.
    init_req, init_resp = msgs[0], msgs[1]
    assert init_req.exchange == 34 and init_resp.exchange == 34
    facts.ike[0].spi_i, facts.ike[0].spi_r = init_resp.spi_i, init_resp.spi_r
    nonces: list[tuple[bytes, bytes]] = [
        (
            find_payload(init_req.first_payload, init_req.data, PT_NONCE, 28) or b"",
            find_payload(init_resp.first_payload, init_resp.data, PT_NONCE, 28) or b"",
        )
    ]
    ike_nonces: list[tuple[bytes, bytes]] = list(nonces)
    child_nonces: list[tuple[bytes, bytes]] = list(nonces)
    child_created_by = ["IKE_AUTH"]
    child_ike_index = [0]
    pending: dict[tuple[bytes, int], IkeMessage] = {}
    for m in msgs:
        idx = next(
            (
                i
                for i, k in enumerate(facts.ike)
                if k.spi_i == m.spi_i and (k.spi_r == m.spi_r or m.exchange == 34)
            ),
            None,
        )
        m.ike_sa_index = idx
        if idx is None or m.exchange == 34:
            continue
        m.plaintext = decrypt(m, facts.ike[idx], integ, gcm)
        m.inner_first_payload = _inner_first(m)
        if m.exchange != 36 or m.plaintext is None or m.inner_first_payload is None:
            continue
        key = (m.spi_i, m.message_id)
        if not m.is_response:
            pending[key] = m
            continue
        req = pending.pop(key)
        assert req.plaintext is not None and req.inner_first_payload is not None
        sa_req = find_payload(req.inner_first_payload, req.plaintext, PT_SA)
        sa_resp = find_payload(m.inner_first_payload, m.plaintext, PT_SA)
        n_i = find_payload(req.inner_first_payload, req.plaintext, PT_NONCE) or b""
        n_r = find_payload(m.inner_first_payload, m.plaintext, PT_NONCE) or b""
        assert sa_req is not None and sa_resp is not None
        proto, spi_new_i = sa_first_proposal(sa_req)
        _, spi_new_r = sa_first_proposal(sa_resp)
        if req.dgram.src != initiator_addr:
            raise RuntimeError("a CREATE_CHILD_SA was initiated by the responder host")
        if proto == 1:  # IKE rekey: the new SA's SPIs are in the proposals
            new = facts.ike[len(ike_nonces)]
            new.spi_i, new.spi_r = spi_new_i, spi_new_r
            ike_nonces.append((n_i, n_r))
        else:
            child_nonces.append((n_i, n_r))
            child_created_by.append("CREATE_CHILD_SA")
            child_ike_index.append(idx)

    ike_sas = []
    for i, k in enumerate(facts.ike):
        entry: dict[str, Any] = {
            "index": i,
            "created_by": "IKE_SA_INIT" if i == 0 else "CREATE_CHILD_SA (IKE_SA rekey)",
            "rekeyed_from": None if i == 0 else i - 1,
            "spi_i": k.spi_i.hex(),
            "spi_r": k.spi_r.hex(),
            "nonce_i": ike_nonces[i][0].hex(),
            "nonce_r": ike_nonces[i][1].hex(),
        }
        entry.update({name: k.fields.get(name, b"").hex() for name in IKE_LABELS.values()})
        ike_sas.append(entry)

    child_sas: list[dict[str, Any]] = []
    for i, c in enumerate(facts.child):
        n_i, n_r = child_nonces[i]
        seed = c.fields["keymat_seed"]
        assert seed.endswith(n_i + n_r), "CHILD keymat seed is not (g^ir |) Ni | Nr"
        child_sas.append(
            {
                "index": i,
                "created_by": child_created_by[i],
                "exchange_initiator": "initiator",
                "nonce_i": n_i.hex(),
                "nonce_r": n_r.hex(),
                "dh_shared_secret": c.dh.hex() if c.dh else None,
                "keymat_seed": seed.hex(),
                "sk_d_ike_sa_index": child_ike_index[i],
                "encr_i": c.fields.get("encr_i", b"").hex(),
                "integ_i": c.fields.get("integ_i", b"").hex(),
                "encr_r": c.fields.get("encr_r", b"").hex(),
                "integ_r": c.fields.get("integ_r", b"").hex(),
                "spi_i": c.spi_in,
                "spi_r": c.spi_out,
            }
        )

    spi_to_child: dict[str, tuple[int | None, str]] = {}
    for entry_c in child_sas:
        spi_to_child[entry_c["spi_i"]] = (entry_c["index"], "r->i")
        spi_to_child[entry_c["spi_r"]] = (entry_c["index"], "i->r")

    def direction(d: UdpDatagram) -> str:
        return "i->r" if d.src == initiator_addr else "r->i"

    messages = []
    for n, m in enumerate(msgs):
        messages.append(
            {
                "index": n,
                "direction": direction(m.dgram),
                "src": m.dgram.src,
                "sport": m.dgram.sport,
                "dst": m.dgram.dst,
                "dport": m.dgram.dport,
                "non_esp_marker_stripped": m.marker_stripped,
                "exchange": EXCHANGES.get(m.exchange, str(m.exchange)),
                "message_id": m.message_id,
                "response": m.is_response,
                "from_original_initiator": m.from_original_initiator,
                "ike_sa_index": m.ike_sa_index,
                "data": m.data.hex(),
                "fragment": _fragment(m),
                "plaintext_first_payload": m.inner_first_payload,
                "plaintext": m.plaintext.hex() if m.plaintext is not None else None,
            }
        )

    esp_packets: list[dict[str, Any]] = []
    for d, data in esp:
        spi = data[:4].hex()
        child_idx, dirn = spi_to_child.get(spi, (None, direction(d)))
        if dirn != direction(d):
            raise RuntimeError(f"ESP SPI {spi} seen in the wrong direction")
        per_child = sum(1 for p in esp_packets if p["spi"] == spi)
        if per_child >= 4:
            continue
        esp_packets.append(
            {
                "direction": dirn,
                "src": d.src,
                "sport": d.sport,
                "dst": d.dst,
                "dport": d.dport,
                "spi": spi,
                "seq": struct.unpack_from("!I", data, 4)[0],
                "child_sa_index": child_idx,
                "data": data.hex(),
            }
        )

    vips = snapshots[0].local_vips
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": recipe.name,
        "description": recipe.description,
        "charon_version": charon_version(),
        "ike_proposal": sc.ike_proposal,
        "esp_proposal": sc.esp_proposal,
        "negotiated_ike": {
            "encr": first.get("encr-alg"),
            "encr_keysize": int(first["encr-keysize"]) if "encr-keysize" in first else None,
            "integ": integ,
            "prf": first.get("prf-alg"),
            "dh_group": first.get("dh-group"),
            "dh_group_number": DH_GROUPS.get(first.get("dh-group", "")),
        },
        "negotiated_esp": {
            k: snapshots[0].children[0].raw.get(k)
            for k in ("encr-alg", "encr-keysize", "integ-alg")
        },
        "auth": {
            "initiator": sc.auth,
            "responder": "psk" if sc.auth == "psk" else "pubkey",
            "responder_key": None if sc.auth == "psk" else f"{sc.gateway_key}",
            "eap_method": None if sc.auth == "psk" else sc.auth,
        },
        "identities": {
            "initiator": CLIENT_ID,
            "responder": GATEWAY_ID,
            "eap_identity": None if sc.auth == "psk" else EAP_USER,
            "eap_password": None if sc.auth == "psk" else EAP_PASSWORD,
            "psk": None if sc.auth != "psk" else PSK,
        },
        "addresses": {"initiator": initiator_addr, "responder": snapshots[0].remote_host},
        "virtual_ip": vips[0] if vips else None,
        "dh_group": first.get("dh-group"),
        "ike_sas": ike_sas,
        "eap_msk": facts.msk.hex() if facts.msk else None,
        "auth_computations": [{"auth_of": _signer(a, facts.ike[0]), **a} for a in facts.auth],
        "child_sas": child_sas,
        "messages": messages,
        "esp_packets": esp_packets,
    }


def _fragment(m: IkeMessage) -> list[int] | None:
    """[number, total] of an SKF (RFC 7383) message, None for anything else."""
    payloads = walk_payloads(m.first_payload, m.data, 28)
    if not payloads or payloads[-1][0] != PT_SKF:
        return None
    body = payloads[-1][2]
    return list(struct.unpack_from("!HH", body, 0))


def _signer(auth: dict[str, str], ike: IkeKeys) -> str | None:
    sk_p = bytes.fromhex(auth.get("sk_p", ""))
    if sk_p == ike.fields.get("sk_pi"):
        return "initiator"
    if sk_p == ike.fields.get("sk_pr"):
        return "responder"
    return None


def _inner_first(m: IkeMessage) -> int | None:
    payloads = walk_payloads(m.first_payload, m.data, 28)
    if not payloads or payloads[-1][0] not in (PT_SK, PT_SKF):
        return None
    return m.data[payloads[-1][1]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(RECIPES)}")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, pcap)")
    args = parser.parse_args()
    names = args.scenarios or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in names:
        work = Path(tempfile.mkdtemp(prefix=f"rec-{name[:6]}-"))
        result = record(RECIPES[name], work)
        out = OUT_DIR / f"{name}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{out}: {len(result['messages'])} IKE messages, {len(result['esp_packets'])} ESP")
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            print(f"  work dir kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
