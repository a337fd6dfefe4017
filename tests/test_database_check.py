"""A database that cannot be used, against real PostgreSQL: failures waiting cannot mend end the
start-up check naming the flag and the cause; failures that can pass are told and left to the
sync's retries, which log one line per attempt and stop at once when the server does."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from proca_stats.server.app import StatsServer
from proca_stats.server.database import embedded_postgres, init_schema
from proca_stats.server.database_check import DatabaseUnusable, check_database, lasting
from tests.support.database import postgres_folder
from tests.support.metrics import sample
from tests.support.servers import PROCA_STATS, clean_env, free_port
from tests.support.waiting import wait_for

FLAG = "--database-url"


def unusable(url: str) -> str:
    with pytest.raises(DatabaseUnusable) as refused:
        check_database(url, FLAG, connect_timeout=2)
    message = str(refused.value)
    assert message.startswith(f"{FLAG}: ")
    assert "\n" not in message
    return message


def test_a_database_with_proca_tables_is_usable(database_url: str) -> None:
    assert check_database(database_url, FLAG, connect_timeout=2) is None


def test_a_database_that_does_not_exist(postgres_url: str) -> None:
    message = unusable(make_conninfo(postgres_url, dbname="proca_stats_no_such_database"))
    assert 'database "proca_stats_no_such_database" does not exist' in message


def test_a_role_that_does_not_exist(postgres_url: str) -> None:
    message = unusable(make_conninfo(postgres_url, user="proca_stats_no_such_role"))
    assert 'role "proca_stats_no_such_role" does not exist' in message


def test_a_host_that_does_not_resolve() -> None:
    # .invalid never resolves (RFC 6761).
    message = unusable("postgresql://postgres@proca-stats.invalid:5432/proca")
    assert "proca-stats.invalid" in message
    assert "Name or service not known" in message


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql://postgres@127.0.0.1:port/proca", 'invalid integer value "port"'),
        ("not-a-url", 'missing "=" after "not-a-url"'),
        ("postgresql://postgres@127.0.0.1/proca?sslmode=sometimes", "sslmode"),
    ],
)
def test_a_malformed_url(url: str, fragment: str) -> None:
    assert fragment in unusable(url)


@pytest.fixture
def password_postgres() -> Iterator[str]:
    """An embedded PostgreSQL of the test's own whose role proca_stats_pw must give its
    password, 'right' (the shared test cluster trusts every local connection, so no
    password can be wrong there); the URL is the administrator's."""
    with postgres_folder() as folder:
        pgdata = Path(folder) / "pgdata"
        server = embedded_postgres(pgdata, delete=True)
        hba = pgdata / "pg_hba.conf"
        hba.write_text("local all proca_stats_pw scram-sha-256\n" + hba.read_text())
        url: str = server.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE ROLE proca_stats_pw LOGIN PASSWORD 'right'")
            conn.execute("SELECT pg_reload_conf()")
        yield url
        server.cleanup()


def test_a_wrong_password(password_postgres: str) -> None:
    url = make_conninfo(password_postgres, user="proca_stats_pw", password="wrong")
    message = unusable(url)
    assert 'password authentication failed for user "proca_stats_pw"' in message
    assert "wrong" not in message  # the password itself is never shown
    # The right one gets further: to the tables, which this database lacks.
    right = make_conninfo(password_postgres, user="proca_stats_pw", password="right")
    assert "missing tables campaigns, action_pages, supporters, actions" in unusable(right)


def test_a_database_without_proca_tables(create_database: Callable[[], str]) -> None:
    message = unusable(create_database())
    assert "missing tables campaigns, action_pages, supporters, actions" in message
    assert "`proca-stats db init` creates the tables" in message


def test_a_table_without_a_column_read(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE supporters DROP COLUMN dupe_rank")
        conn.execute("ALTER TABLE actions DROP COLUMN testing, DROP COLUMN updated_at")
    message = unusable(database_url)
    assert "table supporters lacks column dupe_rank" in message
    assert "table actions lacks columns testing, updated_at" in message


@pytest.fixture
def role_without_privileges(postgres_url: str, database_url: str) -> Iterator[str]:
    """A role that may log in and read nothing; its grants in the test's database and the
    role itself are dropped after the test."""
    role = sql.Identifier("proca_stats_test_reader")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    yield "proca_stats_test_reader"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


def test_a_role_that_may_not_read_the_tables(
    database_url: str, role_without_privileges: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON campaigns, action_pages TO {}").format(
                sql.Identifier(role_without_privileges)
            )
        )
    message = unusable(make_conninfo(database_url, user=role_without_privileges))
    assert "no SELECT privilege on supporters, actions" in message
    assert "missing" not in message


def test_connection_refused_can_pass() -> None:
    found = check_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x", FLAG, 2)
    assert found is not None
    assert "Connection refused" in found


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener takes connections into its backlog and never answers, as a
    database host behind a stalled network does."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_a_timeout_can_pass(silent_port: int) -> None:
    found = check_database(f"postgresql://postgres@127.0.0.1:{silent_port}/x", FLAG, 1)
    assert found is not None
    assert "timeout expired" in found


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "db", port 5432 failed: FATAL:  the database system is '
        "starting up",
        'connection to server at "db", port 5432 failed: FATAL:  the database system is '
        "shutting down",
        'connection to server at "db", port 5432 failed: FATAL:  sorry, too many clients already',
        "failed to resolve host 'db': [Errno -3] Temporary failure in name resolution",
        'connection to server at "db", port 5432 failed: timeout expired',
        "consuming input failed: server closed the connection unexpectedly",
    ],
)
def test_failures_that_can_pass_are_not_lasting(message: str) -> None:
    assert not lasting(psycopg.OperationalError(message))


class Lines:
    """A process's stderr, line by line, collected by a thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        self._stream = process.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip("\n"))

    def finished(self) -> list[str]:
        self._thread.join(timeout=30)
        return self.lines


def test_serve_logs_one_line_per_failed_attempt_and_stops_at_once() -> None:
    port = free_port()
    process = subprocess.Popen(
        [PROCA_STATS, "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--database-url", f"postgresql://postgres@127.0.0.1:{port}/proca"],
        env=clean_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stderr = Lines(process)
    try:
        wait_for(
            lambda: sum("sync failed: " in line for line in stderr.lines) >= 3,
            timeout=60,
            what="three failed attempts",
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines = stderr.finished()
    warnings = [line for line in lines if " WARNING " in line]
    # The start-up check says once that the database cannot be reached yet; then the sync
    # says it once per attempt.
    assert "Connection refused; serving without figures until it can be read" in warnings[0]
    assert len(warnings[1:]) >= 3
    for line in warnings[1:]:
        assert " proca_stats.server.sync.worker: sync failed: database error: " in line, line
        assert (
            f"port {port} failed: Connection refused; keeping the last figures, next try in "
            in line
        )
    assert not any("psycopg.pool" in line for line in lines), lines
    assert not any("did not stop" in line for line in lines), lines  # the sync thread ended
    assert "Traceback" not in "\n".join(lines)


def test_a_stop_while_the_database_does_not_answer_ends_the_sync(
    start_server: Callable[..., StatsServer], silent_port: int
) -> None:
    """The first attempt waits for a connection that would take 30 s to fail: the stop does
    not wait for it (a stop gives the thread 5 s, then leaves it running)."""
    url = f"postgresql://postgres@127.0.0.1:{silent_port}/x"
    server = start_server(url, connect_timeout=30.0)
    wait_for(lambda: sample(server, "proca_stats_sync_runs_total") >= 1, what="an attempt")
    server.stop(grace=0)
    assert not server.sync.is_alive()


def test_an_initialised_database_is_usable_again(create_database: Callable[[], str]) -> None:
    url = create_database()
    unusable(url)
    init_schema(url)
    assert check_database(url, FLAG, connect_timeout=2) is None
