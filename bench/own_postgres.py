"""A PostgreSQL of the benchmark's own: its data directory, its port, its settings.

The logical change feed needs ``wal_level = logical``, which only a restart of
PostgreSQL sets; a shared PostgreSQL must not be restarted under the people
using it. So the benchmark starts one of its own, with the machine's
PostgreSQL binaries (``pg_config --bindir``) unless told others, and keeps its
data directory, and the data sets in it, for the next run. Every setting but
``wal_level`` (and ``max_wal_size``, which only paces the checkpoints of the
data set's build) is PostgreSQL's default, so its figures compare with those
measured on a PostgreSQL with default settings.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

# Settings given at start (-c), beside PostgreSQL's defaults.
SETTINGS = {
    "wal_level": "logical",
    "max_wal_size": "4GB",
    "listen_addresses": "127.0.0.1",
}

# PostgreSQL refuses to run as root: as root, the server runs as this system user.
SYSTEM_USER = "postgres"


def machine_binaries() -> Path | None:
    """Where the machine's PostgreSQL binaries are, according to pg_config."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    folder = Path(found.stdout.strip())
    return folder if found.returncode == 0 and (folder / "initdb").exists() else None


class OwnPostgres:
    """The PostgreSQL whose data directory is ``pgdata``, run with ``binaries``."""

    def __init__(self, pgdata: Path, binaries: Path) -> None:
        self.pgdata = pgdata.resolve()
        self.binaries = binaries
        self.port = 0

    def _run(self, program: str, *args: str) -> str:
        user = SYSTEM_USER if os.geteuid() == 0 else None
        done = subprocess.run(
            [str(self.binaries / program), *args],
            capture_output=True,
            text=True,
            user=user,
            check=False,
            cwd="/",
        )
        if done.returncode != 0:
            raise SystemExit(f"bench: {program} failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def init(self) -> None:
        """Create the data directory's cluster when it has none."""
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.pgdata, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(self.pgdata)
        )

    def running(self) -> bool:
        done = subprocess.run(
            [str(self.binaries / "pg_ctl"), "status", "-D", str(self.pgdata)],
            capture_output=True,
            user=SYSTEM_USER if os.geteuid() == 0 else None,
            check=False,
            cwd="/",
        )
        return done.returncode == 0

    def start(self, port: int) -> str:
        """Start on ``port`` of 127.0.0.1; returns the URL of its postgres database."""
        settings = " ".join(f"-c {name}={value}" for name, value in SETTINGS.items())
        options = f"-p {port} -k {self.pgdata} {settings}"
        log = str(self.pgdata / "log")
        self._run(
            "pg_ctl", "start", "-w", "-t", "300", "-D", str(self.pgdata), "-l", log, "-o", options
        )
        self.port = port
        return self.url()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "300", "-m", "fast", "-D", str(self.pgdata))

    def cpu_seconds(self) -> float:
        """CPU time the instance's processes used so far: the postmaster's, that of its
        processes alive now, and that of those that ended (which the postmaster reaped, so
        their time is in its children's). On a machine shared with other work this says
        what a query cost more steadily than its duration does."""
        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile
            pid, ppid = int(stat.parent.name), int(fields[1])
            if pid == postmaster:
                total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif ppid == postmaster:
                total += int(fields[11]) + int(fields[12])  # utime stime
        return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def own_postgres(pgdata: Path, binaries: Path, port: int) -> Iterator[OwnPostgres]:
    """The PostgreSQL of ``pgdata`` running for the block (created on first use). One left
    running by an interrupted run is restarted with these settings."""
    server = OwnPostgres(pgdata, binaries)
    server.init()
    if server.running():
        server.stop()
    url = server.start(port)
    try:
        with psycopg.connect(url) as conn:
            level = conn.execute("SHOW wal_level").fetchone()
        assert level == ("logical",), level
        yield server
    finally:
        server.stop()
