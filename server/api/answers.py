"""StatsService's answers, whatever the transport: the one path every face of the server calls.

A transport parses a request into the contract's message, calls ``Answers``, and turns a
``Refused`` into its own status. The codes are the contract's status names, which gRPC and
Connect share (``INVALID_ARGUMENT``, ``UNAVAILABLE``, …), so a rule and its message are
written once here: validation into the domain's values, the readiness check, the caps, and
the per-campaign answer cache.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TypeVar

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.api.messages import campaign_stats
from proca_stats.server.state.counters import NO_COUNTERS, CampaignCounters, Increment
from proca_stats.server.state.store import CapacityError, StatsStore
from proca_stats.server.state.validation import (
    ValidationError,
    Watch,
    campaign_id_from,
    campaign_ids_from,
    increment_from,
    watch_from,
)
from proca_stats.server.state.watchers import Watcher, Watchers, WatchersClosed, WatchersFull

Request = TypeVar("Request")
Valid = TypeVar("Valid")
Figures = tuple[CampaignCounters, datetime | None]

# How long a watcher waits for a change before it checks that its client is
# still there. A transport's end-of-call notice normally ends the wait at once;
# this only bounds how long a missed one could hold a watcher's place.
WATCH_LIVENESS_CHECK = 10.0


class Code(enum.Enum):
    """The statuses an answer can be refused with, by the contract's names."""

    INVALID_ARGUMENT = enum.auto()
    RESOURCE_EXHAUSTED = enum.auto()
    UNAVAILABLE = enum.auto()


class Refused(Exception):
    """The request is not answered: ``code`` says why in the contract's terms, the message
    names the field or the cause."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _valid(validate: Callable[[Request], Valid], request: Request) -> Valid:
    try:
        return validate(request)
    except ValidationError as error:
        raise Refused(Code.INVALID_ARGUMENT, str(error)) from None


def _ready(synced_at: datetime | None) -> datetime:
    """The snapshot time; refused as UNAVAILABLE before the first calculation."""
    if synced_at is None:
        raise Refused(
            Code.UNAVAILABLE, "stats are not ready: the first calculation has not succeeded yet"
        )
    return synced_at


class Watching:
    """One open WatchStats: its place among the watchers, held until ``release``."""

    def __init__(self, answers: Answers, watch: Watch, watcher: Watcher) -> None:
        self._answers = answers
        self._watch = watch
        self._watcher = watcher

    def changes(self, is_active: Callable[[], bool]) -> Iterator[bytes]:
        """The current figures, then the latest ones after each change, at most once per
        interval, as serialized WatchStatsResponses, until the watcher is closed or
        ``is_active()`` says the client is gone.

        The watcher was opened before the first read, so a change between the two is
        never lost; it may only cause a re-read that finds nothing new.
        """
        store, campaign_id = self._answers.store, self._watch.campaign_id
        latest: Figures | None = store.get(campaign_id)
        while latest is not None:
            counters, synced_at = latest
            not_before = time.monotonic() + self._watch.min_interval
            yield self._answers.serialized(campaign_id, counters, synced_at)
            latest = self._next_change(counters, not_before, is_active)

    def _next_change(
        self, sent: CampaignCounters, not_before: float, is_active: Callable[[], bool]
    ) -> Figures | None:
        """The campaign's figures once they differ from ``sent`` and ``not_before`` has
        passed; None when the stream is to end (client gone or server stopping)."""
        while True:
            changed = self._watcher.wait(not_before, WATCH_LIVENESS_CHECK)
            if self._watcher.closed or not is_active():
                return None
            if changed:
                figures = self._answers.store.get(self._watch.campaign_id)
                if figures[0] != sent:  # a sync that confirmed the figures sends nothing
                    return figures

    def release(self) -> None:
        """Free the place; safe to call more than once."""
        self._answers.watchers.release(self._watcher)


class Answers:
    """The counters RPCs, answered from the store without touching the database.

    GetStats is the hot path: its serialized answer is kept per campaign and
    reused while the campaign's counters and snapshot are the very same
    objects (counters are immutable and replaced on every change), so most
    reads cost a lookup and no message building. WatchStats sends the same
    bytes: a WatchStatsResponse is, on the wire, a GetStatsResponse (both hold
    the CampaignStats in field 1), so ten watchers of a campaign and its
    readers share one serialization.
    """

    def __init__(
        self,
        store: StatsStore,
        watchers: Watchers,
        counted: Callable[[Increment], None] | None = None,
    ) -> None:
        """``counted`` is told each Increment the store counted (the fan-out publishes it)."""
        self.store = store
        self.watchers = watchers
        self._counted = counted
        # campaign id → (counters, serialized GetStatsResponse), known campaigns of the
        # snapshot ``_answers_of`` only: emptied when a new one is swapped in, so that it
        # never holds more campaigns than the store does.
        self._answers: dict[int, tuple[CampaignCounters, bytes]] = {}
        self._answers_of: datetime | None = None

    def increment(self, request: stats_pb2.IncrementRequest) -> bool:
        """Count the action; False when its action id was counted already."""
        increment = _valid(increment_from, request)
        try:
            counted = self.store.increment(increment)
        except CapacityError as error:
            raise Refused(Code.RESOURCE_EXHAUSTED, str(error)) from None
        if counted and self._counted is not None:
            self._counted(increment)
        return counted

    def stats(self, request: stats_pb2.GetStatsRequest) -> bytes:
        """GetStats, answered with the serialized GetStatsResponse."""
        campaign_id = _valid(campaign_id_from, request)
        counters, synced_at = self.store.get(campaign_id)
        return self.serialized(campaign_id, counters, _ready(synced_at))

    def batch_stats(
        self, request: stats_pb2.BatchGetStatsRequest
    ) -> stats_pb2.BatchGetStatsResponse:
        campaign_ids = _valid(campaign_ids_from, request)
        found, synced_at = self.store.get_many(campaign_ids)
        _ready(synced_at)
        return stats_pb2.BatchGetStatsResponse(
            stats=[
                campaign_stats(campaign_id, counters, synced_at)
                for campaign_id, counters in zip(campaign_ids, found, strict=True)
            ]
        )

    def watch(self, request: stats_pb2.WatchStatsRequest) -> Watching:
        """Open a watch: refused when invalid, not ready, full or stopping."""
        watch = _valid(watch_from, request)
        _ready(self.store.synced_at)
        try:
            watcher = self.watchers.open(watch.campaign_id)
        except WatchersFull as error:
            raise Refused(Code.RESOURCE_EXHAUSTED, str(error)) from None
        except WatchersClosed as error:
            raise Refused(Code.UNAVAILABLE, str(error)) from None
        return Watching(self, watch, watcher)

    def serialized(
        self, campaign_id: int, counters: CampaignCounters, synced_at: datetime | None
    ) -> bytes:
        """The serialized GetStatsResponse for these figures, built once per change."""
        answers = self._answers
        if synced_at is not self._answers_of:
            # A new snapshot (or, from a thread that read the store before the swap,
            # an old one): start afresh. Threads that race here only rebuild answers.
            answers = self._answers = {}
            self._answers_of = synced_at
        kept = answers.get(campaign_id)
        if kept is not None and kept[0] is counters:
            return kept[1]
        answer = stats_pb2.GetStatsResponse(
            stats=campaign_stats(campaign_id, counters, synced_at)
        ).SerializeToString()
        if counters is not NO_COUNTERS:  # unknown campaigns are not kept: ids are unbounded
            answers[campaign_id] = (counters, answer)
        return answer
