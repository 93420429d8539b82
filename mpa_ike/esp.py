"""ESP in tunnel mode (RFC 4303), sans-I/O: packets in, packets out, counters.

The userspace datapath (:mod:`mpa_ike.io.userspace`) feeds this module inner IP
packets read from a TUN device and ESP packets read from the UDP 4500 socket;
nothing here touches a socket, a device or a clock.

Transforms:

- AES-GCM with a 16-byte ICV (RFC 4106): key followed by a 4-byte salt, 8-byte
  explicit IV, AAD = SPI | sequence number (64 bits with ESN, §5).
- ChaCha20-Poly1305 (RFC 7634): the same layout with a 32-byte key (§2, §2.1).
- AES-CBC (RFC 3602) with HMAC-SHA1-96 (RFC 2404) or HMAC-SHA2 (RFC 4868).

Per-packet work is kept small: cipher objects are built once per SA, the AEAD
IV is the sequence number (unique per key, as Linux's seqiv and strongSwan do;
RFC 4106 §3.1 only asks for uniqueness), and the CBC IV is the encryption of a
nonce block under the SA key (NIST SP 800-38A Appendix C), produced by the same
CBC call that encrypts the payload, so no random call per packet.

Nothing raises for received bytes: every failure is a :class:`DropReason`
returned to the caller and counted.
"""

from __future__ import annotations

import enum
import functools
import hmac
import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.crypto.cipher import get_encr
from mpa_ike.crypto.integ import get_integ
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaCounters, ChildSaParams, TsRange
from mpa_ike.errors import LocalProtocolError
from mpa_ike.records import quick_init

NEXT_HEADER_IPV4 = 4
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NONE = 59
"""RFC 4303 §2.6: a dummy packet (TFC), discarded by the receiver."""

DEFAULT_REPLAY_WINDOW = 128
SEQ_SOFT_MARGIN = 1 << 20
"""Sequence numbers left when an outbound SA asks for a rekey (soft expiry)."""
ESP_HEADER_SIZE = 8

_PAD = bytes(range(1, 256))
"""RFC 4303 §2.4: default padding is the monotonic series 1, 2, 3, ..."""
_TRAILERS = {(n, nh): _PAD[:n] + bytes((n, nh)) for n in range(16) for nh in (4, 41)}
"""Padding, pad length and next header, prebuilt for tunnel-mode packets."""
_ZERO_BLOCK = bytes(16)
_CBC_NONCE_PREFIX = b"mpa-esp\x00"


class DropReason(enum.Enum):
    """Why a packet was discarded; counted, never raised."""

    MALFORMED = "malformed"
    UNKNOWN_SPI = "unknown-spi"
    REPLAY = "replay"
    BAD_ICV = "bad-icv"
    BAD_PADDING = "bad-padding"
    BAD_NEXT_HEADER = "bad-next-header"
    DUMMY = "dummy"
    POLICY = "policy"
    """Inbound: the inner packet is outside the SA's traffic selectors (RFC 4301 §5.2)."""
    NO_SA = "no-sa"
    """Outbound: no SA's traffic selectors cover the inner packet."""
    SEQ_EXHAUSTED = "seq-exhausted"
    """Outbound: the sequence number would cycle (RFC 4303 §3.3.3); rekey needed."""


class SequenceExhausted(LocalProtocolError):
    """The outbound SA has sent its last sequence number and must be rekeyed."""


# --- transforms ------------------------------------------------------------


class EspTransform:
    """One direction's cipher (and integrity) state for an SA."""

    iv_size: int
    icv_size: int
    align: int
    """Payload | padding | pad length | next header is a multiple of this."""

    def seal(self, header: bytes, seq: int, seq_hi: bytes, plaintext: bytes) -> bytes:
        """The whole packet, ``header`` (SPI | seq) | IV | ciphertext | ICV, for
        ``plaintext`` (already padded)."""
        raise NotImplementedError

    def open(self, packet: bytes, seq_hi: bytes) -> bytes | None:
        """The padded plaintext of a whole ESP packet, or None when the ICV is wrong."""
        raise NotImplementedError


class _Aead(EspTransform):
    """AES-GCM-16 or ChaCha20-Poly1305: nonce = salt | explicit IV (RFC 4106 §4)."""

    iv_size = 8
    icv_size = 16
    align = 4

    def __init__(self, cipher: type[AESGCM | ChaCha20Poly1305], key: bytes, salt: bytes) -> None:
        self._cipher = cipher
        self._key = key
        self._salt = salt

    @functools.cached_property
    def _aead(self) -> AESGCM | ChaCha20Poly1305:
        # Built at the first packet: a cipher context holds about 2.7 KiB, and a
        # gateway keeps thousands of SAs that have not carried anything yet.
        return self._cipher(self._key)

    def seal(self, header: bytes, seq: int, seq_hi: bytes, plaintext: bytes) -> bytes:
        iv = seq.to_bytes(8, "big")
        aad = header[:4] + seq_hi + header[4:] if seq_hi else header
        return header + iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, packet: bytes, seq_hi: bytes) -> bytes | None:
        aad = packet[:4] + seq_hi + packet[4:8] if seq_hi else packet[:8]
        try:
            return self._aead.decrypt(self._salt + packet[8:16], packet[16:], aad)
        except InvalidTag:
            return None


class _CbcHmac(EspTransform):
    """AES-CBC with an HMAC over SPI | seq | IV | ciphertext [| seq high] (RFC 4303 §2.8).

    Building a CBC context costs more than encrypting a packet, so an SA keeps the
    one of its direction, built at its first packet (a context holds over a KiB, and
    a gateway keeps thousands of SAs that have not carried anything yet). Outbound,
    one CBC chain runs across all packets and each packet starts with a nonce block
    (sequence number): its ciphertext is the packet's IV, E_K(nonce XOR previous
    block), unpredictable to anyone without the key (RFC 3602 §2; NIST SP 800-38A
    Appendix C). Inbound, one CBC decryption context is fed each packet's IV and
    ciphertext, so the IV chains into the first block.
    """

    iv_size = 16
    align = 16

    def __init__(self, key: bytes, integ_key: bytes, digest: str, icv_size: int) -> None:
        self._key = key
        self._mac = hmac.new(integ_key, digestmod=digest)
        self.icv_size = icv_size

    @functools.cached_property
    def _chain(self) -> CipherContext:
        return Cipher(algorithms.AES(self._key), modes.CBC(_ZERO_BLOCK)).encryptor()

    @functools.cached_property
    def _inbound_chain(self) -> CipherContext:
        return Cipher(algorithms.AES(self._key), modes.CBC(_ZERO_BLOCK)).decryptor()

    def _icv(self, data: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(data)
        return mac.digest()[: self.icv_size]

    def seal(self, header: bytes, seq: int, seq_hi: bytes, plaintext: bytes) -> bytes:
        body = self._chain.update(_CBC_NONCE_PREFIX + seq.to_bytes(8, "big") + plaintext)
        signed = header + body
        return signed + self._icv(signed + seq_hi if seq_hi else signed)

    def open(self, packet: bytes, seq_hi: bytes) -> bytes | None:
        n = self.icv_size
        signed = packet[:-n]
        if not hmac.compare_digest(self._icv(signed + seq_hi if seq_hi else signed), packet[-n:]):
            return None
        # Feeding the IV as a ciphertext block first makes it the chaining value
        # of the first real block; the garbage block it yields is dropped.
        return self._inbound_chain.update(signed[8:])[16:]


def make_transform(
    encr_id: int, encr_key_bits: int | None, integ_id: int | None, encr_key: bytes, integ_key: bytes
) -> EspTransform:
    """The transform for negotiated ids and keys (AEAD keys end with the salt)."""
    encr = get_encr(encr_id)
    size = encr.key_size(encr_key_bits)
    if len(encr_key) != size:
        raise LocalProtocolError(f"{encr.id.name} needs {size} key bytes, got {len(encr_key)}")
    if encr.is_aead:
        if integ_id not in (None, IntegId.NONE):
            raise LocalProtocolError("an AEAD cipher takes no integrity algorithm")
        key, salt = encr_key[:-4], encr_key[-4:]
        if encr.id == EncrId.AES_GCM_16:
            return _Aead(AESGCM, key, salt)
        return _Aead(ChaCha20Poly1305, key, salt)
    if integ_id is None or integ_id == IntegId.NONE:
        raise LocalProtocolError(f"{encr.id.name} needs an integrity algorithm")
    integ = get_integ(integ_id)
    if len(integ_key) != integ.key_size:
        raise LocalProtocolError(f"{integ.id.name} needs {integ.key_size} key bytes")
    return _CbcHmac(encr_key, integ_key, integ.digest, integ.icv_size)


# --- SAs -------------------------------------------------------------------


@dataclass(slots=True)
class SaStats:
    packets: int = 0
    bytes: int = 0
    drops: Counter[DropReason] = field(default_factory=Counter)


class OutboundSa:
    """The sending side of one SA: sequence numbers and encryption (RFC 4303 §3.1)."""

    def __init__(self, spi: bytes, transform: EspTransform, *, esn: bool = False) -> None:
        if len(spi) != 4:
            raise LocalProtocolError("an ESP SPI is 4 bytes")
        self.spi = spi
        self.transform = transform
        self.esn = esn
        self.seq = 0
        """The last sequence number sent (64 bits with ESN)."""
        self._seq_limit = (1 << 64) - 1 if esn else (1 << 32) - 1
        self.soft_limit = self._seq_limit - SEQ_SOFT_MARGIN
        """Past this sequence number the SA should be rekeyed (a soft expiry)."""
        self.stats = SaStats()

    def encrypt(self, inner: bytes) -> bytes:
        """The ESP packet (from the SPI on) carrying the inner IP packet ``inner``.

        Raises :class:`SequenceExhausted` once the counter would cycle (§3.3.3),
        and :class:`LocalProtocolError` if ``inner`` is not an IP packet.
        """
        if not inner:
            raise LocalProtocolError("empty inner packet")
        version = inner[0] >> 4
        if version == 4:
            next_header = NEXT_HEADER_IPV4
        elif version == 6:
            next_header = NEXT_HEADER_IPV6
        else:
            raise LocalProtocolError(f"not an IP packet (version {version})")
        return self.encrypt_payload(inner, next_header)

    def encrypt_payload(self, payload: bytes, next_header: int) -> bytes:
        """ESP-protect ``payload`` with an explicit Next Header (e.g. 59 for a dummy)."""
        if self.seq >= self._seq_limit:
            raise SequenceExhausted(f"SPI {self.spi.hex()}: sequence number exhausted")
        self.seq = seq = self.seq + 1
        t = self.transform
        pad_len = -(len(payload) + 2) % t.align
        trailer = _TRAILERS.get((pad_len, next_header))
        if trailer is None:
            trailer = _PAD[:pad_len] + bytes((pad_len, next_header))
        plaintext = payload + trailer
        header = self.spi + (seq & 0xFFFFFFFF).to_bytes(4, "big")
        seq_hi = (seq >> 32).to_bytes(4, "big") if self.esn else b""
        packet = t.seal(header, seq, seq_hi, plaintext)
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(payload)
        return packet


class ReplayWindow:
    """The receiver's sliding window (RFC 4303 §3.4.3, Appendix A).

    ``top`` is the highest sequence number authenticated so far; bit ``i`` of
    the bitmap says whether ``top - i`` was received. A window of 0 disables
    the check.
    """

    __slots__ = ("_mask", "bitmap", "size", "top")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        if size < 0:
            raise LocalProtocolError("replay window size must be >= 0")
        self.size = size
        self.top = 0
        self.bitmap = 0
        self._mask = (1 << size) - 1

    def infer_esn(self, seq_low: int) -> int:
        """The full 64-bit sequence number for a received low half (Appendix A2.2)."""
        # Without anti-replay, take the high half that puts seq nearest the top.
        w = self.size or 1 << 31
        th, tl = self.top >> 32, self.top & 0xFFFFFFFF
        if tl >= w - 1:
            # Case A: the window lies within one 2^32 subspace.
            seq_hi = th if seq_low >= tl - w + 1 else th + 1
        else:
            # Case B: the window spans two subspaces.
            bottom = (tl - w + 1) & 0xFFFFFFFF
            seq_hi = th - 1 if seq_low >= bottom else th
        if seq_hi < 0 or seq_hi > 0xFFFFFFFF:
            return 0
        return (seq_hi << 32) | seq_low

    def check(self, seq: int) -> bool:
        """True when ``seq`` is neither zero, too old, nor already received."""
        if seq == 0:
            return False
        if self.size == 0 or seq > self.top:
            return True
        diff = self.top - seq
        return diff < self.size and not (self.bitmap >> diff) & 1

    def update(self, seq: int) -> None:
        """Record an authenticated ``seq`` (call only after :meth:`check` and the ICV)."""
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        elif self.size:
            self.bitmap |= 1 << (self.top - seq)


class InboundSa:
    """The receiving side of one SA: ICV check, decryption, anti-replay (§3.4)."""

    def __init__(
        self,
        spi: bytes,
        transform: EspTransform,
        *,
        esn: bool = False,
        replay_window: int = DEFAULT_REPLAY_WINDOW,
    ) -> None:
        if len(spi) != 4:
            raise LocalProtocolError("an ESP SPI is 4 bytes")
        self.spi = spi
        self.transform = transform
        self.esn = esn
        self.window = ReplayWindow(replay_window)
        self.stats = SaStats()
        self.policy: Callable[[bytes], bool] | None = None
        """Checks a decrypted inner packet against the SA's selectors."""
        t = transform
        self._open = t.open
        self._overhead = ESP_HEADER_SIZE + t.iv_size + t.icv_size
        self._blocks = t.align == 16
        # SPI, seq, IV, at least pad length and next header, ICV; CBC adds a block.
        self._min_len = self._overhead + max(2, t.align)

    def decrypt(self, packet: bytes) -> bytes | DropReason:
        """The inner IP packet carried by ``packet`` (from the SPI on), or why not."""
        reason = self._decrypt(packet)
        if isinstance(reason, DropReason):
            self.stats.drops[reason] += 1
        return reason

    def _decrypt(self, packet: bytes) -> bytes | DropReason:
        size = len(packet)
        if size < self._min_len:
            return DropReason.MALFORMED
        if packet[:4] != self.spi:
            return DropReason.UNKNOWN_SPI
        if self._blocks and (size - self._overhead) % 16:
            return DropReason.MALFORMED
        seq = int.from_bytes(packet[4:8], "big")
        window = self.window
        if self.esn:
            seq = window.infer_esn(seq)
            seq_hi = (seq >> 32).to_bytes(4, "big")
        else:
            seq_hi = b""
        # §3.4.3: the cheap replay check comes before the ICV check; the usual
        # case, a number above the window, needs no method call.
        if not (0 < seq > window.top) and not window.check(seq):
            return DropReason.REPLAY
        plaintext = self._open(packet, seq_hi)
        if plaintext is None:
            return DropReason.BAD_ICV
        window.update(seq)
        next_header = plaintext[-1]
        end = len(plaintext) - 2 - plaintext[-2]
        if end < 0:
            return DropReason.BAD_PADDING
        if next_header == NEXT_HEADER_NONE:
            return DropReason.DUMMY
        inner = _inner_packet(plaintext, end, next_header)
        if isinstance(inner, DropReason):
            return inner
        if self.policy is not None and not self.policy(inner):
            return DropReason.POLICY
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(inner)
        return inner


def _inner_packet(plaintext: bytes, end: int, next_header: int) -> bytes | DropReason:
    """The inner IP packet, without any TFC padding after it (RFC 4303 §2.7)."""
    if next_header == NEXT_HEADER_IPV4:
        if end < 20 or plaintext[0] >> 4 != 4:
            return DropReason.MALFORMED
        length = int.from_bytes(plaintext[2:4], "big")
        if length < 20:
            return DropReason.MALFORMED
    elif next_header == NEXT_HEADER_IPV6:
        if end < 40 or plaintext[0] >> 4 != 6:
            return DropReason.MALFORMED
        length = 40 + int.from_bytes(plaintext[4:6], "big")
    else:
        return DropReason.BAD_NEXT_HEADER
    if length > end:
        return DropReason.MALFORMED
    return plaintext[:length] if length < len(plaintext) else plaintext


# --- traffic selectors and the SA tables --------------------------------------

_PORT_PROTOCOLS = frozenset((6, 17, 132, 136))
"""TCP, UDP, SCTP, UDP-Lite: the protocols whose ports selectors can name."""


@quick_init
@dataclass(frozen=True, slots=True)
class Selector:
    """A :class:`TsRange` compiled to integers for matching packets."""

    version: int
    start: int
    end: int
    protocol: int
    start_port: int
    end_port: int

    @classmethod
    def from_ts(cls, ts: TsRange) -> Selector:
        start, end = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
        if start.version != end.version:
            raise LocalProtocolError(f"traffic selector {ts} mixes address families")
        return cls(start.version, int(start), int(end), ts.ip_protocol, ts.start_port, ts.end_port)

    @property
    def single_address(self) -> bool:
        return self.start == self.end and self.any_port_any_protocol

    @property
    def any_port_any_protocol(self) -> bool:
        return self.protocol == 0 and (self.start_port, self.end_port) == (0, 0xFFFF)

    def matches(self, addr: int, protocol: int, port: int | None) -> bool:
        """Whether an address (and protocol/port, for restricted selectors) is covered."""
        if not self.start <= addr <= self.end:
            return False
        if self.protocol and self.protocol != protocol:
            return False
        if (self.start_port, self.end_port) == (0, 0xFFFF):
            return True
        return port is not None and self.start_port <= port <= self.end_port


@quick_init
@dataclass(frozen=True, slots=True)
class PacketKeys:
    """What selector matching reads from an inner IP header."""

    version: int
    src: int
    dst: int
    protocol: int
    src_port: int | None
    dst_port: int | None


def packet_keys(packet: bytes) -> PacketKeys | None:
    """Addresses, protocol and ports of an IP packet, or None if it is not one.

    The protocol is the upper layer one, after any IPv6 extension headers
    (RFC 4301 §4.4.1.1: "next layer protocol"); ports are read in unfragmented
    packets and first fragments only.
    """
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        protocol = packet[9]
        src, dst = int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
        first_fragment = not int.from_bytes(packet[6:8], "big") & 0x1FFF
        l4 = ihl if first_fragment and ihl >= 20 else -1
    elif version == 6 and len(packet) >= 40:
        src, dst = int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big")
        protocol, l4 = _ipv6_upper_layer(packet)
    else:
        return None
    if protocol in _PORT_PROTOCOLS and l4 >= 0 and len(packet) >= l4 + 4:
        sport = int.from_bytes(packet[l4 : l4 + 2], "big")
        dport = int.from_bytes(packet[l4 + 2 : l4 + 4], "big")
        return PacketKeys(version, src, dst, protocol, sport, dport)
    return PacketKeys(version, src, dst, protocol, None, None)


_IPV6_EXTENSIONS = frozenset((0, 43, 60))
"""Hop-by-hop options, routing, destination options: skipped to the upper layer."""
_IPV6_FRAGMENT = 44


def _ipv6_upper_layer(packet: bytes) -> tuple[int, int]:
    """The upper-layer protocol of an IPv6 packet and its offset (-1: no ports)."""
    next_header, offset = packet[6], 40
    for _ in range(8):
        if next_header in _IPV6_EXTENSIONS:
            if len(packet) < offset + 2:
                return next_header, -1
            next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
        elif next_header == _IPV6_FRAGMENT:
            if len(packet) < offset + 8:
                return next_header, -1
            fragment_offset = int.from_bytes(packet[offset + 2 : offset + 4], "big") >> 3
            next_header = packet[offset]
            offset = offset + 8 if fragment_offset == 0 else -1
            if offset < 0:
                return next_header, -1
        else:
            return next_header, offset
    return next_header, -1


def _covered(
    selectors: tuple[Selector, ...], version: int, addr: int, proto: int, port: int | None
) -> bool:
    return any(s.version == version and s.matches(addr, proto, port) for s in selectors)


def _addresses(packet: bytes) -> tuple[int, int, int] | None:
    """(version, source, destination) of an IP packet: the per-packet fast path."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        return 4, int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
    if version == 6 and len(packet) >= 40:
        return 6, int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big")
    return None


def _ranges(selectors: tuple[Selector, ...], version: int) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.end) for s in selectors if s.version == version)


def _in_ranges(ranges: tuple[tuple[int, int], ...], addr: int) -> bool:
    # A plain loop: about twice as fast as any() over a generator, per packet.
    for start, end in ranges:  # noqa: SIM110
        if start <= addr <= end:
            return True
    return False


class SaPair:
    """An installed CHILD SA: both directions, outer addresses and selectors."""

    def __init__(self, params: ChildSaParams, replay_window: int = DEFAULT_REPLAY_WINDOW) -> None:
        self.params = params
        self.local: Address = params.local
        self.remote: Address = params.remote
        self.encap = params.encap
        self.outbound = OutboundSa(
            params.spi_out,
            make_transform(
                params.encr_id,
                params.encr_key_bits,
                params.integ_id,
                params.encr_key_out,
                params.integ_key_out,
            ),
            esn=params.esn,
        )
        self.inbound = InboundSa(
            params.spi_in,
            make_transform(
                params.encr_id,
                params.encr_key_bits,
                params.integ_id,
                params.encr_key_in,
                params.integ_key_in,
            ),
            esn=params.esn,
            replay_window=replay_window,
        )
        self.local_sel = tuple(Selector.from_ts(ts) for ts in params.local_ts)
        self.remote_sel = tuple(Selector.from_ts(ts) for ts in params.remote_ts)
        self.inbound.policy = self._inbound_policy
        # Selectors without protocol or ports (the usual case) match on addresses
        # alone, against integer ranges per IP version.
        self._by_address = all(s.any_port_any_protocol for s in self.local_sel + self.remote_sel)
        self._local_ranges = {v: _ranges(self.local_sel, v) for v in (4, 6)}
        self._remote_ranges = {v: _ranges(self.remote_sel, v) for v in (4, 6)}

    def _inbound_policy(self, inner: bytes) -> bool:
        if self._by_address:
            addrs = _addresses(inner)
            return addrs is not None and (
                _in_ranges(self._remote_ranges[addrs[0]], addrs[1])
                and _in_ranges(self._local_ranges[addrs[0]], addrs[2])
            )
        keys = packet_keys(inner)
        return keys is not None and self.covers_inbound(keys)

    def matches_outbound(self, inner: bytes, version: int, src: int, dst: int) -> bool:
        """Whether this pair protects ``inner`` (whose addresses are given)."""
        if self._by_address:
            return _in_ranges(self._local_ranges[version], src) and _in_ranges(
                self._remote_ranges[version], dst
            )
        keys = packet_keys(inner)
        return keys is not None and self.covers_outbound(keys)

    def counters(self) -> ChildSaCounters:
        i, o = self.inbound.stats, self.outbound.stats
        return ChildSaCounters(i.bytes, o.bytes, i.packets, o.packets)

    def covers_outbound(self, keys: PacketKeys) -> bool:
        """Source in our selectors, destination in the peer's (RFC 4301 §5.1)."""
        return _covered(
            self.local_sel, keys.version, keys.src, keys.protocol, keys.src_port
        ) and _covered(self.remote_sel, keys.version, keys.dst, keys.protocol, keys.dst_port)

    def covers_inbound(self, keys: PacketKeys) -> bool:
        """Source in the peer's selectors, destination in ours (RFC 4301 §5.2 step 4)."""
        return _covered(
            self.remote_sel, keys.version, keys.src, keys.protocol, keys.src_port
        ) and _covered(self.local_sel, keys.version, keys.dst, keys.protocol, keys.dst_port)


@quick_init
@dataclass(frozen=True, slots=True)
class Expiry:
    """An outbound SA near (soft) or at (hard) the end of its sequence numbers.

    The IKE side should rekey the CHILD SA (RFC 4303 §3.3.3: the counter never
    cycles), like the kernel's XFRM_MSG_EXPIRE.
    """

    spi_in: bytes
    spi_out: bytes
    hard: bool


class EspTunnels:
    """The SAD and SPD of the userspace datapath: SA pairs by SPI and by selector.

    Outbound lookup by destination is a dictionary hit when the peer's selector
    is one address (a gateway's many mobile nodes, each with its CP address),
    and a scan of the installed pairs otherwise, newest first.
    """

    def __init__(self, replay_window: int = DEFAULT_REPLAY_WINDOW) -> None:
        self.replay_window = replay_window
        self.by_spi_in: dict[bytes, SaPair] = {}
        self._by_dst: dict[tuple[int, int], list[SaPair]] = {}
        self._ranged: list[SaPair] = []
        self.drops: Counter[DropReason] = Counter()
        """Drops not attributable to an SA (unknown SPI, no SA, malformed)."""
        self.expiries: list[Expiry] = []
        """Sequence-number expiries to act on (rekey), oldest first; the caller drains it."""

    def install(self, params: ChildSaParams) -> SaPair:
        if params.mode != "tunnel":
            raise LocalProtocolError(
                f"the userspace datapath does tunnel mode only ({params.mode})"
            )
        if params.spi_in in self.by_spi_in:
            raise LocalProtocolError(f"inbound SPI {params.spi_in.hex()} already installed")
        pair = SaPair(params, self.replay_window)
        self.by_spi_in[params.spi_in] = pair
        # The newest pair comes first: after a rekey both pairs are installed until
        # the old one is deleted, and traffic moves to the new one at once
        # (RFC 7296 §2.8), as with strongSwan and Linux.
        for sel in pair.remote_sel:
            if sel.single_address:
                self._by_dst.setdefault((sel.version, sel.start), []).insert(0, pair)
        if not all(sel.single_address for sel in pair.remote_sel):
            self._ranged.insert(0, pair)
        return pair

    def remove(self, spi_in: bytes) -> SaPair | None:
        pair = self.by_spi_in.pop(spi_in, None)
        if pair is None:
            return None
        for key in [k for k, pairs in self._by_dst.items() if pair in pairs]:
            self._by_dst[key].remove(pair)
            if not self._by_dst[key]:
                del self._by_dst[key]
        if pair in self._ranged:
            self._ranged.remove(pair)
        return pair

    def move(self, spi_in: bytes, local: Address, remote: Address, encap: bool) -> None:
        """Move a pair to new outer addresses; sequence numbers and replay state stay."""
        pair = self.by_spi_in.get(spi_in)
        if pair is None:
            raise LocalProtocolError(f"no SA with inbound SPI {spi_in.hex()}")
        pair.local, pair.remote, pair.encap = local, remote, encap

    def lookup_outbound(self, inner: bytes) -> SaPair | DropReason:
        addrs = _addresses(inner)
        if addrs is None:
            return DropReason.MALFORMED
        version, src, dst = addrs
        for pair in self._by_dst.get((version, dst), ()):
            if pair.matches_outbound(inner, version, src, dst):
                return pair
        for pair in self._ranged:
            if pair.matches_outbound(inner, version, src, dst):
                return pair
        return DropReason.NO_SA

    def outbound(self, inner: bytes) -> tuple[SaPair, bytes] | DropReason:
        """The SA for an inner packet and the ESP packet to send to ``pair.remote``."""
        pair = self.lookup_outbound(inner)
        if isinstance(pair, DropReason):
            self.drops[pair] += 1
            return pair
        out = pair.outbound
        try:
            packet = out.encrypt(inner)
        except SequenceExhausted:
            out.stats.drops[DropReason.SEQ_EXHAUSTED] += 1
            if out.stats.drops[DropReason.SEQ_EXHAUSTED] == 1:
                self.expiries.append(Expiry(pair.inbound.spi, out.spi, hard=True))
            return DropReason.SEQ_EXHAUSTED
        if out.seq == out.soft_limit:
            self.expiries.append(Expiry(pair.inbound.spi, out.spi, hard=False))
        return pair, packet

    def inbound(self, packet: bytes) -> tuple[SaPair, bytes] | DropReason:
        """The SA and inner packet for a received ESP packet (from the SPI on)."""
        pair = self.by_spi_in.get(packet[:4])
        if pair is None:
            reason = (
                DropReason.MALFORMED if len(packet) < ESP_HEADER_SIZE else DropReason.UNKNOWN_SPI
            )
            self.drops[reason] += 1
            return reason
        inner = pair.inbound.decrypt(packet)
        if isinstance(inner, DropReason):
            return inner
        return pair, inner

    def counters(self, spi_in: bytes) -> ChildSaCounters:
        pair = self.by_spi_in.get(spi_in)
        if pair is None:
            raise LocalProtocolError(f"no SA with inbound SPI {spi_in.hex()}")
        return pair.counters()
