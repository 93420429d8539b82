"""Whole-message protection: SK sealing and opening, RFC 7383 fragmentation and reassembly.

:func:`seal_message` turns a header and the payloads to protect into datagrams
(one SK message, or SKF fragments when it does not fit). :func:`open_message`
and :class:`Reassembler` turn received datagrams back into a
:class:`~mpa_ike.wire.Message` whose payloads are the decrypted inner ones.

Integrity is checked on the bytes as received (RFC 7296 §3.14), before any
inner payload is parsed. Receiving raises only :class:`IntegrityError` (drop
the message silently, RFC 7296 §2.21.1) or :class:`CodecError` (the message is
authentic but malformed; answer with its notify).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mpa_ike.constants import PayloadType
from mpa_ike.crypto.sk import SkCipher
from mpa_ike.errors import CodecError, IntegrityError, LocalProtocolError
from mpa_ike.wire import (
    EncryptedFragmentPayload,
    EncryptedPayload,
    IkeHeader,
    Message,
    Payload,
    ProtectedPayload,
    parse_message,
    parse_payload_chain,
    protected_prefix,
    serialize_payload_chain,
    split_protected,
)
from mpa_ike.wire.payloads import syntax_error

MAX_TOTAL_FRAGMENTS = 0xFFFF  # the Total Fragments field is 16 bits (RFC 7383 §2.5)

__all__ = [
    "Reassembler",
    "open_message",
    "seal_message",
]


# ---------------------------------------------------------------------------
# Sending


def seal_message(
    header: IkeHeader,
    payloads: Sequence[Payload],
    cipher: SkCipher,
    *,
    max_message_size: int | None = None,
    unprotected: Sequence[Payload] = (),
) -> list[bytes]:
    """Protect ``payloads`` in an SK payload behind ``header``; return the datagrams.

    ``header`` supplies SPIs, exchange type, flags and Message ID; its
    ``next_payload`` and ``length`` are recomputed. ``unprotected`` payloads
    (normally none) go before SK. When ``max_message_size`` is given and the
    SK message is longer, the message is sent as RFC 7383 fragments, each
    protected on its own and at most ``max_message_size`` bytes long (the IKE
    message only: the caller subtracts IP and UDP headers and the non-ESP marker).
    """
    inner_type, plaintext = serialize_payload_chain(payloads)
    sk = EncryptedPayload(inner_type, b"")
    whole = _seal_one(header, (*unprotected, sk), cipher, plaintext)
    if max_message_size is None or len(whole) <= max_message_size:
        return [whole]
    return _seal_fragments(header, unprotected, inner_type, plaintext, cipher, max_message_size)


def _seal_one(
    header: IkeHeader, payloads: Sequence[Payload], cipher: SkCipher, plaintext: bytes
) -> bytes:
    """The datagram whose last payload (SK or SKF) carries ``plaintext``, sealed."""
    msg = Message(header, tuple(payloads))
    associated = protected_prefix(msg, cipher.sealed_length(len(plaintext)))
    return associated + cipher.seal(associated, plaintext)


def _fragment_capacity(
    header: IkeHeader, unprotected: Sequence[Payload], cipher: SkCipher, max_size: int
) -> int:
    """Plaintext bytes that fit in one fragment carrying ``unprotected`` before SKF."""
    probe = EncryptedFragmentPayload(1, 1, PayloadType.NONE, b"")
    prefix_length = len(protected_prefix(Message(header, (*unprotected, probe)), 0))
    return cipher.max_plaintext_length(max_size - prefix_length)


def _seal_fragments(
    header: IkeHeader,
    unprotected: Sequence[Payload],
    inner_type: PayloadType,
    plaintext: bytes,
    cipher: SkCipher,
    max_size: int,
) -> list[bytes]:
    # RFC 7383 §2.5.3: payloads before SK travel in the first fragment only.
    first_room = _fragment_capacity(header, unprotected, cipher, max_size)
    room = _fragment_capacity(header, (), cipher, max_size)
    if first_room < 1 or room < 1:
        raise LocalProtocolError(f"no room for a fragment in {max_size} bytes")
    chunks = [plaintext[:first_room]]
    chunks += [plaintext[i : i + room] for i in range(first_room, len(plaintext), room)]
    total = len(chunks)
    if total > MAX_TOTAL_FRAGMENTS:
        raise LocalProtocolError(f"{total} fragments exceed the Total Fragments field")
    datagrams = []
    for number, chunk in enumerate(chunks, start=1):
        first = number == 1
        # §2.5: Next Payload names the first inner payload in fragment 1, else 0.
        skf = EncryptedFragmentPayload(
            number, total, inner_type if first else PayloadType.NONE, b""
        )
        before = tuple(unprotected) if first else ()
        datagrams.append(_seal_one(header, (*before, skf), cipher, chunk))
    return datagrams


# ---------------------------------------------------------------------------
# Receiving


def _open_protected(
    data: bytes, cipher: SkCipher, outer: Message | None = None
) -> tuple[Message, ProtectedPayload, bytes]:
    """Parse the outer message (unless given: ``data`` parsed already), check the ICV
    of its SK/SKF payload, return the plaintext."""
    if outer is None:
        outer = parse_message(data)
    if not outer.payloads or not isinstance(outer.payloads[-1], ProtectedPayload):
        raise syntax_error("no SK or SKF payload")
    associated, body = split_protected(data)
    plaintext = cipher.open(associated, body)
    return outer, outer.payloads[-1], plaintext


def open_message(data: bytes, cipher: SkCipher) -> Message:
    """Verify and decrypt a received SK message.

    Returns the message with its header as received and, as payloads, those
    before SK followed by the decrypted inner ones. An SKF fragment is
    accepted only when it is the whole message (1 of 1); feed fragments to a
    :class:`Reassembler`, which also takes unfragmented SK messages.
    """
    try:
        outer, protected, plaintext = _open_protected(data, cipher)
        if isinstance(protected, EncryptedFragmentPayload) and not (
            protected.fragment_number == protected.total_fragments == 1
        ):
            raise syntax_error("an IKE fragment; reassemble it first")
        inner = parse_payload_chain(protected.inner_type, plaintext)
    except (CodecError, IntegrityError):
        raise
    except Exception as exc:  # whatever the bytes, only the two remote errors escape
        raise syntax_error(f"unprotectable message: {exc!r}") from exc
    return Message(outer.header, (*outer.payloads[:-1], *inner))


@dataclass(slots=True)
class _Partial:
    """Fragments of one message received so far (by fragment number)."""

    total: int
    chunks: dict[int, bytes] = field(default_factory=dict)
    first: Message | None = None
    inner_type: PayloadType = PayloadType.NONE
    size: int = 0


class Reassembler:
    """Reassembles RFC 7383 fragments of one IKE SA, one direction.

    Each fragment's ICV is verified before it is kept (§2.6), so a forged
    fragment cannot poison a reassembly. Fragments are grouped by Message ID;
    duplicates and out-of-order arrival are fine. A fragment announcing more
    Total Fragments than those kept restarts the reassembly (the sender lowered
    its fragment size, §2.5.2); one announcing fewer is dropped. Memory is
    bounded by ``max_fragments`` per message, ``max_bytes`` of plaintext over
    all messages and ``max_messages`` messages in progress (the oldest goes).
    """

    def __init__(
        self, *, max_fragments: int = 64, max_bytes: int = 65535, max_messages: int = 4
    ) -> None:
        self.max_fragments = max_fragments
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._partials: dict[int, _Partial] = {}
        self.dropped = 0
        """Authentic fragments dropped (stale total, duplicate, over a limit)."""

    @property
    def pending(self) -> dict[int, tuple[int, int]]:
        """Message ID -> (fragments kept, total) for messages in progress."""
        return {mid: (len(p.chunks), p.total) for mid, p in self._partials.items()}

    @property
    def buffered_bytes(self) -> int:
        return sum(p.size for p in self._partials.values())

    def discard(self, message_id: int) -> None:
        """Forget a message in progress (e.g. once its exchange is done)."""
        self._partials.pop(message_id, None)

    def add(self, data: bytes, cipher: SkCipher, outer: Message | None = None) -> Message | None:
        """Take one received SK or SKF datagram.

        Returns the decrypted message when it is complete (at once for an
        unfragmented SK message), None while fragments are missing or when
        the fragment was dropped. Raises :class:`IntegrityError` for a
        fragment that fails its ICV and :class:`CodecError` for a malformed one.
        ``outer`` is ``parse_message(data)`` when the caller has it already (its
        checks before the ICV parsed the datagram), so that it is not parsed twice.
        """
        try:
            outer, protected, plaintext = _open_protected(data, cipher, outer)
            if isinstance(protected, EncryptedPayload):
                inner = parse_payload_chain(protected.inner_type, plaintext)
                return Message(outer.header, (*outer.payloads[:-1], *inner))
            return self._add_fragment(outer, protected, plaintext)
        except (CodecError, IntegrityError):
            raise
        except Exception as exc:
            raise syntax_error(f"unprotectable message: {exc!r}") from exc

    def _add_fragment(
        self, outer: Message, fragment: EncryptedFragmentPayload, plaintext: bytes
    ) -> Message | None:
        number, total = fragment.fragment_number, fragment.total_fragments
        if not 1 <= number <= total:
            raise syntax_error(f"fragment {number} of {total} (RFC 7383 §2.5)")
        if total > self.max_fragments:
            self.dropped += 1
            return None
        message_id = outer.header.message_id
        partial = self._partial_for(message_id, total)
        if partial is None or number in partial.chunks:
            self.dropped += 1
            return None
        if self.buffered_bytes + len(plaintext) > self.max_bytes:
            self.discard(message_id)
            self.dropped += 1
            return None
        partial.chunks[number] = plaintext
        partial.size += len(plaintext)
        if number == 1:
            # The inner payload type and any unprotected payloads come from fragment 1.
            partial.first = outer
            partial.inner_type = fragment.inner_type
        if len(partial.chunks) < total:
            return None
        del self._partials[message_id]
        return self._assemble(partial)

    def _partial_for(self, message_id: int, total: int) -> _Partial | None:
        partial = self._partials.get(message_id)
        if partial is not None:
            if total < partial.total:
                return None
            if total == partial.total:
                return partial
            del self._partials[message_id]  # §2.5.2: a larger total restarts reassembly
        while len(self._partials) >= self.max_messages:
            del self._partials[next(iter(self._partials))]
        partial = _Partial(total)
        self._partials[message_id] = partial
        return partial

    @staticmethod
    def _assemble(partial: _Partial) -> Message:
        assert partial.first is not None  # fragment 1 is among the complete set
        plaintext = b"".join(partial.chunks[n] for n in range(1, partial.total + 1))
        inner = parse_payload_chain(partial.inner_type, plaintext)
        # The header is fragment 1's as received (Next Payload SKF, its own Length).
        return Message(partial.first.header, (*partial.first.payloads[:-1], *inner))
