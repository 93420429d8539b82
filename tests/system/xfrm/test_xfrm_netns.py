"""XfrmDatapath against the running kernel, inside a network namespace of its own.

This kernel accepts XFRM policies but has no ESP (no CONFIG_INET_ESP): states are
refused, so the policies are installed alone, read back, moved and removed, and the
refusal itself is checked. On a kernel that accepts states the same tests install,
count, move and remove the states too.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest

from mpa_harness.netns import Netns
from mpa_ike.datapath import ChildSaParams
from mpa_ike.io import xfrm
from mpa_ike.io.xfrm import XFRM_MSG_NEWSA, XFRM_POLICY_OUT, XfrmDatapath, XfrmError
from mpa_ike.io.xfrm_messages import PolicyMessage, SaMessage
from tests.unit.xfrm.xfrm_samples import params_cbc_sha256_v4, params_gcm_v6

pytestmark = pytest.mark.netns

# Errors a kernel without ESP gives for a new ESP state: ENOSYS "Requested AEAD
# algorithm not found" when the algorithm is unknown (as AES-GCM is here), and
# EPROTONOSUPPORT "Requested type not found" when the algorithms exist but the
# ESP type does not (AES-CBC with HMAC-SHA-256 here).
NO_ESP_ERRNOS = {errno.ENOSYS, errno.EPROTONOSUPPORT, errno.ENOENT}

# The host's own entries, put there before the test to prove they stay untouched.
HOST_POLICY = (
    "src 172.16.0.0/16 dst 172.17.0.0/16 dir out priority 1000 "
    "tmpl src 192.0.2.100 dst 192.0.2.200 proto esp reqid 99 mode tunnel"
)


def spd_keys(dp: XfrmDatapath) -> set[xfrm.PolicyKey]:
    """The SPD as the kernel dumps it over netlink."""
    answers = dp.transport.request(xfrm.build_dump_policies(), "dump")
    bodies = [m.body for m in answers if isinstance(m.body, PolicyMessage)]
    assert len(bodies) == len(answers)
    return {xfrm.PolicyKey(b.info.selector, b.info.dir) for b in bodies}


def spd(ns: Netns) -> str:
    return ns.ip("xfrm", "policy", "list").stdout


def sad(ns: Netns) -> str:
    return ns.ip("xfrm", "state", "list").stdout


def host_spd_sad() -> tuple[str, str]:
    run = subprocess.run
    policy = run(["ip", "xfrm", "policy", "list"], capture_output=True, text=True, check=True)
    state = run(["ip", "xfrm", "state", "list"], capture_output=True, text=True, check=True)
    return policy.stdout, state.stdout


@pytest.fixture
def seeded_netns(xfrm_netns: Netns) -> Iterator[Netns]:
    xfrm_netns.ip("xfrm", "policy", "add", *HOST_POLICY.split())
    yield xfrm_netns


@pytest.fixture
def esp_ok(xfrm_netns: Netns) -> bool:
    return xfrm.probe_esp_support(xfrm_netns.name)


def iproute2_accepts_esp(ns: Netns) -> bool:
    """The same question asked through iproute2, independently of our netlink code."""
    added = ns.ip(
        "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
        "spi", "0x4711", "reqid", "1", "mode", "tunnel",
        "enc", "cbc(aes)", "0x" + "00" * 16, "auth-trunc", "hmac(sha256)", "0x" + "11" * 32, "128",
        check=False,
    )  # fmt: skip
    if added.returncode == 0:
        ns.ip("xfrm", "state", "delete", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
              "spi", "0x4711")  # fmt: skip
    return added.returncode == 0


def test_probe_and_refused_state(xfrm_netns: Netns, esp_ok: bool) -> None:
    """On this kernel the probe says no, and a real state is refused with a typed error."""
    assert esp_ok == iproute2_accepts_esp(xfrm_netns)
    before = sad(xfrm_netns)
    refusal = xfrm.probe_esp(xfrm_netns.name)
    assert (refusal is None) == esp_ok
    assert xfrm.select_datapath("auto", xfrm_netns.name) == ("xfrm" if esp_ok else "userspace")
    assert sad(xfrm_netns) == before  # the probe left nothing behind
    if esp_ok:
        return
    assert refusal is not None
    assert refusal.errno in NO_ESP_ERRNOS
    assert refusal.msg_type == XFRM_MSG_NEWSA
    dp = XfrmDatapath(netns=xfrm_netns.name)
    try:
        for params in (params_cbc_sha256_v4(True), params_gcm_v6()):
            with pytest.raises(XfrmError) as info:
                dp.install_child_sa(params)
            assert info.value.errno in NO_ESP_ERRNOS
            assert info.value.msg_name == "XFRM_MSG_NEWSA"
            assert info.value.detail  # the kernel's extended ack text, e.g. "Requested type..."
            assert "state" in info.value.what
        assert dp.installed_states == [] and dp.installed_policies == []
        assert spd(xfrm_netns) == "" and sad(xfrm_netns) == ""
    finally:
        dp.close()


def check_templates(dp: XfrmDatapath, params: ChildSaParams, local: str, remote: str) -> None:
    """GETPOLICY each installed policy and compare its template with the CHILD SA's."""
    for key in dp.policies_of(params.spi_in):
        answers = dp.transport.request(xfrm.build_getpolicy(key), str(key))
        assert len(answers) == 1
        got = answers[0].body
        assert isinstance(got, PolicyMessage)
        assert got.info.selector == key.selector
        assert got.info.dir == key.direction
        assert got.info.priority == key.selector.priority()
        (tmpl,) = got.templates
        pair = (tmpl.saddr, tmpl.daddr)
        assert pair == ((local, remote) if key.direction == XFRM_POLICY_OUT else (remote, local))
        assert tmpl.reqid == dp.reqid_of(params.spi_in)
        assert tmpl.proto == xfrm.IPPROTO_ESP
        assert tmpl.mode == xfrm.XFRM_MODE_TUNNEL


@pytest.mark.parametrize("move_method", ["readd", "migrate"])
def test_child_sa_lifecycle(seeded_netns: Netns, esp_ok: bool, move_method: str) -> None:
    ns = seeded_netns
    host_before = host_spd_sad()
    spd_before, sad_before = spd(ns), sad(ns)
    dp = XfrmDatapath(netns=ns.name, install_states=esp_ok, move_method=move_method)
    v4 = params_cbc_sha256_v4(encap=True)
    v6 = replace(params_gcm_v6(), spi_in=b"\x0a\x0b\x0c\x0d", spi_out=b"\x1a\x1b\x1c\x1d")
    try:
        dp.install_child_sa(v4)
        dp.install_child_sa(v6)
        assert len(dp.installed_policies) == 6
        host_keys = spd_keys(dp) - set(dp.installed_policies)
        assert len(host_keys) == 1 and len(spd_keys(dp)) == 7
        check_templates(dp, v4, "192.0.2.10", "198.51.100.1")
        text = spd(ns)
        assert "src 10.9.0.7/32 dst 10.20.0.0/16" in text
        assert "src 10.20.0.0/16 dst 10.9.0.7/32" in text
        assert "dir fwd" in text
        assert "src 2001:db8:9::7/128 dst 2001:db8:20::/48" in text
        assert "tmpl src 192.0.2.10 dst 198.51.100.1" in text
        assert "tmpl src 2001:db8:2::1 dst 2001:db8:1::10" in text
        if esp_ok:
            state_text = sad(ns)
            assert "hmac(sha256)" in state_text and "128" in state_text
            assert "encap type espinudp sport 4500 dport 4500" in state_text
            assert "rfc4106(gcm(aes))" in state_text
            assert dp.counters(v4.spi_in).packets_in == 0

        # The mobile node moves: new local address, same gateway.
        dp.move_child_sa(v4.spi_in, v4.spi_out, ("203.0.113.5", 4500), v4.remote, True)
        check_templates(dp, v4, "203.0.113.5", "198.51.100.1")
        text = spd(ns)
        assert "tmpl src 203.0.113.5 dst 198.51.100.1" in text
        assert "tmpl src 198.51.100.1 dst 203.0.113.5" in text
        assert "192.0.2.10 " not in text and "192.0.2.10\n" not in text
        assert "tmpl src 2001:db8:2::1 dst 2001:db8:1::10" in text  # the other SA stays
        if esp_ok:
            assert "203.0.113.5" in sad(ns)

        dp.remove_child_sa(v4.spi_in, v4.spi_out)
        dp.remove_child_sa(v6.spi_in, v6.spi_out)
        assert spd(ns) == spd_before and sad(ns) == sad_before
        assert spd_keys(dp) == host_keys
        assert dp.transport.request(xfrm.build_dump_states(), "dump") == [] or esp_ok
        assert HOST_POLICY.split()[1] in spd(ns)
    finally:
        dp.close()
    assert host_spd_sad() == host_before


def test_existing_foreign_policy_is_not_replaced(seeded_netns: Netns, esp_ok: bool) -> None:
    """A policy someone else installed with our selector makes the install fail, untouched."""
    ns = seeded_netns
    ns.ip(
        "xfrm", "policy", "add", "src", "10.9.0.7/32", "dst", "10.20.0.0/16", "dir", "out",
        "tmpl", "src", "192.0.2.77", "dst", "192.0.2.78", "proto", "esp", "reqid", "5",
        "mode", "tunnel",
    )  # fmt: skip
    before = spd(ns)
    dp = XfrmDatapath(netns=ns.name, install_states=esp_ok)
    try:
        with pytest.raises(XfrmError) as info:
            dp.install_child_sa(params_cbc_sha256_v4())
        assert info.value.errno == errno.EEXIST
        assert info.value.msg_name == "XFRM_MSG_NEWPOLICY"
        assert spd(ns) == before
        assert dp.installed_policies == []
    finally:
        dp.close()


def _variants() -> list[tuple[str, ChildSaParams]]:
    from mpa_ike.constants import IntegId

    base = params_cbc_sha256_v4()
    out = [("cbc-sha256-v4", base), ("cbc-sha256-v4-encap", params_cbc_sha256_v4(True))]
    for integ, size in (
        (IntegId.HMAC_SHA2_384_192, 48),
        (IntegId.HMAC_SHA2_512_256, 64),
        (IntegId.HMAC_SHA1_96, 20),
    ):
        variant = replace(
            base, integ_id=integ, integ_key_in=b"\1" * size, integ_key_out=b"\2" * size
        )
        out.append((f"cbc-{integ.name.lower()}", variant))
    v6 = params_gcm_v6()
    out.append(
        (
            "cbc-sha256-v6-encap-esn",
            replace(
                params_cbc_sha256_v4(True),
                esn=True,
                local=v6.local,
                remote=v6.remote,
                local_ts=v6.local_ts,
                remote_ts=v6.remote_ts,
            ),
        )
    )
    return out


@pytest.mark.parametrize(("name", "params"), _variants(), ids=[n for n, _ in _variants()])
def test_kernel_validates_state_messages(
    xfrm_netns: Netns, esp_ok: bool, name: str, params: ChildSaParams
) -> None:
    """The kernel checks a new state's layout before it looks for the ESP type.

    Without ESP it answers EPROTONOSUPPORT only after the message passed
    verify_newsa_info and the algorithms were attached: attribute lengths, key
    lengths against alg_key_len, truncation lengths against the hash, the ESN
    replay state (bmp_len against the window, replay_window 0), the encapsulation.
    A malformed message would get EINVAL instead (checked below).
    """
    dp = XfrmDatapath(netns=xfrm_netns.name)
    try:
        if esp_ok:
            dp.install_child_sa(params)
            dp.remove_child_sa(params.spi_in, params.spi_out)
        else:
            with pytest.raises(XfrmError) as info:
                dp.install_child_sa(params)
            assert info.value.errno == errno.EPROTONOSUPPORT, str(info.value)
    finally:
        dp.close()
    assert sad(xfrm_netns) == "" and spd(xfrm_netns) == ""


def test_kernel_rejects_a_bad_truncation(xfrm_netns: Netns) -> None:
    """The negative control: HMAC-SHA-256 truncated to 512 bits is refused as invalid."""
    spec = xfrm.StateSpec(
        src="192.0.2.1",
        dst="192.0.2.2",
        spi=0x4242,
        reqid=1,
        algorithms=xfrm.KernelAlgorithms(crypt="cbc(aes)", auth="hmac(sha256)", trunc_bits=512),
        encr_key=bytes(16),
        integ_key=bytes(32),
    )
    sock = xfrm.XfrmSocket(xfrm_netns.name)
    try:
        with pytest.raises(XfrmError) as info:
            sock.request(xfrm.build_newsa(spec), "bad truncation")
        assert info.value.errno == errno.EINVAL
    finally:
        sock.close()
    assert sad(xfrm_netns) == ""


@pytest.mark.parametrize("window", [32, 64, 128])
def test_kernel_validates_a_restored_state(xfrm_netns: Netns, esp_ok: bool, window: int) -> None:
    """The state a move re-adds (replay bitmap, sequence numbers, lifetime counters) passes
    the kernel's attribute checks too; on an ESP kernel it is installed and read back."""
    spec = xfrm.StateSpec(
        src="192.0.2.1",
        dst="192.0.2.2",
        spi=0x4243,
        reqid=1,
        algorithms=xfrm.kernel_algorithms(12, 12),
        encr_key=bytes(16),
        integ_key=bytes(32),
        encap=(4500, 4500),
        replay_window=window,
    )
    replay = xfrm.ReplayState(
        oseq=77, seq=70, bitmap=(0xFF,) * ((window + 31) // 32), bytes=7000, packets=77
    )
    sock = xfrm.XfrmSocket(xfrm_netns.name)
    try:
        if esp_ok:
            sock.request(xfrm.build_newsa(spec, replay), "restored")
            answer = sock.request(xfrm.build_getsa(spec.key))[0].body
            assert isinstance(answer, SaMessage)
            got = xfrm.replay_from_answer(answer)
            sock.request(xfrm.build_delsa(spec.key))
            assert (got.oseq, got.seq, got.bytes, got.packets) == (77, 70, 7000, 77)
        else:
            with pytest.raises(XfrmError) as info:
                sock.request(xfrm.build_newsa(spec, replay), "restored")
            assert info.value.errno == errno.EPROTONOSUPPORT, str(info.value)
    finally:
        sock.close()
    assert sad(xfrm_netns) == ""
