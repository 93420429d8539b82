"""strongSwan proposal strings and responder selection."""

from __future__ import annotations

import pytest

from mpa_ike.constants import DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from mpa_ike.crypto.proposal import (
    ProposalSpec,
    TransformSpec,
    format_proposal,
    parse_proposal,
    parse_proposals,
    select_proposal,
)
from mpa_ike.errors import ConfigError

E, INTEG, P, D, N = (
    TransformType.ENCR,
    TransformType.INTEG,
    TransformType.PRF,
    TransformType.DH,
    TransformType.ESN,
)

IKE_ROUND_TRIPS = [
    "aes128-sha256-modp2048",
    "aes256gcm16-prfsha384-x25519",
    "chacha20poly1305-prfsha256-ecp256",
    "aes256-sha384-ecp384",
    "aes128-sha1-modp2048",
    "aes128-aes256-sha256-sha1-modp2048-ecp256",
    "aes192-sha512-prfsha256-ecp521-x448-modp3072-modp4096",
]
ESP_ROUND_TRIPS = [
    "aes128gcm16",
    "aes128-sha256",
    "aes192",
    "aes256-sha512-esn",
    "aes128-sha1-noesn-esn",
]


@pytest.mark.parametrize("text", IKE_ROUND_TRIPS)
def test_ike_round_trip(text: str) -> None:
    assert format_proposal(parse_proposal(text)) == text


@pytest.mark.parametrize("text", ESP_ROUND_TRIPS)
def test_esp_round_trip(text: str) -> None:
    assert format_proposal(parse_proposal(text, ProtocolId.ESP)) == text


def test_ike_transforms() -> None:
    assert parse_proposal("aes128-sha256-modp2048").transforms == [
        TransformSpec(E, EncrId.AES_CBC, 128),
        TransformSpec(INTEG, IntegId.HMAC_SHA2_256_128),
        TransformSpec(P, PrfId.HMAC_SHA2_256),
        TransformSpec(D, DhGroup.MODP2048),
    ]
    assert parse_proposal("aes256gcm16-prfsha384-x25519").transforms == [
        TransformSpec(E, EncrId.AES_GCM_16, 256),
        TransformSpec(P, PrfId.HMAC_SHA2_384),
        TransformSpec(D, DhGroup.CURVE25519),
    ]


def test_alternatives_keep_order_and_imply_one_prf_each() -> None:
    spec = parse_proposal("aes128-aes256-sha256-sha1-modp2048-ecp256")
    assert [t.id for t in spec.of_type(P)] == [PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA1]
    assert [t.key_length for t in spec.of_type(E)] == [128, 256]
    assert [t.id for t in spec.of_type(D)] == [DhGroup.MODP2048, DhGroup.ECP256]


def test_aliases() -> None:
    assert parse_proposal("aes128gcm128-prfsha256-curve25519").transforms == (
        parse_proposal("aes128gcm16-prfsha256-x25519").transforms
    )
    assert format_proposal(parse_proposal("aes128gcm128-prfsha256-curve448")) == (
        "aes128gcm16-prfsha256-x448"
    )


def test_aead_with_integ_in_ike_takes_prf_then_drops_integ() -> None:
    spec = parse_proposal("aes256gcm16-sha256-modp2048")
    assert not spec.of_type(INTEG)
    assert [t.id for t in spec.of_type(P)] == [PrfId.HMAC_SHA2_256]


def test_esp_defaults() -> None:
    spec = parse_proposal("aes128gcm16-sha256-prfsha256", ProtocolId.ESP)
    assert spec.transforms == [
        TransformSpec(E, EncrId.AES_GCM_16, 128),
        TransformSpec(N, EsnId.NO_ESN),
    ]
    assert parse_proposal("chacha20poly1305-esn", ProtocolId.ESP).of_type(N) == [
        TransformSpec(N, EsnId.ESN)
    ]


@pytest.mark.parametrize(
    ("text", "protocol", "message"),
    [
        ("aes128-foo-modp2048", ProtocolId.IKE, "'foo'"),
        ("aes128gcm16-x25519", ProtocolId.IKE, "PRF"),
        ("aes192", ProtocolId.IKE, "integrity"),
        ("aes128-sha256", ProtocolId.IKE, "key exchange"),
        ("aes128-aes128gcm16-sha256-modp2048", ProtocolId.IKE, "mixed"),
        ("sha256-modp2048", ProtocolId.IKE, "encryption"),
        ("aes128-sha256-modp2048-esn", ProtocolId.IKE, "esn"),
        ("aes128--sha256", ProtocolId.ESP, "empty"),
        ("", ProtocolId.ESP, "empty"),
        ("aes128", ProtocolId.AH, "AH"),
    ],
)
def test_errors_name_the_problem(text: str, protocol: ProtocolId, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_proposal(text, protocol)


def test_parse_list() -> None:
    specs = parse_proposals("aes128-sha256-modp2048,aes256gcm16-prfsha384-x25519")
    assert [format_proposal(s) for s in specs] == [
        "aes128-sha256-modp2048",
        "aes256gcm16-prfsha384-x25519",
    ]


def test_select_prefers_configured_order() -> None:
    configured = [parse_proposal("aes256-aes128-sha256-sha1-ecp256-modp2048")]
    received = [parse_proposal("aes128-aes256-sha1-sha256-modp2048-ecp256")]
    index, chosen = select_proposal(configured, received) or (None, None)
    assert index == 0 and chosen is not None
    assert format_proposal(chosen) == "aes256-sha256-ecp256"


def test_select_returns_index_of_matching_received_proposal() -> None:
    configured = parse_proposals("aes256gcm16-prfsha384-x25519,aes128-sha256-modp2048")
    received = parse_proposals("aes128-sha1-modp2048,aes128-sha256-modp2048")
    result = select_proposal(configured, received)
    assert result is not None
    assert result[0] == 1
    assert format_proposal(result[1]) == "aes128-sha256-modp2048"


def test_select_key_length_must_match() -> None:
    configured = [parse_proposal("aes256-sha256-modp2048")]
    assert select_proposal(configured, [parse_proposal("aes128-sha256-modp2048")]) is None


def test_select_aead_skips_integrity() -> None:
    mine = parse_proposal("aes128gcm16-prfsha256-ecp256")
    theirs = ProposalSpec(
        ProtocolId.IKE, [*mine.transforms, TransformSpec(INTEG, IntegId.HMAC_SHA1_96)]
    )
    result = select_proposal([mine], [theirs])
    assert result is not None and not result[1].of_type(INTEG)


def test_select_esp_dh_optional_only_with_none() -> None:
    mine = parse_proposal("aes128-sha256", ProtocolId.ESP)
    pfs = parse_proposal("aes128-sha256-modp2048", ProtocolId.ESP)
    assert select_proposal([mine], [pfs]) is None
    with_none = ProposalSpec(ProtocolId.ESP, [*pfs.transforms, TransformSpec(D, DhGroup.NONE)])
    result = select_proposal([mine], [with_none])
    assert result is not None
    assert format_proposal(result[1]) == "aes128-sha256"


def test_select_protocol_mismatch() -> None:
    ike = parse_proposal("aes128-sha256-modp2048")
    esp = parse_proposal("aes128-sha256-modp2048", ProtocolId.ESP)
    assert select_proposal([ike], [esp]) is None


def test_select_esn() -> None:
    mine = parse_proposal("aes128gcm16-esn-noesn", ProtocolId.ESP)
    theirs = parse_proposal("aes128gcm16-noesn", ProtocolId.ESP)
    result = select_proposal([mine], [theirs])
    assert result is not None
    assert result[1].of_type(N) == [TransformSpec(N, EsnId.NO_ESN)]
