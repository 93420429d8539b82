"""One log line per core event, as both daemons log them."""

from __future__ import annotations

from mpa_ike.constants import NotifyType
from mpa_ike.events import (
    AddressUpdateAccepted,
    AddressUpdateRefused,
    ChildSaAddressesUpdated,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    Event,
    IkeSaAddressesUpdated,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    LeaseReleased,
)


def describe_event(event: Event) -> str:
    """One log line per core event."""
    who = f"{event.name}[{event.ike_sa.hex()}]"
    if isinstance(event, IkeSaEstablished):
        addresses = ", ".join(str(a) for a in event.assigned_addresses) or "none"
        nat = ", NAT" if event.nat_detected else ""
        return (
            f"{who}: IKE SA established {event.local[0]}[{event.local[1]}] === "
            f"{event.remote[0]}[{event.remote[1]}], peer {event.peer_identity}, "
            f"address {addresses}{nat}"
        )
    if isinstance(event, ChildSaEstablished):
        p = event.params
        return (
            f"{who}: CHILD SA installed, SPIs {p.spi_in.hex()}_i {p.spi_out.hex()}_o, "
            f"{' '.join(map(str, p.local_ts))} === {' '.join(map(str, p.remote_ts))}"
        )
    if isinstance(event, IkeSaFailed):
        return f"{who}: IKE SA failed: {with_notify(event.reason, event.notify)}"
    if isinstance(event, ChildSaFailed):
        return f"{who}: CHILD SA failed: {with_notify(event.reason, event.notify)}"
    if isinstance(event, IkeSaDeleted):
        return f"{who}: IKE SA deleted{' by the peer' if event.by_peer else ''}"
    if isinstance(event, ChildSaDeleted):
        by = " by the peer" if event.by_peer else ""
        return f"{who}: CHILD SA {event.spi_in.hex()}_i {event.spi_out.hex()}_o deleted{by}"
    if isinstance(event, ChildSaRekeyed):
        return (
            f"{who}: CHILD SA {event.old_spi_in.hex()}_i {event.old_spi_out.hex()}_o rekeyed "
            f"into {event.new_spi_in.hex()}_i {event.new_spi_out.hex()}_o"
        )
    if isinstance(event, IkeSaRekeyed):
        return f"{who}: IKE SA rekeyed into {event.new_ike_sa.hex()}"
    if isinstance(event, IkeSaAddressesUpdated):
        return (
            f"{who}: IKE SA moved to {event.local[0]}[{event.local[1]}] === "
            f"{event.remote[0]}[{event.remote[1]}]"
        )
    if isinstance(event, ChildSaAddressesUpdated):
        encap = ", ESP in UDP" if event.encap else ""
        return (
            f"{who}: CHILD SA {event.spi_in.hex()}_i {event.spi_out.hex()}_o moved to "
            f"{event.local[0]} === {event.remote[0]}{encap}"
        )
    if isinstance(event, AddressUpdateRefused):
        whose = "the peer refused our" if event.by_peer else "refused the peer's"
        return (
            f"{who}: {whose} move to {event.address[0]}[{event.address[1]}] ({event.notify.name})"
        )
    if isinstance(event, AddressUpdateAccepted):
        return f"{who}: move to {event.local[0]}[{event.local[1]}] accepted by the peer"
    if isinstance(event, LeaseReleased):
        return f"{who}: released {', '.join(str(a) for a in event.addresses)}"
    return f"{who}: {type(event).__name__}"


def with_notify(reason: str, notify: NotifyType | None) -> str:
    """``reason (NOTIFY)``, unless the reason names the notify already."""
    if notify is None or notify.name in reason:
        return reason
    return f"{reason} ({notify.name})"
