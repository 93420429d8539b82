"""SK message protection, RFC 7383 fragmentation and reassembly (mpa_ike.protection)."""

from __future__ import annotations

import contextlib
import itertools
import random
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpa_ike.constants import (
    AuthMethod,
    CertEncoding,
    CfgAttrType,
    CfgType,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
)
from mpa_ike.crypto.cipher import get_encr
from mpa_ike.crypto.integ import get_integ
from mpa_ike.crypto.sk import SkCipher
from mpa_ike.errors import CodecError, IntegrityError, LocalProtocolError
from mpa_ike.protection import Reassembler, open_message, seal_message
from mpa_ike.wire import (
    AuthPayload,
    CertPayload,
    CfgAttribute,
    ConfigurationPayload,
    EncryptedFragmentPayload,
    EncryptedPayload,
    IdiPayload,
    IkeHeader,
    NotifyPayload,
    Payload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
    parse_message,
)

SUITES = {
    "aes128-sha256": (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    "aes256-sha1": (EncrId.AES_CBC, 256, IntegId.HMAC_SHA1_96),
    "aes128gcm16": (EncrId.AES_GCM_16, 128, None),
    "chacha20poly1305": (EncrId.CHACHA20_POLY1305, None, None),
}

HEADER = IkeHeader(
    bytes.fromhex("0102030405060708"),
    bytes.fromhex("1112131415161718"),
    ExchangeType.IKE_AUTH,
    HeaderFlag.INITIATOR,
    1,
)


def make_cipher(name: str, seed: int = 1) -> SkCipher:
    encr, bits, integ = SUITES[name]
    rng = random.Random(seed)
    encr_key = rng.randbytes(get_encr(encr).key_size(bits))
    integ_key = rng.randbytes(get_integ(integ).key_size) if integ else b""
    return SkCipher(encr, bits, integ, encr_key, integ_key, random=rng.randbytes)


def small_chain() -> list[Payload]:
    return [
        IdiPayload(IdType.FQDN, b"mobile.example"),
        AuthPayload(AuthMethod.PSK, bytes(32)),
        ConfigurationPayload(
            CfgType.CFG_REQUEST, (CfgAttribute(CfgAttrType.INTERNAL_IP4_ADDRESS),)
        ),
        TsiPayload((TrafficSelector.from_network(IPv4Network("0.0.0.0/0")),)),
        TsrPayload((TrafficSelector.from_network(IPv4Network("10.1.0.0/16")),)),
        NotifyPayload(NotifyType.MOBIKE_SUPPORTED),
    ]


def large_chain() -> list[Payload]:
    """About 4 KB: two certificates, as in a certificate-authenticated IKE_AUTH."""
    return [
        IdiPayload(IdType.IPV4_ADDR, IPv4Address("192.0.2.1").packed),
        CertPayload(CertEncoding.X509_SIGNATURE, bytes(range(256)) * 8),
        CertPayload(CertEncoding.X509_SIGNATURE, bytes(reversed(range(256))) * 7),
        AuthPayload(AuthMethod.DIGITAL_SIGNATURE, b"\x55" * 300),
        *small_chain()[2:],
    ]


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip(suite: str) -> None:
    cipher = make_cipher(suite)
    (datagram,) = seal_message(HEADER, small_chain(), cipher)
    outer = parse_message(datagram)
    assert outer.header.next_payload == PayloadType.SK
    assert isinstance(outer.payloads[0], EncryptedPayload)
    assert outer.payloads[0].inner_type == PayloadType.IDI
    opened = open_message(datagram, make_cipher(suite))
    assert opened.header == outer.header
    assert list(opened.payloads) == small_chain()


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_empty_chain(suite: str) -> None:
    """An empty INFORMATIONAL (liveness check) is an SK payload with nothing inside."""
    (datagram,) = seal_message(HEADER, [], make_cipher(suite))
    assert parse_message(datagram).payloads[0].inner_type == PayloadType.NONE  # type: ignore[union-attr]
    assert open_message(datagram, make_cipher(suite)).payloads == ()


def test_unprotected_payloads_before_sk() -> None:
    before = [NotifyPayload(NotifyType.COOKIE, data=b"c" * 16)]
    (datagram,) = seal_message(
        HEADER, small_chain(), make_cipher("aes128-sha256"), unprotected=before
    )
    opened = open_message(datagram, make_cipher("aes128-sha256"))
    assert list(opened.payloads) == before + small_chain()


def test_no_fragmentation_when_it_fits() -> None:
    datagrams = seal_message(
        HEADER, small_chain(), make_cipher("aes128gcm16"), max_message_size=1280
    )
    assert len(datagrams) == 1
    assert isinstance(parse_message(datagrams[0]).payloads[-1], EncryptedPayload)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("size", [1280, 576, 200])
def test_fragmentation(suite: str, size: int) -> None:
    datagrams = seal_message(HEADER, large_chain(), make_cipher(suite), max_message_size=size)
    assert len(datagrams) > 1
    total = len(datagrams)
    for number, datagram in enumerate(datagrams, start=1):
        assert len(datagram) <= size
        outer = parse_message(datagram)
        assert outer.header.next_payload == PayloadType.SKF
        assert outer.header.message_id == HEADER.message_id
        (skf,) = outer.payloads
        assert isinstance(skf, EncryptedFragmentPayload)
        assert (skf.fragment_number, skf.total_fragments) == (number, total)
        assert skf.inner_type == (PayloadType.IDI if number == 1 else PayloadType.NONE)
    # All but the last fragment are filled to within one cipher block of the limit.
    assert all(len(d) > size - 16 for d in datagrams[:-1])
    reassembler = Reassembler()
    receiver = make_cipher(suite)
    results = [reassembler.add(d, receiver) for d in datagrams]
    assert results[:-1] == [None] * (total - 1)
    message = results[-1]
    assert message is not None
    assert list(message.payloads) == large_chain()
    assert message.header.message_id == HEADER.message_id
    assert reassembler.pending == {}


def test_fragmentation_at_1280_with_unprotected_payloads() -> None:
    before = [NotifyPayload(NotifyType.COOKIE, data=b"c" * 16)]
    cipher = make_cipher("aes128-sha256")
    datagrams = seal_message(
        HEADER, large_chain(), cipher, max_message_size=1280, unprotected=before
    )
    assert parse_message(datagrams[0]).payloads[0] == before[0]
    assert all(len(parse_message(d).payloads) == 1 for d in datagrams[1:])
    message = None
    reassembler = Reassembler()
    for datagram in datagrams:
        message = reassembler.add(datagram, make_cipher("aes128-sha256"))
    assert message is not None
    assert list(message.payloads) == before + large_chain()


def test_reassembler_takes_the_outer_message_parsed_already() -> None:
    """The exchange engine's checks before the ICV parse the datagram; handing that
    parse to the reassembler gives the same message, and the ICV is still checked."""
    before = [NotifyPayload(NotifyType.COOKIE, data=b"c" * 16)]
    datagrams = seal_message(
        HEADER,
        large_chain(),
        make_cipher("aes128-sha256"),
        max_message_size=1280,
        unprotected=before,
    )
    reassembler = Reassembler()
    results = [
        reassembler.add(d, make_cipher("aes128-sha256"), parse_message(d)) for d in datagrams
    ]
    assert results[-1] is not None and list(results[-1].payloads) == before + large_chain()
    (datagram,) = seal_message(HEADER, small_chain(), make_cipher("aes128gcm16"))
    message = Reassembler().add(datagram, make_cipher("aes128gcm16"), parse_message(datagram))
    assert message is not None and message.header == parse_message(datagram).header
    assert list(message.payloads) == small_chain()
    tampered = bytearray(datagram)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        Reassembler().add(
            bytes(tampered), make_cipher("aes128gcm16"), parse_message(bytes(tampered))
        )


def test_fragment_size_too_small() -> None:
    with pytest.raises(LocalProtocolError):
        seal_message(HEADER, large_chain(), make_cipher("aes128-sha256"), max_message_size=60)


def test_reassembler_takes_unfragmented_messages() -> None:
    (datagram,) = seal_message(HEADER, small_chain(), make_cipher("aes128gcm16"))
    message = Reassembler().add(datagram, make_cipher("aes128gcm16"))
    assert message is not None
    assert list(message.payloads) == small_chain()


@pytest.mark.parametrize("suite", ["aes128-sha256", "aes128gcm16"])
def test_out_of_order_and_duplicates(suite: str) -> None:
    datagrams = seal_message(HEADER, large_chain(), make_cipher(suite), max_message_size=576)
    order = list(reversed(datagrams))
    order.insert(2, order[0])
    order.insert(4, order[1])
    reassembler = Reassembler()
    results = [reassembler.add(d, make_cipher(suite)) for d in order]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None
    assert list(results[-1].payloads) == large_chain()
    assert reassembler.dropped == 2


def test_every_permutation_of_three_fragments() -> None:
    datagrams = seal_message(
        HEADER, small_chain(), make_cipher("aes128-sha256"), max_message_size=120
    )
    assert len(datagrams) == 3
    for order in itertools.permutations(datagrams):
        reassembler = Reassembler()
        results = [reassembler.add(d, make_cipher("aes128-sha256")) for d in order]
        assert results[-1] is not None
        assert list(results[-1].payloads) == small_chain()


@pytest.mark.parametrize("suite", ["aes128-sha256", "aes128gcm16"])
def test_tampered_fragment_is_rejected_and_not_kept(suite: str) -> None:
    datagrams = seal_message(HEADER, large_chain(), make_cipher(suite), max_message_size=1280)
    reassembler = Reassembler()
    receiver = make_cipher(suite)
    assert reassembler.add(datagrams[0], receiver) is None
    tampered = bytearray(datagrams[1])
    tampered[-20] ^= 0x01
    with pytest.raises(IntegrityError):
        reassembler.add(bytes(tampered), receiver)
    # Fragment number and total are covered too (RFC 7383 §2.5 associated data).
    renumbered = bytearray(datagrams[1])
    renumbered[28 + 5] ^= 0x03
    with pytest.raises((IntegrityError, CodecError)):
        reassembler.add(bytes(renumbered), receiver)
    assert reassembler.pending[HEADER.message_id][0] == 1
    message = None
    for datagram in datagrams[1:]:
        message = reassembler.add(datagram, receiver)
    assert message is not None
    assert list(message.payloads) == large_chain()


def test_wrong_key_is_an_integrity_error() -> None:
    (datagram,) = seal_message(HEADER, small_chain(), make_cipher("aes128-sha256"))
    with pytest.raises(IntegrityError):
        open_message(datagram, make_cipher("aes128-sha256", seed=2))


def test_open_message_refuses_fragments() -> None:
    datagrams = seal_message(
        HEADER, large_chain(), make_cipher("aes128gcm16"), max_message_size=1280
    )
    with pytest.raises(CodecError):
        open_message(datagrams[0], make_cipher("aes128gcm16"))


def test_single_fragment_opens() -> None:
    datagrams = seal_message(
        HEADER, small_chain(), make_cipher("aes128gcm16"), max_message_size=100
    )
    assert len(datagrams) > 1
    # A 1-of-1 fragment (a sender that always fragments) is a whole message.
    from mpa_ike.protection import _seal_one
    from mpa_ike.wire import serialize_payload_chain

    inner_type, plaintext = serialize_payload_chain(small_chain())
    one = _seal_one(
        HEADER,
        [EncryptedFragmentPayload(1, 1, inner_type, b"")],
        make_cipher("aes128gcm16"),
        plaintext,
    )
    assert list(open_message(one, make_cipher("aes128gcm16")).payloads) == small_chain()


def test_larger_total_restarts_smaller_total_is_dropped() -> None:
    big = seal_message(HEADER, large_chain(), make_cipher("aes128-sha256"), max_message_size=1280)
    small = seal_message(HEADER, large_chain(), make_cipher("aes128-sha256"), max_message_size=400)
    assert len(small) > len(big)
    reassembler = Reassembler()
    receiver = make_cipher("aes128-sha256")
    assert reassembler.add(big[0], receiver) is None
    assert reassembler.add(small[0], receiver) is None  # restart with the larger total
    assert reassembler.pending[HEADER.message_id] == (1, len(small))
    assert reassembler.add(big[1], receiver) is None  # stale: fewer fragments
    assert reassembler.dropped == 1
    message = None
    for datagram in small[1:]:
        message = reassembler.add(datagram, receiver)
    assert message is not None
    assert list(message.payloads) == large_chain()


def test_memory_limits() -> None:
    datagrams = seal_message(
        HEADER, large_chain(), make_cipher("aes128-sha256"), max_message_size=200
    )
    receiver = make_cipher("aes128-sha256")
    few = Reassembler(max_fragments=len(datagrams) - 1)
    assert all(few.add(d, receiver) is None for d in datagrams)
    assert few.pending == {}
    assert few.dropped == len(datagrams)
    small = Reassembler(max_bytes=1000)
    assert all(small.add(d, receiver) is None for d in datagrams)
    assert small.buffered_bytes <= 1000
    assert small.dropped > 0


def test_message_ids_are_kept_apart_and_oldest_evicted() -> None:
    receiver = make_cipher("aes128gcm16")
    reassembler = Reassembler(max_messages=2)
    firsts = []
    for message_id in (5, 6, 7):
        header = IkeHeader(HEADER.spi_i, HEADER.spi_r, ExchangeType.INFORMATIONAL, 0, message_id)
        datagrams = seal_message(
            header, large_chain(), make_cipher("aes128gcm16"), max_message_size=1280
        )
        assert reassembler.add(datagrams[0], receiver) is None
        firsts.append(datagrams)
    assert set(reassembler.pending) == {6, 7}
    message = None
    for datagram in firsts[2][1:]:
        message = reassembler.add(datagram, receiver)
    assert message is not None
    assert message.header.message_id == 7
    assert set(reassembler.pending) == {6}
    reassembler.discard(6)
    assert reassembler.pending == {}


def test_fragment_number_zero_or_above_total_is_a_codec_error() -> None:
    from mpa_ike.protection import _seal_one

    cipher = make_cipher("aes128gcm16")
    for number, total in ((0, 2), (3, 2)):
        datagram = _seal_one(
            HEADER, [EncryptedFragmentPayload(number, total, PayloadType.NONE, b"")], cipher, b"x"
        )
        with pytest.raises(CodecError):
            Reassembler().add(datagram, make_cipher("aes128gcm16"))


def test_malformed_inner_chain_is_a_codec_error() -> None:
    from mpa_ike.protection import _seal_one

    for suite in ("aes128-sha256", "aes128gcm16"):
        datagram = _seal_one(
            HEADER,
            [EncryptedPayload(PayloadType.NOTIFY, b"")],
            make_cipher(suite),
            b"\x00\x00\x00\x09",
        )
        with pytest.raises(CodecError):
            open_message(datagram, make_cipher(suite))


# ---------------------------------------------------------------------------
# Fuzzing: whatever the bytes, only IntegrityError or CodecError escape.


def _check_only_remote_errors(data: bytes, suite: str) -> None:
    with contextlib.suppress(IntegrityError, CodecError):
        open_message(data, make_cipher(suite))
    with contextlib.suppress(IntegrityError, CodecError):
        Reassembler().add(data, make_cipher(suite))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(list(SUITES)))
def test_fuzz_random_bytes(data: bytes, suite: str) -> None:
    _check_only_remote_errors(data, suite)


_SEALED = {
    suite: seal_message(HEADER, large_chain(), make_cipher(suite), max_message_size=576)
    + seal_message(HEADER, small_chain(), make_cipher(suite))
    for suite in SUITES
}


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(list(SUITES)),
    st.integers(0, 1000),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
    st.integers(0, 2000),
)
def test_fuzz_mutated_messages(
    suite: str, pick: int, flips: list[tuple[int, int]], cut: int
) -> None:
    sealed = _SEALED[suite]
    data = bytearray(sealed[pick % len(sealed)])
    for index, value in flips:
        data[index % len(data)] = value
    _check_only_remote_errors(bytes(data[: max(cut, 28)]), suite)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(SUITES)), st.permutations(range(6)), st.integers(0, 5))
def test_fuzz_reassembly_orders(suite: str, order: list[int], duplicate: int) -> None:
    datagrams = _SEALED[suite][:-1]
    picked = [datagrams[i % len(datagrams)] for i in order[: len(datagrams)]]
    picked.insert(duplicate % (len(picked) + 1), picked[duplicate % len(picked)])
    reassembler = Reassembler()
    receiver = make_cipher(suite)
    results = [reassembler.add(d, receiver) for d in picked]
    complete = [r for r in results if r is not None]
    if len(set(picked)) == len(datagrams):
        assert len(complete) >= 1
        assert list(complete[0].payloads) == large_chain()
