"""XFRM messages (NETLINK_XFRM, ``include/uapi/linux/xfrm.h``) as typed dataclasses.

Every structure has a ``push`` (to bytes) and a ``pull`` (from bytes) that lay the
fields where the C structure has them on Linux (x86_64 and the other 64-bit ABIs:
``__u64`` members 8-byte aligned, the compiler's padding spelled out as ``x``). Ports
and SPIs are big-endian on the wire (``__be16``, ``__be32``), everything else is in host
order. Addresses are ``xfrm_address_t``: 16 bytes, an IPv4 address in the first four,
read back according to the family the structure carries.

A message is an :class:`XfrmMessage`: the netlink type and flags, and one of the bodies
below with its attributes as typed fields (what this backend does not know is kept raw
in ``other``, so that a pull followed by a push gives the same bytes). The attribute
codec is :mod:`mpa_ike.io.netlink`'s (pyroute2 has no XFRM messages).
"""

from __future__ import annotations

import builtins
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mpa_ike.io.netlink import (
    Attributes,
    Message,
    NetlinkCodecError,
    pull_attributes,
    pull_message,
    pull_struct,
    push_attribute,
    push_message,
)

AF_INET = socket.AF_INET.value
AF_INET6 = socket.AF_INET6.value
IPPROTO_ESP = 50
XFRM_INF = 0xFFFF_FFFF_FFFF_FFFF

#: Policy priorities as strongSwan's kernel-netlink computes them in spirit: a
#: fixed base for regular IPsec policies, minus a weight that grows with the
#: selector's specificity (prefix lengths first, then protocol, then ports), so
#: that the more specific policy wins (the kernel prefers smaller values). The
#: base leaves room below for bypass policies and above for fallback ones.
PRIORITY_BASE = 400_000

XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_MIGRATE = 0x21
XFRM_MSG_MAPPING = 0x26

MSG_NAMES = {
    XFRM_MSG_NEWSA: "XFRM_MSG_NEWSA",
    XFRM_MSG_DELSA: "XFRM_MSG_DELSA",
    XFRM_MSG_GETSA: "XFRM_MSG_GETSA",
    XFRM_MSG_NEWPOLICY: "XFRM_MSG_NEWPOLICY",
    XFRM_MSG_DELPOLICY: "XFRM_MSG_DELPOLICY",
    XFRM_MSG_GETPOLICY: "XFRM_MSG_GETPOLICY",
    XFRM_MSG_UPDPOLICY: "XFRM_MSG_UPDPOLICY",
    XFRM_MSG_UPDSA: "XFRM_MSG_UPDSA",
    XFRM_MSG_MIGRATE: "XFRM_MSG_MIGRATE",
    XFRM_MSG_EXPIRE: "XFRM_MSG_EXPIRE",
    XFRM_MSG_MAPPING: "XFRM_MSG_MAPPING",
}

#: The kernel's XFRM multicast groups (``enum xfrm_nlgroups``): a socket bound to
#: ``group_mask(XFRMNLGRP_EXPIRE)`` hears every state's soft and hard expiry.
XFRMNLGRP_EXPIRE = 2
XFRMNLGRP_MAPPING = 8


def group_mask(group: int) -> int:
    """The ``nl_groups`` bit of a multicast group, for bind()."""
    return 1 << (group - 1)


XFRMA_ALG_AUTH = 1
XFRMA_ALG_CRYPT = 2
XFRMA_ENCAP = 4
XFRMA_TMPL = 5
XFRMA_LTIME_VAL = 9
XFRMA_REPLAY_VAL = 10
XFRMA_MIGRATE = 17
XFRMA_ALG_AEAD = 18
XFRMA_KMADDRESS = 19
XFRMA_ALG_AUTH_TRUNC = 20
XFRMA_REPLAY_ESN_VAL = 23


# --- addresses ---------------------------------------------------------------------------


def family_of(host: str) -> int:
    return AF_INET6 if ipaddress.ip_address(host).version == 6 else AF_INET


def pack_addr(host: str) -> bytes:
    """An xfrm_address_t: the address in network order, zero-padded to 16 bytes."""
    return ipaddress.ip_address(host).packed.ljust(16, b"\0")


def unpack_addr(raw: bytes, family: int) -> str:
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(bytes(raw[:16])))
    return str(ipaddress.IPv4Address(bytes(raw[:4])))


def _be16(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _pull(layout: struct.Struct, data: bytes, offset: int = 0) -> tuple[Any, ...]:
    return pull_struct(layout, data, offset)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- fixed structures --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """``struct xfrm_selector`` (56 bytes): a prefix pair with protocol and port blocks
    (value/mask). ``ifindex`` and ``user`` are always 0 here."""

    LAYOUT: ClassVar = struct.Struct("=16s16s2s2s2s2sHBBB3xiI")
    family: int
    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    sport: int = 0
    sport_mask: int = 0
    dport: int = 0
    dport_mask: int = 0

    @classmethod
    def zero(cls) -> Selector:
        """The AF_UNSPEC selector that matches nothing in particular (all zeros)."""
        any4 = ipaddress.IPv4Network("0.0.0.0/0")
        return cls(0, any4, any4)

    def push(self) -> bytes:
        return self.LAYOUT.pack(
            self.dst.network_address.packed.ljust(16, b"\0"),
            self.src.network_address.packed.ljust(16, b"\0"),
            self.dport.to_bytes(2, "big"),
            self.dport_mask.to_bytes(2, "big"),
            self.sport.to_bytes(2, "big"),
            self.sport_mask.to_bytes(2, "big"),
            self.family,
            self.dst.prefixlen,
            self.src.prefixlen,
            self.proto,
            0,
            0,
        )

    @classmethod
    def pull(cls, data: bytes, offset: int = 0) -> Selector:
        daddr, saddr, dport, dmask, sport, smask, family, dlen, slen, proto, _, _ = _pull(
            cls.LAYOUT, data, offset
        )
        make = ipaddress.IPv6Network if family == AF_INET6 else ipaddress.IPv4Network
        try:
            src = make(f"{unpack_addr(saddr, family)}/{slen}")
            dst = make(f"{unpack_addr(daddr, family)}/{dlen}")
        except ValueError as error:  # host bits set, or a prefix too long
            raise NetlinkCodecError(f"selector: {error}") from None
        return cls(family, src, dst, proto, _be16(sport), _be16(smask), _be16(dport), _be16(dmask))

    def reversed(self) -> Selector:
        return Selector(
            self.family,
            self.dst,
            self.src,
            self.proto,
            self.dport,
            self.dport_mask,
            self.sport,
            self.sport_mask,
        )

    def specificity(self) -> int:
        """How much a packet must match: prefix bits weigh most, then protocol, then ports."""
        port_bits = bin(self.sport_mask).count("1") + bin(self.dport_mask).count("1")
        return (
            (self.src.prefixlen + self.dst.prefixlen) * 512
            + (256 if self.proto else 0)
            + port_bits * 4
        )

    def priority(self) -> int:
        """The priority of a policy with this selector (see :data:`PRIORITY_BASE`)."""
        return PRIORITY_BASE - self.specificity()

    def __str__(self) -> str:
        text = f"{self.src} -> {self.dst}"
        if self.proto:
            text += f" proto {self.proto}"
        if self.sport_mask or self.dport_mask:
            text += f" sport {self.sport}/{self.sport_mask:#x}"
            text += f" dport {self.dport}/{self.dport_mask:#x}"
        return text


@dataclass(slots=True)
class LifetimeCfg:
    """``struct xfrm_lifetime_cfg`` (64 bytes); no limit unless set: IKE rekeys, not the
    kernel. The kernel reads a time of 0 as no limit and XFRM_INF as a deadline that has
    passed (its timer adds the SA's age and wraps), so the times default to 0 and only the
    byte and packet limits to XFRM_INF, as iproute2 and strongSwan set them."""

    LAYOUT: ClassVar = struct.Struct("=8Q")
    soft_byte_limit: int = XFRM_INF
    hard_byte_limit: int = XFRM_INF
    soft_packet_limit: int = XFRM_INF
    hard_packet_limit: int = XFRM_INF
    soft_add_expires_seconds: int = 0
    hard_add_expires_seconds: int = 0
    soft_use_expires_seconds: int = 0
    hard_use_expires_seconds: int = 0

    def push(self) -> bytes:
        return self.LAYOUT.pack(
            self.soft_byte_limit,
            self.hard_byte_limit,
            self.soft_packet_limit,
            self.hard_packet_limit,
            self.soft_add_expires_seconds,
            self.hard_add_expires_seconds,
            self.soft_use_expires_seconds,
            self.hard_use_expires_seconds,
        )

    @classmethod
    def pull(cls, data: bytes, offset: int = 0) -> LifetimeCfg:
        return cls(*_pull(cls.LAYOUT, data, offset))


@dataclass(slots=True)
class LifetimeCur:
    """``struct xfrm_lifetime_cur`` (32 bytes): what a state has carried, and when."""

    LAYOUT: ClassVar = struct.Struct("=4Q")
    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0

    def push(self) -> builtins.bytes:
        return self.LAYOUT.pack(self.bytes, self.packets, self.add_time, self.use_time)

    @classmethod
    def pull(cls, data: builtins.bytes, offset: int = 0) -> LifetimeCur:
        return cls(*_pull(cls.LAYOUT, data, offset))


@dataclass(slots=True)
class UsersaInfo:
    """``struct xfrm_usersa_info`` (224 bytes): selector, id (daddr, spi, proto), saddr,
    lifetimes, statistics, reqid, family, mode, legacy replay window, flags."""

    LAYOUT: ClassVar = struct.Struct("=16s4sB3x16s")  # xfrm_id and saddr
    TAIL: ClassVar = struct.Struct("=3IIIHBBB7x")  # stats, seq, reqid, family, ... flags
    SIZE: ClassVar = 224
    selector: Selector
    daddr: str
    spi: int
    saddr: str
    family: int
    reqid: int = 0
    mode: int = 0
    replay_window: int = 0
    flags: int = 0
    proto: int = IPPROTO_ESP
    lft: LifetimeCfg = field(default_factory=LifetimeCfg)
    curlft: LifetimeCur = field(default_factory=LifetimeCur)
    stats: tuple[int, int, int] = (0, 0, 0)
    seq: int = 0

    def push(self) -> bytes:
        return b"".join(
            (
                self.selector.push(),
                self.LAYOUT.pack(
                    pack_addr(self.daddr),
                    self.spi.to_bytes(4, "big"),
                    self.proto,
                    pack_addr(self.saddr),
                ),
                self.lft.push(),
                self.curlft.push(),
                self.TAIL.pack(
                    *self.stats,
                    self.seq,
                    self.reqid,
                    self.family,
                    self.mode,
                    self.replay_window,
                    self.flags,
                ),
            )
        )

    @classmethod
    def pull(cls, data: bytes) -> UsersaInfo:
        selector = Selector.pull(data)
        daddr, spi, proto, saddr = _pull(cls.LAYOUT, data, 56)
        lft = LifetimeCfg.pull(data, 96)
        curlft = LifetimeCur.pull(data, 160)
        *stats, seq, reqid, family, mode, window, flags = _pull(cls.TAIL, data, 192)
        return cls(
            selector,
            unpack_addr(daddr, family),
            _be32(spi),
            unpack_addr(saddr, family),
            family,
            reqid,
            mode,
            window,
            flags,
            proto,
            lft,
            curlft,
            (stats[0], stats[1], stats[2]),
            seq,
        )


def _be32(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


@dataclass(slots=True)
class UsersaId:
    """``struct xfrm_usersa_id`` (24 bytes): how the kernel finds a state."""

    LAYOUT: ClassVar = struct.Struct("=16s4sHBx")
    SIZE: ClassVar = 24
    daddr: str
    spi: int
    family: int
    proto: int = IPPROTO_ESP

    def push(self) -> bytes:
        spi = self.spi.to_bytes(4, "big")
        return self.LAYOUT.pack(pack_addr(self.daddr), spi, self.family, self.proto)

    @classmethod
    def pull(cls, data: bytes) -> UsersaId:
        daddr, spi, family, proto = _pull(cls.LAYOUT, data)
        return cls(unpack_addr(daddr, family), _be32(spi), family, proto)


@dataclass(slots=True)
class UserpolicyInfo:
    """``struct xfrm_userpolicy_info`` (168 bytes)."""

    TAIL: ClassVar = struct.Struct("=IIBBBB4x")
    SIZE: ClassVar = 168
    selector: Selector
    dir: int
    priority: int = 0
    index: int = 0
    action: int = 0
    flags: int = 0
    share: int = 0
    lft: LifetimeCfg = field(default_factory=LifetimeCfg)
    curlft: LifetimeCur = field(default_factory=LifetimeCur)

    def push(self) -> bytes:
        tail = self.TAIL.pack(
            self.priority, self.index, self.dir, self.action, self.flags, self.share
        )
        return self.selector.push() + self.lft.push() + self.curlft.push() + tail

    @classmethod
    def pull(cls, data: bytes) -> UserpolicyInfo:
        selector = Selector.pull(data)
        lft, curlft = LifetimeCfg.pull(data, 56), LifetimeCur.pull(data, 120)
        priority, index, direction, action, flags, share = _pull(cls.TAIL, data, 152)
        return cls(selector, direction, priority, index, action, flags, share, lft, curlft)


@dataclass(slots=True)
class UserpolicyId:
    """``struct xfrm_userpolicy_id`` (64 bytes): how the kernel finds a policy."""

    TAIL: ClassVar = struct.Struct("=IB3x")
    SIZE: ClassVar = 64
    selector: Selector
    dir: int
    index: int = 0

    def push(self) -> bytes:
        return self.selector.push() + self.TAIL.pack(self.index, self.dir)

    @classmethod
    def pull(cls, data: bytes) -> UserpolicyId:
        index, direction = _pull(cls.TAIL, data, 56)
        return cls(Selector.pull(data), direction, index)


# --- attributes --------------------------------------------------------------------------


@dataclass(slots=True)
class Algo:
    """``struct xfrm_algo``, ``xfrm_algo_auth`` (with ``trunc_len``) or ``xfrm_algo_aead``
    (with ``icv_len``): a kernel algorithm name and its key; ``key_len`` in bits."""

    name: str
    key: bytes = field(repr=False)
    key_len: int = -1  # -1: 8 * len(key)
    extra: int | None = None  # trunc_len or icv_len

    def push(self) -> bytes:
        key_len = 8 * len(self.key) if self.key_len < 0 else self.key_len
        head = struct.pack("=64sI", self.name.encode(), key_len)
        if self.extra is not None:
            head += struct.pack("=I", self.extra)
        return head + self.key

    @classmethod
    def pull(cls, data: bytes, with_extra: bool) -> Algo:
        raw_name, key_len = _pull(_ALGO, data)
        extra = _pull(_U32, data, 68)[0] if with_extra else None
        key = data[72 if with_extra else 68 :]
        name = bytes(raw_name).rstrip(b"\0").decode(errors="replace")
        return cls(name, bytes(key), key_len, extra)


_ALGO = struct.Struct("=64sI")
_U32 = struct.Struct("=I")


@dataclass(slots=True)
class EncapTmpl:
    """``struct xfrm_encap_tmpl`` (24 bytes): ESP in UDP and its ports."""

    LAYOUT: ClassVar = struct.Struct("=H2s2s2x16s")
    type: int
    sport: int
    dport: int
    oa: bytes = bytes(16)

    def push(self) -> bytes:
        sport, dport = self.sport.to_bytes(2, "big"), self.dport.to_bytes(2, "big")
        return self.LAYOUT.pack(self.type, sport, dport, self.oa)

    @classmethod
    def pull(cls, data: bytes) -> EncapTmpl:
        kind, sport, dport, oa = _pull(cls.LAYOUT, data)
        return cls(kind, _be16(sport), _be16(dport), bytes(oa))


@dataclass(slots=True)
class UserTmpl:
    """``struct xfrm_user_tmpl`` (64 bytes): the state a policy asks for."""

    LAYOUT: ClassVar = struct.Struct("=16s4sB3xH2x16sIBBBx3I")
    daddr: str
    saddr: str
    family: int
    reqid: int
    mode: int
    spi: int = 0
    proto: int = IPPROTO_ESP
    share: int = 0
    optional: int = 0
    aalgos: int = 0xFFFF_FFFF
    ealgos: int = 0xFFFF_FFFF
    calgos: int = 0xFFFF_FFFF

    def push(self) -> bytes:
        return self.LAYOUT.pack(
            pack_addr(self.daddr),
            self.spi.to_bytes(4, "big"),
            self.proto,
            self.family,
            pack_addr(self.saddr),
            self.reqid,
            self.mode,
            self.share,
            self.optional,
            self.aalgos,
            self.ealgos,
            self.calgos,
        )

    @classmethod
    def pull(cls, data: bytes) -> UserTmpl:
        daddr, spi, proto, family, saddr, reqid, mode, share, optional, a, e, c = _pull(
            cls.LAYOUT, data
        )
        return cls(
            unpack_addr(daddr, family),
            unpack_addr(saddr, family),
            family,
            reqid,
            mode,
            _be32(spi),
            proto,
            share,
            optional,
            a,
            e,
            c,
        )


@dataclass(slots=True)
class ReplayLegacy:
    """``struct xfrm_replay_state`` (XFRMA_REPLAY_VAL): a 32-packet bitmap."""

    LAYOUT: ClassVar = struct.Struct("=3I")
    oseq: int = 0
    seq: int = 0
    bitmap: int = 0

    def push(self) -> bytes:
        return self.LAYOUT.pack(self.oseq, self.seq, self.bitmap)

    @classmethod
    def pull(cls, data: bytes) -> ReplayLegacy:
        return cls(*_pull(cls.LAYOUT, data))


@dataclass(slots=True)
class ReplayEsn:
    """``struct xfrm_replay_state_esn`` (XFRMA_REPLAY_ESN_VAL): any window, 64-bit
    sequence numbers; ``bmp`` has ``bmp_len`` 32-bit words."""

    LAYOUT: ClassVar = struct.Struct("=6I")
    bmp_len: int
    replay_window: int
    oseq: int = 0
    seq: int = 0
    oseq_hi: int = 0
    seq_hi: int = 0
    bmp: list[int] = field(default_factory=list)

    def push(self) -> bytes:
        words = self.bmp or [0] * self.bmp_len
        head = self.LAYOUT.pack(
            self.bmp_len, self.oseq, self.seq, self.oseq_hi, self.seq_hi, self.replay_window
        )
        return head + struct.pack(f"={len(words)}I", *words)

    @classmethod
    def pull(cls, data: bytes) -> ReplayEsn:
        bmp_len, oseq, seq, oseq_hi, seq_hi, window = _pull(cls.LAYOUT, data)
        raw = data[cls.LAYOUT.size :]
        words = list(struct.unpack_from(f"={len(raw) // 4}I", raw))
        return cls(bmp_len, window, oseq, seq, oseq_hi, seq_hi, words)


@dataclass(slots=True)
class UserMigrate:
    """``struct xfrm_user_migrate`` (76 bytes): one template's old and new addresses."""

    LAYOUT: ClassVar = struct.Struct("=16s16s16s16sBBHIHH")
    old_saddr: str
    old_daddr: str
    new_saddr: str
    new_daddr: str
    reqid: int
    old_family: int
    new_family: int
    proto: int = IPPROTO_ESP
    mode: int = 1  # XFRM_MODE_TUNNEL

    def push(self) -> bytes:
        return self.LAYOUT.pack(
            pack_addr(self.old_daddr),
            pack_addr(self.old_saddr),
            pack_addr(self.new_daddr),
            pack_addr(self.new_saddr),
            self.proto,
            self.mode,
            0,
            self.reqid,
            self.old_family,
            self.new_family,
        )

    @classmethod
    def pull(cls, data: bytes) -> UserMigrate:
        od, os_, nd, ns, proto, mode, _, reqid, old_family, new_family = _pull(cls.LAYOUT, data)
        return cls(
            unpack_addr(os_, old_family),
            unpack_addr(od, old_family),
            unpack_addr(ns, new_family),
            unpack_addr(nd, new_family),
            reqid,
            old_family,
            new_family,
            proto,
            mode,
        )


@dataclass(slots=True)
class KmAddress:
    """``struct xfrm_user_kmaddress`` (40 bytes): the IKE endpoints of a MIGRATE."""

    LAYOUT: ClassVar = struct.Struct("=16s16sIH2x")
    local: str
    remote: str
    family: int

    def push(self) -> bytes:
        local, remote = pack_addr(self.local), pack_addr(self.remote)
        return self.LAYOUT.pack(local, remote, 0, self.family)

    @classmethod
    def pull(cls, data: bytes) -> KmAddress:
        local, remote, _, family = _pull(cls.LAYOUT, data)
        return cls(unpack_addr(local, family), unpack_addr(remote, family), family)


def _attr(kind: int, value: Algo | EncapTmpl | LifetimeCur | ReplayLegacy | ReplayEsn) -> bytes:
    return push_attribute(kind, value.push())


def _array(raw: bytes, size: int) -> list[bytes]:
    """The structures of an attribute that is an array of them (a short tail dropped)."""
    return [raw[i : i + size] for i in range(0, len(raw) - size + 1, size)]


def _others(attrs: Attributes, known: set[int]) -> tuple[tuple[int, bytes], ...]:
    return tuple((kind, payload) for kind, payload in attrs.items if kind not in known)


# --- message bodies ----------------------------------------------------------------------


@dataclass(slots=True)
class SaMessage:
    """XFRM_MSG_NEWSA / UPDSA, and the answer to GETSA: the state and its attributes."""

    info: UsersaInfo
    aead: Algo | None = None
    crypt: Algo | None = None
    auth_trunc: Algo | None = None
    encap: EncapTmpl | None = None
    lifetime: LifetimeCur | None = None
    """XFRMA_LTIME_VAL: the counters a new state starts from (the kernel ignores
    ``curlft`` in the body, xfrm_update_ae_params)."""
    replay: ReplayLegacy | None = None
    replay_esn: ReplayEsn | None = None
    other: tuple[tuple[int, bytes], ...] = ()

    KNOWN: ClassVar = {
        XFRMA_LTIME_VAL,
        XFRMA_ALG_AEAD,
        XFRMA_ALG_CRYPT,
        XFRMA_ALG_AUTH_TRUNC,
        XFRMA_ENCAP,
        XFRMA_REPLAY_ESN_VAL,
        XFRMA_REPLAY_VAL,
    }

    def push(self) -> bytes:
        parts = [self.info.push()]
        for kind, value in (
            (XFRMA_LTIME_VAL, self.lifetime),
            (XFRMA_ALG_AEAD, self.aead),
            (XFRMA_ALG_CRYPT, self.crypt),
            (XFRMA_ALG_AUTH_TRUNC, self.auth_trunc),
            (XFRMA_ENCAP, self.encap),
            (XFRMA_REPLAY_ESN_VAL, self.replay_esn),
            (XFRMA_REPLAY_VAL, self.replay),
        ):
            if value is not None:
                parts.append(_attr(kind, value))
        parts += [push_attribute(kind, payload) for kind, payload in self.other]
        return b"".join(parts)

    @classmethod
    def pull(cls, body: bytes) -> SaMessage:
        attrs = pull_attributes(body, UsersaInfo.SIZE)

        def algo(kind: int, with_extra: bool) -> Algo | None:
            raw = attrs.get(kind)
            return None if raw is None else Algo.pull(raw, with_extra)

        def optional(kind: int) -> bytes | None:
            return attrs.get(kind)

        encap, ltime = optional(XFRMA_ENCAP), optional(XFRMA_LTIME_VAL)
        legacy, esn = optional(XFRMA_REPLAY_VAL), optional(XFRMA_REPLAY_ESN_VAL)
        return cls(
            UsersaInfo.pull(body),
            aead=algo(XFRMA_ALG_AEAD, True),
            crypt=algo(XFRMA_ALG_CRYPT, False),
            auth_trunc=algo(XFRMA_ALG_AUTH_TRUNC, True),
            encap=None if encap is None else EncapTmpl.pull(encap),
            lifetime=None if ltime is None else LifetimeCur.pull(ltime),
            replay=None if legacy is None else ReplayLegacy.pull(legacy),
            replay_esn=None if esn is None else ReplayEsn.pull(esn),
            other=_others(attrs, cls.KNOWN),
        )


@dataclass(slots=True)
class SaIdMessage:
    """XFRM_MSG_DELSA / GETSA: which state."""

    id: UsersaId
    other: tuple[tuple[int, bytes], ...] = ()

    def push(self) -> bytes:
        return self.id.push() + b"".join(push_attribute(k, p) for k, p in self.other)

    @classmethod
    def pull(cls, body: bytes) -> SaIdMessage:
        attrs = pull_attributes(body, UsersaId.SIZE)
        return cls(UsersaId.pull(body), attrs.items)


@dataclass(slots=True)
class PolicyMessage:
    """XFRM_MSG_NEWPOLICY / UPDPOLICY, and the answer to GETPOLICY."""

    info: UserpolicyInfo
    templates: list[UserTmpl] = field(default_factory=list)
    other: tuple[tuple[int, bytes], ...] = ()

    def push(self) -> bytes:
        # XFRMA_TMPL is an array of templates in one attribute.
        parts = [self.info.push()]
        if self.templates:
            parts.append(push_attribute(XFRMA_TMPL, b"".join(t.push() for t in self.templates)))
        parts += [push_attribute(kind, payload) for kind, payload in self.other]
        return b"".join(parts)

    @classmethod
    def pull(cls, body: bytes) -> PolicyMessage:
        attrs = pull_attributes(body, UserpolicyInfo.SIZE)
        raw = attrs.get(XFRMA_TMPL) or b""
        templates = [UserTmpl.pull(part) for part in _array(raw, UserTmpl.LAYOUT.size)]
        return cls(UserpolicyInfo.pull(body), templates, _others(attrs, {XFRMA_TMPL}))


@dataclass(slots=True)
class PolicyIdMessage:
    """XFRM_MSG_DELPOLICY / GETPOLICY: which policy."""

    id: UserpolicyId
    other: tuple[tuple[int, bytes], ...] = ()

    def push(self) -> bytes:
        return self.id.push() + b"".join(push_attribute(k, p) for k, p in self.other)

    @classmethod
    def pull(cls, body: bytes) -> PolicyIdMessage:
        attrs = pull_attributes(body, UserpolicyId.SIZE)
        return cls(UserpolicyId.pull(body), attrs.items)


@dataclass(slots=True)
class MigrateMessage:
    """XFRM_MSG_MIGRATE: a policy, its templates' moves, the IKE endpoints, and the
    encapsulation the moved states get."""

    id: UserpolicyId
    migrations: list[UserMigrate] = field(default_factory=list)
    kmaddress: KmAddress | None = None
    encap: EncapTmpl | None = None
    other: tuple[tuple[int, bytes], ...] = ()

    def push(self) -> bytes:
        parts = [self.id.push()]
        if self.migrations:
            payload = b"".join(m.push() for m in self.migrations)
            parts.append(push_attribute(XFRMA_MIGRATE, payload))
        if self.kmaddress is not None:
            parts.append(push_attribute(XFRMA_KMADDRESS, self.kmaddress.push()))
        if self.encap is not None:
            parts.append(_attr(XFRMA_ENCAP, self.encap))
        parts += [push_attribute(kind, payload) for kind, payload in self.other]
        return b"".join(parts)

    @classmethod
    def pull(cls, body: bytes) -> MigrateMessage:
        attrs = pull_attributes(body, UserpolicyId.SIZE)
        raw = attrs.get(XFRMA_MIGRATE) or b""
        moves = [UserMigrate.pull(part) for part in _array(raw, UserMigrate.LAYOUT.size)]
        km, encap = attrs.get(XFRMA_KMADDRESS), attrs.get(XFRMA_ENCAP)
        return cls(
            UserpolicyId.pull(body),
            moves,
            None if km is None else KmAddress.pull(km),
            None if encap is None else EncapTmpl.pull(encap),
            _others(attrs, {XFRMA_MIGRATE, XFRMA_KMADDRESS, XFRMA_ENCAP}),
        )


@dataclass(slots=True)
class ExpireMessage:
    """XFRM_MSG_EXPIRE (``struct xfrm_user_expire``): a state reached a soft limit (the
    key manager should rekey) or a hard one (the kernel deletes it)."""

    LAYOUT: ClassVar = struct.Struct("=B7x")
    info: UsersaInfo
    hard: bool
    other: tuple[tuple[int, bytes], ...] = ()

    def push(self) -> bytes:
        body = self.info.push() + self.LAYOUT.pack(int(self.hard))
        return body + b"".join(push_attribute(k, p) for k, p in self.other)

    @classmethod
    def pull(cls, body: bytes) -> ExpireMessage:
        (hard,) = _pull(cls.LAYOUT, body, UsersaInfo.SIZE)
        attrs = pull_attributes(body, UsersaInfo.SIZE + cls.LAYOUT.size)
        return cls(UsersaInfo.pull(body), bool(hard), attrs.items)


@dataclass(slots=True)
class MappingMessage:
    """XFRM_MSG_MAPPING (``struct xfrm_user_mapping``): ESP in UDP for a state came
    from another address or port than its encapsulation names (a NAT's new mapping)."""

    LAYOUT: ClassVar = struct.Struct("=I16s16s2s2s")
    id: UsersaId
    reqid: int
    old_saddr: str
    new_saddr: str
    old_sport: int
    new_sport: int

    def push(self) -> bytes:
        return self.id.push() + self.LAYOUT.pack(
            self.reqid,
            pack_addr(self.old_saddr),
            pack_addr(self.new_saddr),
            self.old_sport.to_bytes(2, "big"),
            self.new_sport.to_bytes(2, "big"),
        )

    @classmethod
    def pull(cls, body: bytes) -> MappingMessage:
        sa_id = UsersaId.pull(body)
        reqid, old, new, old_port, new_port = _pull(cls.LAYOUT, body, UsersaId.SIZE)
        return cls(
            sa_id,
            reqid,
            unpack_addr(old, sa_id.family),
            unpack_addr(new, sa_id.family),
            _be16(old_port),
            _be16(new_port),
        )


XfrmBody = (
    SaMessage
    | SaIdMessage
    | PolicyMessage
    | PolicyIdMessage
    | MigrateMessage
    | ExpireMessage
    | MappingMessage
)

BODY_CLASSES: dict[int, type[XfrmBody]] = {
    XFRM_MSG_NEWSA: SaMessage,
    XFRM_MSG_UPDSA: SaMessage,
    XFRM_MSG_DELSA: SaIdMessage,
    XFRM_MSG_GETSA: SaIdMessage,
    XFRM_MSG_NEWPOLICY: PolicyMessage,
    XFRM_MSG_UPDPOLICY: PolicyMessage,
    XFRM_MSG_DELPOLICY: PolicyIdMessage,
    XFRM_MSG_GETPOLICY: PolicyIdMessage,
    XFRM_MSG_MIGRATE: MigrateMessage,
    XFRM_MSG_EXPIRE: ExpireMessage,
    XFRM_MSG_MAPPING: MappingMessage,
}
"""How the body of each message type is read (requests, and the kernel's answers)."""


@dataclass(slots=True)
class XfrmMessage:
    """One XFRM netlink message: type, flags and the typed body."""

    kind: int
    flags: int
    body: XfrmBody

    @property
    def name(self) -> str:
        return MSG_NAMES.get(self.kind, f"xfrm message {self.kind}")

    def push(self, seq: int = 0, pid: int = 0) -> bytes:
        """The whole message, header included."""
        return push_message(Message(self.kind, self.flags, seq, pid, self.body.push()))

    @classmethod
    def pull(cls, data: bytes) -> XfrmMessage:
        """One whole message, header included."""
        return cls.from_netlink(pull_message(data))

    @classmethod
    def from_netlink(cls, msg: Message) -> XfrmMessage:
        body_class = BODY_CLASSES.get(msg.kind)
        if body_class is None:
            raise NetlinkCodecError(f"not an XFRM message read here: type {msg.kind}")
        return cls(msg.kind, msg.flags, body_class.pull(msg.body))
