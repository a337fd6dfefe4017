"""The command line, made from the settings table: each command gets the options whose entry
names it, and their values are read the table's way once argparse has split the words.

argparse only splits: it is given no defaults and no types, so that the table alone says
what a setting's value is (flag, else environment, else default) and how its text is read.
Here too is the one rule two options keep for the server and the client commands alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from proca_stats.server import version
from proca_stats.server.checks import ConfigError
from proca_stats.server.settings import ALL, SETTINGS, Setting, help_text


@dataclass(frozen=True)
class Command:
    """A command: its name ("db init" for one in a group), its help and what runs it."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], None]


class Parser(argparse.ArgumentParser):
    """Reports a malformed command line in one line, like every other mistake (exit status 2);
    --help still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"proca-stats: error: {message.removeprefix('argument ')}\n")


def settings_of(command: str) -> tuple[Setting[Any], ...]:
    """The settings ``command`` takes, those of every command included."""
    return tuple(s for s in SETTINGS if command in s.commands or s.commands == ALL)


def _add(parser: argparse.ArgumentParser, setting: Setting[Any], default: Any = None) -> None:
    text = help_text(setting).replace("%", "%%")  # argparse formats help with %
    if setting.positional:
        parser.add_argument(setting.dest, metavar=setting.flag, help=text)
    elif setting.repeatable:  # given again, it adds a value
        parser.add_argument(
            setting.flag, metavar=setting.metavar, action="append", default=default, help=text
        )
    elif setting.switch:  # given, it reads as "1", as its variable would
        parser.add_argument(
            setting.flag, action="store_const", const="1", default=default, help=text
        )
    else:
        parser.add_argument(
            setting.flag,
            metavar=setting.metavar,
            required=setting.required,
            default=default,
            help=text,
        )


def build_parser(commands: Sequence[Command], groups: Mapping[str, str]) -> Parser:
    """The `proca-stats` parser for ``commands``; ``groups`` names the help of each first word
    that gathers commands (db: db init)."""
    parser = Parser(
        prog="proca-stats", description="Live campaign counters of a Proca database, over gRPC."
    )
    parser.add_argument("-V", "--version", action="version", version=f"proca-stats {version()}")
    everywhere = [s for s in SETTINGS if s.commands == ALL]
    for setting in everywhere:
        _add(parser, setting)
    # After a command's name too; SUPPRESS keeps a command that is not given one from
    # overwriting the value given before the name.
    common = Parser(add_help=False)
    for setting in everywhere:
        _add(common, setting, default=argparse.SUPPRESS)
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {"": top}
    for command in commands:
        group, _, name = command.name.rpartition(" ")
        if group not in subparsers:
            grouped = top.add_parser(group, parents=[common], help=groups[group])
            subparsers[group] = grouped.add_subparsers(
                dest=f"{group}_command", required=True, metavar="COMMAND"
            )
        sub = subparsers[group].add_parser(name, parents=[common], help=command.help)
        taken = settings_of(command.name)
        for setting in taken:
            if setting.commands != ALL:
                _add(sub, setting)
        sub.set_defaults(run=command.run, settings=taken)
    return parser


def read_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Replace each setting's text in ``args`` by its value.

    Settings no variable can give are read first: their mistakes are the command line's,
    refused as argparse refuses its own (exit status 2). The others' ConfigError is left
    to the caller, to end the command as any other mistake in the configuration.
    """
    for setting in sorted(args.settings, key=lambda s: bool(s.variables)):
        try:
            value = setting.value(getattr(args, setting.dest))
        except ConfigError as error:
            if setting.variables:
                raise
            parser.error(str(error))
        setattr(args, setting.dest, value)


def key_pair(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """--tls-cert and --tls-key, which only go together, for the server and a client alike
    (gRPC core aborts the process on a client certificate without its key)."""
    if not (args.tls_cert or args.tls_key):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ConfigError("--tls-cert and --tls-key: TLS needs both the certificate and its key")
    return Path(args.tls_cert), Path(args.tls_key)
