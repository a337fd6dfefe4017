"""Capped, jittered backoff between the attempts of a background thread (sync, fan-out).

Kept small rather than taken from tenacity: the threads do not retry one call
until it succeeds, they run loops that wait on their own stop event or
condition between attempts (so that a stop ends the wait at once) and report
the delay in their log lines; what they need is the delay, which this gives.
"""

from __future__ import annotations

import random


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after the n-th failure in a row: doubling, capped, half of it jittered.

    The jitter keeps several servers that lost the same database from
    reconnecting in lockstep.
    """
    delay: float = min(cap, base * 2 ** (failures - 1))
    return delay * random.uniform(0.5, 1.0)


class Backoff:
    """The failures in a row of one thread's attempts, and how long to wait after the last."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        self.failures += 1
        return backoff_delay(self.failures, self._base, self._cap)

    def succeeded(self) -> None:
        self.failures = 0
