"""One log line per core event, as both daemons log them: the one place that knows what
each event says.

:func:`describe` turns an event into an :class:`EventRecord`: a short ``event`` name
(``ike_sa_established``), the sentence today's text logs show, and the event's fields
(addresses, SPIs of CHILD SAs, notify...). The IKE SA it concerns is named by its
:class:`Subject` (both SPIs and the peer's identity), which the service knows and the
event alone does not. ``log_format: text`` logs :meth:`EventRecord.text_line` (the
sentence with ``spi_i=... spi_r=... peer=...`` appended); ``json`` logs every line as a
JSON object (:class:`JsonFormatter`), an event's with its fields.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from mpa_ike.constants import NotifyType
from mpa_ike.datagram import Address
from mpa_ike.events import (
    AddressUpdateAccepted,
    AddressUpdateRefused,
    ChildSaAddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    EapRequestForAaa,
    Event,
    IkeSaAddressesUpdated,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    IkeSaReplaced,
    LeaseReleased,
    LivenessConfirmed,
    PeerAddressesAnnounced,
    PeerForgotIkeSa,
)

_CAPITAL = re.compile(r"(?<!^)(?=[A-Z])")
_NEEDS_QUOTES = re.compile(r'[\s"=]')

# The attribute of a logging.LogRecord that carries an event's fields.
EVENT_FIELDS = "mpa_event"
Fields = dict[str, Any]


class Subject(NamedTuple):
    """The IKE SA an event concerns, as far as it is known: SPIs in hex ("" if not
    known), the peer's identity ("" before IKE_AUTH), and whether we initiated it."""

    spi_i: str = ""
    spi_r: str = ""
    peer: str = ""
    initiator: bool | None = None


class EventRecord(NamedTuple):
    event: str  # ike_sa_established, child_sa_deleted...
    text: str  # the sentence, as text logs have always shown it
    fields: Fields  # name, spi_i, spi_r, peer, then the event's own

    def text_line(self) -> str:
        """The sentence with the IKE SA's SPIs and the peer's identity as key=value."""
        named = " ".join(
            f"{key}={quoted(self.fields[key])}"
            for key in ("spi_i", "spi_r", "peer")
            if self.fields.get(key)
        )
        return f"{self.text} {named}" if named else self.text

    def json_fields(self) -> Fields:
        return {"event": self.event, **self.fields, "message": self.text}


UNKNOWN = Subject()


def describe(event: Event, subject: Subject = UNKNOWN) -> EventRecord:
    """The record of ``event``, about the IKE SA ``subject``."""
    who = f"{event.name}[{event.ike_sa.hex()}]"
    describer = _DESCRIBERS.get(type(event))
    if describer is None:
        sentence, own = type(event).__name__, Fields()
    else:
        sentence, own = describer(event)
    fields: Fields = {"name": event.name, "ike_sa": event.ike_sa.hex()}
    fields.update(spi_i=subject.spi_i, spi_r=subject.spi_r, peer=subject.peer)
    fields.update(own)
    return EventRecord(snake(type(event).__name__), f"{who}: {sentence}", fields)


def describe_event(event: Event) -> str:
    """One log line per core event (without what only the service knows of its SA)."""
    return describe(event).text


def with_notify(reason: str, notify: NotifyType | None) -> str:
    """``reason (NOTIFY)``, unless the reason names the notify already."""
    if notify is None or notify.name in reason:
        return reason
    return f"{reason} ({notify.name})"


@functools.cache  # one per event class
def snake(name: str) -> str:
    """``IkeSaEstablished`` -> ``ike_sa_established``."""
    return _CAPITAL.sub("_", name).lower()


def quoted(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


def at(address: Address) -> str:
    return f"{address[0]}[{address[1]}]"


# ---------------------------------------------------------------------- each event


def _ike_established(event: IkeSaEstablished) -> tuple[str, Fields]:
    addresses = ", ".join(str(a) for a in event.assigned_addresses) or "none"
    netmask = f", netmask {event.netmask}" if event.netmask is not None else ""
    subnets = ", subnets " + ", ".join(map(str, event.subnets)) if event.subnets else ""
    nat = ", NAT" if event.nat_detected else ""
    text = (
        f"IKE SA established {at(event.local)} === {at(event.remote)}, "
        f"peer {event.peer_identity}, address {addresses}{netmask}{subnets}{nat}"
    )
    cp: Fields = {"netmask": str(event.netmask)} if event.netmask is not None else {}
    if event.subnets:
        cp["subnets"] = [str(s) for s in event.subnets]
    return text, {
        **cp,
        "local": at(event.local),
        "remote": at(event.remote),
        "peer": event.peer_identity,
        "addresses": [str(a) for a in event.assigned_addresses],
        "nat": event.nat_detected,
        "mobike": event.mobike,
    }


def _child_established(event: ChildSaEstablished) -> tuple[str, Fields]:
    p = event.params
    local_ts, remote_ts = [str(ts) for ts in p.local_ts], [str(ts) for ts in p.remote_ts]
    text = (
        f"CHILD SA installed, SPIs {p.spi_in.hex()}_i {p.spi_out.hex()}_o, "
        f"{' '.join(local_ts)} === {' '.join(remote_ts)}"
    )
    return text, {
        "child_spi_in": p.spi_in.hex(),
        "child_spi_out": p.spi_out.hex(),
        "local_ts": local_ts,
        "remote_ts": remote_ts,
    }


def _notify(notify: NotifyType | None) -> Fields:
    return {"notify": notify.name if notify is not None else None}


def _ike_failed(event: IkeSaFailed) -> tuple[str, Fields]:
    text = f"IKE SA failed: {with_notify(event.reason, event.notify)}"
    return text, {"reason": event.reason, **_notify(event.notify)}


def _child_failed(event: ChildSaFailed) -> tuple[str, Fields]:
    text = f"CHILD SA failed: {with_notify(event.reason, event.notify)}"
    return text, {"reason": event.reason, **_notify(event.notify)}


def _ike_deleted(event: IkeSaDeleted) -> tuple[str, Fields]:
    return f"IKE SA deleted{' by the peer' if event.by_peer else ''}", {"by_peer": event.by_peer}


def _child_deleted(event: ChildSaDeleted) -> tuple[str, Fields]:
    by = " by the peer" if event.by_peer else ""
    text = f"CHILD SA {event.spi_in.hex()}_i {event.spi_out.hex()}_o deleted{by}"
    return text, {
        "child_spi_in": event.spi_in.hex(),
        "child_spi_out": event.spi_out.hex(),
        "by_peer": event.by_peer,
    }


def _child_rekeyed(event: ChildSaRekeyed) -> tuple[str, Fields]:
    text = (
        f"CHILD SA {event.old_spi_in.hex()}_i {event.old_spi_out.hex()}_o rekeyed "
        f"into {event.new_spi_in.hex()}_i {event.new_spi_out.hex()}_o"
    )
    return text, {
        "child_spi_in": event.old_spi_in.hex(),
        "child_spi_out": event.old_spi_out.hex(),
        "new_child_spi_in": event.new_spi_in.hex(),
        "new_child_spi_out": event.new_spi_out.hex(),
    }


def _ike_rekeyed(event: IkeSaRekeyed) -> tuple[str, Fields]:
    return f"IKE SA rekeyed into {event.new_ike_sa.hex()}", {"new_ike_sa": event.new_ike_sa.hex()}


def _ike_moved(event: IkeSaAddressesUpdated) -> tuple[str, Fields]:
    text = f"IKE SA moved to {at(event.local)} === {at(event.remote)}"
    return text, {"local": at(event.local), "remote": at(event.remote), "nat": event.nat_detected}


def _child_moved(event: ChildSaAddressesUpdated) -> tuple[str, Fields]:
    encap = ", ESP in UDP" if event.encap else ""
    text = (
        f"CHILD SA {event.spi_in.hex()}_i {event.spi_out.hex()}_o moved to "
        f"{event.local[0]} === {event.remote[0]}{encap}"
    )
    return text, {
        "child_spi_in": event.spi_in.hex(),
        "child_spi_out": event.spi_out.hex(),
        "local": at(event.local),
        "remote": at(event.remote),
        "encap": event.encap,
    }


def _update_refused(event: AddressUpdateRefused) -> tuple[str, Fields]:
    whose = "the peer refused our" if event.by_peer else "refused the peer's"
    text = f"{whose} move to {at(event.address)} ({event.notify.name})"
    return text, {"address": at(event.address), "by_peer": event.by_peer, **_notify(event.notify)}


def _update_accepted(event: AddressUpdateAccepted) -> tuple[str, Fields]:
    text = f"move to {at(event.local)} accepted by the peer"
    return text, {"local": at(event.local), "remote": at(event.remote)}


def _lease_released(event: LeaseReleased) -> tuple[str, Fields]:
    addresses = [str(a) for a in event.addresses]
    return f"released {', '.join(addresses)}", {"addresses": addresses}


def _peer_addresses(event: PeerAddressesAnnounced) -> tuple[str, Fields]:
    addresses = [str(a) for a in event.addresses]
    text = f"peer's other addresses: {', '.join(addresses) or 'none'}"
    return text, {"peer_addresses": addresses}


def _liveness(event: LivenessConfirmed) -> tuple[str, Fields]:
    return "the peer is alive", {}


def _ike_replaced(event: IkeSaReplaced) -> tuple[str, Fields]:
    text = f"IKE SA replaced by {event.new_ike_sa.hex()}: {event.reason}"
    return text, {"new_ike_sa": event.new_ike_sa.hex(), "reason": event.reason}


def _peer_forgot(event: PeerForgotIkeSa) -> tuple[str, Fields]:
    text = f"{at(event.peer)} answered INVALID_IKE_SPI: it lost the IKE SA (restarted?)"
    return text, {"remote": at(event.peer)}


def _eap_for_aaa(event: EapRequestForAaa) -> tuple[str, Fields]:
    text = f"EAP message of {at(event.peer)} for the AAA server"
    identity = event.identity.decode("utf-8", "replace")
    return text, {"remote": at(event.peer), "eap_identity": identity}


_DESCRIBERS: dict[type[Event], Callable[[Any], tuple[str, Fields]]] = {
    IkeSaEstablished: _ike_established,
    ChildSaEstablished: _child_established,
    IkeSaFailed: _ike_failed,
    IkeSaReplaced: _ike_replaced,
    PeerForgotIkeSa: _peer_forgot,
    ChildSaFailed: _child_failed,
    IkeSaDeleted: _ike_deleted,
    ChildSaDeleted: _child_deleted,
    ChildSaRekeyed: _child_rekeyed,
    IkeSaRekeyed: _ike_rekeyed,
    IkeSaAddressesUpdated: _ike_moved,
    ChildSaAddressesUpdated: _child_moved,
    AddressUpdateRefused: _update_refused,
    AddressUpdateAccepted: _update_accepted,
    LeaseReleased: _lease_released,
    PeerAddressesAnnounced: _peer_addresses,
    LivenessConfirmed: _liveness,
    EapRequestForAaa: _eap_for_aaa,
}


# ---------------------------------------------------------------------- JSON lines


class JsonFormatter(logging.Formatter):
    """Every log line a JSON object: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``; a core event's line adds ``event`` and its fields
    (:meth:`EventRecord.json_fields`), a failure its ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: Fields = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, EVENT_FIELDS, None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))
