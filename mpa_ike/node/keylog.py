"""Wireshark's key tables, written while a daemon runs (``keylog: DIRECTORY``).

Two UAT files in the directory, as Wireshark reads them from its configuration
directory (or a profile's): ``ikev2_decryption_table`` (SPIi, SPIr, SK_ei, SK_er, the
encryption algorithm as Wireshark names it, SK_ai, SK_ar, the integrity algorithm),
one line per IKE SA once it is established and per IKE SA a rekey makes; and
``esp_sa`` (protocol, source, destination, SPI, encryption algorithm, key,
authentication algorithm, key), two lines per CHILD SA when it is installed (a rekey's
new one too) and two more with the new addresses after each MOBIKE move. The files are
created empty (mode 0600) when the daemon starts and only ever appended to: the lines
of deleted SAs stay, so that a capture taken earlier in the run still decrypts, and the
files grow with every SA for as long as the key log is on. Point Wireshark at them with
``WIRESHARK_CONFIG_DIR=DIRECTORY`` or copy them into a profile.

An IKE SA whose IKE_AUTH fails has no line: its keys are read when it is established.
An algorithm Wireshark has no name for gets no line (counted in :attr:`KeyLog.skipped`).
The files are opened at start, so that the daemon may drop root afterwards.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.crypto.keys import IkeKeyExport
from mpa_ike.datagram import Address
from mpa_ike.datapath import ChildSaParams
from mpa_ike.events import (
    ChildSaAddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)

log = logging.getLogger(__name__)

IKE_TABLE = "ikev2_decryption_table"
ESP_TABLE = "esp_sa"
KeysOf = Callable[[bytes], IkeKeyExport | None]

# Wireshark's names (epan/dissectors/packet-isakmp.c and packet-esp.c, as its UAT
# files spell them).
_GCM_ICV = {EncrId.AES_GCM_8: 8, EncrId.AES_GCM_12: 12, EncrId.AES_GCM_16: 16}
_CCM_ICV = {EncrId.AES_CCM_8: 8, EncrId.AES_CCM_12: 12, EncrId.AES_CCM_16: 16}
IKE_INTEG = {
    IntegId.HMAC_MD5_96: "HMAC_MD5_96 [RFC2403]",
    IntegId.HMAC_SHA1_96: "HMAC_SHA1_96 [RFC2404]",
    IntegId.HMAC_SHA2_256_128: "HMAC_SHA2_256_128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC_SHA2_384_192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC_SHA2_512_256 [RFC4868]",
}
ESP_INTEG = {
    IntegId.HMAC_MD5_96: "HMAC-MD5-96 [RFC2403]",
    IntegId.HMAC_SHA1_96: "HMAC-SHA-1-96 [RFC2404]",
    IntegId.HMAC_SHA2_256_128: "HMAC-SHA-256-128 [RFC4868]",
    IntegId.HMAC_SHA2_384_192: "HMAC-SHA-384-192 [RFC4868]",
    IntegId.HMAC_SHA2_512_256: "HMAC-SHA-512-256 [RFC4868]",
}
ESP_ENCR = {
    EncrId.NULL: "NULL",
    EncrId.TRIPLE_DES: "TripleDES-CBC [RFC2451]",
    EncrId.AES_CBC: "AES-CBC [RFC3602]",
    EncrId.AES_CTR: "AES-CTR [RFC3686]",
    **{encr: f"AES-GCM with {icv} octet ICV [RFC4106]" for encr, icv in _GCM_ICV.items()},
}
NO_INTEG_IKE, NO_INTEG_ESP = "NONE [RFC4306]", "NULL"


def ike_encryption_name(encr_id: int, key_bits: int | None) -> str | None:
    """Wireshark's name of an IKE encryption transform (with its key length)."""
    encr = EncrId(encr_id)
    if encr == EncrId.AES_CBC:
        return f"AES-CBC-{key_bits} [RFC3602]"
    if encr == EncrId.AES_CTR:
        return f"AES-CTR-{key_bits} [RFC5930]"
    if encr in _GCM_ICV:
        return f"AES-GCM-{key_bits} with {_GCM_ICV[encr]} octet ICV [RFC5282]"
    if encr in _CCM_ICV:
        return f"AES-CCM-{key_bits} with {_CCM_ICV[encr]} octet ICV [RFC5282]"
    return {EncrId.TRIPLE_DES: "3DES [RFC2451]", EncrId.NULL: "NULL [RFC2410]"}.get(encr)


def ike_line(keys: IkeKeyExport) -> str | None:
    """One ``ikev2_decryption_table`` record: hex fields bare, names quoted."""
    encr = ike_encryption_name(keys.encr_id, keys.encr_key_bits)
    integ = NO_INTEG_IKE if keys.integ_id is None else IKE_INTEG.get(IntegId(keys.integ_id))
    if encr is None or integ is None:
        return None
    fields = [keys.spi_i.hex(), keys.spi_r.hex(), keys.sk_ei.hex(), keys.sk_er.hex()]
    fields += [f'"{encr}"', keys.sk_ai.hex(), keys.sk_ar.hex(), f'"{integ}"']
    return ",".join(fields) + "\n"


def esp_lines(params: ChildSaParams, local: Address, remote: Address) -> str | None:
    """Two ``esp_sa`` records, one per direction of the CHILD SA between ``local`` and
    ``remote``: every field quoted, SPIs and keys as 0x hex (AES-GCM's key with its
    salt)."""
    encr = ESP_ENCR.get(EncrId(params.encr_id))
    integ = NO_INTEG_ESP if params.integ_id is None else ESP_INTEG.get(IntegId(params.integ_id))
    if encr is None or integ is None:
        return None
    family = "IPv6" if ipaddress.ip_address(local[0]).version == 6 else "IPv4"
    directions = (
        (remote[0], local[0], params.spi_in, params.encr_key_in, params.integ_key_in),
        (local[0], remote[0], params.spi_out, params.encr_key_out, params.integ_key_out),
    )
    lines = []
    for src, dst, spi, encr_key, integ_key in directions:
        fields = [family, src, dst, f"0x{spi.hex()}", encr, f"0x{encr_key.hex()}", integ]
        fields.append(f"0x{integ_key.hex()}" if integ_key else "")
        lines.append(",".join(f'"{field}"' for field in fields) + "\n")
    return "".join(lines)


class KeyLog:
    """The key tables of one daemon in ``directory``, fed with the core's events.

    ``keys_of`` gives the keys of an IKE SA by its local SPI (the service asks its
    endpoint's SA, which owns them). A file that cannot be written is logged once and
    counted in :attr:`errors`; the daemon goes on.
    """

    def __init__(self, directory: Path, keys_of: KeysOf) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self.keys_of = keys_of
        self.skipped = 0
        self.errors = 0
        self._fds: dict[str, int] = {}
        self._children: dict[bytes, tuple[bytes, ChildSaParams]] = {}  # spi_in -> IKE SA
        try:
            for name in (IKE_TABLE, ESP_TABLE):
                self._fds[name] = self._create(directory / name)
        except OSError:
            self.close()
            raise

    @staticmethod
    def _create(file: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW
        fd = os.open(file, flags | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        return fd

    def on_event(self, event: Event) -> None:
        if isinstance(event, IkeSaEstablished):
            self._ike(event.ike_sa)
        elif isinstance(event, IkeSaRekeyed):
            self._ike(event.new_ike_sa)
            for spi_in, (ike_sa, params) in list(self._children.items()):
                if ike_sa == event.ike_sa:
                    self._children[spi_in] = (event.new_ike_sa, params)
        elif isinstance(event, ChildSaEstablished):
            params = event.params
            self._children[params.spi_in] = (event.ike_sa, params)
            self._esp(params, params.local, params.remote)
        elif isinstance(event, ChildSaAddressesUpdated):
            known = self._children.get(event.spi_in)
            if known is not None:
                self._esp(known[1], event.local, event.remote)
        elif isinstance(event, ChildSaDeleted):
            self._children.pop(event.spi_in, None)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            for spi_in in [s for s, (sa, _) in self._children.items() if sa == event.ike_sa]:
                del self._children[spi_in]

    def _ike(self, ike_sa: bytes) -> None:
        keys = self.keys_of(ike_sa)
        line = ike_line(keys) if keys is not None else None
        if line is None:
            self.skipped += 1
            return
        self._write(IKE_TABLE, line)

    def _esp(self, params: ChildSaParams, local: Address, remote: Address) -> None:
        lines = esp_lines(params, local, remote)
        if lines is None:
            self.skipped += 1
            return
        self._write(ESP_TABLE, lines)

    def _write(self, name: str, text: str) -> None:
        fd = self._fds.get(name)
        if fd is None:
            return
        try:
            os.write(fd, text.encode())
        except OSError as error:
            self.errors += 1
            if self.errors == 1:
                log.warning("keylog: %s: %s", self.directory / name, error.strerror)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._children.clear()
