"""IKE identities (RFC 7296 §3.5) from strongSwan-style strings, and back.

``parse_identity`` follows strongSwan's ``identification_create_from_string``:
an IP address is ID_IPV4_ADDR/ID_IPV6_ADDR, a string with ``=`` a
distinguished name (ID_DER_ASN1_DN), ``user@host`` an RFC822 address, ``@fqdn``
and anything else an FQDN.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from mpa_ike.constants import IdType
from mpa_ike.errors import ConfigError
from mpa_ike.records import quick_init
from mpa_ike.wire import IdiPayload, IdPayload, IdrPayload


@quick_init
@dataclass(frozen=True, slots=True)
class Identity:
    id_type: IdType
    data: bytes

    def idi(self) -> IdiPayload:
        return IdiPayload(self.id_type, self.data)

    def idr(self) -> IdrPayload:
        return IdrPayload(self.id_type, self.data)

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("utf-8", "replace")
        return self.data.hex()


# A handshake reads its configured identities on every exchange that names them; the
# failed address parse of a name is the dear part. Identity is immutable, so shared.
@functools.lru_cache(maxsize=256)
def parse_identity(text: str) -> Identity:
    """An identity from its configuration string (see the module docstring)."""
    if not text:
        raise ConfigError("empty identity")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        id_type = IdType.IPV4_ADDR if address.version == 4 else IdType.IPV6_ADDR
        return Identity(id_type, address.packed)
    if "=" in text:
        return Identity(IdType.DER_ASN1_DN, parse_dn(text).public_bytes())
    if text.startswith("@"):
        return Identity(IdType.FQDN, text[1:].encode())
    if "@" in text:
        return Identity(IdType.RFC822_ADDR, text.encode())
    return Identity(IdType.FQDN, text.encode())


_DN_KEYS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "SN": NameOID.SERIAL_NUMBER,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
}


def parse_dn(text: str) -> x509.Name:
    """A DN written as strongSwan does: RDNs in ASN.1 order, ``C=XX, O=Org, CN=host``.

    (RFC 4514 strings list the RDNs the other way round; certificate matching
    accepts either order, see :func:`mpa_ike.certificates.certificate_names`.)
    """
    attributes = []
    for part in text.replace("/", ",").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        oid = _DN_KEYS.get(key.strip().upper())
        if not sep or oid is None or not value.strip():
            raise ConfigError(f"identity {text!r}: cannot read {part.strip()!r} as KEY=value")
        try:
            attributes.append(x509.NameAttribute(oid, value.strip()))
        except ValueError as exc:
            raise ConfigError(f"identity {text!r}: {exc}") from exc
    return x509.Name(attributes)


def identity_of(payload: IdPayload) -> Identity:
    return Identity(payload.id_type, payload.data)
