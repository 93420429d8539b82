"""The mutators of ``mpa-bench fuzz``: reproducible from a seed, each doing what its
name says (mpa_bench/fuzz_mutators.py)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from mpa_bench import fuzz_mutators as m
from mpa_ike.constants import NON_ESP_MARKER, PayloadType

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "charon"
SEEDS = m.core_seeds() + m.charon_seeds(VECTORS)
LIVE = m.Live(((b"\x11" * 8, b"\x22" * 8),), (b"\xaa\xbb\xcc\xdd",))
INIT = next(s for s in SEEDS if s.name == "core:IKE_SA_INIT:req")
RUNS = 200


def outputs(mutator: m.Mutate, seed: m.Seed = INIT, n: int = RUNS) -> list[bytes]:
    rng = random.Random(42)
    return [mutator(rng, seed, LIVE) for _ in range(n)]


def header_length(data: bytes) -> int:
    value: int = struct.unpack_from("!I", data, 24)[0]
    return value


def test_seeds_are_whole_messages() -> None:
    assert len(SEEDS) == 4 + 41  # ours, and the 41 messages of the three recordings
    for seed in SEEDS:
        assert header_length(seed.data) == len(seed.data), seed.name
        spans = m.payload_spans(seed.data)
        assert spans, seed.name
        assert spans[-1].offset + spans[-1].length == len(seed.data), seed.name


def test_same_seed_same_probes_other_seed_other_probes() -> None:
    first = [next(m.Generator(SEEDS, 7, LIVE)) for _ in range(1)]
    one, two, other = (m.Generator(SEEDS, s, LIVE) for s in (7, 7, 8))
    assert [next(one) for _ in range(500)] == [next(two) for _ in range(500)]
    assert first[0] == next(m.Generator(SEEDS, 7, LIVE))
    assert [next(m.Generator(SEEDS, 7, LIVE)) for _ in range(50)] != [
        next(other) for _ in range(50)
    ]


def test_every_class_and_route_comes_up() -> None:
    probes = [next(g) for g in [m.Generator(SEEDS, 3, LIVE)] for _ in range(5000)]
    assert {p.mutator for p in probes} == set(m.BY_NAME)
    assert {p.route for p in probes} == set(m.Route.ALL)
    for probe in probes:
        if probe.route == m.Route.MARKED_4500:
            assert probe.payload.startswith(NON_ESP_MARKER) and probe.port == 4500
            assert probe.message == probe.payload[4:]
        elif probe.route == m.Route.IKE_500:
            assert probe.port == 500 and probe.message == probe.payload
        if probe.mutator == "esp":
            assert probe.route == m.Route.BARE_4500


def test_bit_flip_flips_one_to_eight_bits() -> None:
    for out in outputs(m.bit_flip):
        assert len(out) == len(INIT.data)
        flipped = sum(bin(a ^ b).count("1") for a, b in zip(out, INIT.data, strict=True))
        assert 1 <= flipped <= 8


def test_insert_and_delete_change_the_length_only() -> None:
    for out in outputs(m.byte_insert):
        added = len(out) - len(INIT.data)
        assert 1 <= added <= 16
        assert any(out[:i] + out[i + added :] == INIT.data for i in range(len(INIT.data) + 1))
    for out in outputs(m.byte_delete):
        assert 1 <= len(INIT.data) - len(out) <= 16


def test_truncate_cuts_at_boundaries_only() -> None:
    cuts = m.boundaries(INIT.data)
    for span in m.payload_spans(INIT.data):
        assert span.offset in cuts
    seen = set()
    for out in outputs(m.truncate, n=1000):
        assert INIT.data.startswith(out) and len(out) in cuts
        seen.add(len(out))
    assert seen == set(cuts)  # every boundary, given enough draws


def test_header_length_lies() -> None:
    for out in outputs(m.header_length):
        assert out[:24] == INIT.data[:24] and out[28:] == INIT.data[28:]
        assert header_length(out) != len(out)


def test_payload_length_lies_in_one_payload_header() -> None:
    offsets = {s.offset + 2 for s in m.payload_spans(INIT.data)}
    for out in outputs(m.payload_length):
        changed = [i for i, (a, b) in enumerate(zip(out, INIT.data, strict=True)) if a != b]
        assert changed
        assert all(any(0 <= i - o < 2 for o in offsets) for i in changed)


def test_chain_loop_points_back() -> None:
    spans = m.payload_spans(INIT.data)
    for out in outputs(m.chain_loop):
        pointed_back = False
        for index, span in enumerate(spans):
            if out[span.offset] != INIT.data[span.offset]:
                earlier = {s.payload_type for s in spans[: index + 1]}
                assert out[span.offset] in earlier
                pointed_back = True
        assert pointed_back or out[span.offset] == INIT.data[span.offset]


def test_critical_unknown_payload_is_spliced_in() -> None:
    for out in outputs(m.critical_unknown):
        assert header_length(out) == len(out)
        spans = m.payload_spans(out)
        unknown = [s for s in spans if s.payload_type in m.UNKNOWN_TYPES]
        assert len(unknown) == 1
        assert out[unknown[0].offset + 1] & m.CRITICAL
        assert spans[-1].offset + spans[-1].length == len(out)  # the chain still whole


def test_huge_lengths() -> None:
    for out in outputs(m.huge):
        fields = {
            struct.unpack_from("!H", out, s.offset + 2)[0] for s in m.payload_spans(INIT.data)
        }
        assert header_length(out) == 0xFFFFFFFF or 0xFFFF in fields or len(out) > 1024
        assert len(out) <= m.HUGE


def test_spi_games_use_live_or_zero_spis() -> None:
    spi_i, spi_r = LIVE.ike_spis[0]
    allowed = {bytes(8), INIT.data[:8], spi_i, spi_r}
    for out in outputs(m.spi_games):
        assert out[:8] in allowed
        assert len(out) == len(INIT.data)


def test_fragments_have_lying_numbers_sometimes() -> None:
    lies = 0
    for out in outputs(m.fragment):
        assert out[16] == PayloadType.SKF and header_length(out) == len(out)
        number, total = struct.unpack_from("!HH", out, 32)
        lies += not (1 <= number <= total)
    assert lies > RUNS // 3


def test_esp_probes_look_like_esp() -> None:
    live_spi = 0
    for out in outputs(m.esp_like):
        assert out[:4] != NON_ESP_MARKER or len(out) < 4
        live_spi += out[:4] == LIVE.esp_spis[0]
    assert live_spi > RUNS // 4


@pytest.mark.parametrize("mutator", m.MUTATORS, ids=lambda x: x.name)
def test_every_mutator_takes_every_seed(mutator: m.Mutator) -> None:
    rng = random.Random(1)
    for seed in SEEDS:
        out = mutator.mutate(rng, seed, LIVE)
        assert isinstance(out, bytes)
        assert out or mutator.name == "truncate"  # an empty datagram is a probe too
