"""Protection of the Encrypted (SK, 46) and Encrypted Fragment (SKF, 53) payloads.

The protected body that follows the payload header is
``IV | ciphertext | ICV`` where the plaintext is
``inner payloads | padding | pad length`` (RFC 7296 §3.14).

- Classic ciphers (AES-CBC + HMAC): the ICV is the truncated MAC over the
  whole message from the IKE header through the ciphertext, i.e.
  ``associated | IV | ciphertext`` (RFC 7296 §3.14, §2.21).
- Combined-mode ciphers (RFC 5282 §5, RFC 7634 §3): the associated data is
  the message from the IKE header through the SK/SKF payload header; the
  nonce is ``salt | IV``, the salt being the last four bytes of SK_e.

For SKF the associated data includes the fragment number and total (RFC 7383
§2.5.3). :meth:`SkCipher.open` lets nothing but :class:`IntegrityError`
escape: RFC 7296 §2.21.1 has such messages dropped without an answer.

AES-CBC builds its cipher once for the life of the keys, with a fixed all-zero IV, and
takes a fresh context of it per message, rather than a cipher per message (each with an
IV of its own): in CBC any ciphertext block is the IV of the block after it. Sealing
feeds a random block ahead of the plaintext and sends the block it encrypts to as the
IV, ``IV = E_K(R)``, unpredictable as R is (NIST SP 800-38A Appendix C's encrypted
nonce; RFC 7296 §3.14 wants an unpredictable IV). Opening feeds ``IV | ciphertext``
and drops the first block decrypted. A context lives for one message only: one per SA
direction kept would cost about 0.9 KiB per IKE SA held. Likewise an AEAD (AES-GCM,
ChaCha20-Poly1305) object is made per message from the key (about 1 us): one kept holds
about 2.4 KiB of OpenSSL context, two per IKE SA held.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mpa_ike.constants import EncrId
from mpa_ike.crypto.cipher import Encr, get_encr
from mpa_ike.crypto.integ import Integ, get_integ
from mpa_ike.crypto.keys import IkeKeys
from mpa_ike.crypto.randomness import Random
from mpa_ike.crypto.suite import IkeSuite
from mpa_ike.errors import IntegrityError, LocalProtocolError
from mpa_ike.records import quick_init

_ZERO_IV = modes.CBC(bytes(16))  # AES-CBC's, the IV sent being encrypted ahead


class SkCipher:
    """One direction of SK payload protection (initiator->responder or back)."""

    # Two per IKE SA held: slots rather than a dictionary each.
    __slots__ = (
        "_aead",
        "_aead_key",
        "_aes",
        "_cbc",
        "_integ_key",
        "_overhead",
        "_random",
        "_salt",
        "encr",
        "integ",
    )

    def __init__(
        self,
        encr_id: int,
        key_bits: int | None,
        integ_id: int | None,
        encr_key: bytes,
        integ_key: bytes = b"",
        random: Random = os.urandom,
    ) -> None:
        self.encr: Encr = get_encr(encr_id)
        self.integ: Integ | None = None if not integ_id else get_integ(integ_id)
        self._random = random
        self._check_keys(key_bits, encr_key, integ_key)
        self._integ_key = integ_key
        self._overhead = self.encr.iv_size + (self.integ or self.encr).icv_size
        if self.encr.is_aead:
            key, self._salt = encr_key[: -self.encr.salt_size], encr_key[-self.encr.salt_size :]
            self._aead_key = key
            self._aead: type[AESGCM | ChaCha20Poly1305] = (
                ChaCha20Poly1305 if self.encr.id == EncrId.CHACHA20_POLY1305 else AESGCM
            )
        else:
            self._aes = algorithms.AES(encr_key)
            self._cbc = Cipher(self._aes, _ZERO_IV)  # see the module's docstring

    def _check_keys(self, key_bits: int | None, encr_key: bytes, integ_key: bytes) -> None:
        if self.encr.is_aead == (self.integ is not None):
            raise LocalProtocolError("a classic cipher needs an integrity algorithm, AEAD none")
        if len(encr_key) != self.encr.key_size(key_bits):
            raise LocalProtocolError(f"{self.encr.id.name} key of {len(encr_key)} bytes")
        if len(integ_key) != (self.integ.key_size if self.integ else 0):
            raise LocalProtocolError(f"integrity key of {len(integ_key)} bytes")

    @property
    def icv_size(self) -> int:
        return (self.integ or self.encr).icv_size

    def sealed_length(self, plaintext_len: int) -> int:
        """Length of IV | ciphertext (padded, with pad length) | ICV."""
        return self._overhead + self._padded_length(plaintext_len)

    def max_plaintext_length(self, sealed_len: int) -> int:
        """The longest plaintext whose sealed form fits in ``sealed_len`` bytes."""
        room = sealed_len - self._overhead
        block = self.encr.block_size
        return room - room % block - 1

    def _padded_length(self, plaintext_len: int) -> int:
        block = self.encr.block_size
        return (plaintext_len + 1 + block - 1) // block * block

    def seal(self, associated: bytes, plaintext: bytes, iv: bytes | None = None) -> bytes:
        """IV | ciphertext | ICV for ``plaintext`` behind the ``associated`` bytes.

        ``associated`` is the message before the IV with its final lengths. The
        padding is zeros, as short as the block allows (RFC 7296 §3.14).
        ``iv`` (for known answers) is used as given; without it, an AEAD cipher's IV is
        drawn from the random source, a CBC one encrypted from a random block.
        """
        iv_size = self.encr.iv_size
        if iv is not None and len(iv) != iv_size:
            raise LocalProtocolError(f"IV of {len(iv)} bytes, expected {iv_size}")
        pad = self._padded_length(len(plaintext)) - len(plaintext) - 1
        padded = plaintext + bytes(pad) + bytes((pad,))
        if self.encr.is_aead:
            if iv is None:
                iv = self._random(iv_size)
            return iv + self._aead(self._aead_key).encrypt(self._salt + iv, padded, associated)
        if iv is None:
            signed = self._cbc.encryptor().update(self._random(iv_size) + padded)
        else:
            encryptor = Cipher(self._aes, modes.CBC(iv)).encryptor()
            signed = iv + encryptor.update(padded) + encryptor.finalize()
        return signed + self._icv(associated + signed)

    def _icv(self, data: bytes) -> bytes:
        assert self.integ is not None
        return self.integ(self._integ_key, data)

    def open(self, associated: bytes, body: bytes) -> bytes:
        """The inner payload bytes of a protected body, padding removed.

        Raises :class:`IntegrityError` for a short or misaligned body, a wrong
        ICV or tag, or a pad length longer than the plaintext.
        """
        opener = self._open_aead if self.encr.is_aead else self._open_cbc
        try:
            padded = opener(associated, body)
        except IntegrityError:
            raise
        except (InvalidTag, ValueError) as exc:
            raise IntegrityError(f"SK payload does not decrypt: {type(exc).__name__}") from None
        pad = padded[-1]
        if pad + 1 > len(padded):
            raise IntegrityError("SK payload pad length exceeds the plaintext")
        return padded[: len(padded) - pad - 1]

    def _open_aead(self, associated: bytes, body: bytes) -> bytes:
        iv_size = self.encr.iv_size
        if len(body) < iv_size + 1 + self.encr.icv_size:
            raise IntegrityError(f"SK payload body of {len(body)} bytes is too short")
        iv = body[:iv_size]
        return self._aead(self._aead_key).decrypt(self._salt + iv, body[iv_size:], associated)

    def _open_cbc(self, associated: bytes, body: bytes) -> bytes:
        iv_size, icv_size, block = self.encr.iv_size, self.icv_size, self.encr.block_size
        cipher_len = len(body) - iv_size - icv_size
        if cipher_len < block or cipher_len % block:
            raise IntegrityError(f"SK payload body of {len(body)} bytes is misaligned")
        signed, icv = body[: len(body) - icv_size], body[len(body) - icv_size :]
        if not hmac.compare_digest(self._icv(associated + signed), icv):
            raise IntegrityError("SK payload ICV mismatch")
        # The first block decrypted is the IV's, against the zero IV: dropped.
        return self._cbc.decryptor().update(signed)[iv_size:]


@quick_init
@dataclass(frozen=True, slots=True)
class SkCipherPair:
    """Both directions of an IKE SA's SK protection."""

    initiator_to_responder: SkCipher
    responder_to_initiator: SkCipher

    def outbound(self, initiator: bool) -> SkCipher:
        """The cipher this side seals with (its original role in the IKE SA)."""
        return self.initiator_to_responder if initiator else self.responder_to_initiator

    def inbound(self, initiator: bool) -> SkCipher:
        """The cipher this side opens with."""
        return self.outbound(not initiator)


def sk_cipher_pair(suite: IkeSuite, keys: IkeKeys, random: Random = os.urandom) -> SkCipherPair:
    """SK ciphers from the IKE SA keys: SK_ei/SK_ai one way, SK_er/SK_ar back (§2.14)."""
    integ_id = suite.integ.id if suite.integ else None

    def build(encr_key: bytes, integ_key: bytes) -> SkCipher:
        return SkCipher(suite.encr.id, suite.encr_key_bits, integ_id, encr_key, integ_key, random)

    return SkCipherPair(build(keys.sk_ei, keys.sk_ai), build(keys.sk_er, keys.sk_ar))
