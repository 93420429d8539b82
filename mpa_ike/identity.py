"""IKE identities (RFC 7296 §3.5) from strongSwan-style strings, and back.

``parse_identity`` follows strongSwan's ``identification_create_from_string``:
an IP address is ID_IPV4_ADDR/ID_IPV6_ADDR, a string with ``=`` a
distinguished name (ID_DER_ASN1_DN), ``user@host`` an RFC822 address, ``@fqdn``
and anything else an FQDN.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509

from mpa_ike.constants import IdType
from mpa_ike.errors import ConfigError
from mpa_ike.wire import IdiPayload, IdPayload, IdrPayload


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
        try:
            name = x509.Name.from_rfc4514_string(text)
        except ValueError as exc:
            raise ConfigError(f"identity {text!r} is not a distinguished name") from exc
        return Identity(IdType.DER_ASN1_DN, name.public_bytes())
    if text.startswith("@"):
        return Identity(IdType.FQDN, text[1:].encode())
    if "@" in text:
        return Identity(IdType.RFC822_ADDR, text.encode())
    return Identity(IdType.FQDN, text.encode())


def identity_of(payload: IdPayload) -> Identity:
    return Identity(payload.id_type, payload.data)
