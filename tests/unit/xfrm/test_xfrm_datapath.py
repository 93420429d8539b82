"""XfrmDatapath's bookkeeping against an in-memory kernel that accepts ESP states.

The kernel here refuses ESP states, so installing, moving (get/delete/add with the
replay state), counting and removing states is exercised against ``FakeKernel``,
which decodes every message the backend sends and keeps the SAD and SPD the way
the kernel keys them. Entries it was seeded with stand for the host's own and
must come out untouched.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace
from typing import Any

import pytest
from xfrm_samples import params_cbc_sha256_v4, params_gcm_v6, roundtrip, sa

from mpa_ike.datapath import ChildSaCounters, Datapath, TsRange
from mpa_ike.io import xfrm
from mpa_ike.io.xfrm import (
    AF_INET,
    XFRM_MSG_GETPOLICY,
    XFRM_MSG_GETSA,
    XFRM_MSG_MIGRATE,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_POLICY_OUT,
    PolicyKey,
    Selector,
    StateKey,
    XfrmError,
    XfrmMessage,
)
from mpa_ike.io.xfrm_messages import (
    LifetimeCur,
    MigrateMessage,
    PolicyIdMessage,
    PolicyMessage,
    SaIdMessage,
    SaMessage,
)


class FakeKernel:
    """A SAD and SPD keyed like the kernel's, fed with decoded netlink messages."""

    def __init__(self, *, migrate: bool = True) -> None:
        self.states: dict[StateKey, Any] = {}  # SaMessage, or a string for the host's
        self.policies: dict[PolicyKey, Any] = {}  # PolicyMessage, or a string
        self.log: list[tuple[str, str]] = []
        self.migrate = migrate
        self.refuse: dict[int, int] = {}  # message type -> errno, once
        self.closed = False

    def request(self, msg: XfrmMessage, what: str = "") -> list[XfrmMessage]:
        msg = roundtrip(msg)
        mtype, body = msg.kind, msg.body
        self.log.append((xfrm.MSG_NAMES[mtype], what))
        if mtype in self.refuse:
            raise XfrmError(self.refuse.pop(mtype), mtype, "refused by the test", what)
        if isinstance(body, SaMessage):
            key = StateKey(body.info.daddr, body.info.spi)
            if key in self.states:
                raise XfrmError(errno.EEXIST, mtype, "", what)
            self.states[key] = body
        elif isinstance(body, SaIdMessage):
            key = StateKey(body.id.daddr, body.id.spi)
            if key not in self.states:
                raise XfrmError(errno.ESRCH, mtype, "", what)
            if mtype == XFRM_MSG_GETSA:
                return [XfrmMessage(XFRM_MSG_NEWSA, 0, self.states[key])]
            del self.states[key]
        elif isinstance(body, PolicyMessage):
            pkey = PolicyKey(body.info.selector, body.info.dir)
            if mtype == XFRM_MSG_NEWPOLICY and pkey in self.policies:
                raise XfrmError(errno.EEXIST, mtype, "", what)
            self.policies[pkey] = body
        elif isinstance(body, PolicyIdMessage):
            pkey = PolicyKey(body.id.selector, body.id.dir)
            if pkey not in self.policies:
                raise XfrmError(errno.ENOENT, mtype, "", what)
            if mtype == XFRM_MSG_GETPOLICY:
                return [XfrmMessage(XFRM_MSG_NEWPOLICY, 0, self.policies[pkey])]
            del self.policies[pkey]
        elif isinstance(body, MigrateMessage):
            if not self.migrate:
                raise XfrmError(errno.ENOPROTOOPT, mtype, "", what)
            self._migrate(body)
        return []

    def _migrate(self, msg: MigrateMessage) -> None:
        pkey = PolicyKey(msg.id.selector, msg.id.dir)
        (mig,) = msg.migrations
        (tmpl,) = self.policies[pkey].templates
        tmpl.saddr, tmpl.daddr = mig.new_saddr, mig.new_daddr
        for key, state in list(self.states.items()):
            if isinstance(state, str):
                continue  # the host's
            info = state.info
            if info.reqid == mig.reqid and info.saddr == mig.old_saddr:
                if info.daddr != mig.old_daddr:
                    continue
                info.saddr, info.daddr = mig.new_saddr, mig.new_daddr
                del self.states[key]
                self.states[StateKey(mig.new_daddr, key.spi)] = state

    def close(self) -> None:
        self.closed = True


FOREIGN_STATE = StateKey("203.0.113.200", 0x1000)
FOREIGN_POLICY = PolicyKey(
    Selector(AF_INET, ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("10.9.0.7/32")),
    XFRM_POLICY_OUT,  # same selector as one of ours but another direction
)
HOST_FWD = PolicyKey(FOREIGN_POLICY.selector, xfrm.XFRM_POLICY_FWD)


def seeded_kernel(**kwargs: Any) -> FakeKernel:
    kernel = FakeKernel(**kwargs)
    kernel.states[FOREIGN_STATE] = "host state"
    kernel.policies[FOREIGN_POLICY] = "host policy"
    return kernel


def datapath(kernel: FakeKernel, **kwargs: Any) -> xfrm.XfrmDatapath:
    return xfrm.XfrmDatapath(kernel, reqid_base=7, **kwargs)


def tmpl_addrs(msg: PolicyMessage) -> tuple[str, str]:
    (tmpl,) = msg.templates
    return tmpl.saddr, tmpl.daddr


def test_is_a_datapath() -> None:
    dp: Datapath = datapath(FakeKernel())
    assert dp is not None


def test_install_and_remove_touch_only_our_entries() -> None:
    kernel = seeded_kernel()
    dp = datapath(kernel)
    params = params_cbc_sha256_v4()
    dp.install_child_sa(params)
    assert set(dp.installed_states) == {
        StateKey("192.0.2.10", 0xC1A55E01),
        StateKey("198.51.100.1", 0x0DDBA112),
    }
    assert len(dp.installed_policies) == 3
    assert set(kernel.states) == {FOREIGN_STATE, *dp.installed_states}
    assert set(kernel.policies) == {FOREIGN_POLICY, *dp.installed_policies}
    dp.remove_child_sa(params.spi_in, params.spi_out)
    assert kernel.states == {FOREIGN_STATE: "host state"}
    assert kernel.policies == {FOREIGN_POLICY: "host policy"}
    assert dp.installed_states == [] and dp.installed_policies == []
    dp.remove_child_sa(params.spi_in, params.spi_out)  # unknown now: nothing to do
    assert not any(name.startswith("XFRM_MSG_FLUSH") for name, _ in kernel.log)


def test_counters_read_the_lifetime_of_both_states() -> None:
    kernel = FakeKernel()
    dp = datapath(kernel)
    params = params_cbc_sha256_v4()
    dp.install_child_sa(params)
    kernel.states[StateKey("192.0.2.10", 0xC1A55E01)].info.curlft = LifetimeCur(1500, 3)
    kernel.states[StateKey("198.51.100.1", 0x0DDBA112)].info.curlft = LifetimeCur(700, 2)
    counters = dp.counters(params.spi_in)
    assert (counters.bytes_in, counters.packets_in) == (1500, 3)
    assert (counters.bytes_out, counters.packets_out) == (700, 2)


def test_move_by_readd_keeps_replay_and_counters() -> None:
    kernel = seeded_kernel()
    dp = datapath(kernel)
    params = params_cbc_sha256_v4(encap=True)
    dp.install_child_sa(params)
    out_old = StateKey("198.51.100.1", 0x0DDBA112)
    in_old = StateKey("192.0.2.10", 0xC1A55E01)
    kernel.states[out_old].replay_esn.oseq = 5000
    kernel.states[out_old].info.curlft = LifetimeCur(9000, 5000)
    esn_in = kernel.states[in_old].replay_esn
    esn_in.seq, esn_in.bmp = 321, [0xFFFFFFFF, 0x7]

    dp.move_child_sa(params.spi_in, params.spi_out, ("203.0.113.5", 4500), params.remote, True)

    in_new = StateKey("203.0.113.5", 0xC1A55E01)
    assert set(kernel.states) == {FOREIGN_STATE, out_old, in_new}
    moved_out = kernel.states[out_old]
    assert moved_out.info.saddr == "203.0.113.5"
    assert moved_out.replay_esn.oseq == 5000
    assert moved_out.lifetime == LifetimeCur(9000, 5000)  # restored from XFRMA_LTIME_VAL
    moved_in = kernel.states[in_new]
    assert moved_in.info.saddr == "198.51.100.1"
    assert (moved_in.replay_esn.seq, moved_in.replay_esn.bmp) == (321, [0xFFFFFFFF, 0x7])
    assert moved_in.auth_trunc.extra == 128
    # Order: each state read, deleted, then added.
    names = [name for name, _ in kernel.log[5:]]
    assert names[:6] == ["XFRM_MSG_GETSA", "XFRM_MSG_DELSA", "XFRM_MSG_NEWSA"] * 2
    # Templates follow.
    for key in dp.installed_policies:
        src, dst = tmpl_addrs(kernel.policies[key])
        if key.direction == XFRM_POLICY_OUT:
            assert (src, dst) == ("203.0.113.5", "198.51.100.1")
        else:
            assert (src, dst) == ("198.51.100.1", "203.0.113.5")
    assert kernel.policies[FOREIGN_POLICY] == "host policy"
    # Removal after the move deletes the moved entries.
    dp.remove_child_sa(params.spi_in, params.spi_out)
    assert set(kernel.states) == {FOREIGN_STATE}
    assert set(kernel.policies) == {FOREIGN_POLICY}


def test_move_turning_encapsulation_on() -> None:
    kernel = FakeKernel()
    dp = datapath(kernel)
    params = params_gcm_v6(encap=False)
    dp.install_child_sa(params)
    dp.move_child_sa(
        params.spi_in, params.spi_out, ("2001:db8:7::5", 4500), ("2001:db8:2::1", 4500), True
    )
    for state in kernel.states.values():
        assert (state.encap.sport, state.encap.dport) == (4500, 4500)


def test_move_by_migrate_and_fallback() -> None:
    kernel = seeded_kernel()
    dp = datapath(kernel, move_method="migrate")
    params = params_cbc_sha256_v4(encap=True)
    dp.install_child_sa(params)
    dp.move_child_sa(params.spi_in, params.spi_out, ("203.0.113.5", 4500), params.remote, True)
    assert [n for n, _ in kernel.log].count("XFRM_MSG_MIGRATE") == 3
    assert StateKey("203.0.113.5", 0xC1A55E01) in kernel.states
    assert set(dp.installed_states) == {
        StateKey("203.0.113.5", 0xC1A55E01),
        StateKey("198.51.100.1", 0x0DDBA112),
    }
    kernel.migrate = False
    dp.move_child_sa(params.spi_in, params.spi_out, ("203.0.113.6", 4500), params.remote, True)
    assert StateKey("203.0.113.6", 0xC1A55E01) in kernel.states
    for key in dp.installed_policies:
        assert "203.0.113.6" in tmpl_addrs(kernel.policies[key])
    dp.remove_child_sa(params.spi_in, params.spi_out)
    assert set(kernel.states) == {FOREIGN_STATE}
    assert set(kernel.policies) == {FOREIGN_POLICY}


def test_rekeyed_child_sa_shares_policies() -> None:
    kernel = FakeKernel()
    dp = datapath(kernel)
    old = params_cbc_sha256_v4()
    new = replace(old, spi_in=bytes.fromhex("c1a55e02"), spi_out=bytes.fromhex("0ddba113"))
    dp.install_child_sa(old)
    dp.install_child_sa(new)
    assert len(kernel.policies) == 3 and len(kernel.states) == 4
    reqids = {p.templates[0].reqid for p in kernel.policies.values()}
    assert reqids == {8}  # the newer CHILD SA's
    dp.remove_child_sa(old.spi_in, old.spi_out)
    assert len(kernel.policies) == 3 and len(kernel.states) == 2
    dp.install_child_sa(old)  # again, as a third CHILD SA; then drop the newest
    dp.remove_child_sa(old.spi_in, old.spi_out)
    reqids = {p.templates[0].reqid for p in kernel.policies.values()}
    assert reqids == {8}  # back to the one still installed
    dp.remove_child_sa(new.spi_in, new.spi_out)
    assert kernel.policies == {} and kernel.states == {}


def test_failed_install_leaves_nothing_behind() -> None:
    kernel = seeded_kernel()
    # Someone else's policy with one of our selectors: the kernel answers EEXIST.
    kernel.policies[HOST_FWD] = "host fwd policy"
    dp = datapath(kernel)
    params = params_cbc_sha256_v4()
    with pytest.raises(XfrmError) as info:
        dp.install_child_sa(params)
    assert info.value.errno == errno.EEXIST
    assert info.value.msg_name == "XFRM_MSG_NEWPOLICY"
    assert set(kernel.states) == {FOREIGN_STATE}
    assert kernel.policies == {FOREIGN_POLICY: "host policy", HOST_FWD: "host fwd policy"}
    assert dp.installed_states == [] and dp.installed_policies == []


def test_refused_state_reports_errno_and_message() -> None:
    kernel = FakeKernel()
    kernel.refuse[XFRM_MSG_NEWSA] = errno.ENOSYS
    dp = datapath(kernel)
    with pytest.raises(XfrmError) as info:
        dp.install_child_sa(params_cbc_sha256_v4())
    assert info.value.errno == errno.ENOSYS
    assert info.value.msg_type == XFRM_MSG_NEWSA
    assert kernel.states == {} and kernel.policies == {}


def test_policies_only() -> None:
    kernel = FakeKernel()
    dp = datapath(kernel, install_states=False)
    params = params_cbc_sha256_v4()
    dp.install_child_sa(params)
    assert kernel.states == {} and len(kernel.policies) == 3
    assert dp.counters(params.spi_in) == ChildSaCounters()
    dp.move_child_sa(params.spi_in, params.spi_out, ("203.0.113.5", 500), params.remote, False)
    dp.remove_child_sa(params.spi_in, params.spi_out)
    assert kernel.policies == {}


def test_several_traffic_selectors() -> None:
    kernel = FakeKernel()
    dp = datapath(kernel)
    params = replace(
        params_cbc_sha256_v4(),
        local_ts=(TsRange("10.9.0.7", "10.9.0.7"), TsRange("2001:db8:9::7", "2001:db8:9::7")),
        remote_ts=(
            TsRange("10.20.0.0", "10.20.255.255"),
            TsRange("::", "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ),
    )
    dp.install_child_sa(params)
    # One v4 pair and the v6 range ::-ffff:: as one /1 prefix: 2 pairs x 3 directions.
    assert len(kernel.policies) == 6
    for state in kernel.states.values():
        assert state.info.flags & xfrm.XFRM_STATE_AF_UNSPEC  # no single selector
        assert state.info.selector.family == 0


def test_usage_errors() -> None:
    dp = datapath(FakeKernel())
    params = params_cbc_sha256_v4()
    dp.install_child_sa(params)
    with pytest.raises(xfrm.XfrmUsageError):
        dp.install_child_sa(params)
    with pytest.raises(xfrm.XfrmUsageError):
        dp.counters(b"\0\0\0\0")
    with pytest.raises(xfrm.XfrmUsageError):
        dp.install_child_sa(replace(params, spi_in=b"\1\1\1\1", mode="transport"))
    with pytest.raises(xfrm.XfrmUsageError):
        xfrm.XfrmDatapath(FakeKernel(), move_method="teleport")


def test_select_datapath(monkeypatch: pytest.MonkeyPatch) -> None:
    assert xfrm.select_datapath("userspace") == "userspace"
    assert xfrm.select_datapath("xfrm") == "xfrm"
    with pytest.raises(xfrm.XfrmUsageError):
        xfrm.select_datapath("kernel")
    monkeypatch.setattr(xfrm, "probe_esp", lambda netns=None: None)
    assert xfrm.select_datapath("auto") == "xfrm"
    assert str(xfrm.choose_datapath("auto")) == "datapath: xfrm (the kernel has ESP)"
    refusal = XfrmError(errno.EPROTONOSUPPORT, XFRM_MSG_NEWSA, "Requested type not found")
    monkeypatch.setattr(xfrm, "probe_esp", lambda netns=None: refusal)
    assert xfrm.select_datapath("auto") == "userspace"
    assert str(xfrm.choose_datapath("auto")) == (
        "datapath: userspace (the kernel refused an ESP state: "
        "Protocol not supported, Requested type not found)"
    )
    assert str(xfrm.choose_datapath("userspace")) == "datapath: userspace (configured)"


class ProbeSocket:
    """Answers the probe's NEWSA requests with the given errnos in turn (0: accepted)."""

    answers: list[int] = []
    log: list[XfrmMessage] = []

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def __enter__(self) -> ProbeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: XfrmMessage, what: str = "") -> list[XfrmMessage]:
        msg = roundtrip(msg)
        ProbeSocket.log.append(msg)
        if msg.kind == XFRM_MSG_NEWSA:
            err = ProbeSocket.answers.pop(0)
            if err:
                raise XfrmError(err, XFRM_MSG_NEWSA, "", what)
        return []

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("answers", "supported", "requests"),
    [
        ([0], True, ["NEWSA aead", "DELSA"]),
        ([errno.ENOSYS, 0], True, ["NEWSA aead", "NEWSA crypt", "DELSA"]),
        ([errno.ENOSYS, errno.EPROTONOSUPPORT], False, ["NEWSA aead", "NEWSA crypt"]),
        ([errno.EPROTONOSUPPORT], False, ["NEWSA aead"]),
        ([errno.EEXIST], True, ["NEWSA aead"]),  # not ours: never deleted
    ],
)
def test_probe(
    monkeypatch: pytest.MonkeyPatch, answers: list[int], supported: bool, requests: list[str]
) -> None:
    monkeypatch.setattr(xfrm, "XfrmSocket", ProbeSocket)
    ProbeSocket.answers, ProbeSocket.log = list(answers), []
    assert xfrm.probe_esp_support("somewhere") is supported
    seen = []
    for msg in ProbeSocket.log:
        if msg.kind == XFRM_MSG_NEWSA:
            kind = "aead" if sa(msg).aead else "crypt"
            seen.append(f"NEWSA {kind}")
            # Documentation addresses, no policy: nothing of the host's can match it.
            assert sa(msg).info.daddr == "192.0.2.2"
            assert sa(msg).info.spi >= 0x100
        else:
            seen.append("DELSA")
    assert seen == requests


def test_overlapping_selectors_give_one_policy() -> None:
    kernel = FakeKernel()
    dp = datapath(kernel)
    params = replace(
        params_cbc_sha256_v4(),
        remote_ts=(TsRange("10.20.0.0", "10.20.255.255"), TsRange("10.20.0.0", "10.20.255.255")),
    )
    dp.install_child_sa(params)
    assert len(kernel.policies) == 3
    dp.remove_child_sa(params.spi_in, params.spi_out)
    assert kernel.policies == {} and kernel.states == {}


def test_migrate_failing_half_way_falls_back() -> None:
    """The out policy's MIGRATE moved its state, the next one is refused: re-add the rest."""
    kernel = FakeKernel()
    dp = datapath(kernel, move_method="migrate")
    params = params_cbc_sha256_v4(encap=True)
    dp.install_child_sa(params)

    calls = {"n": 0}
    real = kernel.request

    def flaky(msg: XfrmMessage, what: str = "") -> list[XfrmMessage]:
        if msg.kind == XFRM_MSG_MIGRATE:
            calls["n"] += 1
            if calls["n"] == 2:
                raise XfrmError(errno.EINVAL, XFRM_MSG_MIGRATE, "refused by the test", what)
        return real(msg, what)

    kernel.request = flaky  # type: ignore[method-assign]
    new_remote = ("198.51.100.77", 4500)
    dp.move_child_sa(params.spi_in, params.spi_out, params.local, new_remote, True)
    assert set(kernel.states) == {
        StateKey("192.0.2.10", 0xC1A55E01),
        StateKey("198.51.100.77", 0x0DDBA112),
    }
    assert set(dp.installed_states) == set(kernel.states)
    for key in dp.installed_policies:
        assert "198.51.100.77" in tmpl_addrs(kernel.policies[key])
    dp.remove_child_sa(params.spi_in, params.spi_out)
    assert kernel.states == {} and kernel.policies == {}


def test_migrate_cannot_drop_encapsulation() -> None:
    """Without XFRMA_ENCAP the kernel's MIGRATE keeps the old one: turning it off re-adds."""
    kernel = FakeKernel()
    dp = datapath(kernel, move_method="migrate")
    params = params_cbc_sha256_v4(encap=True)
    dp.install_child_sa(params)
    dp.move_child_sa(params.spi_in, params.spi_out, ("203.0.113.5", 500), params.remote, False)
    assert "XFRM_MSG_MIGRATE" not in [name for name, _ in kernel.log]
    for state in kernel.states.values():
        assert state.encap is None
