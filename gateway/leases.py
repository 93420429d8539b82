"""The lease store: the address pool's CP leases in SQLite, so that a restarted gateway
neither forgets an address a mobile node still holds nor hands it to someone else.

One row per address ever leased (the address is the key): who holds or last held it
(the peer's identity and the IKE SA's SPI), whether the lease is ``active`` or
``released``, and when it was allocated, last seen and released, in Unix time. The pool
(:class:`gateway.pool.AddressPool`) keeps the truth in memory and writes every change
here as one transaction: an allocation, the release of an IKE SA's addresses, a reclaim.

The database runs in WAL mode with ``synchronous=NORMAL``: a commit is in the WAL,
written through the operating system, before the address goes out in CFG_REPLY, so a
killed or crashed gateway process loses no lease (the kernel holds what was written and
SQLite replays the WAL on the next open); a SIGKILL during a change leaves the last
committed state, as SQLite rolls an unfinished transaction back. The WAL is fsynced at
each checkpoint, not at each commit: only a crash of the operating system (or a power
cut) can lose the commits since the last checkpoint. Such a crash takes every IKE SA
with it, so no peer whose lease was lost still has its traffic carried: it sets up
afresh, and at worst does not get its earlier address back. ``synchronous=FULL``, an
fsync per allocation, held the event loop for a quarter of its time at saturation
(every IKE SA set-up waited on the disk) to narrow a window that only the whole host's
failure opens.

Gateways whose pools are disjoint may share a file: each loads and writes only the
rows of its own pool.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from mpa_ike.errors import ConfigError
from mpa_ike.records import quick_init

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.pool import AddressPool, IPAddress
    from mpa_ike.endpoint import Endpoint

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # PRAGMA user_version of a database this module wrote
# How long a change waits for another gateway sharing the file (seconds).
BUSY_TIMEOUT = 2.0

SCHEMA = """
CREATE TABLE leases (
    address   TEXT PRIMARY KEY,  -- canonical text (ipaddress's str)
    family    INTEGER NOT NULL CHECK (family IN (4, 6)),
    identity  TEXT,              -- the peer's identity; NULL if it was not known
    ike_sa    TEXT NOT NULL,     -- the IKE SA holding (or last holding) it: SPI in hex
    state     TEXT NOT NULL CHECK (state IN ('active', 'released')),
    allocated REAL NOT NULL,     -- Unix time
    last_seen REAL NOT NULL,
    released  REAL,
    CHECK ((state = 'released') = (released IS NOT NULL)),
    CHECK (allocated <= last_seen)
);
CREATE INDEX leases_by_identity ON leases (identity, family, state);
"""


class LeaseState(StrEnum):
    ACTIVE = "active"
    RELEASED = "released"


class LeaseStoreError(ConfigError):
    """The lease database cannot be opened or read: one line naming the ``leases`` key."""

    def __init__(self, message: str) -> None:
        super().__init__(message, key="leases")


@quick_init
@dataclass(frozen=True, slots=True)
class LeaseRow:
    """One row of the ``leases`` table."""

    address: IPAddress
    identity: str | None
    ike_sa: str
    state: LeaseState
    allocated: float
    last_seen: float
    released: float | None = None

    @property
    def family(self) -> int:
        return self.address.version


def owner_key(owner: Hashable) -> str:
    """The ``ike_sa`` column for a pool owner: an SPI in hex, anything else as text."""
    return owner.hex() if isinstance(owner, bytes) else str(owner)


class LeaseStore:
    """The ``leases`` table of one SQLite file; every method that writes is one
    transaction. Writes raise :class:`sqlite3.Error`, which the pool handles."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Use :meth:`open`."""
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path) -> LeaseStore:
        """Open (creating it and its directory if need be) the database at ``path``.

        Raises LeaseStoreError, one line naming the file, if it cannot be created,
        is not a database, is damaged, or was written by a newer schema.
        """
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            if not path.exists():
                # Identities are personal data: readable by the gateway only.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as error:
            raise LeaseStoreError(f"cannot create {error.filename}: {error.strerror}") from None
        try:
            connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as error:
            raise LeaseStoreError(f"{path}: {error}") from None
        try:
            _prepare(connection)
        except sqlite3.Error as error:
            connection.close()
            raise LeaseStoreError(f"{path}: {error}") from None
        except LeaseStoreError as error:
            connection.close()
            raise LeaseStoreError(f"{path}: {str(error).removeprefix('leases: ')}") from None
        return cls(connection, path)

    def close(self) -> None:
        self._db.close()

    def load(self) -> list[LeaseRow]:
        """Every row, released ones in the order they were released."""
        try:
            rows = self._db.execute(
                "SELECT address, identity, ike_sa, state, allocated, last_seen, released"
                " FROM leases ORDER BY released IS NOT NULL, released, address"
            ).fetchall()
            return [_row(*row) for row in rows]
        except (sqlite3.Error, ValueError) as error:
            raise LeaseStoreError(f"{self.path}: {error}") from None

    def allocate(self, row: LeaseRow) -> None:
        """``row.address`` is leased (active) to ``row.ike_sa``, whatever it was before."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO leases"
                " (address, family, identity, ike_sa, state, allocated, last_seen, released)"
                " VALUES (?, ?, ?, ?, 'active', ?, ?, NULL)"
                " ON CONFLICT (address) DO UPDATE SET family = excluded.family,"
                " identity = excluded.identity, ike_sa = excluded.ike_sa, state = 'active',"
                " allocated = excluded.allocated, last_seen = excluded.last_seen,"
                " released = NULL",
                (
                    str(row.address),
                    row.family,
                    row.identity,
                    row.ike_sa,
                    row.allocated,
                    row.last_seen,
                ),
            )

    def release(self, ike_sa: str, addresses: Iterable[IPAddress], now: float) -> None:
        """The leases of ``ike_sa`` on ``addresses`` end (rows it no longer holds stay)."""
        self._end([(str(address), ike_sa) for address in addresses], now)

    def reclaim(self, leases: Iterable[tuple[IPAddress, str]], now: float) -> None:
        """Held leases, (address, ike_sa) of IKE SAs that never came back, end at once."""
        self._end([(str(address), ike_sa) for address, ike_sa in leases], now)

    def mark_seen(self, leases: Iterable[tuple[IPAddress, str]], now: float) -> None:
        """The IKE SAs still hold these (address, ike_sa) leases at ``now``."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE leases SET last_seen = max(last_seen, ?)"
                " WHERE address = ? AND ike_sa = ? AND state = 'active'",
                [(now, str(address), ike_sa) for address, ike_sa in leases],
            )

    def _end(self, leases: list[tuple[str, str]], now: float) -> None:
        if not leases:
            return
        with self._transaction() as db:
            db.executemany(
                "UPDATE leases SET state = 'released', released = ?,"
                " last_seen = max(last_seen, ?)"
                " WHERE address = ? AND ike_sa = ? AND state = 'active'",
                [(now, now, address, ike_sa) for address, ike_sa in leases],
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _prepare(db: sqlite3.Connection) -> None:
    """WAL, NORMAL sync, an intact file, and the schema (created in one transaction)."""
    (mode,) = db.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode != "wal":
        raise LeaseStoreError(f"cannot use WAL mode (journal mode {mode})")
    db.execute("PRAGMA synchronous=NORMAL")
    (check,) = db.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise LeaseStoreError(f"damaged database: {check}")
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise LeaseStoreError(f"schema version {version} is newer than this gateway's")
    if version == 0:
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise LeaseStoreError("a database of something else (no lease schema)")
        db.executescript(
            f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )


def _row(
    address: str,
    identity: str | None,
    ike_sa: str,
    state: str,
    allocated: float,
    last_seen: float,
    released: float | None,
) -> LeaseRow:
    return LeaseRow(
        ip_address(address), identity, ike_sa, LeaseState(state), allocated, last_seen, released
    )


# --------------------------------------------------------------------------- the gateway


def open_pool(
    config: GatewayConfig, identify: Callable[[Hashable], str | None] | None = None
) -> AddressPool[Hashable]:
    """The gateway's pool over its lease file, with the wall clock (lease times outlive
    the process); raises LeaseStoreError."""
    import time

    from gateway.pool import AddressPool

    store = LeaseStore.open(config.leases)
    try:
        return AddressPool(
            config.pool,
            config.reserved_addresses(),
            store=store,
            grace=config.lease_grace,
            clock=time.time,
            identify=identify,
        )
    except BaseException:
        store.close()
        raise


def peer_identity(endpoint: Endpoint, owner: Hashable) -> str | None:
    """Who the peer of the IKE SA ``owner`` (its SPI) is, if known: the identity EAP
    authenticated, else IDi (the core passes it to ``acquire`` itself; this names the
    holders of leases in status and on a reload)."""
    if not isinstance(owner, bytes):
        return None
    sa = endpoint.sas.get(owner)
    return sa.unique_identity if sa is not None else None
