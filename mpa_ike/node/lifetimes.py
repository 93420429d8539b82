"""The lifetime and liveness keys both daemons read, by strongSwan's names (swanctl.conf).

On the gateway they sit at the top level of its file, on the mobile node in each
``gateways.NAME`` entry; the CHILD SA's under ``children:``. Times are seconds, or
a number with ``s``, ``m``, ``h`` or ``d``; byte counts take ``k``, ``M`` or ``G``
(powers of 1024, as swanctl); 0 turns a limit off::

    rekey_time: 4h        # IKE SA rekey (0: never)
    over_time: 24m        # the IKE SA ends at rekey_time + over_time (10 % of rekey_time)
    rand_time: 24m        # up to this much earlier, at random (over_time)
    reauth_time: 0        # re-authentication (RFC 4478): the gateway tells it in
                          # AUTH_LIFETIME and deletes the IKE SA then; a mobile node
                          # re-authenticates make-before-break a margin before (0: off)
    dpd_delay: 30s        # an empty INFORMATIONAL after this much silence (0: off)
    dpd_timeout: 0        # give that INFORMATIONAL up after this long (0: the whole
                          # retransmission schedule, 165 s; strongSwan ignores it for IKEv2)
    keep_alive: 20s       # NAT keepalives from behind a NAT (strongSwan's charon.keep_alive)
    children:
      rekey_time: 1h      # CHILD SA rekey (0: never)
      life_time: 66m      # deleted then if not rekeyed (110 % of rekey_time)
      rand_time: 6m       # up to this much earlier, at random (life_time - rekey_time)
      rekey_bytes: 0      # the datapath's soft and hard limits (0: none)
      life_bytes: 0
      rekey_packets: 0
      life_packets: 0

Unlike strongSwan (no DPD unless dpd_delay is set), DPD is on by default here, every
30 s: a gateway learns that a mobile node has gone and frees its lease.
"""

from __future__ import annotations

import re
from typing import Any

from mpa_ike.errors import ConfigError
from mpa_ike.ike_config import Lifetimes
from mpa_ike.node.config import Section, guarded, type_name

DEFAULT_DPD_DELAY = 30.0
DEFAULT_KEEP_ALIVE = 20.0  # strongSwan's charon.keep_alive
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]?)\s*")
CHILD_KEYS = (
    "rekey_time",
    "life_time",
    "rand_time",
    "rekey_bytes",
    "life_bytes",
    "rekey_packets",
    "life_packets",
)


def duration(value: object, path: str) -> float:
    """Seconds: ``30``, ``30s``, ``5m``, ``4h``, ``1d``."""
    return _scaled(value, path, _UNITS, "a time (30s, 5m, 4h, 1d)", float)


def amount(value: object, path: str) -> int:
    """A count: ``1000``, ``10k``, ``512M``, ``2G``."""
    return int(_scaled(value, path, _SIZES, "a count (1000, 10k, 512M, 2G)", int))


def _scaled(value: object, path: str, units: dict[str, int], what: str, kind: type) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"expected {what}, got {type_name(value)}", key=path)
    if isinstance(value, int | float):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _NUMBER.fullmatch(value)):
        number, unit = float(match[1]), match[2].lower()
    else:
        raise ConfigError(f"expected {what}, got {value!r}", key=path)
    if unit not in units or number < 0:
        raise ConfigError(f"expected {what}, got {value!r}", key=path)
    if kind is int and not (number * units[unit]).is_integer():
        raise ConfigError(f"expected a whole number, got {value!r}", key=path)
    return number * units[unit]


def read_lifetimes(section: Section) -> Lifetimes:
    """The lifetime and liveness keys of ``section`` (the gateway's top level, or a
    mobile node's gateway entry) and its ``children:``, as the core's Lifetimes."""
    ike: dict[str, Any] = {
        "ike_rekey_time": _off_if_zero(section.optional("rekey_time", duration, 4 * 3600.0)),
        "ike_over_time": section.optional("over_time", duration, None),
        "ike_rand_time": section.optional("rand_time", duration, None),
        "ike_reauth_time": _off_if_zero(section.optional("reauth_time", duration, None)),
        "dpd_delay": _off_if_zero(section.optional("dpd_delay", duration, DEFAULT_DPD_DELAY)),
        "dpd_timeout": _off_if_zero(section.optional("dpd_timeout", duration, None)),
        "keep_alive": _off_if_zero(section.optional("keep_alive", duration, DEFAULT_KEEP_ALIVE)),
    }
    no_children: dict[str, Any] = {}
    child = section.optional("children", _children, no_children)
    return guarded(lambda: _lifetimes(ike, child, section.path), Lifetimes())


def _children(value: object, path: str) -> dict[str, Any]:
    child = Section(value, path)
    times = {
        "child_rekey_time": _off_if_zero(child.optional("rekey_time", duration, 3600.0)),
        "child_life_time": _off_if_zero(child.optional("life_time", duration, None)),
        "child_rand_time": child.optional("rand_time", duration, None),
    }
    counts = {
        f"child_{key}": child.optional(key, amount, 0)
        for key in ("rekey_bytes", "life_bytes", "rekey_packets", "life_packets")
    }
    child.check_unknown()
    return {**times, **counts}


def _lifetimes(ike: dict[str, Any], child: dict[str, Any], path: str) -> Lifetimes:
    """The relations between the keys (rand_time below rekey_time, ...) are the core's
    to check; a problem is reported against the section."""
    values = {k: v for k, v in {**ike, **child}.items() if v is not None or k in _NULLABLE}
    try:
        return Lifetimes(**values)
    except ConfigError as error:
        raise ConfigError(str(error), key=_relation_key(str(error), path)) from None
    except TypeError:  # a value that was INVALID: its problem is reported already
        return Lifetimes()


_RELATION = re.compile(r"(?:(CHILD|IKE) SA )?(\w+) must")


def _relation_key(message: str, path: str) -> str:
    """The key a broken relation is reported against: the one the core's message names
    first (``CHILD SA rekey_bytes must be below life_bytes``: ``children.rekey_bytes``)."""
    match = _RELATION.match(message)
    parts = [path] if path else []
    if match is not None:
        parts += ["children"] if match[1] == "CHILD" else []
        parts.append(match[2])
    return ".".join(parts) or "(top level)"


_NULLABLE = {"ike_rekey_time", "child_rekey_time", "dpd_delay", "dpd_timeout", "keep_alive"}


def _off_if_zero(value: float | None) -> float | None:
    """strongSwan's 0: no rekey, no DPD, no keepalive."""
    return value if value else None
