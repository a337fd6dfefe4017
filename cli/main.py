"""The `proca-stats` executable: quiets gRPC core's own log lines for the client commands.

gRPC core writes its errors to stderr itself (`E0000 ...` lines, `WARNING: All log
messages before absl::InitializeLog() ...`), and reads GRPC_VERBOSITY only once,
when grpc is first imported: so it is decided here, before `cli` imports grpc.
The client commands report every failure in one line of their own, which core's
lines would only bury; `serve` keeps them, as an operator's diagnostics.
A GRPC_VERBOSITY the caller sets wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from proca_stats.server.settings import ALL, CALLS, SETTINGS  # no grpc in there

# Options taken before the command's name that take a value (--log-level): no command.
VALUED_BEFORE_COMMAND = frozenset(s.flag for s in SETTINGS if s.commands == ALL and not s.switch)


def command_of(argv: Sequence[str]) -> str | None:
    """The command's name: the first word that is neither an option nor the value of one
    taken before the command."""
    words = iter(argv)
    for word in words:
        if word in VALUED_BEFORE_COMMAND:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main() -> None:
    argv = sys.argv[1:]
    if command_of(argv) in CALLS:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from proca_stats.cli.commands import (
        main as run,  # only now: grpc must not be imported before this point
    )

    run(argv)
