"""The lease store under the address pool: what each change writes, what a restart
loads (held leases, released ones in order), identities getting their addresses back,
reclaim after the grace time, both families, and a process killed between changes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from leasehelp import FILL_POOL, Clock, fill, identity, spi

from gateway.leases import (
    SCHEMA_VERSION,
    LeaseRow,
    LeaseState,
    LeaseStore,
    LeaseStoreError,
    owner_key,
)
from gateway.pool import AddressPool, HeldLease, IPAddress, IPNetwork

NETWORKS: list[IPNetwork] = [ip_network("10.0.0.0/29"), ip_network("2001:db8::/125")]
GRACE = 300.0
CAROL, DAVE, ERIN = "carol@mpa-ike.test", "dave@mpa-ike.test", "erin@mpa-ike.test"
V4 = [IPv4Address(f"10.0.0.{n}") for n in range(8)]
V6 = [IPv6Address(f"2001:db8::{n:x}") for n in range(8)]


@pytest.fixture
def file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "leases.sqlite3"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def opened() -> Iterator[list[AddressPool[bytes]]]:
    pools: list[AddressPool[bytes]] = []
    yield pools
    for pool in pools:
        pool.close()


@pytest.fixture
def start(file: Path, clock: Clock, opened: list[AddressPool[bytes]]) -> Any:
    """A gateway (re)starting: a pool over the lease file, as open_pool builds it."""

    def start(reserved: tuple[str, ...] = (), grace: float = GRACE) -> AddressPool[bytes]:
        pool: AddressPool[bytes] = AddressPool(
            NETWORKS,
            [ip_address(a) for a in reserved],
            store=LeaseStore.open(file),
            grace=grace,
            clock=clock,
        )
        opened.append(pool)
        return pool

    return start


def rows(file: Path) -> dict[str, dict[str, Any]]:
    """The table as another process reads it."""
    with sqlite3.connect(file) as db:
        db.row_factory = sqlite3.Row
        return {row["address"]: dict(row) for row in db.execute("SELECT * FROM leases")}


# --------------------------------------------------------------------------- the file


def test_a_new_file_in_wal_mode_with_the_schema(file: Path) -> None:
    LeaseStore.open(file).close()
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(file) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        columns = [row[1] for row in db.execute("PRAGMA table_info(leases)")]
    assert columns == [
        "address",
        "family",
        "identity",
        "ike_sa",
        "state",
        "allocated",
        "last_seen",
        "released",
    ]
    LeaseStore.open(file).close()  # and opens again as it is


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database" * 100, "file is not a database"),
        (b"", "no lease schema"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_key(file: Path, content: bytes, message: str) -> None:
    file.parent.mkdir()
    file.write_bytes(content)
    if not content:
        with sqlite3.connect(file) as db:
            db.execute("CREATE TABLE other (x)")
    with pytest.raises(LeaseStoreError) as raised:
        LeaseStore.open(file)
    text = str(raised.value)
    assert text.startswith(f"leases: {file}: ") and message in text
    assert "\n" not in text


def test_a_newer_schema_is_refused(file: Path) -> None:
    LeaseStore.open(file).close()
    with sqlite3.connect(file) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LeaseStoreError, match=r"^leases: .*schema version 2 is newer"):
        LeaseStore.open(file)


def test_a_damaged_page_is_refused(file: Path) -> None:
    fill(file, 200, [ip_network("10.0.0.0/24")], (4,))
    data = bytearray(file.read_bytes())
    page = 4096
    data[2 * page : 3 * page] = b"\xa5" * page  # a page of the table, overwritten
    file.write_bytes(bytes(data))
    with pytest.raises(LeaseStoreError, match=r"^leases: "):
        LeaseStore.open(file)


def test_a_directory_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    with pytest.raises(LeaseStoreError, match=r"^leases: cannot create .*plain"):
        LeaseStore.open(tmp_path / "plain" / "leases.sqlite3")


# --------------------------------------------------------------------------- one run


def test_allocation_and_release_are_rows(start: Any, file: Path, clock: Clock) -> None:
    pool = start()
    assert pool.acquire(spi(1), 4, identity=CAROL) == V4[1]
    assert pool.acquire(spi(1), 6) == V6[1]  # the identity of the owner's first lease
    assert rows(file) == {
        "10.0.0.1": row(V4[1], CAROL, spi(1), "active", clock.now),
        "2001:db8::1": row(V6[1], CAROL, spi(1), "active", clock.now),
    }
    allocated = clock.now
    clock.now += 60
    pool.mark_seen(clock.now)
    assert rows(file)["10.0.0.1"]["last_seen"] == clock.now
    clock.now += 60
    assert pool.release(spi(1)) == (V4[1], V6[1])
    assert rows(file)["10.0.0.1"] == {
        **row(V4[1], CAROL, spi(1), "active", allocated),
        "state": "released",
        "last_seen": clock.now,
        "released": clock.now,
    }
    assert rows(file)["2001:db8::1"]["state"] == "released"


def row(
    address: IPAddress, who: str | None, owner: bytes, state: str, when: float
) -> dict[str, Any]:
    return {
        "address": str(address),
        "family": address.version,
        "identity": who,
        "ike_sa": owner.hex(),
        "state": state,
        "allocated": when,
        "last_seen": when,
        "released": None,
    }


def test_a_lease_that_cannot_be_recorded_is_not_given(start: Any, file: Path) -> None:
    pool = start()
    with sqlite3.connect(file) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON leases BEGIN SELECT RAISE(ABORT, 'full'); END"
        )
    assert pool.acquire(spi(1), 4, identity=CAROL) is None
    assert pool.available(4) == 6 and rows(file) == {}
    with sqlite3.connect(file) as db:
        db.execute("DROP TRIGGER refuse")
    assert pool.acquire(spi(1), 4, identity=CAROL) == V4[1]  # the same, not lost


# --------------------------------------------------------------------------- restarts


def test_a_restart_holds_the_leases_of_the_last_run(start: Any, file: Path) -> None:
    first = start()
    first.acquire(spi(1), 4, identity=CAROL)
    first.acquire(spi(2), 4, identity=DAVE)
    first.acquire(spi(2), 6)
    first.acquire(spi(3), 4, identity=ERIN)
    first.release(spi(3))
    first.close()  # as a killed gateway leaves it: no release

    second = start()
    assert sorted((str(h.address), h.identity) for h in second.held()) == [
        ("10.0.0.1", CAROL),
        ("10.0.0.2", DAVE),
        ("2001:db8::1", DAVE),
    ]
    assert second.available(4) == 6 - 2 and second.available(6) == 7 - 1
    assert second.owner_of(V4[1]) is None  # no IKE SA of this run holds it
    # Someone new gets neither a held address nor the released .3 (fresh ones first).
    assert second.acquire(spi(10), 4, identity="frank") == V4[4]
    assert second.acquire(spi(10), 6) == V6[2]
    status = {str(a): str(owner) for a, owner in second.leases()}
    assert status["10.0.0.1"] == f"held for {CAROL} (IKE SA {spi(1).hex()} of an earlier run)"
    assert rows(file)["10.0.0.1"]["state"] == "active"


def test_the_same_identity_gets_its_address_back(start: Any, file: Path, clock: Clock) -> None:
    first = start()
    first.acquire(spi(1), 4, identity=CAROL)
    first.acquire(spi(1), 6)
    first.acquire(spi(2), 4, identity=DAVE)
    first.close()

    clock.now += 10
    second = start()
    # A new IKE SA of carol (another SPI); what she asks for does not matter.
    assert second.acquire(spi(7), 4, V4[5], identity=CAROL) == V4[1]
    assert second.acquire(spi(7), 6) == V6[1]
    assert [h.identity for h in second.held()] == [DAVE]
    assert rows(file)["10.0.0.1"] == row(V4[1], CAROL, spi(7), "active", clock.now)
    second.close()

    third = start()  # killed again: carol's lease is held under her new IKE SA
    assert {h.ike_sa for h in third.held() if h.identity == CAROL} == {spi(7).hex()}


def test_a_released_address_comes_back_to_its_identity_if_free(start: Any) -> None:
    first = start()
    for n, who in enumerate((CAROL, DAVE, ERIN), 1):
        first.acquire(spi(n), 4, identity=who)
    first.release(spi(1))
    first.release(spi(2))
    first.close()

    second = start()
    assert second.acquire(spi(8), 4, identity=DAVE) == V4[2]
    assert second.acquire(spi(9), 4) == V4[4]  # fresh first, then
    second.acquire(spi(10), 4)
    second.acquire(spi(11), 4)
    assert second.acquire(spi(12), 4) == V4[1]  # the oldest released: carol's
    assert second.acquire(spi(13), 4, identity=CAROL) is None  # held: erin's .3


def test_held_leases_are_reclaimed_after_the_grace_time(
    start: Any, file: Path, clock: Clock
) -> None:
    first = start()
    first.acquire(spi(1), 4, identity=CAROL)
    first.acquire(spi(2), 4, identity=DAVE)
    first.close()

    clock.now += 3600  # the gateway was down for an hour: the grace starts now
    second = start()
    assert second.next_reclaim() == clock.now + GRACE
    clock.now += GRACE - 1
    assert second.reclaim(clock.now) == ()
    assert second.acquire(spi(3), 4, identity=ERIN) == V4[3]
    assert len(list(second.held())) == 2

    clock.now += 1
    assert second.acquire(spi(4), 4, identity="frank") == V4[4]  # reclaims, lazily
    assert list(second.held()) == [] and second.next_reclaim() is None
    assert {rows(file)[str(a)]["state"] for a in V4[1:3]} == {"released"}
    assert rows(file)["10.0.0.1"]["released"] == clock.now
    # Fresh ones go first; then the reclaimed, oldest first; dave's comes back to him.
    assert second.acquire(spi(5), 4, identity=DAVE) == V4[2]
    assert second.acquire(spi(6), 4) == V4[5]
    assert second.acquire(spi(7), 4) == V4[6]
    assert second.acquire(spi(8), 4) == V4[1]


def test_a_periodic_reclaim_with_now(start: Any, clock: Clock) -> None:
    first = start()
    first.acquire(spi(1), 6, identity=CAROL)
    first.close()
    second = start(grace=30)
    assert second.reclaim(clock.now + 29) == ()
    assert second.reclaim(clock.now + 30) == (V6[1],)
    assert second.reclaim(clock.now + 31) == ()
    assert second.available(6) == 7


def test_reserved_and_foreign_rows_are_left_alone(start: Any, file: Path) -> None:
    first = start()
    first.acquire(spi(1), 4, identity=CAROL)
    first.acquire(spi(2), 4, identity=DAVE)
    first.close()
    with sqlite3.connect(file) as db:  # another gateway's lease in the same file
        db.execute("INSERT INTO leases VALUES ('192.0.2.9', 4, 'x', '00', 'active', 1, 1, NULL)")

    second = start(reserved=("10.0.0.1",))  # the gateway's own address since
    assert [str(h.address) for h in second.held()] == ["10.0.0.2"]
    assert second.acquire(spi(3), 4, identity=CAROL) == V4[3]  # .1 is never leased
    assert rows(file)["192.0.2.9"]["state"] == "active"
    assert rows(file)["10.0.0.1"]["state"] == "active"


def test_a_successor_ike_sa_keeps_the_identity_in_the_file(start: Any, file: Path) -> None:
    """The core moves a lease to the IKE SA that rekeys it (release, then acquire of the
    same address without identity): the row keeps the identity for the next restart."""
    pool = start()
    lease = pool.acquire(spi(1), 4, identity=CAROL)
    pool.release(spi(1))
    assert pool.acquire(spi(2), 4, lease) == lease
    assert rows(file)["10.0.0.1"]["identity"] == CAROL
    assert rows(file)["10.0.0.1"]["ike_sa"] == spi(2).hex()


def test_identify_names_the_peer_when_the_core_does_not(
    file: Path, clock: Clock, opened: list[AddressPool[bytes]]
) -> None:
    peers = {spi(1): CAROL}
    pool: AddressPool[bytes] = AddressPool(
        NETWORKS, store=LeaseStore.open(file), clock=clock, identify=peers.get
    )
    opened.append(pool)
    pool.acquire(spi(1), 4)
    pool.acquire(spi(2), 4)
    assert rows(file)["10.0.0.1"]["identity"] == CAROL
    assert rows(file)["10.0.0.2"]["identity"] is None


# --------------------------------------------------------------------------- many, killed


def test_a_thousand_leases_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    file = tmp_path / "leases.sqlite3"
    leased = fill(file, 1000, now=clock.now)
    assert len(rows(file)) == 1000
    pool: AddressPool[bytes] = AddressPool(FILL_POOL, store=LeaseStore.open(file), clock=clock)
    try:
        assert len(list(pool.held())) == 1000
        back = pool.acquire(spi(4242), 6, identity=identity(123))
        assert (identity(123), back) in leased
        new = pool.acquire(spi(4243), 4, identity="someone-else")
        assert new not in {address for _, address in leased}
    finally:
        pool.close()


# A child process leasing and releasing as fast as it can, saying each change once it
# has returned (committed): "+ address spi" and "- spi".
CHURN = textwrap.dedent(
    """
    import sys, time
    from ipaddress import ip_network
    from pathlib import Path
    from gateway.leases import LeaseStore
    from gateway.pool import AddressPool

    networks = [ip_network("10.0.0.0/22"), ip_network("2001:db8::/118")]
    pool = AddressPool(networks, store=LeaseStore.open(Path(sys.argv[1])), clock=time.time)
    n = 0
    while True:
        n += 1
        owner = n.to_bytes(8, "big")
        for family in (4, 6):
            address = pool.acquire(owner, family, identity=f"peer{n % 700}")
            print("+", address, owner.hex(), flush=True)
        if n % 3 == 0:
            gone = (n - 2).to_bytes(8, "big")
            pool.release(gone)
            print("-", gone.hex(), flush=True)
    """
)


@pytest.mark.parametrize("changes", [1, 37, 400])
def test_a_process_killed_between_changes_leaves_every_row_consistent(
    tmp_path: Path, changes: int
) -> None:
    file = tmp_path / "leases.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", CHURN, str(file)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    said = [child.stdout.readline().split() for _ in range(changes)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    with sqlite3.connect(file) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        table = db.execute("SELECT address, family, ike_sa, state FROM leases").fetchall()
    active = {(address, ike_sa) for address, _, ike_sa, state in table if state == "active"}
    released = {ike_sa for _, _, ike_sa, state in table if state == "released"}
    for line in said:  # every change the child saw done is in the file
        if line[0] == "+":
            assert (line[1], line[2]) in active or line[2] in released
        else:
            assert not any(ike_sa == line[1] for _, ike_sa in active)
    per_sa_family = [(ike_sa, family) for _, family, ike_sa, state in table if state == "active"]
    assert len(per_sa_family) == len(set(per_sa_family))  # one lease per family per IKE SA
    for address, family, _, _ in table:
        assert ip_address(address).version == family

    # And the next run holds exactly the active rows, and leases none of them again.
    pool: AddressPool[bytes] = AddressPool(
        [ip_network("10.0.0.0/22"), ip_network("2001:db8::/118")],
        store=LeaseStore.open(file),
        clock=Clock(),
    )
    try:
        assert {(str(h.address), h.ike_sa) for h in pool.held()} == active
        taken = {str(pool.acquire(spi(n), 4, identity=f"new{n}")) for n in range(50)}
        assert not taken & {address for address, _ in active}
    finally:
        pool.close()


def test_rows_read_back_as_written(file: Path) -> None:
    store = LeaseStore.open(file)
    try:
        written = LeaseRow(V6[3], None, owner_key(b"\x01" * 8), LeaseState.ACTIVE, 5.0, 6.0)
        store.allocate(written)
        assert store.load() == [written]
        store.release(written.ike_sa, [V6[3]], 7.0)
        [back] = store.load()
        assert (back.state, back.released, back.last_seen) == (LeaseState.RELEASED, 7.0, 7.0)
        store.release("someone else", [V6[3]], 8.0)  # not its lease: nothing changes
        assert store.load() == [back]
    finally:
        store.close()


def test_commits_are_in_the_wal_without_an_fsync_of_their_own(
    file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WAL with ``synchronous=NORMAL`` for every change, allocations too: a commit is
    written to the WAL before the address goes out (a killed process loses nothing) and
    fsynced at the next checkpoint, not on its own."""
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", recording)
    store = LeaseStore.open(file)
    [db] = opened
    try:
        held = LeaseRow(V4[2], CAROL, owner_key(spi(1)), LeaseState.ACTIVE, 5.0, 5.0)
        statements: list[str] = []
        db.set_trace_callback(statements.append)
        store.allocate(held)
        store.release(held.ike_sa, [V4[2]], 6.0)
        store.allocate(held)
        store.reclaim([(V4[2], held.ike_sa)], 7.0)
        store.mark_seen([(V4[2], held.ike_sa)], 8.0)
        db.set_trace_callback(None)
        assert statements.count("COMMIT") == 5
        assert not [s for s in statements if s.startswith("PRAGMA")]
        assert db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        store.close()


def test_held_leases_are_shown_by_whom_they_wait_for() -> None:
    held = HeldLease(V4[1], None, "00ff", 0.0)
    assert str(held) == "held for an unknown peer (IKE SA 00ff of an earlier run)"
