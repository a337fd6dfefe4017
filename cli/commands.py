"""Every command of `proca-stats`, and how each ends: a mistake a person can make ends with
one line on stderr and exit status 1 (2 for a malformed command line), never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import psycopg

from proca_stats.cli import calls, serve
from proca_stats.cli.options import Parser, build_parser, read_settings
from proca_stats.client import StatsError
from proca_stats.server.api.grpc_server import BindError
from proca_stats.server.checks import ConfigError
from proca_stats.server.database import EmbeddedDatabaseError
from proca_stats.server.database_check import DatabaseUnusable
from proca_stats.server.demo import DemoRefused
from proca_stats.server.logs import configure_logging
from proca_stats.server.sync.slot import FeedError

COMMANDS = serve.COMMANDS + calls.COMMANDS
GROUPS = {"db": "database commands"}

# What a person can get wrong; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ConfigError,
    BindError,
    EmbeddedDatabaseError,
    DatabaseUnusable,
    DemoRefused,
    FeedError,
    psycopg.Error,
    StatsError,
    OSError,
)


def parser() -> Parser:
    return build_parser(COMMANDS, GROUPS)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line and the environment read: every setting of the command holds its
    value. A mistake in a setting the environment can give raises ConfigError."""
    command_line = parser()
    args = command_line.parse_args(argv)
    read_settings(command_line, args)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = parse(argv)
        configure_logging(args.log_level, getattr(args, "log_format", "text"))
        args.run(args)
    except BrokenPipeError:
        # The reader went away (`proca-stats get 1 | head`): nothing to say, and nothing more
        # may be written, not even by the interpreter flushing stdout as it exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except USER_ERRORS as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        sys.exit(f"proca-stats: error: {message}")
    except KeyboardInterrupt:
        sys.exit(130)
