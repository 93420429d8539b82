"""CHILD SA parameters for the XFRM tests, one per transform and address family."""

from __future__ import annotations

import struct
from dataclasses import replace

from mpa_ike.constants import EncrId, IntegId
from mpa_ike.datapath import ChildSaParams, TsRange
from mpa_ike.io import xfrm
from mpa_ike.io.xfrm_messages import PolicyMessage, SaMessage

# Distinct key bytes per direction and role, so a swapped key shows in a test.
ENCR_IN_CBC = bytes(range(0x00, 0x10))
INTEG_IN_256 = bytes(range(0x10, 0x30))
ENCR_OUT_CBC = bytes(range(0x40, 0x50))
INTEG_OUT_256 = bytes(range(0x50, 0x70))
GCM_IN = bytes(range(0x80, 0x94))  # AES-128 key and 4-byte salt
GCM_OUT = bytes(range(0xA0, 0xB4))
CHACHA_IN = bytes(range(0x00, 0x24))  # 256-bit key and 4-byte salt
CHACHA_OUT = bytes(range(0x30, 0x54))

SPI_IN = bytes.fromhex("c1a55e01")
SPI_OUT = bytes.fromhex("0ddba112")


def params_cbc_sha256_v4(encap: bool = False) -> ChildSaParams:
    return ChildSaParams(
        spi_in=SPI_IN,
        spi_out=SPI_OUT,
        encr_id=EncrId.AES_CBC,
        encr_key_bits=128,
        integ_id=IntegId.HMAC_SHA2_256_128,
        encr_key_in=ENCR_IN_CBC,
        integ_key_in=INTEG_IN_256,
        encr_key_out=ENCR_OUT_CBC,
        integ_key_out=INTEG_OUT_256,
        esn=False,
        local=("192.0.2.10", 4500 if encap else 500),
        remote=("198.51.100.1", 4500 if encap else 500),
        encap=encap,
        local_ts=(TsRange("10.9.0.7", "10.9.0.7"),),
        remote_ts=(TsRange("10.20.0.0", "10.20.255.255"),),
    )


def params_gcm_v6(encap: bool = True) -> ChildSaParams:
    return replace(
        params_cbc_sha256_v4(encap),
        encr_id=EncrId.AES_GCM_16,
        integ_id=None,
        encr_key_in=GCM_IN,
        integ_key_in=b"",
        encr_key_out=GCM_OUT,
        integ_key_out=b"",
        local=("2001:db8:1::10", 4500 if encap else 500),
        remote=("2001:db8:2::1", 4500 if encap else 500),
        local_ts=(TsRange("2001:db8:9::7", "2001:db8:9::7"),),
        remote_ts=(TsRange("2001:db8:20::", "2001:db8:20:ffff:ffff:ffff:ffff:ffff"),),
    )


def params_chacha_v4() -> ChildSaParams:
    return replace(
        params_cbc_sha256_v4(True),
        encr_id=EncrId.CHACHA20_POLY1305,
        encr_key_bits=None,
        integ_id=None,
        encr_key_in=CHACHA_IN,
        integ_key_in=b"",
        encr_key_out=CHACHA_OUT,
        integ_key_out=b"",
    )


def roundtrip(msg: xfrm.XfrmMessage) -> xfrm.XfrmMessage:
    """Serialize a built message and parse the bytes back; the parse pushes the same bytes."""
    data = msg.push(seq=1)
    assert len(data) == struct.unpack_from("=I", data)[0]
    back = xfrm.XfrmMessage.pull(data)
    assert back.push(seq=1) == data
    return back


def sa(msg: xfrm.XfrmMessage) -> SaMessage:
    assert isinstance(msg.body, SaMessage), msg
    return msg.body


def policy(msg: xfrm.XfrmMessage) -> PolicyMessage:
    assert isinstance(msg.body, PolicyMessage), msg
    return msg.body
