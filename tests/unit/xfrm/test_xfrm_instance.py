"""What a daemon instance keeps of its own in XFRM: its reqids, its flush, its lifetimes,
and the kernel's events about its states (expiries, NAT mappings)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace

import pytest
from test_xfrm_datapath import FOREIGN_POLICY, FOREIGN_STATE, FakeKernel, seeded_kernel
from xfrm_samples import SPI_IN, SPI_OUT, params_cbc_sha256_v4, params_gcm_v6, sa

from mpa_harness import guards
from mpa_ike.datapath import NO_LIMITS, ChildSaLimits
from mpa_ike.io import xfrm
from mpa_ike.io.netlink import Message, pull_messages, push_message
from mpa_ike.io.xfrm import (
    AF_INET,
    XFRM_INF,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_POLICY_OUT,
    KernelLifetimes,
    PolicyKey,
    Selector,
    StateExpired,
    StateKey,
    StateMapping,
    XfrmMessage,
    XfrmUsageError,
)
from mpa_ike.io.xfrm_messages import (
    XFRM_MSG_EXPIRE,
    XFRM_MSG_MAPPING,
    XFRMNLGRP_EXPIRE,
    XFRMNLGRP_MAPPING,
    ExpireMessage,
    MappingMessage,
    PolicyIdMessage,
    PolicyMessage,
    SaIdMessage,
    SaMessage,
    UserpolicyInfo,
    UsersaId,
    UsersaInfo,
    UserTmpl,
    group_mask,
)

OURS = range(0x6D70_0000, 0x6D71_0000)
OTHER_INSTANCE = range(0x6D71_0000, 0x6D72_0000)


class DumpingKernel(FakeKernel):
    """FakeKernel that also answers the SAD and SPD dumps."""

    def request(self, msg: XfrmMessage, what: str = "") -> list[XfrmMessage]:
        body = msg.body
        if isinstance(body, SaIdMessage) and body.id.spi == 0 and what == "states":
            found = [s for s in self.states.values() if isinstance(s, SaMessage)]
            return [XfrmMessage(XFRM_MSG_NEWSA, 0, s) for s in found]
        if isinstance(body, PolicyIdMessage) and what == "policies":
            policies = [p for p in self.policies.values() if isinstance(p, PolicyMessage)]
            return [XfrmMessage(XFRM_MSG_NEWPOLICY, 0, p) for p in policies]
        return super().request(msg, what)


def left_over(kernel: FakeKernel, reqid: int, dst: str, spi: int) -> None:
    """A state and a policy as a crashed instance (or another one) leaves them."""
    info = UsersaInfo(Selector.zero(), dst, spi, "192.0.2.99", AF_INET, reqid=reqid)
    kernel.states[StateKey(dst, spi)] = SaMessage(info)
    selector = Selector(
        AF_INET,
        ipaddress.ip_network(f"10.7.{spi & 0xFF}.0/24"),
        ipaddress.ip_network("10.8.0.0/24"),
    )
    tmpl = UserTmpl(daddr=dst, saddr="192.0.2.99", family=AF_INET, reqid=reqid, mode=1)
    policy = PolicyMessage(UserpolicyInfo(selector, XFRM_POLICY_OUT), [tmpl])
    kernel.policies[PolicyKey(selector, XFRM_POLICY_OUT)] = policy


def test_flush_own_takes_our_reqids_only() -> None:
    kernel = DumpingKernel()
    kernel.states[FOREIGN_STATE] = "host state"
    kernel.policies[FOREIGN_POLICY] = "host policy"
    left_over(kernel, OURS.start + 5, "192.0.2.50", 0x500)  # a crashed run of ours
    left_over(kernel, OTHER_INSTANCE.start, "192.0.2.51", 0x501)  # another instance
    left_over(kernel, 1, "192.0.2.52", 0x502)  # strongSwan's first reqid
    dp = xfrm.XfrmDatapath(kernel, reqids=OURS)
    dp.install_child_sa(params_cbc_sha256_v4())
    assert {sa.info.reqid for sa in kernel.states.values() if isinstance(sa, SaMessage)} >= {
        OURS.start
    }
    assert dp.flush_own() == (3, 4)  # the crashed run's pair of entries, ours (2 + 3)
    assert set(kernel.states) == {
        FOREIGN_STATE,
        StateKey("192.0.2.51", 0x501),
        StateKey("192.0.2.52", 0x502),
    }
    reqids = {
        p.templates[0].reqid for p in kernel.policies.values() if isinstance(p, PolicyMessage)
    }
    assert reqids == {OTHER_INSTANCE.start, 1}
    assert dp.installed_states == [] and dp.installed_policies == []
    assert dp.flush_own() == (0, 0)


def test_reqids_stay_in_the_block_and_skip_those_in_use() -> None:
    dp = xfrm.XfrmDatapath(FakeKernel(), reqids=range(100, 102))

    def child(n: int) -> bytes:
        spi_in = bytes([n, 0, 0, 1])
        dp.install_child_sa(replace(params_gcm_v6(), spi_in=spi_in, spi_out=bytes([n, 0, 0, 2])))
        return spi_in

    first, second = child(1), child(2)
    assert (dp.reqid_of(first), dp.reqid_of(second)) == (100, 101)
    dp.remove_child_sa(first, b"")
    assert dp.reqid_of(child(3)) == 100  # wrapped, 101 still taken
    with pytest.raises(XfrmUsageError, match="in use"):
        child(4)


def test_lifetimes_go_into_both_states() -> None:
    kernel = seeded_kernel()
    limits = KernelLifetimes(soft_bytes=20_000, hard_bytes=40_000, soft_seconds=50, hard_seconds=60)
    dp = xfrm.XfrmDatapath(kernel, lifetimes=lambda params: limits)
    dp.install_child_sa(params_cbc_sha256_v4())
    for key in dp.installed_states:
        lft = kernel.states[key].info.lft
        assert (lft.soft_byte_limit, lft.hard_byte_limit) == (20_000, 40_000)
        assert (lft.soft_packet_limit, lft.hard_packet_limit) == (XFRM_INF, XFRM_INF)
        assert (lft.soft_add_expires_seconds, lft.hard_add_expires_seconds) == (50, 60)
        assert (lft.soft_use_expires_seconds, lft.hard_use_expires_seconds) == (0, 0)
    # No limits: no byte or packet limit, and 0 (none) for the times.
    lft = xfrm.build_newsa(
        xfrm.StateSpec(
            "192.0.2.1", "192.0.2.2", 1, 1, xfrm.kernel_algorithms(20, None), b"k" * 20, b""
        )
    )
    cfg = sa(lft).info.lft
    assert (cfg.soft_byte_limit, cfg.hard_add_expires_seconds) == (XFRM_INF, 0)


def test_lifetimes_come_from_the_child_sa_by_default() -> None:
    """The core's limits (the configured CHILD lifetimes) in the kernel's terms: whole
    seconds, the soft time down and the hard one up; 0 or None: no limit."""
    kernel = seeded_kernel()
    dp = xfrm.XfrmDatapath(kernel)
    limits = ChildSaLimits(
        soft_seconds=2999.6, hard_seconds=3960.2, soft_bytes=90_000, hard_bytes=100_000
    )
    dp.install_child_sa(replace(params_cbc_sha256_v4(), limits=limits))
    assert len(dp.installed_states) == 2
    for key in dp.installed_states:
        lft = kernel.states[key].info.lft
        assert (lft.soft_add_expires_seconds, lft.hard_add_expires_seconds) == (2999, 3961)
        assert (lft.soft_byte_limit, lft.hard_byte_limit) == (90_000, 100_000)
        assert (lft.soft_packet_limit, lft.hard_packet_limit) == (XFRM_INF, XFRM_INF)
    # A CHILD SA without limits (NO_LIMITS) gets none.
    other = replace(params_gcm_v6(), spi_in=b"\x09\0\0\1", spi_out=b"\x09\0\0\2")
    dp.install_child_sa(other)
    lft = kernel.states[dp.installed_states[-1]].info.lft
    assert (lft.soft_byte_limit, lft.hard_add_expires_seconds) == (XFRM_INF, 0)


def test_kernel_lifetimes_of_core_limits() -> None:
    of = KernelLifetimes.of
    assert of(NO_LIMITS) == KernelLifetimes()
    assert of(ChildSaLimits(soft_packets=10, hard_packets=20)) == KernelLifetimes(
        soft_packets=10, hard_packets=20
    )
    # Under a second still counts as one; the soft never above the hard.
    assert of(ChildSaLimits(soft_seconds=0.4, hard_seconds=0.5)) == KernelLifetimes(
        soft_seconds=1, hard_seconds=1
    )
    assert of(ChildSaLimits(soft_bytes=16_000)) == KernelLifetimes(soft_bytes=16_000)
    # A deadline less its start is off by a rounding error at most: no second more or less.
    now = 31651.79773824067  # (now + 3600) - now == 3599.9999999999964
    exact = ChildSaLimits(soft_seconds=(now + 3600) - now, hard_seconds=3960.0000000000036)
    assert of(exact) == KernelLifetimes(soft_seconds=3600, hard_seconds=3960)
    with pytest.raises(XfrmUsageError, match="above"):
        KernelLifetimes(soft_bytes=10, hard_bytes=5)


def expire_message(dst: str, spi: int, reqid: int, hard: bool) -> Message:
    info = UsersaInfo(Selector.zero(), dst, spi, "192.0.2.9", AF_INET, reqid=reqid)
    info.curlft.bytes, info.curlft.packets = 20_480, 160
    body = ExpireMessage(info, hard).push()
    return Message(XFRM_MSG_EXPIRE, 0, 0, 0, body)


def test_expire_and_mapping_messages_round_trip() -> None:
    msg = expire_message("192.0.2.1", 0xC1A55E01, 7, True)
    assert len(msg.body) == 232  # sizeof(struct xfrm_user_expire)
    body = XfrmMessage.from_netlink(msg).body
    assert isinstance(body, ExpireMessage) and body.hard and body.info.spi == 0xC1A55E01
    mapping = MappingMessage(
        UsersaId("192.0.2.1", 0xC1A55E01, AF_INET), 7, "192.0.2.9", "198.51.100.7", 4500, 61000
    )
    raw = mapping.push()
    assert len(raw) == 64  # sizeof(struct xfrm_user_mapping)
    assert MappingMessage.pull(raw) == mapping
    assert group_mask(XFRMNLGRP_EXPIRE) == 0x2 and group_mask(XFRMNLGRP_MAPPING) == 0x80


def test_parse_events_keeps_expiries_and_mappings() -> None:
    mapping = MappingMessage(
        UsersaId("192.0.2.1", 0x1234, AF_INET), 9, "192.0.2.9", "198.51.100.7", 4500, 61000
    )
    messages = [
        expire_message("192.0.2.1", 0x1234, 9, False),
        Message(XFRM_MSG_MAPPING, 0, 0, 0, mapping.push()),
        Message(XFRM_MSG_EXPIRE, 0, 0, 0, b"short"),  # broken: skipped
        Message(XFRM_MSG_NEWSA, 0, 0, 0, b""),  # not an event
    ]
    assert xfrm.parse_events(messages) == [
        StateExpired(StateKey("192.0.2.1", 0x1234), 9, False, 20_480, 160),
        StateMapping(
            StateKey("192.0.2.1", 0x1234), 9, ("192.0.2.9", 4500), ("198.51.100.7", 61000)
        ),
    ]


def test_events_reach_the_handler_for_our_reqids_only() -> None:
    seen: list[object] = []
    events = xfrm.XfrmEvents.__new__(xfrm.XfrmEvents)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    right.setblocking(False)

    class FakeNetlink:
        def receive(self) -> list[Message]:
            data = right.recv(65536)
            return list(pull_messages(data))

    events.netlink = FakeNetlink()  # type: ignore[assignment]
    events.handler, events.reqids = seen.append, OURS
    ours = expire_message("192.0.2.1", 1, OURS.start, False)
    theirs = expire_message("192.0.2.1", 2, 1, False)
    for msg in (ours, theirs):
        left.send(push_message(msg))
    events.read()
    assert [event.key.spi for event in seen] == [1]  # type: ignore[attr-defined]
    left.close()
    right.close()


def test_child_of_state() -> None:
    dp = xfrm.XfrmDatapath(FakeKernel())
    params = params_cbc_sha256_v4()
    dp.install_child_sa(params)
    inbound = StateKey(params.local[0], int.from_bytes(SPI_IN, "big"))
    outbound = StateKey(params.remote[0], int.from_bytes(SPI_OUT, "big"))
    assert dp.child_of_state(inbound) == dp.child_of_state(outbound) == (SPI_IN, SPI_OUT)
    assert dp.child_of_state(StateKey("192.0.2.200", 5)) is None


def test_instance_slots_are_taken_in_order_and_given_back() -> None:
    try:
        first = xfrm.InstanceSlot.take(first=200)
    except OSError as error:
        guards.require(f"no abstract UNIX sockets here: {error}", "the instance slots")
    second = xfrm.InstanceSlot.take(first=200)
    try:
        assert (first.number, second.number) == (200, 201)
        assert first.reqids.stop == second.reqids.start
        assert len(first.reqids) == xfrm.REQIDS_PER_SLOT
        first.close()
        again = xfrm.InstanceSlot.take(first=200)
        assert again.number == 200
        again.close()
    finally:
        first.close()
        second.close()
