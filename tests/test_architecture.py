"""The layout's rules hold in the code: what each part of the server may import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parent.parent / "server"
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
