"""The README as a newcomer uses it: the Python client example, run as written against a
real server, and the retry config it gives other languages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

from proca_stats.client import DEFAULT_RETRY, DEFAULT_TARGET
from proca_stats.server.app import StatsServer

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"


def python_example() -> str:
    """The first Python block after the README's "### Python" heading."""
    section = README.read_text().split("### Python", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no Python example in the README"
    return found.group(1)


def test_the_python_client_example_runs(server: StatsServer) -> None:
    code = python_example().replace(DEFAULT_TARGET, f"127.0.0.1:{server.port}")
    example = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(60, example.kill)  # a stuck example fails, it does not hang
    watchdog.start()
    try:
        assert example.stdout is not None
        # The watch loop runs until the server shuts down: read up to its first figures.
        lines = [example.stdout.readline().strip() for _ in range(6)]
        server.stop(grace=0)
        _, stderr = example.communicate()
    finally:
        watchdog.cancel()
    assert example.returncode == 0, stderr
    assert lines == ["True", "1 {2: 1}", "1 1", "2 0", "1 1", "1"]


def test_the_retry_config_for_other_languages_is_the_python_clients() -> None:
    section = README.read_text().split("### Retries", 1)[1]
    found = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert found, "no service config in the README's Retries section"
    assert json.loads(found.group(1)) == json.loads(DEFAULT_RETRY.service_config())
