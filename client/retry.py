"""Which calls the client retries, as gRPC's own retry policy (a channel's service config).

gRPC retries a call on its own when its method config says so, within the
call's deadline, with randomised exponential backoff, and never once a response
has started to arrive. The policy is given per method, never per call, so an
Increment that carries no action_id — which would count twice if its first
attempt reached the server but the answer was lost — goes out on a channel
without one (``StatsClient`` opens it on the first such call).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from proca_stats.contract.v1 import stats_pb2

SERVICE = stats_pb2.DESCRIPTOR.services_by_name["StatsService"].full_name
# Safe to repeat: reads, and Increments that carry an action_id (they count once).
RETRIED_METHODS = ("GetStats", "BatchGetStats", "WatchStats", "Increment")
MAX_ATTEMPTS = 5  # gRPC treats more as 5


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a call that ended UNAVAILABLE is tried again.

    The n-th retry waits a random time up to ``initial_backoff`` *
    ``backoff_multiplier``^(n-1) seconds, at most ``max_backoff``; all attempts
    share the call's deadline. ``max_attempts`` counts the first attempt too.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts: must be 2..{MAX_ATTEMPTS}, got {self.max_attempts}"
                " (retry=None turns retries off)"
            )
        for name in ("initial_backoff", "max_backoff", "backoff_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")

    def service_config(self) -> str:
        """The channel's ``grpc.service_config``: this policy for the methods safe to retry."""
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": SERVICE, "method": m} for m in RETRIED_METHODS],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": _duration(self.initial_backoff),
                            "maxBackoff": _duration(self.max_backoff),
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        )


def _duration(seconds: float) -> str:
    """Seconds as the service config writes a duration ("0.2s"), to the nanosecond."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


DEFAULT_RETRY = Retry()
