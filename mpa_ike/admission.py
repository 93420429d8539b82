"""What a responder admits before it spends state or crypto on a peer (RFC 7296 §2.6,
RFC 8019): the COOKIE secret and its rotation, the per-source token buckets of
IKE_SA_INIT, and the count of IKE SAs per peer identity.

All of it runs on the injected clock (``now``) and the injected randomness, so that a
test replays it exactly; the limits are read from :class:`AdmissionLimits` at each call,
so that a reloaded :class:`~mpa_ike.ike_config.ResponderConfig` applies at once.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from mpa_ike.constants import (
    IKE_MAJOR_VERSION,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
)
from mpa_ike.ike_config import AdmissionLimits

__all__ = [
    "CookieSecrets",
    "IdentityIndex",
    "InitRequest",
    "InitScan",
    "SourceRateLimiter",
    "cookie_response",
    "read_new_init_request",
    "scan_init_request",
]

SECRET_SIZE = 32
S = TypeVar("S")


class CookieSecrets:
    """§2.6: ``COOKIE = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)``.

    The secret is replaced every ``limits.cookie_lifetime`` seconds (the first period
    starts at the first use); a COOKIE made with the secret before keeps working for
    ``limits.cookie_grace`` seconds after the change, so that an initiator that got one
    just before is not sent another round trip. The version is one octet counting the
    changes modulo 256: the current and the previous secret never share it.
    """

    def __init__(self, random: Callable[[int], bytes]) -> None:
        self._random = random
        self._keyed = _KeyedHash(random(SECRET_SIZE))
        self._version = 0
        self._previous: _KeyedHash | None = None
        self._previous_until = 0.0
        self._next_change: float | None = None
        self.changes = 0

    @property
    def version(self) -> int:
        return self._version

    def make(self, material: bytes, now: float, limits: AdmissionLimits) -> bytes:
        """The COOKIE for ``material`` (Ni | IPi | SPIi) with the current secret."""
        self._rotate(now, limits)
        return _cookie(self._version, self._keyed, material)

    def check(self, cookie: bytes, material: bytes, now: float, limits: AdmissionLimits) -> bool:
        """Whether ``cookie`` is one we made for ``material``, with the current secret or
        the previous one still in its grace period; in constant time for a given length."""
        self._rotate(now, limits)
        if not cookie:
            return False
        version = cookie[0]
        if version == self._version:
            keyed = self._keyed
        elif self._previous is not None and version == (self._version - 1) % 256:
            if now >= self._previous_until:
                return False
            keyed = self._previous
        else:
            return False
        return hmac.compare_digest(cookie, _cookie(version, keyed, material))

    def _rotate(self, now: float, limits: AdmissionLimits) -> None:
        lifetime = limits.cookie_lifetime
        if self._next_change is None:
            self._next_change = now + lifetime
            return
        if now < self._next_change:
            return
        # The secret was due to go at _next_change: its grace runs from then, and the
        # schedule stays on its grid however late the first use after it comes.
        retired_at = self._next_change
        self._previous, self._previous_until = self._keyed, retired_at + limits.cookie_grace
        self._keyed = _KeyedHash(self._random(SECRET_SIZE))
        self._version = (self._version + 1) % 256
        self._next_change = retired_at + (1 + (now - retired_at) // lifetime) * lifetime
        self.changes += 1


def _cookie(version: int, keyed: _KeyedHash, material: bytes) -> bytes:
    return bytes((version,)) + keyed.digest(material)


class _KeyedHash:
    """HMAC-SHA-256 under one secret (RFC 2104), its padded keys hashed once: a COOKIE
    then costs two copies of a hash state, half of what ``hmac.new`` costs, and a flood
    asks for one COOKIE per request."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        block = hashlib.sha256().block_size
        key = secret if len(secret) <= block else hashlib.sha256(secret).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class SourceRateLimiter:
    """IKE_SA_INIT requests per source address: a token bucket each (``init_rate`` a
    second, ``init_burst`` at most), in a table of at most ``rate_sources`` addresses
    where the address heard from longest ago goes first.

    A flood from spoofed addresses turns the table over, so that each of them looks new:
    it is the COOKIE that stops those (§2.6); the buckets stop a peer that floods from
    its own address, which the COOKIE does not.
    """

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str, now: float, limits: AdmissionLimits) -> bool:
        """Take one token of ``source``'s bucket; False if it had none."""
        rate, burst = limits.init_rate, float(limits.init_burst)
        if rate <= 0:
            return True
        entry = self._buckets.pop(source, None)
        if entry is None:
            tokens = burst
        else:
            tokens, then = entry
            tokens = min(burst, tokens + max(0.0, now - then) * rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > limits.rate_sources:
            self._buckets.popitem(last=False)
        return allowed

    def forget_full(self, now: float, limits: AdmissionLimits) -> None:
        """Drop the buckets that have filled up again: a full bucket is what an address
        never heard from gets, so the table shrinks back once a flood is over. The
        table is in order of last use, so the sweep stops at the first bucket still
        refilling."""
        if limits.init_rate <= 0:
            self._buckets.clear()
            return
        refill = limits.init_burst / limits.init_rate
        while self._buckets:
            _, then = next(iter(self._buckets.values()))
            if now - then < refill:
                break
            self._buckets.popitem(last=False)
        if not self._buckets:
            # A dictionary keeps the table it grew to when emptied: a flood's 4096
            # sources would hold 330 KiB of it until the next flood.
            self._buckets = OrderedDict()


class IdentityIndex(Generic[S]):
    """The admitted responder IKE SAs of each peer identity (and the IKE SAs that rekeyed
    them), so that the uniqueness check and the per-identity cap cost the number of that
    identity's IKE SAs, not of all of them."""

    def __init__(self) -> None:
        self._by_key: dict[object, dict[int, S]] = {}
        self._key_of: dict[int, object] = {}

    def add(self, key: object, sa: S) -> None:
        self._by_key.setdefault(key, {})[id(sa)] = sa
        self._key_of[id(sa)] = key

    def inherit(self, old: S, new: S) -> None:
        """``new`` took over from ``old`` (an IKE SA rekey): same identity."""
        key = self._key_of.get(id(old))
        if key is not None:
            self.add(key, new)

    def remove(self, sa: S) -> None:
        key = self._key_of.pop(id(sa), None)
        if key is None:
            return
        members = self._by_key[key]
        members.pop(id(sa), None)
        if not members:
            del self._by_key[key]

    def of(self, key: object) -> list[S]:
        return list(self._by_key.get(key, {}).values())

    def __len__(self) -> int:
        return len(self._key_of)


# ---------------------------------------------------------------------------
# The COOKIE exchange without the parser: under a flood of IKE_SA_INIT, what decides
# whether a request costs more than a COOKIE is read from the payload chain's generic
# headers alone (RFC 7296 §3.2), and the COOKIE answer is packed by hand.

_IKE_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")
_NOTIFY = struct.Struct("!BBH")
IKE_HEADER_LENGTH = _IKE_HEADER.size
_MAX_PAYLOADS = 64
_NONE, _NONCE = int(PayloadType.NONE), int(PayloadType.NONCE)
_NOTIFY_PAYLOAD = int(PayloadType.NOTIFY)
_COOKIE = int(NotifyType.COOKIE)
_IKE_SA_INIT = int(ExchangeType.IKE_SA_INIT)
_DIRECTION = int(HeaderFlag.INITIATOR | HeaderFlag.RESPONSE)
_INITIATOR = int(HeaderFlag.INITIATOR)
_ZERO_SPI, _ZERO_ID = bytes(8), bytes(4)


class InitScan(NamedTuple):
    """What the COOKIE check needs of an IKE_SA_INIT request: the data of a COOKIE
    notify that comes first (§2.6: "the first payload"), or None, and the nonce."""

    cookie: bytes | None
    nonce: bytes


def scan_init_request(data: bytes) -> InitScan | None:
    """Walk the payload chain of ``data`` (a whole IKE message) by the generic headers
    up to the Nonce; None where a length does not add up before it, or there is none
    (the parser then says what is wrong; it reads the rest of a request let through)."""
    if len(data) < IKE_HEADER_LENGTH:
        return None
    next_type = data[16]
    offset, end = IKE_HEADER_LENGTH, min(len(data), int.from_bytes(data[24:28], "big"))
    cookie: bytes | None = None
    # The codepoints as plain ints: an IntEnum member costs an attribute look-up and a
    # rich comparison each, and this loop runs for every request of a flood.
    none, nonce, notify = _NONE, _NONCE, _NOTIFY_PAYLOAD
    for index in range(_MAX_PAYLOADS):
        if next_type == none or offset + 4 > end:
            return None
        following = data[offset]
        length = (data[offset + 2] << 8) | data[offset + 3]
        if length < 4 or offset + length > end:
            return None
        if next_type == nonce:
            return InitScan(cookie, data[offset + 4 : offset + length])
        if index == 0 and next_type == notify and length >= 8 and _is_cookie(data, offset):
            cookie = data[offset + 8 + data[offset + 5] : offset + length]
        next_type, offset = following, offset + length
    return None


def _is_cookie(data: bytes, offset: int) -> bool:
    return (data[offset + 6] << 8) | data[offset + 7] == _COOKIE


class InitRequest(NamedTuple):
    """A new IKE_SA_INIT request as the COOKIE exchange reads it from the octets."""

    spi_i: bytes
    scan: InitScan


def read_new_init_request(data: bytes) -> InitRequest | None:
    """``data`` as a new IKE_SA_INIT request (§1.2: SPIr zero, Message ID 0, the
    Initiator flag and not the Response flag) whose chain reaches the nonce; None for
    anything else, which the header parser and the full intake then take."""
    if (
        len(data) < IKE_HEADER_LENGTH
        or data[18] != _IKE_SA_INIT
        or data[19] & _DIRECTION != _INITIATOR
        or data[8:16] != _ZERO_SPI
        or data[20:24] != _ZERO_ID
    ):
        return None
    scan = scan_init_request(data)
    return None if scan is None else InitRequest(data[:8], scan)


def cookie_response(spi_i: bytes, cookie: bytes) -> bytes:
    """§2.6: ``HDR(A,0), N(COOKIE)``, the IKE_SA_INIT response that asks for it."""
    after_spi = _COOKIE_ANSWERS.get(len(cookie))
    if after_spi is None:
        after_spi = _COOKIE_ANSWERS[len(cookie)] = _after_spi(len(cookie))
    return spi_i + after_spi + cookie


def _after_spi(cookie_length: int) -> bytes:
    """The octets of a COOKIE answer between SPIi and the COOKIE: all but those two are
    the same in every answer with a COOKIE of this length."""
    notify_length = _GENERIC.size + _NOTIFY.size + cookie_length
    header = _IKE_HEADER.pack(
        bytes(8),
        bytes(8),
        PayloadType.NOTIFY,
        IKE_MAJOR_VERSION << 4,
        ExchangeType.IKE_SA_INIT,
        HeaderFlag.RESPONSE,
        0,
        IKE_HEADER_LENGTH + notify_length,
    )
    notify = _GENERIC.pack(PayloadType.NONE, 0, notify_length)
    return header[8:] + notify + _NOTIFY.pack(0, 0, NotifyType.COOKIE)


_COOKIE_ANSWERS: dict[int, bytes] = {}
