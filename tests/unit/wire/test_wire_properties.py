"""Property tests: valid payloads round-trip; any bytes parse or raise CodecError only.

The second property is h11's fuzz invariant. A CodecError whose ``__cause__`` is
set means the parser's safety net caught an internal exception: that is a bug,
so it fails the test as well.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from wire_samples import ALL_PAYLOADS, sample_messages
from wire_strategies import chains, inner_types, messages

from mpa_ike.constants import PayloadType
from mpa_ike.errors import CodecError
from mpa_ike.wire import (
    HEADER_LENGTH,
    Message,
    Payload,
    parse_message,
    parse_payload_chain,
    serialize_message,
    serialize_payload_chain,
    split_protected,
)

SEEDS = [serialize_message(m) for m in sample_messages().values()]
PAYLOAD_SEEDS = [serialize_payload_chain([p]) for p in ALL_PAYLOADS.values()]


def parse_or_codec_error(parse: Callable[[], object]) -> object | None:
    try:
        return parse()
    except CodecError as exc:
        assert exc.__cause__ is None, f"parser bug surfaced as {exc.__cause__!r}"
        return None


def check_message_bytes(data: bytes) -> None:
    """Any bytes: parse, or CodecError; a parsed message re-serializes stably."""
    msg = parse_or_codec_error(lambda: parse_message(data))
    parse_or_codec_error(lambda: split_protected(data))
    if isinstance(msg, Message):
        again = serialize_message(msg)
        assert parse_message(again).payloads == msg.payloads
        assert serialize_message(parse_message(again)) == again


def with_length(data: bytes) -> bytes:
    if len(data) < HEADER_LENGTH:
        return data
    return data[:24] + len(data).to_bytes(4, "big") + data[28:]


@given(chains())
def test_valid_chains_round_trip(payloads: list[Payload]) -> None:
    first, data = serialize_payload_chain(payloads)
    assert parse_payload_chain(first, data) == payloads
    assert serialize_payload_chain(parse_payload_chain(first, data)) == (first, data)


@given(messages)
def test_valid_messages_round_trip(msg: Message) -> None:
    data = serialize_message(msg)
    parsed = parse_message(data)
    assert parsed.payloads == msg.payloads
    assert parsed.header.spi_i == msg.header.spi_i
    assert parsed.header.message_id == msg.header.message_id
    assert parsed.header.flags == msg.header.flags
    assert serialize_message(parsed) == data


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check_message_bytes(data)


@settings(max_examples=300)
@given(st.binary(min_size=HEADER_LENGTH, max_size=HEADER_LENGTH), st.binary(max_size=200))
def test_random_body_behind_consistent_header(header: bytes, body: bytes) -> None:
    header = header[:17] + b"\x20" + header[18:]  # version 2.0, so the body gets parsed
    check_message_bytes(with_length(header + body))


@settings(max_examples=300)
@given(inner_types, st.binary(max_size=200))
def test_random_payload_chain(first: PayloadType, data: bytes) -> None:
    parse_or_codec_error(lambda: parse_payload_chain(first, data))


def flip_bits(data: bytes, positions: list[int]) -> bytes:
    mutable = bytearray(data)
    for position in positions:
        bit = position % (8 * len(mutable))
        mutable[bit // 8] ^= 1 << (bit % 8)
    return bytes(mutable)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = draw(st.sampled_from(seeds))
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "insert"]))
    if kind == "flip":
        data = flip_bits(data, draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=4)))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    else:
        other = draw(st.sampled_from(seeds))
        cut = draw(st.integers(0, len(data)))
        start = draw(st.integers(0, len(other)))
        piece = other[start : start + draw(st.integers(0, 64))]
        end = cut if kind == "insert" else draw(st.integers(cut, len(data)))
        data = data[:cut] + piece + data[end:]
    return data


@settings(max_examples=400)
@given(mutated(SEEDS), st.booleans())
def test_mutated_messages(data: bytes, fix_length: bool) -> None:
    check_message_bytes(with_length(data) if fix_length else data)


@settings(max_examples=300)
@given(st.sampled_from(PAYLOAD_SEEDS), st.data())
def test_mutated_payload_chains(seed: tuple[PayloadType, bytes], data: st.DataObject) -> None:
    first, encoded = seed
    mutant = data.draw(mutated([encoded]))
    parse_or_codec_error(lambda: parse_payload_chain(first, mutant))


@given(messages, st.integers(0, 2**20))
def test_truncated_generated_messages(msg: Message, cut: int) -> None:
    data = serialize_message(msg)
    check_message_bytes(data[: cut % (len(data) + 1)])
