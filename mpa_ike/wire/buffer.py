"""A byte buffer with paired ``pull_x`` / ``push_x`` functions, as in aioquic.

Reads are bounded by the current end, which :meth:`Buffer.restrict` narrows to
the length field of a nested structure (payload, proposal, transform), as
dnspython's ``restrict_to`` does. Every read past the end raises
:class:`CodecError` with INVALID_SYNTAX, so a truncated or lying length field
can never surface as an ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import struct
from types import TracebackType
from typing import Any

from mpa_ike.constants import NotifyType
from mpa_ike.errors import CodecError

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def _truncated(wanted: int, available: int) -> CodecError:
    return CodecError(
        f"truncated: need {wanted} bytes, {available} left", NotifyType.INVALID_SYNTAX
    )


class Restriction:
    """Context manager that limits reads to ``length`` bytes from the current position.

    On a clean exit every byte of the restricted region must have been read:
    bytes left over mean the length field and the contents disagree.
    """

    __slots__ = ("_buf", "_end", "_saved_end")

    def __init__(self, buf: Buffer, length: int) -> None:
        if length < 0 or length > buf.remaining:
            raise _truncated(length, buf.remaining)
        self._buf = buf
        self._saved_end = buf.end
        self._end = buf.tell() + length

    def __enter__(self) -> Buffer:
        self._buf.set_end(self._end)
        return self._buf

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        buf = self._buf
        buf.set_end(self._saved_end)
        if exc_type is None and buf.tell() != self._end:
            raise CodecError(
                f"{self._end - buf.tell()} unparsed bytes inside a length-delimited structure",
                NotifyType.INVALID_SYNTAX,
            )


class Buffer:
    """Reads from ``data`` (if given) and appends written bytes to an output area.

    A buffer is used either for reading or for writing: ``Buffer(data)`` to
    parse, ``Buffer()`` to serialize and then take :attr:`data`.
    """

    __slots__ = ("_data", "_end", "_out", "_pos")

    def __init__(self, data: bytes = b"") -> None:
        self._data = data
        self._pos = 0
        self._end = len(data)
        self._out = bytearray()

    # -- reading ---------------------------------------------------------

    @property
    def remaining(self) -> int:
        """Bytes left before the current (possibly restricted) end."""
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def tell(self) -> int:
        """Read position."""
        return self._pos

    @property
    def end(self) -> int:
        """Where reads stop: the data's end, or that of the restriction in force."""
        return self._end

    def set_end(self, end: int) -> None:
        """Move where reads stop (a :class:`Restriction` narrows and restores it)."""
        self._end = end

    def restrict(self, length: int) -> Restriction:
        return Restriction(self, length)

    def _advance(self, n: int) -> int:
        pos = self._pos
        if pos + n > self._end:
            raise _truncated(n, self._end - pos)
        self._pos = pos + n
        return pos

    def pull_uint8(self) -> int:
        return self._data[self._advance(1)]

    def pull_uint16(self) -> int:
        value: int = _U16.unpack_from(self._data, self._advance(2))[0]
        return value

    def pull_uint32(self) -> int:
        value: int = _U32.unpack_from(self._data, self._advance(4))[0]
        return value

    def pull_uint64(self) -> int:
        value: int = _U64.unpack_from(self._data, self._advance(8))[0]
        return value

    def pull_struct(self, layout: struct.Struct) -> tuple[Any, ...]:
        """Several fixed-size fields at once (hot paths: headers of payloads, transforms)."""
        return layout.unpack_from(self._data, self._advance(layout.size))

    def pull_bytes(self, n: int) -> bytes:
        if n < 0:
            raise _truncated(n, self.remaining)
        pos = self._advance(n)
        return self._data[pos : pos + n]

    def pull_rest(self) -> bytes:
        """Everything up to the current end."""
        return self.pull_bytes(self._end - self._pos)

    def skip(self, n: int) -> None:
        self._advance(n)

    # -- writing ---------------------------------------------------------

    @property
    def data(self) -> bytes:
        """The bytes written so far."""
        return bytes(self._out)

    @property
    def written(self) -> int:
        """Number of bytes written so far (offset of the next push)."""
        return len(self._out)

    def push_uint8(self, value: int) -> None:
        self._out.append(value)

    def push_struct(self, layout: struct.Struct, *values: Any) -> None:
        """Fixed fields in one go (what :meth:`pull_struct` reads)."""
        self._out += layout.pack(*values)

    def push_uint16(self, value: int) -> None:
        self._out += _U16.pack(value)

    def push_uint32(self, value: int) -> None:
        self._out += _U32.pack(value)

    def push_uint64(self, value: int) -> None:
        self._out += _U64.pack(value)

    def push_bytes(self, value: bytes) -> None:
        self._out += value

    def patch_uint8(self, offset: int, value: int) -> None:
        self._out[offset] = value

    def patch_uint16(self, offset: int, value: int) -> None:
        """Overwrite a 16-bit field written earlier (a length known only afterwards)."""
        _U16.pack_into(self._out, offset, value)

    def patch_uint32(self, offset: int, value: int) -> None:
        _U32.pack_into(self._out, offset, value)
