"""StatsService: request → validation → store → response, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import NoReturn, TypeVar

import grpc

from proca_stats.client.v1 import stats_pb2, stats_pb2_grpc

from .counters import CampaignCounters
from .messages import campaign_stats
from .store import EMPTY, StatsStore
from .validation import ValidationError, campaign_id_from, increment_from

Request = TypeVar("Request")
Valid = TypeVar("Valid")


def _validated(
    validate: Callable[[Request], Valid], request: Request, context: grpc.ServicerContext
) -> Valid:
    """The request's valid content, or the RPC ends with INVALID_ARGUMENT naming the field."""
    try:
        return validate(request)
    except ValidationError as error:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("context.abort always raises")  # pragma: no cover


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    """The counters RPCs, answered from the store without touching the database.

    GetStats is the hot path: its serialized answer is kept per campaign and
    reused while the campaign's counters and snapshot are the very same
    objects (counters are immutable and replaced on every change), so most
    reads cost a lookup and no message building. The app registers
    ``serialized_stats`` for it; ``GetStats`` gives the same answer as a message.
    """

    def __init__(self, store: StatsStore) -> None:
        self._store = store
        # campaign id → (counters, synced_at, serialized GetStatsResponse), known campaigns only
        self._answers: dict[int, tuple[CampaignCounters, datetime, bytes]] = {}

    def Increment(
        self, request: stats_pb2.IncrementRequest, context: grpc.ServicerContext
    ) -> stats_pb2.IncrementResponse:
        self._store.increment(_validated(increment_from, request, context))
        return stats_pb2.IncrementResponse()

    def GetStats(
        self, request: stats_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> stats_pb2.GetStatsResponse:
        return stats_pb2.GetStatsResponse.FromString(self.serialized_stats(request, context))

    def serialized_stats(
        self, request: stats_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> bytes:
        """GetStats, answered with the serialized GetStatsResponse."""
        campaign_id = _validated(campaign_id_from, request, context)
        counters, synced_at = self._store.get(campaign_id)
        if synced_at is None:
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "stats are not ready: the first calculation has not succeeded yet",
            )
        kept = self._answers.get(campaign_id)
        if kept is not None and kept[0] is counters and kept[1] is synced_at:
            return kept[2]
        answer = stats_pb2.GetStatsResponse(
            stats=campaign_stats(campaign_id, counters, synced_at)
        ).SerializeToString()
        if counters is not EMPTY:  # unknown campaigns are not kept: ids are unbounded
            self._answers[campaign_id] = (counters, synced_at, answer)
        return answer
