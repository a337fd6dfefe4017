"""The README as a newcomer uses it: the Python client example, run as written against a
real server, and the Layout section, which must name every module of the tree."""

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
# The packages whose every module the Layout section names (the generated contract/v1 is one entry).
PACKAGES = ("server", "cli", "client")


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


def layout_entries() -> list[str]:
    """The paths named in the first cell of each row of the README's Layout table.

    An entry ending in ``/*`` stands for every module of that folder, for a folder
    whose files the section does not pin (``cli/*``).
    """
    section = README.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("|")]
    entries = [path for cell in rows for path in re.findall(r"`([^`]+)`", cell)]
    assert entries, "no paths in the README's Layout table"
    return entries


def modules() -> set[str]:
    """Every Python module of the packages, as a path from the repository's root."""
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }


def covers(entry: str, module: str) -> bool:
    if entry.endswith("/*"):
        return module.startswith(entry[:-1])
    return module == entry


def test_the_layout_names_every_module() -> None:
    entries = layout_entries()
    missing = sorted(m for m in modules() if not any(covers(e, m) for e in entries))
    assert not missing, f"modules the README's Layout section does not name: {missing}"


def test_every_path_the_layout_names_exists() -> None:
    absent = sorted(
        entry
        for entry in layout_entries()
        if not (any(ROOT.glob(entry)) if "*" in entry else (ROOT / entry).exists())
    )
    assert not absent, f"paths in the README's Layout section that the tree lacks: {absent}"


def test_the_retry_config_for_other_languages_is_the_python_clients() -> None:
    section = README.read_text().split("### Retries", 1)[1]
    found = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert found, "no service config in the README's Retries section"
    assert json.loads(found.group(1)) == json.loads(DEFAULT_RETRY.service_config())
