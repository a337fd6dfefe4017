"""Warm restarts: the state file written after each refresh and at stop, served at once at the
next start, then brought up to date; every file that cannot be trusted means a cold start."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from proca_stats.server.app import StatsServer
from proca_stats.server.database import init_schema
from proca_stats.server.state.counters import Increment
from proca_stats.server.sync.calculation import calculate
from proca_stats.server.sync.statefile import FORMAT, MAGIC, StateFile
from proca_stats.server.sync.warm import identify
from tests.support.database import lock_actions
from tests.support.logical_postgres import logical_postgres
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for

Start = Callable[..., StatsServer]


def figures(url: str) -> dict[int, object]:
    with psycopg.connect(url) as conn:
        return dict(calculate(conn).campaigns)


def answers(server: StatsServer, campaigns: list[int]) -> dict[int, object]:
    return {c: server.store.get(c)[0] for c in campaigns}


def state_file(directory: Path, url: str) -> Path:
    with psycopg.connect(url) as conn:
        identity = identify(conn.cursor())
    return StateFile(directory).path(identity)


def people(url: str, count: int = 3) -> tuple[ProcaData, int, int]:
    """A campaign with ``count`` people; the data writer, the campaign and its page."""
    conn = psycopg.connect(url, autocommit=True)
    data = ProcaData(conn)
    org = data.org()
    campaign = data.campaign(org)
    page = data.page(campaign, org, extra_supporters=2)
    for n in range(count):
        data.person(campaign, page, f"person {n}".encode(), area="DE")
    return data, campaign, page


def started(start: Start, url: str, state_dir: Path, **config: object) -> StatsServer:
    server = start(url, state_dir=state_dir, **config)
    wait_for(lambda: server.store.synced_at, what="figures")
    return server


@pytest.mark.parametrize("feed", ["logical", "updated-at"])
def test_a_warm_start_serves_the_saved_figures_at_once_then_catches_up(
    start_server: Start,
    logical_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    feed: str,
) -> None:
    """Changes made while stopped (a delete among them) are taken in by the first refresh,
    from the saved position: incremental, the touched campaign recounted."""
    data, campaign, _page = people(logical_url)
    other = data.campaign()
    other_page = data.page(other, None)
    first = started(start_server, logical_url, tmp_path, change_feed=feed)
    before = answers(first, [campaign, other])
    taken_at = first.store.synced_at
    first.stop(grace=0)
    gone = data.conn.execute("SELECT min(id) FROM actions").fetchone()
    data.conn.execute("DELETE FROM actions WHERE id = %s", gone)
    data.person(other, other_page, b"newcomer")
    caplog.set_level(logging.INFO)
    locked = lock_actions(logical_url)  # no calculation can read the actions meanwhile
    try:
        second = started(start_server, logical_url, tmp_path, change_feed=feed)
        assert second.store.synced_at == taken_at
        assert answers(second, [campaign, other]) == before
        assert "warm start: serving the figures" in caplog.text
    finally:
        locked.close()
    expected = figures(logical_url)
    wait_for(lambda: answers(second, [campaign, other]) == expected, what="the refresh")
    line = wait_for(lambda: sync_line(caplog), what="the sync's log line")
    assert line.startswith("sync: incremental refresh")
    assert f"change feed {feed})" in line
    if feed == "logical":  # the delete is seen: the campaign counts one person less
        assert expected[campaign].supporters == before[campaign].supporters - 1  # type: ignore[attr-defined]


def test_increments_keep_their_guarantee_across_a_warm_start(
    start_server: Start, logical_url: str, tmp_path: Path
) -> None:
    """One counted after the last refresh is saved at stop and counted again after the start
    (the first answers are those before the stop), and not again when retried; one that
    arrives while the saved figures are served is counted once; one whose action is not in
    the database is forgotten once a snapshot taken after it has looked."""
    data, campaign, page = people(logical_url, 1)
    first = started(start_server, logical_url, tmp_path, change_feed="logical")
    late = data.person(campaign, page, b"late")
    first.store.increment(Increment(campaign, 1, "signature", None, True, late))
    before = answers(first, [campaign])
    first.stop(grace=0)
    meanwhile = data.person(campaign, page, b"meanwhile")
    locked = lock_actions(logical_url)
    try:
        second = started(start_server, logical_url, tmp_path, change_feed="logical")
        saved_at = second.store.synced_at
        assert answers(second, [campaign]) == before
        assert second.store.increment(Increment(campaign, 1, "signature", None, True, meanwhile))
        assert not second.store.increment(Increment(campaign, 1, "signature", None, True, late))
        second.store.increment(Increment(campaign, 1, "signature", None, True, 10**9))
    finally:
        locked.close()
    wait_for(lambda: second.store.synced_at != saved_at, what="the first refresh")
    resync(second)
    expected = figures(logical_url)
    assert expected[campaign].supporters == 3 + 2  # type: ignore[attr-defined]  # 2 extra
    assert answers(second, [campaign]) == {campaign: expected[campaign]}


def test_a_slot_gone_while_stopped_serves_the_saved_figures_then_a_full_calculation(
    start_server: Start, logical_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, campaign, page = people(logical_url)
    first = started(start_server, logical_url, tmp_path, change_feed="logical")
    before = answers(first, [campaign])
    first.stop(grace=0)
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot('proca_stats')")
    data.person(campaign, page, b"newcomer")
    caplog.set_level(logging.INFO)
    locked = lock_actions(logical_url)
    try:
        second = started(start_server, logical_url, tmp_path, change_feed="logical")
        assert answers(second, [campaign]) == before
    finally:
        locked.close()
    expected = figures(logical_url)
    wait_for(lambda: answers(second, [campaign]) == {campaign: expected[campaign]}, what="sync")
    assert "warm start: the change source cannot continue from the saved figures" in caplog.text
    line = wait_for(lambda: sync_line(caplog), what="the sync's log line")
    assert line.startswith("sync: full refresh")


def test_a_server_of_another_slot_sharing_the_state_file_recalculates_in_full(
    start_server: Start, logical_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two servers of one database and one state directory, each reading its own slot: the
    second serves the first's figures at once, but does not continue from its mark."""
    data, campaign, page = people(logical_url)
    first = started(start_server, logical_url, tmp_path, change_feed="logical", feed_slot="one")
    before = answers(first, [campaign])
    first.stop(grace=0)
    data.person(campaign, page, b"newcomer")
    caplog.set_level(logging.INFO)
    locked = lock_actions(logical_url)
    try:
        second = started(
            start_server, logical_url, tmp_path, change_feed="logical", feed_slot="other"
        )
        assert answers(second, [campaign]) == before
    finally:
        locked.close()
    expected = figures(logical_url)
    wait_for(lambda: answers(second, [campaign]) == {campaign: expected[campaign]}, what="sync")
    assert "warm start: the change source cannot continue from the saved figures" in caplog.text
    line = wait_for(lambda: sync_line(caplog), what="the sync's log line")
    assert line.startswith("sync: full refresh")


def test_a_slot_invalidated_while_stopped_is_made_anew_with_one_warning(
    start_server: Start, logical_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL invalidates a slot that falls behind more than max_slot_wal_keep_size."""
    data, campaign, page = people(logical_url)
    first = started(start_server, logical_url, tmp_path, change_feed="logical")
    first.stop(grace=0)
    admin = logical_postgres().url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            for _ in range(10):
                if wal_status(conn) == "lost":
                    break
                data.person(campaign, page, b"x")  # something to switch away from
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("CHECKPOINT")
            assert wal_status(conn) == "lost"
        finally:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = started(start_server, logical_url, tmp_path, change_feed="logical")
        expected = figures(logical_url)
        wait_for(lambda: answers(second, [campaign]) == {campaign: expected[campaign]}, what="sync")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "change feed: the replication slot proca_stats was invalidated (the WAL it needed was "
        "removed: max_slot_wal_keep_size); making it anew, then a full calculation"
    ]
    data.person(campaign, page, b"after")
    resync(second)
    assert answers(second, [campaign]) == {campaign: figures(logical_url)[campaign]}


def wal_status(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'proca_stats'"
    ).fetchone()
    return row and row[0]


def sync_line(caplog: pytest.LogCaptureFixture) -> str | None:
    """The first sync log line (written just after the swap)."""
    return next(
        (r.getMessage() for r in caplog.records if r.getMessage().startswith("sync: ")), None
    )


def rewrite(path: Path, version: int, body: bytes) -> None:
    """The file with a valid header for ``body``, of format ``version``."""
    path.write_bytes(f"{MAGIC} {version} {hashlib.sha256(body).hexdigest()}\n".encode() + body)


def damage(path: Path, case: str, other: Path) -> str:
    """Make the state file one that must not be trusted; what the warning says."""
    content = path.read_bytes()
    body = content.partition(b"\n")[2]
    if case == "missing":
        path.unlink()
        return "there is none"
    if case == "corrupt":
        path.write_bytes(b"\x00\xff garbage")
        return "it is not a proca-stats state file"
    if case == "truncated":
        path.write_bytes(content[: len(content) // 2])
        return "its checksum does not match"
    if case == "edited by hand":
        path.write_bytes(content.replace(b'"supporters"', b'"supporters"  ', 1) + b" ")
        return "its checksum does not match"
    if case == "older format":
        rewrite(path, FORMAT - 1, body)
        return f"it is of an older format ({FORMAT - 1}; this version reads {FORMAT})"
    assert case == "foreign"
    path.write_bytes(other.read_bytes())  # another database's file, under this one's name
    return "it was written for another database"


@pytest.mark.parametrize(
    "case", ["missing", "corrupt", "truncated", "edited by hand", "older format", "foreign"]
)
def test_a_state_file_that_cannot_be_trusted_means_one_warning_and_a_cold_start(
    start_server: Start,
    database_url: str,
    create_database: Callable[[], str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    _, campaign, _ = people(database_url)
    first = started(start_server, database_url, tmp_path, change_feed="updated-at")
    first.stop(grace=0)
    caplog.clear()
    path = state_file(tmp_path, database_url)
    other = create_database()
    init_schema(other)
    if case == "foreign":
        other_server = started(start_server, other, tmp_path, change_feed="updated-at")
        other_server.stop(grace=0)
        caplog.clear()
        foreign = state_file(tmp_path, other)
        why = damage(path, case, foreign)
    else:
        why = damage(path, case, tmp_path / "unused")
    locked = lock_actions(database_url)
    try:
        with caplog.at_level(logging.WARNING):
            second = start_server(database_url, state_dir=tmp_path, change_feed="updated-at")
            wait_for(lambda: "warm start" in caplog.text, what="the state file to be read")
        assert second.store.synced_at is None  # not serving: the calculation waits for the lock
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].startswith(f"warm start: not using the state file {path}: {why}")
        assert warnings[0].endswith("; cold start")
    finally:
        locked.close()
    wait_for(lambda: second.store.synced_at, what="the first calculation")
    assert second.store.get(campaign)[0] == figures(database_url)[campaign]
    assert path.exists()  # written anew
