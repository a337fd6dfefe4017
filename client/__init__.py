"""Python client of proca-stats: ``StatsClient`` and one exception per gRPC status."""

from proca_stats.contract.v1.stats_pb2 import CampaignStats

from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    StatsError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from .retry import DEFAULT_RETRY, Retry
from .stats_client import DEFAULT_TARGET, StatsClient
from .watch import StatsWatch

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TARGET",
    "Aborted",
    "AlreadyExists",
    "CampaignStats",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Retry",
    "StatsClient",
    "StatsError",
    "StatsWatch",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
]
