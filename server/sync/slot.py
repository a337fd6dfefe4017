"""The change feed's publication and replication slot: made, checked, dropped.

Both are named by ``--feed-slot`` (the publication after its slot, so each replica's
slot has its own, and dropping one feed never breaks another's). The publication
lists the four tables the figures come from; they keep REPLICA IDENTITY DEFAULT
(their primary key), which Proca's writes need nothing more for. The slot uses
pgoutput, built into every PostgreSQL since 10.

What the database refuses is told in one line saying which setting or privilege is
missing and how to give it (``FeedError``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from proca_stats.server.sync.position import parse_lsn

Connection = psycopg.Connection[TupleRow]

PUBLISHED = ("actions", "supporters", "action_pages", "campaigns")

SLOT = "SELECT to_jsonb(s) FROM pg_replication_slots s WHERE slot_name = %s"
# From the catalog itself: pg_publication_tables opens the tables, so it would wait behind a
# lock that a migration holds on one of them.
PUBLISHED_TABLES = """
    SELECT c.relname FROM pg_publication p
    JOIN pg_publication_rel r ON r.prpubid = p.oid
    JOIN pg_class c ON c.oid = r.prrelid
    WHERE p.pubname = %s
"""
# How far the slot's confirmed position is behind the WAL: what it keeps the database from
# recycling.
LAG = """
    SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)
    FROM pg_replication_slots WHERE slot_name = %s
"""
ROLE = "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
SLOTS_IN_USE = """
    SELECT count(*), current_setting('max_replication_slots')::int FROM pg_replication_slots
"""
# The first of the published tables the role does not own (only an owner publishes a table).
NOT_OWNED = """
    SELECT (SELECT string_agg(relname, ', ' ORDER BY relname) FROM pg_class
            WHERE relname = ANY(%s) AND relkind IN ('r', 'p') AND relnamespace = ANY(
                  current_schemas(false)::regnamespace[])
              AND NOT pg_has_role(current_user, relowner, 'USAGE')),
           current_user
"""
# Transactions whose commit is recorded but that snapshots do not see yet (waiting for a
# synchronous standby, say): a slot made meanwhile may start after their commit.
UNSEEN_COMMITTED = """
    SELECT count(*) FROM unnest(%s::xid8[]) x
    WHERE pg_xact_status(x) = 'committed' AND NOT pg_visible_in_snapshot(x, pg_current_snapshot())
"""
DRAIN_WAIT = 60.0  # seconds


class FeedError(RuntimeError):
    """The database cannot give the change feed; the message says why and how to fix it."""


@dataclass(frozen=True)
class SlotStatus:
    """What PostgreSQL says of a replication slot."""

    database: str | None
    plugin: str | None
    lost: bool  # invalidated: WAL it needed was removed (max_slot_wal_keep_size), or a conflict
    confirmed: int | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> SlotStatus:
        lost = row.get("wal_status") == "lost" or bool(row.get("conflicting"))
        lost = lost or bool(row.get("invalidation_reason"))
        confirmed = row.get("confirmed_flush_lsn")
        return cls(row.get("database"), row.get("plugin"), lost, confirmed and parse_lsn(confirmed))


def slot_status(conn: Connection, slot: str) -> SlotStatus | None:
    """The slot's status, or None when there is no such slot."""
    row = conn.execute(SLOT, (slot,)).fetchone()
    return None if row is None else SlotStatus.of(row[0])


def lag_bytes(conn: Connection, slot: str) -> int | None:
    row = conn.execute(LAG, (slot,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def check_database(conn: Connection) -> None:
    """Refuse a database that cannot decode its WAL for proca-stats."""
    row = conn.execute("SELECT current_setting('wal_level'), pg_is_in_recovery()").fetchone()
    assert row is not None
    wal_level, standby = row
    if standby:
        raise FeedError(
            "change feed: the database is a standby; the feed reads the primary (give it as "
            "--database-url without --sync-database-url), or use --change-feed updated-at"
        )
    if wal_level != "logical":
        raise FeedError(
            f"change feed: the database's wal_level is {wal_level}; set wal_level = logical "
            "(postgresql.conf, or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
        )


def check_can_set_up(conn: Connection, slot: str) -> None:
    """Refuse, without waiting for anything, a database where ``set_up`` could not succeed:
    making the slot waits for the transactions running then to end, which a server must
    not wait for at its start."""
    check_database(conn)
    status = slot_status(conn, slot)
    if status is not None:
        check_slot(conn, slot, status)
    else:
        row = conn.execute(ROLE).fetchone()
        if row and not row[1]:
            _no_replication(row[0])
        row = conn.execute(SLOTS_IN_USE).fetchone()
        if row and row[0] >= row[1]:
            _no_free_slot(row[1])
    if not publication_ready(conn, slot):
        row = conn.execute(NOT_OWNED, (list(PUBLISHED),)).fetchone()
        if row and row[0]:
            raise FeedError(
                f"change feed: cannot create the publication {slot} (role {row[1]} does not own "
                f"{row[0]}); run `proca-stats db init --change-feed --feed-slot {slot}` as the "
                "tables' owner"
            )


def check_slot(conn: Connection, slot: str, status: SlotStatus) -> None:
    """Refuse a slot of another database or plugin: it is not proca-stats's."""
    database = conn.execute("SELECT current_database()").fetchone()
    if status.database != (database and database[0]) or status.plugin != "pgoutput":
        raise FeedError(
            f"change feed: the replication slot {slot} belongs to database {status.database} "
            f"(plugin {status.plugin}); give this server its own --feed-slot"
        )


def publication_ready(conn: Connection, name: str) -> bool:
    """Whether the publication exists and lists every table the figures come from."""
    rows = conn.execute(PUBLISHED_TABLES, (name,)).fetchall()
    return set(PUBLISHED) <= {row[0] for row in rows}


def create_publication(conn: Connection, name: str) -> None:
    """The publication, or the tables it lacks added to it."""
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in PUBLISHED)
    statement = sql.SQL(
        "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
    ).format(sql.Identifier(name), tables)
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as error:
        raise FeedError(
            f"change feed: cannot create the publication {name} ({_reason(error)}); run "
            f"`proca-stats db init --change-feed --feed-slot {name}` as the owner of "
            f"{', '.join(PUBLISHED)}"
        ) from None


def create_slot(conn: Connection, slot: str) -> None:
    """A pgoutput slot, then a wait until every transaction committed before it started is
    seen by new snapshots: the first snapshot read after it must not miss one whose commit
    the slot will never send (see ``UNSEEN_COMMITTED``)."""
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    except psycopg.errors.InsufficientPrivilege:
        role = conn.execute("SELECT current_user").fetchone()
        _no_replication(role[0] if role else "the role")
    except psycopg.errors.ConfigurationLimitExceeded:
        count = conn.execute("SELECT current_setting('max_replication_slots')").fetchone()
        _no_free_slot(count and count[0])
    except psycopg.errors.ObjectNotInPrerequisiteState:
        check_database(conn)  # says which prerequisite
        raise
    row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
    assert row is not None
    running = [int(x) for x in row[0].split(":")[2].split(",") if x]
    deadline = time.monotonic() + DRAIN_WAIT
    while running and conn.execute(UNSEEN_COMMITTED, (running,)).fetchone() != (0,):
        if time.monotonic() > deadline:
            raise FeedError(
                f"change feed: transactions committed before the slot {slot} was made stayed "
                f"unseen for {DRAIN_WAIT:.0f} s (a synchronous standby not answering?)"
            )
        time.sleep(0.05)


def set_up(conn: Connection, slot: str) -> bool:
    """The publication and the slot, where missing; True when the slot was made now."""
    check_database(conn)
    published = publication_ready(conn, slot)
    if not published:
        create_publication(conn, slot)
    status = slot_status(conn, slot)
    if status is not None:
        check_slot(conn, slot, status)
        if published and not status.lost:
            return False
        # Lost, or it decoded its WAL with a publication that lacked a table: made anew.
        drop_slot(conn, slot)
    create_slot(conn, slot)
    return True


def drop_slot(conn: Connection, slot: str) -> bool:
    """Drop the slot if there is one; True when there was."""
    if slot_status(conn, slot) is None:
        return False
    try:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    except psycopg.errors.ObjectInUse as error:
        raise FeedError(f"change feed: cannot drop the slot {slot}: {_reason(error)}") from None
    return True


def drop_feed(conn: Connection, slot: str) -> tuple[bool, bool]:
    """Drop the slot, then its publication; which of the two there were."""
    dropped_slot = drop_slot(conn, slot)
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (slot,)).fetchone()
    if exists:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(slot)))
    return dropped_slot, exists is not None


def _no_replication(role: str) -> NoReturn:
    raise FeedError(
        f"change feed: role {role} may not use replication slots; give it the attribute (as "
        f"a superuser): ALTER ROLE {role} REPLICATION"
    )


def _no_free_slot(count: object) -> NoReturn:
    raise FeedError(
        f"change feed: all {count} replication slots of the database are in use; drop an "
        "unused one (pg_drop_replication_slot) or raise max_replication_slots"
    )


def _reason(error: psycopg.Error) -> str:
    return str(error).strip().splitlines()[0]
