"""The tree keeps its promises: generated code matches the proto, lint and strict typing pass."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_generated_code_matches_the_proto() -> None:
    done = run(str(ROOT / "protos" / "generate.py"), "--check")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("command", [("check",), ("format", "--check")])
def test_ruff(command: tuple[str, ...]) -> None:
    done = run("-m", "ruff", *command, ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_on_the_installed_package() -> None:
    done = run("-m", "mypy", *(f"-p=proca_stats.{part}" for part in ("server", "client", "cli")))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_flag_is_in_the_readme_configuration_table() -> None:
    from proca_stats.cli.commands import build_parser

    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    commands = [build_parser()]
    flags: set[str] = set()
    while commands:
        parser = commands.pop()
        for action in parser._actions:  # argparse keeps no public list of its options
            flags.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
            if isinstance(action, argparse._SubParsersAction):
                commands.extend(action.choices.values())
    missing = sorted(f for f in flags if f"`{f}" not in table)
    assert not missing, f"flags missing from the README's Configuration table: {missing}"
