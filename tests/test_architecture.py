"""The layout's rules hold in the code (what each part of the server may import) and in
docs/architecture.md, whose table must name every module of the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# The packages whose every module the table names (the generated contract/v1 is one entry).
PACKAGES = ("server", "cli", "client")
PACKAGE = "proca_stats.server"

# Per part: the imports it must not make (prefixes of module names).
FORBIDDEN = {
    # The counters know nothing of transports, databases, or the parts that use them.
    "state": (
        f"{PACKAGE}.api",
        f"{PACKAGE}.sync",
        f"{PACKAGE}.fanout",
        f"{PACKAGE}.app",
        f"{PACKAGE}.database",
        f"{PACKAGE}.settings",
        "grpc",
        "psycopg",
        "psycopg_pool",
    ),
    # Requests in, answers out: the state's, never the database's.
    "api": (f"{PACKAGE}.sync", f"{PACKAGE}.fanout", f"{PACKAGE}.database", "psycopg"),
    # The sync only produces snapshots and hands them to the state.
    "sync": (f"{PACKAGE}.api", f"{PACKAGE}.fanout", "grpc"),
    "fanout": (f"{PACKAGE}.api", f"{PACKAGE}.sync", "grpc"),
}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_every_server_module_belongs_to_a_part_or_to_the_wiring() -> None:
    """A new module goes into a part (or is one of the few top-level ones), and no module
    imports relatively: the imports then say plainly which part they reach into."""
    for path in SERVER.rglob("*.py"):
        relative = ast.walk(ast.parse(path.read_text()))
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in relative), path
        part = path.relative_to(SERVER).parts[0]
        assert path.parent == SERVER or part in FORBIDDEN, path


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_part_imports_only_what_the_layout_allows(part: str) -> None:
    wrong = {
        f"{path.relative_to(SERVER)} imports {name}"
        for path in (SERVER / part).rglob("*.py")
        for name in imported(path)
        if name.startswith(FORBIDDEN[part])
    }
    assert not wrong, sorted(wrong)


MAX_LINES = 450


def test_no_module_grows_past_450_lines() -> None:
    """A big module is two jobs sharing a room: split it along them."""
    root = SERVER.parent
    big = {
        f"{path.relative_to(root)}: {lines} lines"
        for folder in ("server", "cli", "client")
        for path in (root / folder).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not big, sorted(big)


def layout_entries() -> list[str]:
    """The paths named in the first cell of each row of docs/architecture.md's table.

    An entry ending in ``/*`` stands for every module of that folder, for a folder
    whose files the section does not pin (``cli/*``).
    """
    section = ARCHITECTURE.read_text().split("\n## Every module\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("|")]
    entries = [path for cell in rows for path in re.findall(r"`([^`]+)`", cell)]
    assert entries, "no paths in the table"
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
    assert not missing, f"modules docs/architecture.md does not name: {missing}"


def test_every_path_the_layout_names_exists() -> None:
    absent = sorted(
        entry
        for entry in layout_entries()
        if not (any(ROOT.glob(entry)) if "*" in entry else (ROOT / entry).exists())
    )
    assert not absent, f"paths in docs/architecture.md that the tree lacks: {absent}"
