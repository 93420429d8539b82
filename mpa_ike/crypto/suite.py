"""Negotiated algorithm suites: a selected proposal turned into implementations.

An :class:`IkeSuite` knows the sizes RFC 7296 §2.14 needs and derives the
IKE SA keys; a :class:`ChildSuite` derives CHILD SA KEYMAT (§2.17).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpa_ike.constants import DhGroup, EsnId, ProtocolId, TransformType
from mpa_ike.crypto.cipher import Encr, get_encr
from mpa_ike.crypto.integ import Integ, get_integ
from mpa_ike.crypto.keys import (
    ChildKeys,
    IkeKeys,
    derive_child_keys,
    derive_ike_keys,
    rekey_skeyseed,
    skeyseed,
)
from mpa_ike.crypto.prf import Prf, get_prf
from mpa_ike.crypto.proposal import ProposalSpec, TransformSpec
from mpa_ike.errors import LocalProtocolError
from mpa_ike.records import quick_init


def _only(proposal: ProposalSpec, kind: TransformType) -> TransformSpec | None:
    transforms = proposal.of_type(kind)
    if len(transforms) > 1:
        raise LocalProtocolError(f"selected proposal has {len(transforms)} {kind.name} transforms")
    return transforms[0] if transforms else None


def _cipher(proposal: ProposalSpec) -> tuple[Encr, int | None, Integ | None]:
    encr_spec = _only(proposal, TransformType.ENCR)
    if encr_spec is None:
        raise LocalProtocolError("selected proposal has no ENCR transform")
    encr = get_encr(encr_spec.id)
    encr.cipher_key_bits(encr_spec.key_length)
    integ_spec = _only(proposal, TransformType.INTEG)
    integ = None if integ_spec is None or integ_spec.id == 0 else get_integ(integ_spec.id)
    if encr.is_aead == (integ is not None):
        raise LocalProtocolError("a classic cipher needs an integrity algorithm, AEAD none")
    return encr, encr_spec.key_length, integ


@quick_init
@dataclass(frozen=True, slots=True)
class IkeSuite:
    encr: Encr
    encr_key_bits: int | None
    integ: Integ | None
    prf: Prf
    dh_group: DhGroup

    @classmethod
    def from_proposal(cls, proposal: ProposalSpec) -> IkeSuite:
        """The suite of a selected IKE proposal (one transform per type)."""
        if proposal.protocol != ProtocolId.IKE:
            raise LocalProtocolError(f"not an IKE proposal: {proposal.protocol.name}")
        encr, key_bits, integ = _cipher(proposal)
        prf_spec = _only(proposal, TransformType.PRF)
        dh_spec = _only(proposal, TransformType.DH)
        if prf_spec is None or dh_spec is None:
            raise LocalProtocolError("selected IKE proposal lacks a PRF or DH transform")
        return cls(encr, key_bits, integ, get_prf(prf_spec.id), DhGroup.of(dh_spec.id))

    @property
    def encr_key_size(self) -> int:
        return self.encr.key_size(self.encr_key_bits)

    @property
    def integ_key_size(self) -> int:
        return self.integ.key_size if self.integ else 0

    def derive_keys(
        self, nonce_i: bytes, nonce_r: bytes, spi_i: bytes, spi_r: bytes, shared_secret: bytes
    ) -> IkeKeys:
        """Keys of a new IKE SA from IKE_SA_INIT (RFC 7296 §2.14)."""
        seed_key = skeyseed(self.prf, nonce_i, nonce_r, shared_secret)
        return self._expand(seed_key, nonce_i, nonce_r, spi_i, spi_r)

    def derive_rekeyed_keys(
        self,
        old_prf: Prf,
        old_sk_d: bytes,
        nonce_i: bytes,
        nonce_r: bytes,
        spi_i: bytes,
        spi_r: bytes,
        shared_secret: bytes,
    ) -> IkeKeys:
        """Keys of an IKE SA created by CREATE_CHILD_SA rekeying (RFC 7296 §2.18)."""
        seed_key = rekey_skeyseed(old_prf, old_sk_d, shared_secret, nonce_i, nonce_r)
        return self._expand(seed_key, nonce_i, nonce_r, spi_i, spi_r)

    def _expand(
        self, seed_key: bytes, nonce_i: bytes, nonce_r: bytes, spi_i: bytes, spi_r: bytes
    ) -> IkeKeys:
        return derive_ike_keys(
            self.prf,
            seed_key,
            nonce_i,
            nonce_r,
            spi_i,
            spi_r,
            self.encr_key_size,
            self.integ_key_size,
        )


@quick_init
@dataclass(frozen=True, slots=True)
class ChildSuite:
    encr: Encr
    encr_key_bits: int | None
    integ: Integ | None
    esn: bool
    dh_group: DhGroup | None

    @classmethod
    def from_proposal(cls, proposal: ProposalSpec) -> ChildSuite:
        """The suite of a selected ESP proposal (one transform per type)."""
        if proposal.protocol != ProtocolId.ESP:
            raise LocalProtocolError(f"not an ESP proposal: {proposal.protocol.name}")
        encr, key_bits, integ = _cipher(proposal)
        esn_spec = _only(proposal, TransformType.ESN)
        dh_spec = _only(proposal, TransformType.DH)
        dh = None if dh_spec is None or dh_spec.id == 0 else DhGroup.of(dh_spec.id)
        esn = esn_spec is not None and esn_spec.id == EsnId.ESN
        return cls(encr, key_bits, integ, esn, dh)

    @property
    def encr_key_size(self) -> int:
        return self.encr.key_size(self.encr_key_bits)

    @property
    def integ_key_size(self) -> int:
        return self.integ.key_size if self.integ else 0

    def derive_keys(
        self,
        prf: Prf,
        sk_d: bytes,
        nonce_i: bytes,
        nonce_r: bytes,
        shared_secret: bytes | None = None,
    ) -> ChildKeys:
        """KEYMAT for this suite (RFC 7296 §2.17) from the IKE SA's PRF and SK_d."""
        return derive_child_keys(
            prf,
            sk_d,
            nonce_i,
            nonce_r,
            self.encr_key_size,
            self.integ_key_size,
            shared_secret,
        )
