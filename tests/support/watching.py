"""Reading WatchStats streams in threads of their own, noting when each message arrived."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from proca_stats.client import CampaignStats, StatsError, StatsWatch
from tests.support.waiting import wait_for


class Recorder:
    """Consumes one stream as a live page would, so a test can wait for what it expects.

    The arrival time is taken in the reading thread right after each message,
    so how often a test polls never adds to a measured latency.
    """

    def __init__(self, watch: StatsWatch) -> None:
        self.watch = watch
        self.received: list[tuple[float, CampaignStats]] = []
        self.error: StatsError | None = None
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for stats in self.watch:
                self.received.append((time.monotonic(), stats))
        except StatsError as error:
            self.error = error
        finally:
            self.ended.set()

    @property
    def messages(self) -> list[CampaignStats]:
        return [stats for _, stats in self.received]

    def arrival(self, matches: Callable[[CampaignStats], bool], what: str) -> float:
        """When the first message that ``matches`` arrived, waiting for it if need be."""

        def found() -> float | None:
            return next((at for at, stats in self.received if matches(stats)), None)

        return wait_for(found, what=what)

    def wait_for_count(self, count: int) -> list[CampaignStats]:
        wait_for(lambda: len(self.received) >= count, what=f"{count} messages")
        return self.messages

    def wait_ended(self) -> None:
        wait_for(self.ended.is_set, what="the stream to end")

    def close(self) -> None:
        self.watch.cancel()
        self.wait_ended()
