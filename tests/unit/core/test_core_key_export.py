"""The key tables for Wireshark (:mod:`mpa_ike.node.keylog`) fed by a real back-to-back
exchange: the IKE SA's keys as the IKE SA exports them (both sides agree), a line per
IKE SA, established and rekeyed, two per CHILD SA, rekeyed or moved by MOBIKE, every
line in the field order and with the algorithm names Wireshark's UAT files take, files
of mode 0600 in a directory of mode 0700."""

from __future__ import annotations

import stat
from pathlib import Path

from core_harness import GATEWAY, MOBILE, Link, initiator_config, responder_config, seeded

from gateway.pool import AddressPool
from mpa_ike.constants import EncrId, IntegId
from mpa_ike.endpoint import Endpoint
from mpa_ike.events import ChildSaAddressesUpdated, ChildSaEstablished, Event, IkeSaEstablished
from mpa_ike.ike_sa import IkeSa
from mpa_ike.node.keylog import ESP_TABLE, IKE_TABLE, KeyLog, ike_encryption_name

PSK = b"a pre-shared key for the gateway"
GCM = "aes256gcm16-prfsha384-x25519"


def fields(line: str) -> list[str]:
    return [field.strip('"') for field in line.split(",")]


def keylog_of(endpoint: Endpoint, directory: Path) -> KeyLog:
    def keys_of(spi: bytes):  # type: ignore[no-untyped-def]
        sa = endpoint.sas.get(spi)
        return sa.exported_keys() if sa is not None else None

    return KeyLog(directory, keys_of)


def feed(keylog: KeyLog, events: list[Event]) -> None:
    for event in events:
        keylog.on_event(event)
    events.clear()


def only(endpoint: Endpoint) -> IkeSa:
    (sa,) = [sa for sa in endpoint if not sa.closed]
    return sa


def test_lines_follow_the_sas_through_rekeys_and_a_move(
    pool: AddressPool[object], tmp_path: Path
) -> None:
    directory = tmp_path / "keys"
    (tmp_path / "keys").mkdir(mode=0o755)
    (directory / ESP_TABLE).write_text("left from an earlier run\n")
    (directory / ESP_TABLE).chmod(0o644)
    gateway = Endpoint(random=seeded(2), responder=responder_config(pool, psk=PSK, ike_text=GCM))
    link = Link(Endpoint(random=seeded(1)), gateway)
    keylog = keylog_of(gateway, directory)
    link.mobile.initiate(initiator_config(psk=PSK, ike_text=GCM), MOBILE, GATEWAY, 0.0)
    link.run(until=10.0)
    feed(keylog, link.gateway_events)
    mobile_sa, gateway_sa = only(link.mobile), only(link.gateway)

    # Both sides export the same IKE keys, and the line carries them in table order.
    ours, theirs = gateway_sa.exported_keys(), mobile_sa.exported_keys()
    assert ours is not None and ours == theirs
    assert ours.encr_id == EncrId.AES_GCM_16 and ours.integ_id is None
    [ike] = (directory / IKE_TABLE).read_text().splitlines()
    assert ike.split(",") == [
        ours.spi_i.hex(),
        ours.spi_r.hex(),
        ours.sk_ei.hex(),
        ours.sk_er.hex(),
        '"AES-GCM-256 with 16 octet ICV [RFC5282]"',
        "",
        "",
        '"NONE [RFC4306]"',
    ]
    assert len(ours.sk_ei) == 36  # AES-256 key and its 4-byte salt

    # The CHILD SA: one line each way, keys as the gateway's datapath gets them.
    [child] = gateway_sa.children.values()
    assert child.params is not None
    p = child.params
    inbound, outbound = (fields(line) for line in (directory / ESP_TABLE).read_text().splitlines())
    assert inbound == [
        "IPv4",
        MOBILE[0],
        GATEWAY[0],
        f"0x{p.spi_in.hex()}",
        "AES-GCM with 16 octet ICV [RFC4106]",
        f"0x{p.encr_key_in.hex()}",
        "NULL",
        "",
    ]
    assert outbound[1:4] == [GATEWAY[0], MOBILE[0], f"0x{p.spi_out.hex()}"]
    assert outbound[5] == f"0x{p.encr_key_out.hex()}"

    # A CHILD SA rekey adds its new SA; the old lines stay.
    link.mobile.rekey_child_sa(mobile_sa.local_spi, child.spi_out, link.now)
    link.run(until=link.now + 10)
    new = [e for e in link.gateway_events if isinstance(e, ChildSaEstablished)]
    assert len(new) == 1
    feed(keylog, link.gateway_events)
    esp = (directory / ESP_TABLE).read_text().splitlines()
    assert len(esp) == 4
    assert fields(esp[2])[3] == f"0x{new[0].params.spi_in.hex()}"

    # A MOBIKE move: the same SA between the new addresses.
    lease = gateway_sa.assigned_addresses[0]
    link.mobile.update_addresses(mobile_sa.local_spi, (str(lease), 4500), link.now)
    link.run(until=link.now + 10)
    assert any(isinstance(e, ChildSaAddressesUpdated) for e in link.gateway_events)
    feed(keylog, link.gateway_events)
    esp = (directory / ESP_TABLE).read_text().splitlines()
    assert len(esp) == 6
    assert fields(esp[4])[1:4] == [str(lease), GATEWAY[0], f"0x{new[0].params.spi_in.hex()}"]

    # An IKE SA rekey: a line for the new IKE SA, under its own SPIs.
    link.gateway.rekey_ike_sa(gateway_sa.local_spi, link.now)
    link.run(until=link.now + 10)
    feed(keylog, link.gateway_events)
    rekeyed = only(link.gateway).exported_keys()
    assert rekeyed is not None and rekeyed.spi_i != ours.spi_i
    ike_lines = (directory / IKE_TABLE).read_text().splitlines()
    assert [line.split(",")[:2] for line in ike_lines] == [
        [ours.spi_i.hex(), ours.spi_r.hex()],
        [rekeyed.spi_i.hex(), rekeyed.spi_r.hex()],
    ]
    keylog.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755  # an existing directory stays
    for name in (IKE_TABLE, ESP_TABLE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert "earlier run" not in (directory / ESP_TABLE).read_text()


def test_a_new_directory_is_private_and_unknown_algorithms_are_skipped(
    pool: AddressPool[object], tmp_path: Path
) -> None:
    directory = tmp_path / "new" / "keys"
    keylog = KeyLog(directory, lambda spi: None)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    established = IkeSaEstablished(b"x" * 8, "n", MOBILE, GATEWAY, "peer", (), (), True, False)
    keylog.on_event(established)  # no keys for that SA: nothing written, counted
    assert keylog.skipped == 1
    assert (directory / IKE_TABLE).read_text() == ""
    keylog.close()


def test_wireshark_names() -> None:
    assert ike_encryption_name(EncrId.AES_CBC, 128) == "AES-CBC-128 [RFC3602]"
    assert ike_encryption_name(EncrId.AES_GCM_8, 192) == "AES-GCM-192 with 8 octet ICV [RFC5282]"
    assert ike_encryption_name(EncrId.AES_CTR, 256) == "AES-CTR-256 [RFC5930]"
    assert ike_encryption_name(EncrId.CHACHA20_POLY1305, None) is None
    assert int(IntegId.HMAC_SHA2_256_128) == 12
