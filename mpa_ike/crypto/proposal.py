"""strongSwan proposal strings, and responder proposal selection.

A proposal string is a '-' separated list of algorithm keywords, as in
strongSwan's ``ike=`` / ``esp=`` (swanctl ``proposals``): any number of
alternatives per transform type, e.g. ``aes128-aes256-sha256-sha1-modp2048``.
The checks follow strongSwan's ``check_proposal``:

- IKE without an explicit PRF takes one PRF per integrity algorithm
  (sha256 -> prfsha256); an IKE proposal without a PRF, or without a
  key exchange method, is rejected.
- Classic and combined-mode (AEAD) ciphers cannot share a proposal; with AEAD
  ciphers any integrity algorithm is dropped; IKE with a classic cipher needs
  an integrity algorithm.
- ESP drops PRFs and gets ``noesn`` when no ESN transform is given.

Selection (RFC 7296 §2.7, strongSwan ``select_algo``) prefers the configured
order: the first configured proposal that matches any received one wins, and
within it, for each transform type, the first configured algorithm the peer
also offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mpa_ike.constants import (
    DhGroup,
    EncrId,
    EsnId,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from mpa_ike.errors import ConfigError
from mpa_ike.records import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class TransformSpec:
    """One transform: type, id, and the Key Length attribute in bits if any."""

    type: TransformType
    id: int
    key_length: int | None = None


@dataclass(slots=True)
class ProposalSpec:
    """A proposal: the protocol and its transforms in preference order."""

    protocol: ProtocolId
    transforms: list[TransformSpec] = field(default_factory=list)

    def of_type(self, transform_type: TransformType) -> list[TransformSpec]:
        return [t for t in self.transforms if t.type == transform_type]

    def first(self, transform_type: TransformType) -> TransformSpec | None:
        """The first (for a selected proposal: the only) transform of a type."""
        for transform in self.transforms:
            if transform.type == transform_type:
                return transform
        return None


def _encr(encr: EncrId, bits: int | None = None) -> TransformSpec:
    return TransformSpec(TransformType.ENCR, encr, bits)


def _aes_keywords() -> dict[str, TransformSpec]:
    words: dict[str, TransformSpec] = {"aes": _encr(EncrId.AES_CBC, 128)}
    icv_names = {
        EncrId.AES_GCM_8: ("8", "64"),
        EncrId.AES_GCM_12: ("12", "96"),
        EncrId.AES_GCM_16: ("16", "128"),
    }
    for bits in (128, 192, 256):
        words[f"aes{bits}"] = _encr(EncrId.AES_CBC, bits)
        for encr, names in icv_names.items():
            for name in names:
                words[f"aes{bits}gcm{name}"] = _encr(encr, bits)
    return words


ENCR_KEYWORDS: dict[str, TransformSpec] = {
    **_aes_keywords(),
    "chacha20poly1305": _encr(EncrId.CHACHA20_POLY1305),
}

INTEG_KEYWORDS: dict[str, TransformSpec] = {
    name: TransformSpec(TransformType.INTEG, integ)
    for name, integ in (
        ("sha1", IntegId.HMAC_SHA1_96),
        ("sha", IntegId.HMAC_SHA1_96),
        ("sha256", IntegId.HMAC_SHA2_256_128),
        ("sha2_256", IntegId.HMAC_SHA2_256_128),
        ("sha384", IntegId.HMAC_SHA2_384_192),
        ("sha2_384", IntegId.HMAC_SHA2_384_192),
        ("sha512", IntegId.HMAC_SHA2_512_256),
        ("sha2_512", IntegId.HMAC_SHA2_512_256),
    )
}

PRF_KEYWORDS: dict[str, TransformSpec] = {
    name: TransformSpec(TransformType.PRF, prf)
    for name, prf in (
        ("prfsha1", PrfId.HMAC_SHA1),
        ("prfsha256", PrfId.HMAC_SHA2_256),
        ("prfsha384", PrfId.HMAC_SHA2_384),
        ("prfsha512", PrfId.HMAC_SHA2_512),
    )
}

DH_KEYWORDS: dict[str, TransformSpec] = {
    name: TransformSpec(TransformType.DH, group)
    for name, group in (
        ("modp2048", DhGroup.MODP2048),
        ("modp3072", DhGroup.MODP3072),
        ("modp4096", DhGroup.MODP4096),
        ("modp6144", DhGroup.MODP6144),
        ("modp8192", DhGroup.MODP8192),
        ("ecp256", DhGroup.ECP256),
        ("ecp384", DhGroup.ECP384),
        ("ecp521", DhGroup.ECP521),
        ("x25519", DhGroup.CURVE25519),
        ("curve25519", DhGroup.CURVE25519),
        ("x448", DhGroup.CURVE448),
        ("curve448", DhGroup.CURVE448),
    )
}

ESN_KEYWORDS: dict[str, TransformSpec] = {
    "esn": TransformSpec(TransformType.ESN, EsnId.ESN),
    "noesn": TransformSpec(TransformType.ESN, EsnId.NO_ESN),
}

KEYWORDS: dict[str, TransformSpec] = {
    **ENCR_KEYWORDS,
    **INTEG_KEYWORDS,
    **PRF_KEYWORDS,
    **DH_KEYWORDS,
    **ESN_KEYWORDS,
}

# strongSwan's integ_prf_map: the PRF an IKE proposal gets from its integrity algorithm.
INTEG_TO_PRF: dict[int, PrfId] = {
    IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1,
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}

AEAD_ENCRS = frozenset(
    {EncrId.AES_GCM_8, EncrId.AES_GCM_12, EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305}
)

# The first keyword of each transform wins when formatting.
_CANONICAL: dict[TransformSpec, str] = {}
for _name, _spec in KEYWORDS.items():
    if _name in ("aes", "sha", "curve25519", "curve448") or _name.endswith(
        ("gcm64", "gcm96", "gcm128")
    ):
        continue
    _CANONICAL.setdefault(_spec, _name)

_TYPE_ORDER = (
    TransformType.ENCR,
    TransformType.INTEG,
    TransformType.PRF,
    TransformType.DH,
    TransformType.ESN,
)


def parse_proposal(text: str, protocol: ProtocolId = ProtocolId.IKE) -> ProposalSpec:
    """Parse one strongSwan proposal string for IKE or ESP.

    Raises :class:`ConfigError` naming the unknown keyword or the violated rule.
    """
    if protocol not in (ProtocolId.IKE, ProtocolId.ESP):
        raise ConfigError(f"proposals for {protocol.name} are not supported")
    words = [word.strip().lower() for word in text.split("-")]
    if not text.strip() or any(not word for word in words):
        raise ConfigError(f"empty algorithm keyword in proposal {text!r}")
    transforms: list[TransformSpec] = []
    for word in words:
        spec = KEYWORDS.get(word)
        if spec is None:
            raise ConfigError(f"algorithm {word!r} not recognized in proposal {text!r}")
        if spec not in transforms:
            transforms.append(spec)
    proposal = ProposalSpec(protocol, _ordered(transforms))
    _check(proposal, text)
    return proposal


def parse_proposals(text: str, protocol: ProtocolId = ProtocolId.IKE) -> list[ProposalSpec]:
    """Parse a comma separated list of proposal strings (swanctl ``proposals``)."""
    return [parse_proposal(part, protocol) for part in text.split(",")]


def _ordered(transforms: list[TransformSpec]) -> list[TransformSpec]:
    return [t for kind in _TYPE_ORDER for t in transforms if t.type == kind]


def _check(proposal: ProposalSpec, text: str) -> None:
    if proposal.protocol == ProtocolId.IKE:
        # strongSwan derives the PRF before it drops integrity algorithms
        # from AEAD proposals, so "aes128gcm16-sha256-..." gets prfsha256.
        _imply_prf(proposal)
    encrs = proposal.of_type(TransformType.ENCR)
    if not encrs:
        raise ConfigError(f"an encryption algorithm is mandatory in proposal {text!r}")
    aead = [t.id in AEAD_ENCRS for t in encrs]
    if any(aead) and not all(aead):
        raise ConfigError(f"classic and AEAD ciphers can't be mixed in proposal {text!r}")
    if all(aead):
        _drop(proposal, TransformType.INTEG)
    if proposal.protocol == ProtocolId.IKE:
        _check_ike(proposal, text, all(aead))
    else:
        _check_esp(proposal)


def _imply_prf(proposal: ProposalSpec) -> None:
    if proposal.of_type(TransformType.PRF):
        return
    implied = [TransformSpec(TransformType.PRF, INTEG_TO_PRF[t.id]) for t in _integs(proposal)]
    proposal.transforms = _ordered(proposal.transforms + list(dict.fromkeys(implied)))


def _check_ike(proposal: ProposalSpec, text: str, aead: bool) -> None:
    if _has_esn(proposal):
        raise ConfigError(f"esn/noesn is not allowed in IKE proposal {text!r}")
    if not aead and not proposal.of_type(TransformType.INTEG):
        raise ConfigError(
            f"an integrity algorithm is mandatory in IKE proposal {text!r} with a classic cipher"
        )
    if not proposal.of_type(TransformType.PRF):
        raise ConfigError(f"a PRF (e.g. prfsha256) is mandatory in IKE proposal {text!r}")
    if not proposal.of_type(TransformType.DH):
        raise ConfigError(f"a key exchange method is mandatory in IKE proposal {text!r}")


def _check_esp(proposal: ProposalSpec) -> None:
    _drop(proposal, TransformType.PRF)
    if not _has_esn(proposal):
        proposal.transforms.append(ESN_KEYWORDS["noesn"])


def _integs(proposal: ProposalSpec) -> list[TransformSpec]:
    return proposal.of_type(TransformType.INTEG)


def _has_esn(proposal: ProposalSpec) -> bool:
    return bool(proposal.of_type(TransformType.ESN))


def _drop(proposal: ProposalSpec, transform_type: TransformType) -> None:
    proposal.transforms = [t for t in proposal.transforms if t.type != transform_type]


def format_proposal(proposal: ProposalSpec) -> str:
    """The canonical strongSwan string for a proposal.

    The PRF is left out of an IKE proposal when it is exactly what the
    integrity algorithms imply, and ``noesn`` alone is left out of ESP, so that
    ``format_proposal(parse_proposal(s))`` gives back the usual spelling.
    """
    words = [_keyword(t) for t in _ordered(proposal.transforms) if not _implied(proposal, t)]
    return "-".join(words)


def _keyword(transform: TransformSpec) -> str:
    name = _CANONICAL.get(transform)
    if name is None:
        raise ConfigError(f"no proposal keyword for {transform}")
    return name


def _implied(proposal: ProposalSpec, transform: TransformSpec) -> bool:
    if transform.type == TransformType.ESN:
        return proposal.of_type(TransformType.ESN) == [ESN_KEYWORDS["noesn"]]
    if transform.type != TransformType.PRF or proposal.protocol != ProtocolId.IKE:
        return False
    implied = [INTEG_TO_PRF.get(t.id) for t in _integs(proposal)]
    prfs = [t.id for t in proposal.of_type(TransformType.PRF)]
    return bool(implied) and list(dict.fromkeys(implied)) == prfs


def select_proposal(
    configured: Sequence[ProposalSpec], received: Sequence[ProposalSpec]
) -> tuple[int, ProposalSpec] | None:
    """Pick a proposal as responder (RFC 7296 §2.7), strongSwan semantics.

    Returns the index into ``received`` of the accepted proposal (whose number
    and SPI the answer must carry) and a proposal with one transform per type,
    or None when nothing matches (answer NO_PROPOSAL_CHOSEN).
    """
    for mine in configured:
        for index, theirs in enumerate(received):
            chosen = match_proposal(mine, theirs)
            if chosen is not None:
                return index, chosen
    return None


def match_proposal(mine: ProposalSpec, theirs: ProposalSpec) -> ProposalSpec | None:
    """The selection from one configured and one received proposal, or None."""
    if mine.protocol != theirs.protocol:
        return None
    chosen: list[TransformSpec] = []
    for kind in _types_of(mine, theirs):
        if kind == TransformType.INTEG and _aead_chosen(chosen):
            continue
        ok, pick = _select_algorithm(mine, theirs, kind)
        if not ok:
            return None
        if pick is not None:
            chosen.append(pick)
    return ProposalSpec(mine.protocol, chosen)


def _types_of(mine: ProposalSpec, theirs: ProposalSpec) -> list[TransformType]:
    present = {t.type for t in mine.transforms} | {t.type for t in theirs.transforms}
    return [kind for kind in _TYPE_ORDER if kind in present]


def _aead_chosen(chosen: list[TransformSpec]) -> bool:
    return any(t.type == TransformType.ENCR and t.id in AEAD_ENCRS for t in chosen)


def _select_algorithm(
    mine: ProposalSpec, theirs: ProposalSpec, kind: TransformType
) -> tuple[bool, TransformSpec | None]:
    """(matched, transform to include); a NONE pick matches but adds nothing."""
    ours, offered = mine.of_type(kind), theirs.of_type(kind)
    if not ours or not offered:
        return _select_absent(mine.protocol, kind, ours or offered)
    for transform in ours:
        if transform in offered:
            if transform.id == 0 and kind != TransformType.ESN:
                return True, None
            return True, transform
    return False, None


def _select_absent(
    protocol: ProtocolId, kind: TransformType, present: list[TransformSpec]
) -> tuple[bool, TransformSpec | None]:
    if not present:
        return True, None
    # In a CHILD SA the key exchange is optional: one side may omit it when
    # the other proposes NONE among its groups (RFC 7296 §3.3.2).
    optional = kind == TransformType.DH and protocol != ProtocolId.IKE
    return optional and any(t.id == DhGroup.NONE for t in present), None
