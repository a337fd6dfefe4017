"""The benchmarks' databases: Proca-shaped data sets built inside PostgreSQL (dataset.sql).

bench/run.py builds its data set afresh (or reuses it with --reuse) with the
recommended indexes; bench/scale.py keeps one data set per scale, on exactly
Proca's indexes (proca_indexes.sql), in a database named for the scale and the
generator's version, and builds it only when it is missing.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from proca_stats.server.database import SCHEMA_SQL, init_schema

HERE = Path(__file__).resolve().parent
TABLES = ("campaigns", "action_pages", "supporters", "actions")

# The 1x data set; a scale multiplies it.
BASE_SIZES = {"supporters": 1_000_000, "actions": 1_500_000, "campaigns": 500}

PROCA_INDEXES = (HERE / "proca_indexes.sql").read_text()
GENERATOR = (HERE / "dataset.sql").read_text()
# Proca's tables as proca-stats creates them, without their indexes (made after the load)
# and without comments: what a scaled data set's version depends on.
TABLES_SQL = re.sub(r"CREATE INDEX[^;]*;|--[^\n]*", "", SCHEMA_SQL).strip()


def say(text: str = "") -> None:
    print(text, flush=True)


def drop_database(admin_url: str, name: str) -> None:
    """Drop ``name`` (and the replication slots kept in it, which would forbid the drop)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = %s AND NOT active",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_database(admin_url: str, name: str, template: str = "template1") -> str:
    """A new database (a copy of ``template``) in place of any of that name; returns its URL.

    The copy is made by copying files (``STRATEGY FILE_COPY``): a data set of gigabytes
    copied block by block through the WAL would cost several times as long.
    """
    drop_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return make_conninfo(admin_url, dbname=name)


def generate(url: str, supporters: int, actions: int, campaigns: int) -> None:
    """Fill the empty tables of ``url`` with dataset.sql's rows."""
    values = {"supporters": supporters, "actions": actions, "campaigns": campaigns}
    script = re.sub(r":(supporters|actions|campaigns)\b", lambda m: str(values[m[1]]), GENERATOR)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script.encode())


def build(
    admin_url: str,
    name: str,
    supporters: int,
    actions: int,
    campaigns: int,
    indexes: Callable[[str], None],
) -> str:
    """A fresh database holding the data set, ``indexes(url)`` run on it; returns its URL."""
    url = create_database(admin_url, name)
    init_schema(url)
    started = time.monotonic()
    generate(url, supporters, actions, campaigns)
    indexes(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    say(f"  built in {time.monotonic() - started:.0f} s")
    return url


def describe(url: str) -> None:
    with psycopg.connect(url) as conn:
        for table in TABLES:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            say(f"  {table:>13}: {row.fetchone()[0]:>11,}")  # type: ignore[index]
        pairs = conn.execute((HERE / "floor.sql").read_text().encode()).fetchone()
        say(f"  counted (action, supporter) pairs: {pairs[0]:,}")  # type: ignore[index]


# --- one kept data set per scale -------------------------------------------------------------


def scaled_name(scale: float) -> str:
    """The database of a scale's data set: named for the scale and the generator's version
    (a digest of what builds it), so that a changed generator builds a new one."""
    version = hashlib.sha256((GENERATOR + PROCA_INDEXES + TABLES_SQL).encode()).hexdigest()[:8]
    return f"{_scale_prefix(scale)}{version}"


def _scale_prefix(scale: float) -> str:
    return f"proca_stats_bench_x{scale:g}_".replace(".", "_")


def scaled_sizes(scale: float) -> dict[str, int]:
    return {name: round(size * scale) for name, size in BASE_SIZES.items()}


def databases(admin_url: str) -> list[str]:
    with psycopg.connect(admin_url) as conn:
        return [name for (name,) in conn.execute("SELECT datname FROM pg_database")]


def build_time(admin_url: str, name: str) -> str:
    """What the data set's build took, as recorded on the database."""
    with psycopg.connect(admin_url) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
    return str(row[0]) if row and row[0] else "unknown"


def scaled_data_set(admin_url: str, scale: float) -> str:
    """The URL of the scale's data set, built first when it is missing.

    It is built under another name and renamed when complete, so an interrupted
    build is never taken for a data set; the data sets of older generator versions
    of the same scale are dropped first, for their disk space.
    """
    name = scaled_name(scale)
    present = databases(admin_url)
    if name in present:
        say(f"Data set {name}: kept from an earlier run ({build_time(admin_url, name)})")
        return make_conninfo(admin_url, dbname=name)
    shape = re.escape(_scale_prefix(scale)) + r"[0-9a-f]{8}(_building)?"
    for stale in (other for other in present if re.fullmatch(shape, other)):
        say(f"  dropping {stale} (another generator version, or an unfinished build)")
        drop_database(admin_url, stale)
    sizes = scaled_sizes(scale)
    say(
        f"Building the data set {name} ({sizes['supporters']:,} supporters,"
        f" {sizes['actions']:,} actions, {sizes['campaigns']:,} campaigns)"
    )
    building = name + "_building"
    url = create_database(admin_url, building)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        # Proca's tables, indexed after the load (faster than row by row), with Proca's indexes.
        conn.execute(TABLES_SQL.encode())
    generate(url, **sizes)
    loaded = time.monotonic() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")  # this session's index builds only
        conn.execute(PROCA_INDEXES.encode())
        indexed = time.monotonic() - started - loaded
        conn.execute("VACUUM ANALYZE")
    seconds = time.monotonic() - started
    note = f"built in {seconds:.0f} s: rows {loaded:.0f} s, indexes {indexed:.0f} s, vacuum"
    note += f" {seconds - loaded - indexed:.0f} s"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(building), sql.Identifier(name)
            )
        )
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(note))
        )
    say(f"  {note}")
    return make_conninfo(admin_url, dbname=name)


def index_differences(url: str) -> list[str]:
    """Indexes of Proca's tables (beside primary keys) that Proca's migrations do not make, or
    that they make and are missing: none, on a data set with exactly Proca's indexes."""
    expected = set(re.findall(r"CREATE INDEX IF NOT EXISTS (\w+)", PROCA_INDEXES))
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename = ANY(%s) AND indexname NOT LIKE '%%_pkey'",
            (["orgs", *TABLES],),
        )
        found = {name for (name,) in rows}
    return sorted(found ^ expected)
