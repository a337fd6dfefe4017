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


def readme_flags() -> set[tuple[str, str]]:
    """(command, flag) of every row of the README's Configuration table; "all" is every
    command and the line before the command's name ("")."""
    from proca_stats.cli.commands import COMMANDS

    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1]
    rows = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    pairs: set[tuple[str, str]] = set()
    for row in rows[1:]:
        commands, flag = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = ["", *(c.name for c in COMMANDS)] if commands == "all" else commands.split(", ")
        pairs.update((name.strip("`"), flag.strip("`").split()[0]) for name in names)
    return pairs


def parser_flags() -> set[tuple[str, str]]:
    """(command, flag) of every option and argument the command line takes, but argparse's
    own --help and --version."""
    from proca_stats.cli.commands import parser

    pairs: set[tuple[str, str]] = set()
    commands: list[tuple[str, argparse.ArgumentParser]] = [("", parser())]
    while commands:
        name, command = commands.pop()
        for action in command._actions:  # argparse keeps no public list of its options
            if isinstance(action, argparse._SubParsersAction):
                words = action.choices.items()
                commands.extend((f"{name} {word}".strip(), sub) for word, sub in words)
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                flag = action.option_strings[-1] if action.option_strings else action.metavar
                pairs.add((name, str(flag)))
    return pairs


def test_every_flag_is_in_the_readme_configuration_table() -> None:
    """Every option of every command has its row, and every row its option."""
    flags = parser_flags()
    assert ("db", "--log-level") in flags  # a group takes what all commands take
    assert flags - {("db", "--log-level")} == readme_flags()
