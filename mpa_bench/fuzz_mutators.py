"""The mutators of ``mpa-bench fuzz``: malformed IKE and ESP datagrams from real ones.

Pure functions over bytes and a seeded :class:`random.Random`, so a campaign is
replayed datagram for datagram from its seed. Each :class:`Mutator` is one class of
damage and says so in its name; :func:`generate` picks a class, a seed message and the
way the datagram travels (port 500, port 4500 behind the non-ESP marker, port 4500
without it) and returns a :class:`Probe`.

Seeds are whole IKE messages from the IKE header on (RFC 7296 §3.1): the recorded charon
exchanges (``tests/vectors/charon``), messages our core builds (:func:`core_seeds`), and
whatever the live mobile nodes sent (their real SPIs). The walk over the generic payload
headers (§3.2) is done here on raw bytes, not by the codec under test, and stops at the
first header that does not fit.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mpa_ike.constants import NON_ESP_MARKER, ExchangeType, HeaderFlag, PayloadType

HEADER = 28  # the IKE header (RFC 7296 §3.1)
GENERIC = 4  # the generic payload header (§3.2)
FRAGMENT_FIELDS = 4  # Fragment Number and Total Fragments (RFC 7383 §2.5)
CRITICAL = 0x80
IKE_PORT, NAT_T_PORT = 500, 4500
# Payload types no RFC assigns (IANA: 54-127 unassigned, 128-255 private use).
UNKNOWN_TYPES = (54, 77, 99, 127, 128, 200, 255)
# Header cut points: inside the SPIs, at Next Payload, Version, Exchange, Flags,
# Message ID and Length.
HEADER_CUTS = (0, 1, 4, 8, 12, 16, 17, 18, 19, 20, 24, 27)
HUGE = 9000  # the largest datagram a mutator builds (the fuzz link's MTU)


class Route:
    """How a probe travels: the gateway's port and whether the marker goes first."""

    IKE_500 = "500"
    MARKED_4500 = "4500+marker"
    BARE_4500 = "4500"  # no marker: the gateway takes it for ESP in UDP (RFC 3948 §2.2)

    ALL = (IKE_500, MARKED_4500, BARE_4500)


@dataclass(frozen=True)
class Seed:
    """One IKE message (no marker) that mutators start from."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Probe:
    """One datagram to send: ``payload`` is the UDP payload as it leaves (marker
    included where the route has one)."""

    mutator: str
    seed: str
    route: str
    payload: bytes

    @property
    def port(self) -> int:
        return IKE_PORT if self.route == Route.IKE_500 else NAT_T_PORT

    @property
    def message(self) -> bytes:
        """The bytes without the marker."""
        if self.route == Route.MARKED_4500:
            return self.payload[len(NON_ESP_MARKER) :]
        return self.payload


@dataclass(frozen=True)
class Live:
    """What is known of the live SAs under test: IKE SPI pairs (SPIi, SPIr) and the
    gateway's inbound ESP SPIs, so that SPI games and ESP probes hit real SAs."""

    ike_spis: tuple[tuple[bytes, bytes], ...] = ()
    esp_spis: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class PayloadSpan:
    """One payload found by :func:`payload_spans`: where its generic header starts,
    its declared length, its own type (the previous Next Payload) and its Next Payload."""

    offset: int
    length: int
    payload_type: int
    next_type: int


def payload_spans(message: bytes) -> list[PayloadSpan]:
    """The payloads of ``message`` as their generic headers chain them, outer chain only
    (an SK payload's body is opaque); stops at the first header that does not fit."""
    if len(message) < HEADER:
        return []
    spans: list[PayloadSpan] = []
    kind, at = message[16], HEADER
    while kind != PayloadType.NONE and at + GENERIC <= len(message):
        next_type = message[at]
        length = struct.unpack_from("!H", message, at + 2)[0]
        if length < GENERIC or at + length > len(message):
            break
        spans.append(PayloadSpan(at, length, kind, next_type))
        kind, at = next_type, at + length
    return spans


def boundaries(message: bytes) -> list[int]:
    """Every cut point that truncation tries: inside the header, and the start, end
    and generic-header fields of every payload."""
    cuts = {c for c in HEADER_CUTS if c < len(message)} | {HEADER}
    for span in payload_spans(message):
        cuts.update((span.offset, span.offset + 1, span.offset + 2, span.offset + GENERIC))
        cuts.add(span.offset + span.length)
    return sorted(c for c in cuts if c < len(message))


# --------------------------------------------------------------------------- mutators

Mutate = Callable[[random.Random, Seed, Live], bytes]


@dataclass(frozen=True)
class Mutator:
    name: str
    mutate: Mutate
    what: str
    routes: tuple[str, ...] = Route.ALL


def bit_flip(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """1 to 8 random bits flipped anywhere."""
    data = bytearray(seed.data)
    for _ in range(rng.randint(1, 8)):
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def byte_insert(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """1 to 16 random bytes inserted at a random place (lengths left as they were)."""
    at = rng.randint(0, len(seed.data))
    return seed.data[:at] + rng.randbytes(rng.randint(1, 16)) + seed.data[at:]


def byte_delete(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """1 to 16 bytes deleted at a random place (lengths left as they were)."""
    count = rng.randint(1, min(16, len(seed.data) - 1))
    at = rng.randint(0, len(seed.data) - count)
    return seed.data[:at] + seed.data[at + count :]


def truncate(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """Cut at a payload boundary or a header field (:func:`boundaries`)."""
    return seed.data[: rng.choice(boundaries(seed.data))]


def header_length(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """The IKE header's Length lies: zero, short of the header, one off, or huge."""
    real = len(seed.data)
    lie = rng.choice(
        [0, 1, HEADER - 1, HEADER, real - 1, real + 1, real + 4096, 0xFFFF, 0xFFFFFFFF]
    )
    if lie == real:
        lie += 1
    return seed.data[:24] + struct.pack("!I", lie & 0xFFFFFFFF) + seed.data[HEADER:]


def payload_length(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """One generic payload header's Payload Length lies: 0 to 3 (shorter than the
    header itself), one off, past the end, or 0xFFFF."""
    spans = payload_spans(seed.data)
    if not spans:
        return header_length(rng, seed, live)
    span = rng.choice(spans)
    rest = len(seed.data) - span.offset
    lie = rng.choice([0, 1, 2, 3, span.length - 1, span.length + 1, rest + 1, 0xFFFF])
    lie = lie if lie != span.length else span.length + 1
    return _set_u16(seed.data, span.offset + 2, lie & 0xFFFF)


def chain_loop(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """The payload chain points back: a Next Payload names the type of an earlier
    payload (or the payload's own), with its length zero (a parser that trusts it stays
    in place) or kept, or the last payload's Next Payload starts the chain over."""
    spans = payload_spans(seed.data)
    if not spans:
        return _set_u8(seed.data, 16, rng.choice([PayloadType.SA, PayloadType.SK]))
    index = rng.randrange(len(spans))
    span = spans[index]
    back = rng.choice(spans[: index + 1]).payload_type
    data = _set_u8(seed.data, span.offset, back)
    if rng.random() < 0.5:
        data = _set_u16(data, span.offset + 2, rng.choice([0, GENERIC]))
    return data


def critical_unknown(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """A payload of an unassigned type with the critical bit set, spliced into the
    chain at a payload boundary (RFC 7296 §2.5: UNSUPPORTED_CRITICAL_PAYLOAD)."""
    spans = payload_spans(seed.data)
    kind = rng.choice(UNKNOWN_TYPES)
    body = rng.randbytes(rng.randint(0, 32))
    if not spans:
        return _with_header_length(seed.data[:16] + bytes([kind]) + seed.data[17:HEADER])
    index = rng.randrange(len(spans) + 1)
    data = bytearray(seed.data)
    if index == 0:  # first: the header names it, it names the old first payload
        following, at = data[16], HEADER
        data[16] = kind
    else:
        previous = spans[index - 1]
        following, at = previous.next_type, previous.offset + previous.length
        data[previous.offset] = kind
    payload = bytes([following, CRITICAL]) + struct.pack("!H", GENERIC + len(body)) + body
    return _with_header_length(bytes(data[:at]) + payload + bytes(data[at:]))


def huge(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """Huge lengths: header Length 0xFFFFFFFF or a payload of 0xFFFF, and sometimes a
    datagram padded to several kilobytes with lengths that claim it all."""
    data = seed.data
    spans = payload_spans(data)
    if spans and rng.random() < 0.5:
        data = _set_u16(data, rng.choice(spans).offset + 2, 0xFFFF)
    else:
        data = data[:24] + b"\xff\xff\xff\xff" + data[HEADER:]
    if rng.random() < 0.3:
        data += rng.randbytes(rng.randint(1024, HUGE - len(data)))
        if spans and rng.random() < 0.5:
            last = spans[-1]
            data = _set_u16(data, last.offset + 2, min(0xFFFF, len(data) - last.offset))
            data = _with_header_length(data)
    return data


def spi_games(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """SPIs and Message IDs played with: the live SAs' SPIs (swapped, half of them,
    flags flipped), zero SPIs, and Message IDs 0, 1, 2^31, 2^32-1 or random."""
    data = bytearray(seed.data)
    choices: list[tuple[bytes, bytes]] = [(bytes(8), bytes(8)), (seed.data[:8], bytes(8))]
    for spi_i, spi_r in live.ike_spis:
        choices += [(spi_i, spi_r), (spi_r, spi_i), (spi_i, rng.randbytes(8)), (bytes(8), spi_r)]
    spi_i, spi_r = rng.choice(choices)
    data[0:16] = spi_i + spi_r
    if rng.random() < 0.5:
        data[19] ^= rng.choice([HeaderFlag.INITIATOR, HeaderFlag.RESPONSE, 0x08, 0xFF])
    if rng.random() < 0.3:
        data[18] = rng.choice([*ExchangeType, 0, 33, 255])
    message_id = rng.choice([0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, rng.getrandbits(32)])
    data[20:24] = struct.pack("!I", message_id)
    return bytes(data)


def fragment(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """An Encrypted Fragment message (RFC 7383 §2.5) whose numbers lie: number 0, past
    the total, total 0 or huge, a non-first fragment naming a first payload, a short
    body; on the live SAs' SPIs or the seed's, as IKE_AUTH or INFORMATIONAL."""
    spis = [seed.data[:16]] + [i + r for i, r in live.ike_spis]
    anything = (rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF))
    number, total = rng.choice(
        [(0, 1), (1, 0), (0, 0), (2, 1), (1, 1), (1, 0xFFFF), (0xFFFF, 0xFFFF), (3, 2), anything]
    )
    inner = PayloadType.IDI if number == 1 or rng.random() < 0.3 else PayloadType.NONE
    body = rng.randbytes(rng.choice([0, 1, 8, 15, 16, 48, 200]))
    length = GENERIC + FRAGMENT_FIELDS + len(body)
    if rng.random() < 0.2:
        length = rng.choice([0, GENERIC, GENERIC + FRAGMENT_FIELDS - 1, 0xFFFF])
    payload = bytes([inner, 0]) + struct.pack("!HHH", length, number, total) + body
    exchange = rng.choice([ExchangeType.IKE_AUTH, ExchangeType.INFORMATIONAL, 0])
    flags = rng.choice([HeaderFlag.INITIATOR, HeaderFlag.RESPONSE, 0])
    header = rng.choice(spis) + bytes([PayloadType.SKF, 0x20, exchange, flags])
    header += struct.pack("!I", rng.choice([0, 1, 2, rng.getrandbits(32)]))
    return _with_header_length(header + bytes(4) + payload)


def esp_like(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """What port 4500 without the marker means: ESP in UDP (RFC 3948). The live SAs'
    inbound SPIs with random sequence numbers and a bad ICV, random SPIs, SPI 0 (the
    marker cut short), and datagrams shorter than an ESP header."""
    spi = rng.choice([*live.esp_spis, *live.esp_spis, rng.randbytes(4), bytes(3) + b"\x01"])
    seq = struct.pack("!I", rng.choice([0, 1, rng.getrandbits(32), 0xFFFFFFFF]))
    kind = rng.random()
    if kind < 0.1:
        return rng.randbytes(rng.randint(1, 7))  # shorter than SPI and sequence number
    if kind < 0.15:
        return bytes(4)[: rng.randint(1, 3)]  # a marker cut short
    return spi + seq + rng.randbytes(rng.choice([0, 8, 16, 24, 40, 64, 100, 1400]))


def random_bytes(rng: random.Random, seed: Seed, live: Live) -> bytes:
    """Noise: random bytes, sometimes behind the seed's header (so it reaches the SA
    lookup and the parser), 1 byte to 2 KB."""
    noise = rng.randbytes(rng.randint(1, 2048))
    if rng.random() < 0.5:
        return _with_header_length(seed.data[:HEADER] + noise)
    return noise


MUTATORS: tuple[Mutator, ...] = (
    Mutator("bit_flip", bit_flip, "1-8 bits flipped"),
    Mutator("byte_insert", byte_insert, "1-16 random bytes inserted"),
    Mutator("byte_delete", byte_delete, "1-16 bytes deleted"),
    Mutator("truncate", truncate, "cut at a payload boundary or header field"),
    Mutator("header_length", header_length, "IKE header Length lies"),
    Mutator("payload_length", payload_length, "a payload's Length lies"),
    Mutator("chain_loop", chain_loop, "Next Payload points back"),
    Mutator("critical_unknown", critical_unknown, "unknown payload, critical bit set"),
    Mutator("huge", huge, "0xFFFF/0xFFFFFFFF lengths, datagrams of kilobytes"),
    Mutator("spi_games", spi_games, "live/zero/swapped SPIs, flags, Message IDs"),
    Mutator("fragment", fragment, "SKF with lying fragment numbers (RFC 7383)"),
    Mutator("esp", esp_like, "ESP in UDP to 4500 without marker", (Route.BARE_4500,)),
    Mutator("random", random_bytes, "random bytes"),
)
BY_NAME = {m.name: m for m in MUTATORS}


@dataclass
class Generator:
    """Probes from ``seeds``, reproducibly from ``seed``; ``live`` may be replaced as
    SAs come and go (the probes then use the new SPIs)."""

    seeds: Sequence[Seed]
    seed: int
    live: Live = field(default_factory=Live)
    mutators: Sequence[Mutator] = MUTATORS

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("no seed messages")
        self.rng = random.Random(self.seed)

    def __iter__(self) -> Generator:
        return self

    def __next__(self) -> Probe:
        return generate(self.rng, self.seeds, self.live, self.mutators)


def generate(
    rng: random.Random,
    seeds: Sequence[Seed],
    live: Live,
    mutators: Sequence[Mutator] = MUTATORS,
) -> Probe:
    """One probe: a mutator, a seed and a route, all drawn from ``rng``."""
    mutator = rng.choice(mutators)
    seed = rng.choice(seeds)
    data = mutator.mutate(rng, seed, live)
    route = rng.choice(mutator.routes)
    payload = NON_ESP_MARKER + data if route == Route.MARKED_4500 else data
    return Probe(mutator.name, seed.name, route, payload)


# --------------------------------------------------------------------------- seeds


def charon_seeds(directory: Path) -> list[Seed]:
    """Every IKE message of the recordings in ``directory`` (README there: ``data`` is
    the message from the IKE header on, without the marker)."""
    seeds = []
    for file in sorted(directory.glob("*.json")):
        recording = json.loads(file.read_text())
        for message in recording["messages"]:
            role = "resp" if message["response"] else "req"
            name = f"charon:{file.stem}:{message['index']}:{message['exchange']}:{role}"
            seeds.append(Seed(name, bytes.fromhex(message["data"])))
    return seeds


def core_seeds() -> list[Seed]:
    """Messages our codec builds: an IKE_SA_INIT request with the usual payloads, an
    INFORMATIONAL with an SK payload, and two SKF fragments of an IKE_AUTH."""
    from mpa_ike.constants import DhGroup, NotifyType
    from mpa_ike.wire import (
        EncryptedFragmentPayload,
        EncryptedPayload,
        IkeHeader,
        KePayload,
        Message,
        NoncePayload,
        NotifyPayload,
        serialize_message,
    )

    spi_i = bytes.fromhex("0102030405060708")
    spi_r = bytes.fromhex("1112131415161718")
    init = IkeHeader(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, int(HeaderFlag.INITIATOR), 0)
    payloads = (
        KePayload(DhGroup.CURVE25519, bytes(32)),
        NoncePayload(bytes(range(32))),
        NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, data=bytes(20)),
        NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, data=bytes(20)),
        NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
    )
    info = IkeHeader(spi_i, spi_r, ExchangeType.INFORMATIONAL, int(HeaderFlag.INITIATOR), 2)
    auth = IkeHeader(spi_i, spi_r, ExchangeType.IKE_AUTH, int(HeaderFlag.INITIATOR), 1)
    body = bytes(16 + 48 + 16)
    messages = [
        ("core:IKE_SA_INIT:req", Message(init, payloads)),
        ("core:INFORMATIONAL:SK", Message(info, (EncryptedPayload(PayloadType.NONE, body),))),
        (
            "core:IKE_AUTH:SKF1",
            Message(auth, (EncryptedFragmentPayload(1, 2, PayloadType.IDI, body),)),
        ),
        (
            "core:IKE_AUTH:SKF2",
            Message(auth, (EncryptedFragmentPayload(2, 2, PayloadType.NONE, body),)),
        ),
    ]
    return [Seed(name, serialize_message(message)) for name, message in messages]


def seeds_from(messages: Iterable[tuple[str, bytes]]) -> list[Seed]:
    """Seeds from live traffic (name, IKE message without marker); short ones dropped."""
    return [Seed(name, data) for name, data in messages if len(data) >= HEADER]


# --------------------------------------------------------------------------- bytes


def _set_u8(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + bytes([value & 0xFF]) + data[at + 1 :]


def _set_u16(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("!H", value) + data[at + 2 :]


def _with_header_length(data: bytes) -> bytes:
    """``data`` with the IKE header's Length telling the truth (when there is one)."""
    if len(data) < HEADER:
        return data
    return data[:24] + struct.pack("!I", len(data)) + data[HEADER:]
