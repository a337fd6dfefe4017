"""The iterator a WatchStats call returns, with the client's error mapping."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

import grpc

from proca_stats.contract.v1.stats_pb2 import CampaignStats, WatchStatsResponse

from .errors import error_from


class StatsWatch(Iterator[CampaignStats]):
    """A campaign's figures as they change: iterate over it, and ``cancel()`` (or leave
    the ``with`` block) to stop. Iteration ends when the server shuts down; a failure
    raises the StatsError of its status.

    >>> with client.watch_stats(1) as figures:
    ...     for stats in figures:
    ...         print(stats.supporters)
    """

    def __init__(self, call: grpc.CallIterator[WatchStatsResponse]) -> None:
        self._call = call
        self._responses = iter(call)
        self._cancelled = False

    def __next__(self) -> CampaignStats:
        try:
            return next(self._responses).stats
        except grpc.RpcError as error:
            if self._cancelled:
                raise StopIteration from None
            raise error_from(error) from None

    def cancel(self) -> None:
        """Stop watching; the server frees the stream's place at once. Safe to repeat."""
        self._cancelled = True
        self._call.cancel()  # type: ignore[no-untyped-call]  # unannotated in grpc-stubs

    def __enter__(self) -> StatsWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()
