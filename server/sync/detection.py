"""Which change source a server uses (``--change-feed``), taken up and given up as it goes.

- ``updated-at``: always the fallback (changes.py).
- ``logical``: the feed, its publication and slot made when missing; at start a
  database that cannot give it ends the command with one line (``set_up``).
- ``auto``: the feed when its slot already exists, else the fallback.

A feed that cannot be had while running (its slot gone in ``auto``, another server
reading it, the database no longer decoding) is not fatal: the server detects changes
by updated_at meanwhile, with a warning, and takes the feed (back) up at the first
refresh it can, each switch being a full calculation (the two sources' marks do not
translate). Which one is in use is logged when it changes and reported to
``report`` (the ``proca_stats_change_feed`` metric).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from proca_stats.server.sync.calculation import Cursor
from proca_stats.server.sync.changes import Changed, ChangeSource, Mark, UpdatedAt
from proca_stats.server.sync.feed import FeedBusy, LogicalFeed
from proca_stats.server.sync.position import Position
from proca_stats.server.sync.slot import FeedError

log = logging.getLogger(__name__)

CHOICES = ("auto", "logical", "updated-at")


class Detection:
    """A ChangeSource that is the feed when it can be, else updated_at."""

    def __init__(
        self,
        fallback: UpdatedAt,
        feed: LogicalFeed | None,
        report: Callable[[str], None] = lambda _: None,
    ) -> None:
        """Without ``feed`` (``--change-feed updated-at``) the fallback is all there is."""
        self._fallback = fallback
        self._feed = feed
        self._current: ChangeSource = fallback
        self._report = report
        self._why: str | None = None  # why the fallback is in use, as last logged

    @property
    def kind(self) -> str:
        return self._current.kind

    def check(self) -> None:
        """FeedError now when the database cannot give the feed ``--change-feed logical``
        asks for (another server on the slot is not fatal: ``prepare`` says so)."""
        if self._feed is not None:
            self._feed.check()

    def prepare(self) -> bool:
        if self._feed is None:
            self._fall_back("--change-feed updated-at", logging.INFO)
            return False
        was_feed = self._current is self._feed
        try:
            fresh = self._feed.prepare()
        except (FeedError, FeedBusy) as error:
            self._fall_back(str(error), logging.WARNING if was_feed else logging.INFO)
            return was_feed
        if not was_feed:
            self._current, self._why = self._feed, None
            log.info("change feed: logical, from the replication slot %s", self._feed.slot)
            self._report(self._feed.kind)
        return fresh or not was_feed

    def _fall_back(self, why: str, level: int) -> None:
        if self._current is not self._fallback or self._why != why:
            log.log(level, "change feed: updated-at (%s)", why.removeprefix("change feed: "))
            self._report(self._fallback.kind)
        self._current, self._why = self._fallback, why

    def mark(self, cur: Cursor, at: Position) -> Mark:
        return self._current.mark(cur, at)

    def changed(self, cur: Cursor, since: Mark, at: Position) -> Changed:
        return self._current.changed(cur, since, at)

    def settled(self, mark: Mark) -> None:
        self._current.settled(mark)

    def saved(self, mark: Mark) -> dict[str, Any]:
        return self._current.saved(mark)

    def resume(self, saved: dict[str, Any]) -> Mark | None:
        return self._current.resume(saved)

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()

    def cancel(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
