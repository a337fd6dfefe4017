"""The settings table is the one home of every setting: the command line, --help, the
environment variables (with their older names), ServeConfig's defaults and the README's
Configuration table all follow it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from proca_stats.cli.commands import COMMANDS, parse
from proca_stats.cli.options import settings_of
from proca_stats.server.settings import SETTINGS, ServeConfig, Setting, help_text, markdown_table
from tests.support.command_line import assert_one_line_error, run_cli
from tests.support.proca_data import ProcaData
from tests.support.servers import clean_env

README = Path(__file__).resolve().parent.parent / "README.md"
ALIASED = [setting for setting in SETTINGS if setting.aliases]
NOWHERE = "postgresql://127.0.0.1:1/nowhere"
# A data directory that cannot be made: a command that looked for no database fails at once
# rather than start an embedded PostgreSQL.
NO_EMBEDDED = {"PROCA_STATS_DATA_DIR": "/dev/null/proca-stats"}


@pytest.fixture
def no_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment of this process without any variable a setting is read from."""
    for setting in SETTINGS:
        for name in setting.variables:
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_readme_configuration_table_is_the_settings_table() -> None:
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = "".join(f"{line}\n" for line in section.splitlines() if line.startswith("|"))
    assert rows == markdown_table(), "paste markdown_table()'s rows into the README"


def test_serve_config_takes_its_defaults_from_the_table() -> None:
    config = ServeConfig()
    fields = {field.name for field in dataclasses.fields(ServeConfig)}
    filled = {setting.field: setting for setting in settings_of("serve") if setting.field}
    for field, setting in filled.items():
        holder = config if field in fields else config.limits
        assert getattr(holder, field) == setting.default, setting.flag
    assert len(filled) == len([s for s in SETTINGS if s.field])  # one setting per field
    # The other fields are read from files settings name, or are not settings at all.
    assert fields - set(filled) == {
        "tls",
        "tokens",
        "limits",
        "workers",
        "connect_timeout",
        "http_timeouts",
    }


@pytest.mark.parametrize("command", [command.name for command in COMMANDS])
def test_help_shows_every_setting_of_the_command_as_the_table_says(command: str) -> None:
    done = run_cli(*command.split(), "--help", env=clean_env(COLUMNS="1000"))
    assert done.returncode == 0, done.stderr
    shown = " ".join(done.stdout.split())
    for setting in settings_of(command):
        assert " ".join(help_text(setting).split()) in shown, setting.flag


def read(setting: Setting[Any], *flags: str) -> Any:
    """The value of ``setting`` for its first command given ``flags``."""
    args = parse([*setting.commands[0].split(), *flags])
    return getattr(args, setting.dest)


@pytest.mark.parametrize("setting", ALIASED, ids=lambda setting: setting.flag)
def test_an_older_name_is_read_the_prefixed_one_wins_and_the_flag_over_both(
    setting: Setting[Any], no_variables: pytest.MonkeyPatch
) -> None:
    assert setting.env is not None
    assert setting.env.startswith("PROCA_STATS_")
    (alias,) = setting.aliases
    assert read(setting) == setting.default
    no_variables.setenv(alias, "111")
    assert read(setting) == setting.parse(setting.flag, "111")
    no_variables.setenv(setting.env, "222")
    assert read(setting) == setting.parse(setting.flag, "222")
    assert read(setting, setting.flag, "333") == setting.parse(setting.flag, "333")
    no_variables.delenv(alias)
    assert read(setting) == setting.parse(setting.flag, "222")


def test_every_variable_is_prefixed_but_the_older_names() -> None:
    names = {setting.env for setting in SETTINGS if setting.env}
    assert all(name.startswith("PROCA_STATS_") for name in names)
    aliases = {alias for setting in SETTINGS for alias in setting.aliases}
    assert aliases == {
        "DATABASE_URL",
        "SYNC_INTERVAL",
        "SLOW_SYNC_INTERVAL",
        "FULL_SYNC_INTERVAL",
        "CHANGE_OVERLAP",
    }


@pytest.mark.parametrize(
    "setting", [s for s in ALIASED if s.unit == "ms"], ids=lambda setting: setting.flag
)
def test_serve_reads_the_prefixed_name_before_the_older_one(setting: Setting[Any]) -> None:
    assert setting.env is not None
    (alias,) = setting.aliases
    env = clean_env(**{setting.env: "soon", alias: "later"})
    done = run_cli("serve", "--database-url", NOWHERE, env=env)
    assert_one_line_error(done, f"{setting.flag}: expected milliseconds, got 'soon'")


@pytest.mark.parametrize(
    ("variables", "flags"),
    [
        ({"DATABASE_URL": "{url}"}, ()),
        ({"PROCA_STATS_DATABASE_URL": "{url}", "DATABASE_URL": NOWHERE}, ()),
        (
            {"PROCA_STATS_DATABASE_URL": NOWHERE, "DATABASE_URL": NOWHERE},
            ("--database-url", "{url}"),
        ),
    ],
    ids=["older name", "prefixed over older", "flag over both"],
)
def test_dump_finds_its_database_by_flag_then_prefixed_then_older_name(
    variables: dict[str, str], flags: tuple[str, ...], db: ProcaData, database_url: str
) -> None:
    db.campaign()
    env = clean_env(**NO_EMBEDDED, **{k: v.format(url=database_url) for k, v in variables.items()})
    done = run_cli("dump", *(flag.format(url=database_url) for flag in flags), env=env)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1


def test_flags_win_over_the_environment(db: ProcaData, database_url: str) -> None:
    db.campaign()
    env = clean_env(DATABASE_URL="postgresql://127.0.0.1:1/nowhere")
    done = run_cli("dump", "--database-url", database_url, env=env)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (("dump",), "INFO"),
        (("--log-level", "DEBUG", "dump"), "DEBUG"),
        (("dump", "--log-level", "DEBUG"), "DEBUG"),
        (("serve", "--log-level", "ERROR"), "ERROR"),
        (("--log-level", "WARNING", "get", "1"), "WARNING"),
        (
            ("increment", "--log-level", "DEBUG", "--campaign", "1", "--org", "1", "--type", "x"),
            "DEBUG",
        ),
        (("db", "init", "--log-level", "DEBUG"), "DEBUG"),
        (("--log-level", "ERROR", "dump", "--log-level", "DEBUG"), "DEBUG"),
    ],
)
def test_log_level_is_taken_before_and_after_the_command(
    argv: tuple[str, ...], level: str, no_variables: pytest.MonkeyPatch
) -> None:
    assert parse(argv).log_level == level


@pytest.mark.parametrize("given", ["debug", "Debug", "DEBUG", "dEbUg"])
def test_log_level_is_taken_in_any_case(given: str, no_variables: pytest.MonkeyPatch) -> None:
    assert parse(("--log-level", given, "dump")).log_level == "DEBUG"
    assert parse(("dump", "--log-level", given.swapcase())).log_level == "DEBUG"


def test_a_repeatable_setting_adds_up_its_flags_or_reads_its_variable_comma_separated(
    no_variables: pytest.MonkeyPatch,
) -> None:
    page, other = "http://127.0.0.1:8000", "https://campaign.example.org"
    assert parse(("serve",)).cors_origin == ()
    flags = ("serve", "--cors-origin", page, "--cors-origin", f"{other}/")
    assert parse(flags).cors_origin == (page, other)
    no_variables.setenv("PROCA_STATS_CORS_ORIGINS", f"{other}, *,")
    assert parse(("serve",)).cors_origin == (other, "*")
    assert parse(("serve", "--cors-origin", page)).cors_origin == (page,)  # the flag wins
