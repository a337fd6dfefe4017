"""What a `proca-stats serve` process says about its syncs, read from its log file.

The sync log line keeps one form (operators' alerts parse it), so the benchmark
times each refresh by the server's own figure rather than from outside:
``sync: <kind> refresh, N campaigns in S s, R rows read (snapshot …; A actions and
U supporters changed, K keys, C campaigns recounted)``, fields added only at its end.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

SYNC_LINE = re.compile(
    r"sync: (?P<kind>\S+) refresh, (?P<campaigns>\d+) campaigns in (?P<seconds>[\d.]+) s,"
    r" (?P<rows>\d+) rows read \(snapshot (?P<snapshot>[^;]+); (?P<actions>\d+) actions and"
    r" (?P<supporters>\d+) supporters changed, (?P<keys>\d+) keys,"
    r" (?P<recounted>\d+) campaigns recounted"
)


@dataclass(frozen=True)
class Sync:
    kind: str
    seconds: float
    rows_read: int
    snapshot: datetime
    actions: int
    supporters: int
    keys: int
    recounted: int

    def describe(self) -> str:
        return (
            f"{self.kind}, {self.rows_read:,} rows read, {self.actions:,} actions and"
            f" {self.supporters:,} supporters changed, {self.keys:,} keys,"
            f" {self.recounted} campaigns recounted"
        )


class ServerLog:
    """The log file of one or more `proca-stats serve` processes run one after the other."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def syncs(self) -> list[Sync]:
        if not self.path.exists():
            return []
        found = []
        for match in SYNC_LINE.finditer(self.path.read_text(errors="replace")):
            found.append(
                Sync(
                    kind=match["kind"],
                    seconds=float(match["seconds"]),
                    rows_read=int(match["rows"]),
                    snapshot=datetime.fromisoformat(match["snapshot"]),
                    actions=int(match["actions"]),
                    supporters=int(match["supporters"]),
                    keys=int(match["keys"]),
                    recounted=int(match["recounted"]),
                )
            )
        return found

    def first_sync_after(self, moment: datetime, within: float) -> Sync:
        """The first sync whose snapshot was taken after ``moment`` (the database's clock),
        waiting up to ``within`` seconds for it."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            later = [sync for sync in self.syncs() if sync.snapshot > moment]
            if later:
                return later[0]
            time.sleep(0.1)
        raise SystemExit(f"bench: no sync after {moment} within {within:.0f} s (see {self.path})")

    def lines(self, word: str) -> list[str]:
        """The log's lines that contain ``word``."""
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        return [line for line in text.splitlines() if word in line]
