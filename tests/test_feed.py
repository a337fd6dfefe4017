"""The logical change feed on a real PostgreSQL with wal_level logical: the slot's position
agrees with the snapshots, a lost slot is made anew, one server per slot."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from proca_stats.server.app import StatsServer
from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.calculation import calculate
from proca_stats.server.sync.position import parse_lsn
from proca_stats.server.sync.refresh import HeldFigures
from proca_stats.server.sync.slot import set_up
from tests.support.logical_postgres import feed_refresher, logical_postgres
from tests.support.metrics import sample
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for


def full(url: str) -> dict[int, CampaignCounters]:
    with psycopg.connect(url) as conn:
        return calculate(conn).campaigns


@pytest.fixture
def db(logical_url: str) -> Iterator[ProcaData]:
    """One campaign with one person, on the logical PostgreSQL."""
    with psycopg.connect(logical_url, autocommit=True) as conn:
        data = ProcaData(conn)
        org = data.org()
        campaign = data.campaign(org)
        data.person(campaign, data.page(campaign, org), b"ann")
        yield data


def ids(db: ProcaData) -> tuple[int, int]:
    row = db.conn.execute("SELECT campaign_id, action_page_id FROM actions LIMIT 1").fetchone()
    assert row is not None
    return row[0], row[1]


def slot_position(url: str, slot: str = "proca_stats") -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return row and row[0]


def setting(conn: psycopg.Connection[TupleRow], name: str) -> str | None:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    return row and row[0]


def sync_waiting(admin: str) -> bool:
    """Whether a session waits for a synchronous standby to confirm its commit."""
    with psycopg.connect(admin) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        ).fetchone()
    return bool(row and row[0])


def test_a_commit_not_yet_seen_by_the_snapshot_is_left_for_the_next_refresh(
    logical_url: str, db: ProcaData
) -> None:
    """A transaction whose commit is in the WAL while snapshots do not see it yet (here: it
    waits for a synchronous standby that never answers) is between the slot's position and
    the snapshot: the refresh must neither count it nor advance the slot past it."""
    admin = logical_postgres().url
    name = conninfo_to_dict(logical_url)["dbname"]
    campaign, page = ids(db)
    with psycopg.connect(admin, autocommit=True) as conn:
        # Only the session below waits for the standby; every other one commits locally.
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = local").format(sql.Identifier(name))
        )
    db.conn.execute("SET synchronous_commit = local")
    with feed_refresher(logical_url) as refresher:
        refresher.run()
        refresher.settle()
        before = full(logical_url)
        waiting = psycopg.connect(logical_url, autocommit=True)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
            conn.execute("SELECT pg_reload_conf()")
        try:
            # A reload reaches each session when it next gets the postmaster's signal.
            wait_for(
                lambda: setting(waiting, "synchronous_standby_names") == "nobody",
                what="the session to read the reloaded configuration",
            )
            waiting.execute("SET synchronous_commit = on")

            def write() -> None:
                with waiting.transaction():  # one commit, the one that waits
                    ProcaData(waiting).person(campaign, page, b"bob")

            writer = threading.Thread(target=write)
            writer.start()
            wait_for(lambda: sync_waiting(admin), what="the commit to wait for the standby")
            snapshot, _ = refresher.run()
            refresher.settle()
            assert snapshot.campaigns == before  # not seen yet: not counted
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("SELECT pg_cancel_backend(%s)", (waiting.info.backend_pid,))
            writer.join(10)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
                conn.execute("SELECT pg_reload_conf()")
            waiting.close()
        after = full(logical_url)
        assert after[campaign].supporters == 2  # the commit stood
        snapshot, report = refresher.run()
        refresher.settle()
        assert (snapshot.campaigns, report.kind) == (after, "incremental")


def wal_writer(admin: str) -> int:
    """The process id of the WAL writer, which flushes what asynchronous commits leave."""
    with psycopg.connect(admin) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def unflushed(url: str) -> bool:
    """Whether WAL has been written past the position PostgreSQL has flushed."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()"
        ).fetchone()
    return bool(row and row[0])


def test_a_commit_not_flushed_yet_is_read_before_the_slot_moves_past_it(
    logical_url: str, db: ProcaData
) -> None:
    """A peek decodes only flushed WAL, and a commit record is written (and flushed) before
    snapshots see it. The feed flushes the WAL past the snapshot itself, so a refresh never
    waits for a record flushed in part; it must then take the flushed position PostgreSQL
    reports, not assume it: a transaction that only takes an id commits without flushing
    anything, and a slot moved to the snapshot's position on that assumption skipped, for
    good, a commit written but not yet flushed nor seen (the crash test lost a delete so).
    With the WAL writer stopped, nothing but the feed flushes the commits made here."""
    campaign, page = ids(db)
    writer = wal_writer(logical_postgres().url)
    with feed_refresher(logical_url) as refresher:
        refresher.run()
        refresher.settle()
        os.kill(writer, signal.SIGSTOP)
        try:
            db.conn.execute("SET synchronous_commit = off")
            db.person(campaign, page, b"bob")
            assert unflushed(logical_url)
            snapshot, report = refresher.run()
            refresher.settle()
        finally:
            os.kill(writer, signal.SIGCONT)
        assert (snapshot.campaigns, report.kind) == (full(logical_url), "incremental")
        assert snapshot.campaigns[campaign].supporters == 2


def test_deletes_are_seen_at_the_next_refresh(logical_url: str, db: ProcaData) -> None:
    campaign, page = ids(db)
    gone = db.person(campaign, page, b"bob", area="DE")
    with feed_refresher(logical_url) as refresher:
        refresher.run()
        refresher.settle()
        db.conn.execute("DELETE FROM actions WHERE id = %s", (gone,))
        snapshot, report = refresher.run()
        refresher.settle()
        assert report.kind == "incremental"
        assert snapshot.campaigns == full(logical_url)
        assert snapshot.campaigns[campaign].supporters == 1


def test_a_refresh_without_changes_reads_no_table_and_advances_the_slot(
    logical_url: str, db: ProcaData
) -> None:
    campaign, page = ids(db)
    with feed_refresher(logical_url) as refresher:
        refresher.run()
        refresher.settle()
        db.person(campaign, page, b"bob")
        refresher.run()
        refresher.settle()
        with psycopg.connect(logical_url) as conn:
            current = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        _, report = refresher.run()
        refresher.settle()
        # Only the flush position was read; the slot caught up with the WAL.
        assert (report.kind, report.rows_read, report.changed_actions) == ("incremental", 1, 0)
        assert current
        assert slot_position(logical_url) == current[0]


def test_the_slot_is_advanced_only_once_the_snapshot_is_persisted(
    logical_url: str, db: ProcaData
) -> None:
    """Until the state file holds a refresh's figures, the slot keeps every change after the
    figures saved before: a crash while writing loses nothing."""
    campaign, page = ids(db)
    seen: list[tuple[int, int]] = []  # (the slot's position, the mark's) at each persist

    def persist(held: HeldFigures) -> None:
        position = slot_position(logical_url)
        assert position is not None
        seen.append((parse_lsn(position), held.source["advance"]))

    with feed_refresher(logical_url, persist=persist) as refresher:
        for fingerprint in (b"bob", b"cat"):
            db.person(campaign, page, fingerprint)
            refresher.run()
            refresher.settle()
    (_, first_mark), (second_slot, second_mark) = seen
    assert second_slot == first_mark < second_mark


def test_a_truncate_makes_a_full_calculation(logical_url: str, db: ProcaData) -> None:
    with feed_refresher(logical_url) as refresher:
        refresher.run()
        refresher.settle()
        db.conn.execute("TRUNCATE actions CASCADE")
        snapshot, report = refresher.run()
        refresher.settle()
        assert report.kind == "full"
        assert snapshot.campaigns == full(logical_url)


@pytest.fixture
def logical_server(
    start_server: Callable[..., StatsServer], logical_url: str
) -> Callable[..., StatsServer]:
    def start(**config: object) -> StatsServer:
        server = start_server(logical_url, **({"change_feed": "logical"} | config))
        wait_for(lambda: server.store.synced_at, what="the first calculation")
        return server

    return start


def test_a_slot_dropped_under_a_running_server_is_made_anew_with_one_warning(
    logical_server: Callable[..., StatsServer],
    logical_url: str,
    db: ProcaData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = logical_server()
    campaign, page = ids(db)
    resync(server)
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot('proca_stats')")
    db.person(campaign, page, b"bob")
    with caplog.at_level(logging.WARNING):
        resync(server)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "change feed: the replication slot proca_stats was dropped; making it anew, then a "
        "full calculation"
    ]
    assert server.store.get(campaign)[0] == full(logical_url)[campaign]
    assert slot_position(logical_url) is not None
    db.person(campaign, page, b"cat")
    resync(server)
    assert server.store.get(campaign)[0].supporters == 3


def test_auto_uses_the_feed_only_when_the_slot_exists(
    start_server: Callable[..., StatsServer],
    logical_url: str,
    db: ProcaData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        plain = start_server(logical_url, metrics_listen="127.0.0.1:0")
        wait_for(lambda: plain.store.synced_at, what="the first calculation")
    assert sample(plain, "proca_stats_change_feed", kind="updated-at") == 1
    assert sample(plain, "proca_stats_change_feed", kind="logical") == 0
    assert slot_position(logical_url) is None  # auto makes no slot
    assert any(
        "change feed: updated-at (the replication slot proca_stats does not exist)" in r.message
        for r in caplog.records
    )
    with psycopg.connect(logical_url, autocommit=True) as conn:
        set_up(conn, "proca_stats")
    campaign, page = ids(db)
    db.person(campaign, page, b"bob")
    resync(plain)  # takes the feed up: a full calculation
    assert sample(plain, "proca_stats_change_feed", kind="logical") == 1
    db.conn.execute("DELETE FROM actions WHERE campaign_id = %s", (campaign,))
    resync(plain)
    assert plain.store.get(campaign)[0] == full(logical_url)[campaign]
    assert plain.store.get(campaign)[0].supporters == 0
    lag = sample(plain, "proca_stats_feed_lag_bytes", slot="proca_stats")
    assert 0 <= lag < 16 * 1024 * 1024


def test_two_servers_never_read_one_slot(
    logical_server: Callable[..., StatsServer], logical_url: str, db: ProcaData
) -> None:
    """The second falls back to updated_at (and stays exact) while the first holds the slot,
    and takes the slot up once the first has stopped."""
    first = logical_server()
    second = logical_server(metrics_listen="127.0.0.1:0")
    assert first.changes.kind == "logical"
    assert second.changes.kind == "updated-at"
    assert sample(second, "proca_stats_change_feed", kind="updated-at") == 1
    campaign, page = ids(db)
    db.person(campaign, page, b"bob")
    resync(second)
    assert second.store.get(campaign)[0].supporters == 2
    first.stop(grace=0)
    db.person(campaign, page, b"cat")
    resync(second)
    assert second.changes.kind == "logical"
    assert second.store.get(campaign)[0] == full(logical_url)[campaign]
