"""`proca-stats` run as a person runs it, and the one line a mistake must end with."""

from __future__ import annotations

import subprocess

from tests.support.servers import PROCA_STATS, clean_env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROCA_STATS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env() if env is None else env,
        check=False,
    )


def assert_one_line_error(
    done: subprocess.CompletedProcess[str], *fragments: str, status: int = 1
) -> None:
    """One `proca-stats: error:` line holding ``fragments``, and exit ``status`` (2 for a
    command line argparse refuses): no traceback, no usage, no gRPC core log line."""
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("proca-stats: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
