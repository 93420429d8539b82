"""``mpa-bench micro``: micro-benchmarks of the protocol core (not a timed test).

Prints one table: encode and parse time of the sample IKE_SA_INIT and IKE_AUTH
messages (mpa_bench.samples), SK seal/open of the IKE_AUTH request for AES-CBC +
HMAC and AES-GCM, and the crypto cost of one IKE_SA_INIT + IKE_AUTH exchange,
both sides together, for curve25519 and modp2048 with PSK, ECDSA P-256 and
RSA-2048 (RFC 7427) authentication of the gateway.

Each figure is the median over ``--repeats`` rounds of ``--iterations`` calls
(time.perf_counter), after a warm-up round.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cryptography
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mpa_bench.samples import (
    INITIATOR_ID,
    NONCE_I,
    NONCE_R,
    PSK,
    RESPONDER_ID,
    SPI_I,
    SPI_R,
    build_exchange,
    deterministic_random,
)
from mpa_ike.constants import AuthMethod, ExchangeType, HashAlgorithm, HeaderFlag, IdType
from mpa_ike.crypto.auth import (
    SigningKey,
    auth_octets,
    psk_auth,
    sign_auth,
    verify_auth,
    verify_shared_key_auth,
)
from mpa_ike.crypto.dh import generate_key_exchange
from mpa_ike.crypto.sk import sk_cipher_pair
from mpa_ike.protection import open_message, seal_message
from mpa_ike.wire import (
    IdiPayload,
    IdrPayload,
    IkeHeader,
    parse_message,
    parse_payload_chain,
    serialize_message,
    serialize_payload_chain,
)

Timer = Callable[[], object]

CBC_PROPOSAL = "aes128-sha256-x25519"
GCM_PROPOSAL = "aes128gcm16-prfsha256-x25519"
GROUPS = {"x25519": "aes128-sha256-x25519", "modp2048": "aes128-sha256-modp2048"}


@dataclass(frozen=True)
class Row:
    section: str
    name: str
    microseconds: float
    detail: str = ""


def measure(fn: Timer, iterations: int, repeats: int) -> float:
    """Median time of one call in microseconds."""
    for _ in range(max(1, iterations // 10)):
        fn()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        rounds.append((time.perf_counter() - start) / iterations)
    return statistics.median(rounds) * 1e6


# --- codec and SK --------------------------------------------------------------------


def codec_rows(iterations: int, repeats: int) -> list[Row]:
    """Encode and parse of each sample message (for IKE_AUTH: the inner payload chain)."""
    exchange = build_exchange(CBC_PROPOSAL)
    rows = []
    for datagram in exchange.datagrams:
        message = datagram.plaintext
        payloads = list(message.payloads)
        count = f"{len(payloads)} payloads"
        if message.header.exchange_type == ExchangeType.IKE_SA_INIT:
            data = datagram.data
            encode: Timer = lambda: serialize_message(message)  # noqa: E731, B023
            parse: Timer = lambda: parse_message(data)  # noqa: E731, B023
            what = datagram.name
        else:
            inner_type, data = serialize_payload_chain(payloads)
            encode = lambda: serialize_payload_chain(payloads)  # noqa: E731, B023
            parse = lambda: parse_payload_chain(inner_type, data)  # noqa: E731, B023
            what = f"{datagram.name} (inner chain)"
        detail = f"{len(data)} B, {count}"
        rows.append(Row("codec", f"encode {what}", measure(encode, iterations, repeats), detail))
        rows.append(Row("codec", f"parse {what}", measure(parse, iterations, repeats), detail))
    inner = list(exchange.datagrams[2].plaintext.payloads)
    for label, proposal in (
        ("AES-CBC-128/HMAC-SHA2-256", CBC_PROPOSAL),
        ("AES-GCM-16-128", GCM_PROPOSAL),
    ):
        sample = build_exchange(proposal)
        header = sample.datagrams[2].plaintext.header
        sealer = sample.ciphers.outbound(True)
        opener = sample.ciphers.inbound(False)
        sealed = seal_message(header, inner, sealer)[0]
        rows.append(
            Row(
                "SK",
                f"seal IKE_AUTH request (encode+encrypt), {label}",
                measure(lambda: seal_message(header, inner, sealer), iterations, repeats),  # noqa: B023
                f"{len(sealed)} B",
            )
        )
        rows.append(
            Row(
                "SK",
                f"open IKE_AUTH request (verify+decrypt+parse), {label}",
                measure(lambda: open_message(sealed, opener), iterations, repeats),  # noqa: B023
                f"{len(sealed)} B",
            )
        )
    return rows


# --- per-exchange crypto cost ----------------------------------------------------------


def exchange_steps(proposal: str, auth: str, signing_key: SigningKey | None) -> dict[str, Timer]:
    """The crypto of IKE_SA_INIT + IKE_AUTH, both sides, as separately timed steps."""
    sample = build_exchange(proposal, signing_key=signing_key)
    suite = sample.suite
    init_response = sample.datagrams[1].data
    init_request = sample.datagrams[0].data
    group = suite.dh_group
    dh_i = generate_key_exchange(group)
    dh_r = generate_key_exchange(group)
    secret = dh_i.shared_secret(dh_r.public_bytes)
    keys = suite.derive_keys(NONCE_I, NONCE_R, SPI_I, SPI_R, secret)
    idi = IdiPayload(IdType.RFC822_ADDR, INITIATOR_ID).rest_of_id_payload()
    idr = IdrPayload(IdType.FQDN, RESPONDER_ID).rest_of_id_payload()
    ciphers = sk_cipher_pair(suite, keys, deterministic_random(b"bench IV"))
    request, response = sample.datagrams[2], sample.datagrams[3]
    request_inner, response_inner = (
        list(request.plaintext.payloads),
        list(response.plaintext.payloads),
    )
    header_i = IkeHeader(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR, 1)
    header_r = IkeHeader(SPI_I, SPI_R, ExchangeType.IKE_AUTH, HeaderFlag.RESPONSE, 1)
    sealed_request = seal_message(header_i, request_inner, ciphers.outbound(True))[0]
    sealed_response = seal_message(header_r, response_inner, ciphers.outbound(False))[0]

    def dh_keygen() -> None:
        generate_key_exchange(group)
        generate_key_exchange(group)

    def dh_shared() -> None:
        dh_i.shared_secret(dh_r.public_bytes)
        dh_r.shared_secret(dh_i.public_bytes)

    def derive() -> None:
        suite.derive_keys(NONCE_I, NONCE_R, SPI_I, SPI_R, secret)
        suite.derive_keys(NONCE_I, NONCE_R, SPI_I, SPI_R, secret)

    def octets(initiator: bool) -> bytes:
        if initiator:
            return auth_octets(init_request, NONCE_R, suite.prf, keys.sk_pi, idi)
        return auth_octets(init_response, NONCE_I, suite.prf, keys.sk_pr, idr)

    def auth_shared_key() -> None:
        # Each side builds its own AUTH and verifies the peer's (RFC 7296 §2.15, §2.16).
        for initiator in (True, False):
            data = octets(initiator)
            verify_shared_key_auth(suite.prf, PSK, data, psk_auth(suite.prf, PSK, data))

    steps: dict[str, Timer] = {
        "DH keygen (2 sides)": dh_keygen,
        "DH shared secret (2 sides)": dh_shared,
        "SKEYSEED + 7 keys (2 sides)": derive,
    }
    if signing_key is None:
        steps["AUTH PSK: 2 built + 2 verified"] = auth_shared_key
    else:
        public = signing_key.public_key()
        signed = sign_auth(
            AuthMethod.DIGITAL_SIGNATURE, signing_key, octets(False), HashAlgorithm.SHA2_256
        )

        def auth_sign() -> None:
            sign_auth(
                AuthMethod.DIGITAL_SIGNATURE, signing_key, octets(False), HashAlgorithm.SHA2_256
            )

        def auth_verify() -> None:
            verify_auth(AuthMethod.DIGITAL_SIGNATURE, public, octets(False), signed)

        steps[f"AUTH {auth}: gateway signs"] = auth_sign
        steps[f"AUTH {auth}: mobile verifies"] = auth_verify
        # After EAP both sides send an MSK-keyed AUTH; same cost as PSK.
        steps["AUTH after EAP (MSK): 2 built + 2 verified"] = auth_shared_key

    def sk_protect() -> None:
        seal_message(header_i, request_inner, ciphers.outbound(True))
        open_message(sealed_request, ciphers.inbound(False))
        seal_message(header_r, response_inner, ciphers.outbound(False))
        open_message(sealed_response, ciphers.inbound(True))

    steps["SK seal+open, IKE_AUTH request+response"] = sk_protect
    return steps


def exchange_rows(iterations: int, repeats: int, signatures: Sequence[str]) -> list[Row]:
    keys: dict[str, SigningKey | None] = {"PSK": None}
    if "ecdsa" in signatures:
        keys["ECDSA P-256"] = ec.derive_private_key(0x5EED, ec.SECP256R1())
    if "rsa" in signatures:
        keys["RSA-2048"] = rsa.generate_private_key(65537, 2048)
    rows = []
    for group_name, proposal in GROUPS.items():
        for auth, signing_key in keys.items():
            section = f"IKE_SA_INIT + IKE_AUTH crypto, {group_name}, gateway AUTH {auth}"
            total = 0.0
            for name, step in exchange_steps(proposal, auth, signing_key).items():
                figure = measure(step, max(1, iterations // 20), repeats)
                total += figure
                rows.append(Row(section, name, figure))
            rows.append(Row(section, "TOTAL (both sides)", total))
    return rows


def modp_rows(iterations: int, repeats: int) -> list[Row]:
    """modp2048 through OpenSSL (mpa_ike.crypto.dh) against the former pure-Python pow()."""
    from mpa_ike.constants import DhGroup
    from mpa_ike.crypto.dh import MODP_PRIMES, private_key_size

    group = DhGroup.MODP2048
    prime = MODP_PRIMES[group]
    mine, peer = generate_key_exchange(group), generate_key_exchange(group)
    exponent = int.from_bytes(deterministic_random(b"bench x")(private_key_size(group)), "big")
    peer_value = int.from_bytes(peer.public_bytes, "big")
    n = max(1, iterations // 20)
    section = "modp2048, one side: OpenSSL via cryptography (now) vs Python pow (before)"
    return [
        Row(section, "keygen, OpenSSL", measure(lambda: generate_key_exchange(group), n, repeats)),
        Row(section, "keygen, pow(2, x, p)", measure(lambda: pow(2, exponent, prime), n, repeats)),
        Row(
            section,
            "shared secret, OpenSSL",
            measure(lambda: mine.shared_secret(peer.public_bytes), n, repeats),
        ),
        Row(
            section,
            "shared secret, pow(y, x, p)",
            measure(lambda: pow(peer_value, exponent, prime), n, repeats),
        ),
    ]


# --- output ----------------------------------------------------------------------------


def format_table(rows: Sequence[Row]) -> list[str]:
    width = max(len(r.name) for r in rows)
    lines = []
    section = None
    header = f"  {'':<{width}}  {'us/op':>10}  {'ops/s':>10}  detail"
    for row in rows:
        if row.section != section:
            section = row.section
            lines += ["", f"[{section}]", header]
        rate = 1e6 / row.microseconds if row.microseconds else float("inf")
        figures = f"{row.microseconds:>10.1f}  {rate:>10.0f}"
        lines.append(f"  {row.name:<{width}}  {figures}  {row.detail}".rstrip())
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpa-bench micro", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=2000, help="calls per round (default 2000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="rounds; the median is shown (default 7)"
    )
    parser.add_argument(
        "--signatures",
        default="ecdsa,rsa",
        help="signature AUTH variants besides PSK: ecdsa, rsa, or none (default ecdsa,rsa)",
    )
    parser.add_argument(
        "--no-modp-baseline",
        dest="modp_baseline",
        action="store_false",
        help="skip the modp2048 OpenSSL versus pure-Python pow() comparison",
    )
    parser.add_argument("--quick", action="store_true", help="few iterations, for a smoke run")
    return parser


def main(args: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(args)
    iterations, repeats = options.iterations, options.repeats
    if options.quick:
        iterations, repeats = 40, 3
    signatures = [s for s in options.signatures.split(",") if s and s != "none"]
    print(
        f"mpa-ike micro-benchmarks: Python {platform.python_version()}, cryptography "
        f"{cryptography.__version__}, {platform.machine()}; median of {repeats} rounds "
        f"(codec/SK: {iterations} calls per round, exchange steps: {max(1, iterations // 20)})"
    )
    rows = codec_rows(iterations, repeats) + exchange_rows(iterations, repeats, signatures)
    if options.modp_baseline:
        rows += modp_rows(iterations, repeats)
    for line in format_table(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
