"""Buffer: pull/push pairs, restriction to a length, errors on over-reads."""

from __future__ import annotations

import pytest

from mpa_ike.constants import NotifyType
from mpa_ike.errors import CodecError
from mpa_ike.wire import Buffer


def test_push_then_pull_every_width() -> None:
    out = Buffer()
    out.push_uint8(0xAB)
    out.push_uint16(0xBEEF)
    out.push_uint32(0xDEADBEEF)
    out.push_uint64(0x0102030405060708)
    out.push_bytes(b"tail")
    assert out.written == 19
    assert out.data == bytes.fromhex("abbeefdeadbeef0102030405060708") + b"tail"

    buf = Buffer(out.data)
    assert buf.pull_uint8() == 0xAB
    assert buf.pull_uint16() == 0xBEEF
    assert buf.pull_uint32() == 0xDEADBEEF
    assert buf.pull_uint64() == 0x0102030405060708
    assert buf.pull_rest() == b"tail"
    assert buf.eof()


def test_patch_fields_written_earlier() -> None:
    out = Buffer()
    out.push_bytes(bytes(7))
    out.patch_uint8(0, 1)
    out.patch_uint16(1, 0x0203)
    out.patch_uint32(3, 0x04050607)
    assert out.data == bytes(range(1, 8))


@pytest.mark.parametrize("width", [1, 2, 4, 8])
def test_pull_past_end_is_invalid_syntax(width: int) -> None:
    pull = {
        1: Buffer.pull_uint8,
        2: Buffer.pull_uint16,
        4: Buffer.pull_uint32,
        8: Buffer.pull_uint64,
    }
    buf = Buffer(bytes(width - 1))
    with pytest.raises(CodecError) as info:
        pull[width](buf)
    assert info.value.notify == NotifyType.INVALID_SYNTAX


def test_pull_bytes_negative_or_too_long() -> None:
    for n in (-1, 4):
        with pytest.raises(CodecError):
            Buffer(b"abc").pull_bytes(n)


def test_restrict_limits_reads_and_restores_end() -> None:
    buf = Buffer(b"\x00\x01\x02\x03\x04")
    buf.skip(1)
    with buf.restrict(2):
        assert buf.remaining == 2
        with pytest.raises(CodecError):
            buf.pull_uint32()
        assert buf.pull_uint16() == 0x0102
    assert buf.remaining == 2
    assert buf.tell() == 3


def test_restrict_beyond_end_fails() -> None:
    with pytest.raises(CodecError):
        Buffer(b"ab").restrict(3)
    with pytest.raises(CodecError):
        Buffer(b"ab").restrict(-1)


def test_restrict_requires_whole_region_read() -> None:
    buf = Buffer(b"abcd")
    with pytest.raises(CodecError, match="unparsed"), buf.restrict(3):
        buf.pull_uint8()


def test_restrict_keeps_inner_error() -> None:
    buf = Buffer(b"abcd")
    with pytest.raises(CodecError, match="truncated"), buf.restrict(1):
        buf.pull_uint16()
    assert buf.remaining == 4
