"""StatsService's answers, whatever the transport: the one path every face of the server calls.

A transport parses a request into the contract's message, calls ``Answers``, and turns a
``Refused`` into its own status. The codes are the contract's status names, which gRPC and
Connect share (``INVALID_ARGUMENT``, ``UNAVAILABLE``, …), so a rule and its message are
written once here: validation into the domain's values, the readiness check, the caps, and
the per-campaign answer cache, which every face reads (``Serialized``).
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from datetime import datetime
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.api.messages import campaign_stats
from proca_stats.server.state.counters import NO_COUNTERS, CampaignCounters, Increment
from proca_stats.server.state.store import CapacityError, StatsStore
from proca_stats.server.state.validation import (
    ValidationError,
    Watch,
    campaign_ids_from,
    increment_from,
    target_from,
    watch_from,
)
from proca_stats.server.state.watchers import (
    LoopWakeups,
    Watcher,
    Watchers,
    WatchersClosed,
    WatchersFull,
)

Request = TypeVar("Request")
Valid = TypeVar("Valid")

# How long a watcher waits for a change before it checks that its client is
# still there. A transport's end-of-call notice normally ends the wait at once;
# this only bounds how long a missed one could hold a watcher's place.
WATCH_LIVENESS_CHECK = 10.0


class Code(enum.Enum):
    """The statuses an answer can be refused with, by the contract's names."""

    INVALID_ARGUMENT = enum.auto()
    NOT_FOUND = enum.auto()
    RESOURCE_EXHAUSTED = enum.auto()
    UNAVAILABLE = enum.auto()


class Serialized:
    """An answer as protobuf bytes, built once per change and shared by every reader and
    face; its JSON form and the tag of its figures are made on first use, kept with it.

    The tag names the figures alone, not the snapshot time: a sync that confirms a
    campaign's figures leaves its tag as it was, so an HTTP cache keeps its copy.
    """

    __slots__ = ("_json", "_message", "_tag", "_tagged", "binary")

    def __init__(self, binary: bytes, message: type[Message], tagged: Callable[[], bytes]) -> None:
        """``tagged`` gives the bytes the tag is a digest of: the figures, without their time."""
        self.binary = binary
        self._message = message
        self._tagged = tagged
        self._json: bytes | None = None
        self._tag: str | None = None

    @property
    def json(self) -> bytes:
        """The proto3 JSON form, zeros and empty maps included (as the command line prints)."""
        if self._json is None:  # threads that race here only render it twice
            message = self._message.FromString(self.binary)
            self._json = json_format.MessageToJson(
                message, always_print_fields_with_no_presence=True, indent=None
            ).encode()
        return self._json

    @property
    def tag(self) -> str:
        """A digest of the figures: the same figures, the same tag, on any replica."""
        if self._tag is None:
            self._tag = hashlib.blake2b(self._tagged(), digest_size=12).hexdigest()
        return self._tag


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

    def changes(self, is_active: Callable[[], bool]) -> Iterator[Serialized]:
        """The stream's answers, waiting in this thread (see ``_steps``)."""
        steps = self._steps(is_active)
        changed: bool | None = None
        while True:
            try:
                step = steps.send(changed)
            except StopIteration:
                return
            if isinstance(step, Serialized):
                yield step
                changed = None
            else:
                changed = self._watcher.wait(step, WATCH_LIVENESS_CHECK)

    async def changes_async(self) -> AsyncIterator[Serialized]:
        """The stream's answers, waiting as a task of the watcher's event loop; a client
        that leaves cancels the task, so nothing need ask whether it is still there."""
        steps = self._steps(lambda: True)
        changed: bool | None = None
        while True:
            try:
                step = steps.send(changed)
            except StopIteration:
                return
            if isinstance(step, Serialized):
                yield step
                changed = None
            else:
                changed = await self._watcher.wait_async(step)

    def _steps(
        self, is_active: Callable[[], bool]
    ) -> Generator[Serialized | float, bool | None, None]:
        """The current figures, then the latest ones after each change, at most once per
        interval, until the watcher is closed or ``is_active()`` says the client is gone.

        Yields each answer to send, and between them the monotonic time before which
        the next may not go: the caller waits for a change until then and sends back
        whether one came. The watcher was opened before the first read, so a change
        between the two is never lost; it may only cause a re-read that finds nothing new.
        """
        store, campaign_id = self._answers.store, self._watch.campaign_id
        counters, synced_at = store.get(campaign_id)
        while True:
            not_before = time.monotonic() + self._watch.min_interval
            yield self._answers.serialized(campaign_id, counters, synced_at)
            while True:
                changed = yield not_before
                if self._watcher.closed or not is_active():
                    return
                if changed:
                    latest, synced_at = store.get(campaign_id)
                    if latest != counters:  # a sync that confirmed the figures sends nothing
                        counters = latest
                        break

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
        self._answers: dict[int, tuple[CampaignCounters, Serialized]] = {}
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

    def stats(self, request: stats_pb2.GetStatsRequest) -> Serialized:
        """GetStats: a campaign's GetStatsResponse, or that of an action page's campaign."""
        target = _valid(target_from, request)
        if target.action_page_id is None:
            assert target.campaign_id is not None
            campaign_id = target.campaign_id
            counters, synced_at = self.store.get(campaign_id)
            return self.serialized(campaign_id, counters, _ready(synced_at))
        found, counters, synced_at = self.store.get_by_page(target.action_page_id)
        _ready(synced_at)
        if found is None:
            raise Refused(
                Code.NOT_FOUND, f"action_page_id: no action page has id {target.action_page_id}"
            )
        return self.serialized(found, counters, synced_at)

    def batch_stats(self, request: stats_pb2.BatchGetStatsRequest) -> Serialized:
        """BatchGetStats, from the campaigns' kept answers: on the wire a
        BatchGetStatsResponse is its CampaignStats one after the other in field 1, as
        each GetStatsResponse holds its own, so the kept bytes are joined as they are."""
        campaign_ids = _valid(campaign_ids_from, request)
        found, synced_at = self.store.get_many(campaign_ids)
        _ready(synced_at)
        parts = [
            self.serialized(campaign_id, counters, synced_at)
            for campaign_id, counters in zip(campaign_ids, found, strict=True)
        ]
        return Serialized(
            b"".join(part.binary for part in parts),
            stats_pb2.BatchGetStatsResponse,
            lambda: "".join(part.tag for part in parts).encode(),
        )

    def watch(
        self, request: stats_pb2.WatchStatsRequest, loop: LoopWakeups | None = None
    ) -> Watching:
        """Open a watch, waiting on ``loop`` when given, else in its caller's thread:
        refused when invalid, not ready, full or stopping."""
        watch = _valid(watch_from, request)
        _ready(self.store.synced_at)
        try:
            watcher = self.watchers.open(watch.campaign_id, loop)
        except WatchersFull as error:
            raise Refused(Code.RESOURCE_EXHAUSTED, str(error)) from None
        except WatchersClosed as error:
            raise Refused(Code.UNAVAILABLE, str(error)) from None
        return Watching(self, watch, watcher)

    def serialized(
        self, campaign_id: int, counters: CampaignCounters, synced_at: datetime | None
    ) -> Serialized:
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
        answer = Serialized(
            stats_pb2.GetStatsResponse(
                stats=campaign_stats(campaign_id, counters, synced_at)
            ).SerializeToString(),
            stats_pb2.GetStatsResponse,
            lambda: stats_pb2.GetStatsResponse(
                stats=campaign_stats(campaign_id, counters, None)
            ).SerializeToString(deterministic=True),
        )
        if counters is not NO_COUNTERS:  # unknown campaigns are not kept: ids are unbounded
            answers[campaign_id] = (counters, answer)
        return answer
