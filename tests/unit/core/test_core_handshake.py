"""Back-to-back IKE_SA_INIT + IKE_AUTH(EAP) + CP + first CHILD SA, fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address
from types import SimpleNamespace
from typing import Any

import pytest
from core_harness import (
    GATEWAY,
    MOBILE,
    POOL,
    Link,
    initiator_config,
    only_lifetime_timers,
    responder_config,
    seeded,
)
from core_pki import Pki

from gateway.pool import AddressPool
from mpa_ike.constants import AuthMethod, ExchangeType, HashAlgorithm, NotifyType
from mpa_ike.eap import EapType
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import (
    ChildSaEstablished,
    ChildSaFailed,
    IkeSaEstablished,
    IkeSaFailed,
)
from mpa_ike.handshake_common import read_capabilities
from mpa_ike.ike_sa import IkeSaState
from mpa_ike.wire import IkeHeader, Message
from mpa_ike.wire.notify import signature_hash_algorithms_notify


def connect(
    pki: Pki,
    pool: AddressPool[object],
    *,
    eap: EapType = EapType.MSCHAPV2,
    key: str = "rsa",
    **mobile_options: Any,
) -> Link:
    credential = getattr(pki, key)
    gateway = Endpoint(
        random=seeded(2), responder=responder_config(pool, credential=credential, eap_method=eap)
    )
    mobile = Endpoint(random=seeded(1))
    link = Link(mobile, gateway)
    mobile.initiate(initiator_config(ca=pki.ca.cert, **mobile_options), MOBILE, GATEWAY, 0.0)
    link.run()
    return link


def assert_established(link: Link) -> None:
    for side in ("mobile", "gateway"):
        assert len(link.of_type(IkeSaEstablished, side)) == 1, side
        assert len(link.of_type(ChildSaEstablished, side)) == 1, side
        assert not link.of_type(IkeSaFailed, side), side
    mobile_child = link.of_type(ChildSaEstablished, "mobile")[0]
    gateway_child = link.of_type(ChildSaEstablished, "gateway")[0]
    assert isinstance(mobile_child, ChildSaEstablished)
    assert isinstance(gateway_child, ChildSaEstablished)
    m, g = mobile_child.params, gateway_child.params
    assert (m.spi_in, m.spi_out) == (g.spi_out, g.spi_in)
    assert (m.encr_key_out, m.integ_key_out) == (g.encr_key_in, g.integ_key_in)
    assert (m.encr_key_in, m.integ_key_in) == (g.encr_key_out, g.integ_key_out)
    assert m.local_ts == g.remote_ts and m.remote_ts == g.local_ts


@pytest.mark.parametrize("eap", [EapType.MSCHAPV2, EapType.MD5_CHALLENGE])
@pytest.mark.parametrize("key", ["rsa", "ecdsa"])
def test_eap_with_certificate(pki: Pki, pool: AddressPool[object], eap: EapType, key: str) -> None:
    link = connect(pki, pool, eap=eap, key=key)
    assert_established(link)
    established = link.of_type(IkeSaEstablished)[0]
    assert isinstance(established, IkeSaEstablished)
    assert established.assigned_addresses == (IPv4Address("10.10.0.1"),)
    assert established.peer_identity == "gw.example.net"
    assert established.mobike and not established.nat_detected
    child = link.of_type(ChildSaEstablished)[0]
    assert isinstance(child, ChildSaEstablished)
    assert [str(r) for r in child.params.local_ts] == ["10.10.0.1"]
    assert [str(r) for r in child.params.remote_ts] == ["0.0.0.0-255.255.255.255"]
    # RFC 4555 §3.3: with MOBIKE, IKE_AUTH moved to port 4500.
    assert child.params.local == (MOBILE[0], 4500) and child.params.remote == (GATEWAY[0], 4500)
    assert not child.params.encap
    assert pool.lease_of(next(iter(link.gateway)).local_spi) == IPv4Address("10.10.0.1")
    # Nothing lost: everything happened at t=0 and no timer is left but none pending.
    assert link.now == 0.0
    assert only_lifetime_timers(link.mobile) and only_lifetime_timers(link.gateway)
    (status,) = link.mobile.snapshot()
    assert status["state"] == "established" and status["address"] == "10.10.0.1"
    assert status["child_sas"][0]["state"] == "installed"  # type: ignore[index]


def test_classic_signature_without_hash_announcement(pki: Pki, pool: AddressPool[object]) -> None:
    link = connect(pki, pool, key="ecdsa", signature_hash_algorithms=False)
    assert_established(link)
    gateway_sa = next(iter(link.gateway))
    assert gateway_sa.peer_hash_algorithms == ()
    link2 = connect(pki, AddressPool([POOL]), key="rsa", signature_hash_algorithms=False)
    assert_established(link2)


def test_psk_gateway(pool: AddressPool[object]) -> None:
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, psk=b"shared secret!"))
    mobile = Endpoint(random=seeded(1))
    link = Link(mobile, gateway)
    mobile.initiate(initiator_config(psk=b"shared secret!"), MOBILE, GATEWAY, 0.0)
    link.run()
    assert_established(link)


def test_wrong_psk_fails(pool: AddressPool[object]) -> None:
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, psk=b"shared secret!"))
    mobile = Endpoint(random=seeded(1))
    link = Link(mobile, gateway)
    mobile.initiate(initiator_config(psk=b"other secret"), MOBILE, GATEWAY, 0.0)
    link.run()
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.notify == NotifyType.AUTHENTICATION_FAILED
    # The mobile node told the gateway (INFORMATIONAL N(AUTHENTICATION_FAILED), as
    # strongSwan does), so the gateway's SA ends at once, not at the half-open timeout.
    (gateway_failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(gateway_failed, IkeSaFailed)
    assert gateway_failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert link.now == 0.0 and not list(gateway)


def test_untrusted_gateway_certificate(pki: Pki, pool: AddressPool[object]) -> None:
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, credential=pki.rsa))
    mobile = Endpoint(random=seeded(1))
    link = Link(mobile, gateway)
    mobile.initiate(initiator_config(ca=pki.other_ca.cert), MOBILE, GATEWAY, 0.0)
    link.run()
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert "trusted CA" in failed.reason


@pytest.mark.parametrize("eap", [EapType.MSCHAPV2, EapType.MD5_CHALLENGE])
def test_wrong_password(pki: Pki, pool: AddressPool[object], eap: EapType) -> None:
    link = connect(pki, pool, eap=eap, password="wrong")
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.notify == NotifyType.AUTHENTICATION_FAILED
    (gateway_failed,) = link.of_type(IkeSaFailed, "gateway")
    assert isinstance(gateway_failed, IkeSaFailed)
    assert gateway_failed.notify == NotifyType.AUTHENTICATION_FAILED
    assert not link.of_type(IkeSaEstablished, "gateway")
    assert link.now == 0.0  # both sides ended at once, no timeout involved
    assert pool.available(4) == pool.size(4)  # no lease leaked
    assert not list(link.gateway) and not list(link.mobile)


def test_ike_no_proposal_chosen(pki: Pki, pool: AddressPool[object]) -> None:
    link = connect(pki, pool, ike_text="aes256-sha384-ecp384")
    (failed,) = link.of_type(IkeSaFailed)
    assert isinstance(failed, IkeSaFailed) and failed.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert not list(link.gateway) and not link.gateway_events


def test_child_no_proposal_chosen_keeps_ike_sa(pki: Pki, pool: AddressPool[object]) -> None:
    link = connect(pki, pool, esp_text="aes256-sha512")
    for side in ("mobile", "gateway"):
        assert link.of_type(IkeSaEstablished, side)
        (failed,) = link.of_type(ChildSaFailed, side)
        assert isinstance(failed, ChildSaFailed)
        assert failed.notify == NotifyType.NO_PROPOSAL_CHOSEN
    (sa,) = link.mobile
    assert sa.state == IkeSaState.ESTABLISHED and not sa.children


def test_modp_cbc_suite(pki: Pki, pool: AddressPool[object]) -> None:
    gateway = Endpoint(
        random=seeded(2),
        responder=responder_config(
            pool, credential=pki.rsa, ike_text="aes128-sha256-modp2048", esp_text="aes128-sha256"
        ),
    )
    mobile = Endpoint(random=seeded(1))
    link = Link(mobile, gateway)
    config = initiator_config(
        ca=pki.ca.cert, ike_text="aes128-sha256-modp2048", esp_text="aes128-sha256"
    )
    mobile.initiate(config, MOBILE, GATEWAY, 0.0)
    link.run()
    assert_established(link)


def test_auth_method_is_rfc7427_when_announced(pki: Pki, pool: AddressPool[object]) -> None:
    from mpa_ike.certificates import signature_method
    from mpa_ike.constants import HashAlgorithm

    assert signature_method(pki.rsa.key, [HashAlgorithm.SHA2_256]) == AuthMethod.DIGITAL_SIGNATURE
    assert signature_method(pki.rsa.key, []) == AuthMethod.RSA_SIG
    assert signature_method(pki.ecdsa.key, []) == AuthMethod.ECDSA_SHA256_P256


def test_peer_hash_algorithms_keep_known_values_once() -> None:
    """A SIGNATURE_HASH_ALGORITHMS notify full of unknown and repeated values leaves the
    half-open IKE SA holding only the algorithms it can use, each once."""
    listed = [HashAlgorithm.SHA2_384, *(HashAlgorithm(v) for v in range(100, 900))]
    listed += [HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256]
    message = Message(
        IkeHeader(bytes(8), bytes(8), ExchangeType.IKE_SA_INIT, 0, 0),
        (signature_hash_algorithms_notify(listed),),
    )
    host = SimpleNamespace(peer_fragmentation=False, peer_hash_algorithms=())
    read_capabilities(host, message)
    assert host.peer_hash_algorithms == (HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256)
