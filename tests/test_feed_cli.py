"""`proca-stats db init --change-feed`, `db drop-feed`, and `serve --change-feed logical` on a
database that cannot give the feed: each mistake one line naming what to fix."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.support.logical_postgres import logical_postgres
from tests.support.servers import PROCA_STATS, clean_env, free_port


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROCA_STATS, *args], env=clean_env(), capture_output=True, text=True, timeout=120
    )


def serve_logical(url: str, *more: str) -> subprocess.CompletedProcess[str]:
    return run(
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--database-url",
        url,
        "--change-feed",
        "logical",
        "--no-state",
        *more,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("proca-stats: error: ")
    return lines[0].removeprefix("proca-stats: error: ")


def slots(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
        ).fetchall()
    return [row[0] for row in rows]


def test_db_init_makes_the_feed_and_drop_feed_removes_it(logical_url: str) -> None:
    made = run("db", "init", "--database-url", logical_url, "--change-feed", "--feed-slot", "f1")
    assert made.returncode == 0, made.stderr
    assert "change feed ready: publication and replication slot f1 made" in made.stderr
    again = run("db", "init", "--database-url", logical_url, "--change-feed", "--feed-slot", "f1")
    assert "publication and replication slot f1 already there" in again.stderr
    assert slots(logical_url) == ["f1"]
    with psycopg.connect(logical_url) as conn:
        published = conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'f1' ORDER BY 1"
        ).fetchall()
    assert [t for (t,) in published] == ["action_pages", "actions", "campaigns", "supporters"]
    dropped = run("db", "drop-feed", "--database-url", logical_url, "--feed-slot", "f1")
    assert (dropped.returncode, dropped.stderr.strip()) == (
        0,
        "dropped the replication slot and the publication f1",
    )
    assert slots(logical_url) == []
    gone = run("db", "drop-feed", "--database-url", logical_url, "--feed-slot", "f1")
    assert gone.stderr.strip() == "no change feed f1"


def test_a_database_without_logical_wal_ends_serve_in_one_line(database_url: str) -> None:
    """The machine's PostgreSQL (or the embedded one as proca-stats starts it) runs with
    wal_level replica."""
    with psycopg.connect(database_url) as conn:
        level = conn.execute("SHOW wal_level").fetchone()
    if level and level[0] == "logical":
        pytest.skip("this PostgreSQL has wal_level logical")
    assert one_line_error(serve_logical(database_url)) == (
        f"change feed: the database's wal_level is {level and level[0]}; set wal_level = "
        "logical (postgresql.conf, or ALTER SYSTEM SET wal_level = logical) and restart "
        "PostgreSQL"
    )


@pytest.fixture
def plain_role(logical_url: str) -> Iterator[str]:
    """A role that may read the tables but not use replication slots nor publish them."""
    admin = logical_postgres().url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS proca_reader")
        conn.execute("CREATE ROLE proca_reader LOGIN")
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO proca_reader")
    yield make_conninfo(logical_url, user="proca_reader")
    with psycopg.connect(logical_url, autocommit=True) as conn:
        conn.execute("DROP OWNED BY proca_reader")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP ROLE proca_reader")


def test_a_role_without_replication_ends_serve_in_one_line(plain_role: str) -> None:
    assert one_line_error(serve_logical(plain_role)) == (
        "change feed: role proca_reader may not use replication slots; give it the "
        "attribute (as a superuser): ALTER ROLE proca_reader REPLICATION"
    )


def test_a_role_that_does_not_own_the_tables_cannot_publish_them(
    plain_role: str, logical_url: str
) -> None:
    with psycopg.connect(logical_postgres().url, autocommit=True) as conn:
        conn.execute("ALTER ROLE proca_reader REPLICATION")
    error = one_line_error(serve_logical(plain_role))
    assert error == (
        "change feed: cannot create the publication proca_stats (role proca_reader does not "
        "own action_pages, actions, campaigns, supporters); run `proca-stats db init "
        "--change-feed --feed-slot proca_stats` as the tables' owner"
    )


def test_no_free_replication_slot_ends_serve_in_one_line(logical_url: str) -> None:
    admin = logical_postgres().url
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_replication_slots')::int - count(*)"
            " FROM pg_replication_slots"
        ).fetchone()
        assert row is not None
        fillers = [f"filler_{n}" for n in range(row[0])]
        for name in fillers:
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (name,))
        try:
            error = one_line_error(serve_logical(logical_url))
        finally:
            for name in fillers:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    assert error == (
        "change feed: all 20 replication slots of the database are in use; drop an unused "
        "one (pg_drop_replication_slot) or raise max_replication_slots"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--change-feed", "binlog"),
            "--change-feed: expected auto, logical or updated-at, got 'binlog'",
        ),
        (("--feed-slot", "Feed-1"), "--feed-slot: expected a PostgreSQL identifier"),
    ],
)
def test_feed_flag_mistakes_end_with_one_line(
    database_url: str, args: tuple[str, ...], message: str
) -> None:
    done = run("serve", "--database-url", database_url, *args)
    assert one_line_error(done).startswith(message)
