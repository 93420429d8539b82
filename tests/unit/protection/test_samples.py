"""The sample exchange (mpa_bench.samples) is deterministic and opens with our own code."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mpa_bench.samples import NONCE_I, RESPONDER_ID, build_exchange, demo
from mpa_ike.constants import AuthMethod, IdType
from mpa_ike.crypto.auth import auth_octets, verify_auth
from mpa_ike.protection import Reassembler, open_message
from mpa_ike.wire import AuthPayload, IdrPayload, parse_message, serialize_message


@pytest.mark.parametrize(
    "proposal",
    ["aes128-sha256-x25519", "aes128-sha256-modp2048", "aes256gcm16-prfsha384-ecp384"],
)
def test_exchange_is_deterministic_and_opens(proposal: str) -> None:
    first, second = build_exchange(proposal), build_exchange(proposal)
    assert [d.data for d in first.datagrams] == [d.data for d in second.datagrams]
    assert len(first.datagrams) == 4
    for datagram in first.datagrams[:2]:
        assert serialize_message(parse_message(datagram.data)) == datagram.data
        assert parse_message(datagram.data).payloads == datagram.plaintext.payloads
    for datagram in first.datagrams[2:]:
        header = parse_message(datagram.data).header
        opened = open_message(datagram.data, first.ciphers.inbound(not header.is_initiator))
        assert opened.payloads == datagram.plaintext.payloads


def test_fragmented_exchange_reassembles() -> None:
    exchange = build_exchange(max_message_size=120)
    fragments = [d for d in exchange.datagrams if "fragment" in d.name]
    assert len(fragments) > 2
    assert all(len(d.data) <= 120 for d in fragments)
    reassembler = Reassembler()
    results = [
        reassembler.add(d.data, exchange.ciphers.inbound(False))
        for d in fragments
        if d.name.startswith("IKE_AUTH request")
    ]
    assert results[-1] is not None
    assert results[-1].payloads == fragments[0].plaintext.payloads


def test_signature_auth_verifies() -> None:
    key = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
    exchange = build_exchange(signing_key=key)
    response = exchange.datagrams[3]
    auth = next(p for p in response.plaintext.payloads if isinstance(p, AuthPayload))
    assert auth.method == AuthMethod.DIGITAL_SIGNATURE
    idr = IdrPayload(IdType.FQDN, RESPONDER_ID)
    octets = auth_octets(
        exchange.datagrams[1].data,
        NONCE_I,
        exchange.suite.prf,
        exchange.keys.sk_pr,
        idr.rest_of_id_payload(),
    )
    verify_auth(auth.method, key.public_key(), octets, auth.data)


def test_demo_prints_every_message() -> None:
    lines: list[str] = []
    demo(lines.append)
    text = "\n".join(lines)
    for name in (
        "IKE_SA_INIT request",
        "IKE_SA_INIT response",
        "IKE_AUTH request",
        "IKE_AUTH response",
    ):
        assert name in text
    assert "CFG_REQUEST" in text and "MOBIKE_SUPPORTED" in text


def test_samples_module_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mpa_bench.samples"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "IKE_AUTH response" in result.stdout


def test_micro_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from mpa_bench.micro import main

    assert main(["--iterations", "20", "--repeats", "1", "--signatures", "ecdsa"]) == 0
    out = capsys.readouterr().out
    for needle in ("parse IKE_SA_INIT request", "AES-GCM-16-128", "x25519", "modp2048", "TOTAL"):
        assert needle in out
