"""Requests checked against the contract's rules (the proto's comments) before they touch the store.

Each function turns a request into the plain value the store needs, or raises
ValidationError naming the field, so a bad request can never change a counter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.state.counters import Increment

MAX_ACTION_TYPE_LENGTH = 255  # actions.action_type is varchar(255)
MAX_AREA_LENGTH = 32  # supporters.area is varchar(32)
MAX_BATCH_IDS = 1000  # keeps one BatchGetStats answer well under gRPC's 4 MB message limit
DEFAULT_WATCH_INTERVAL_MS = 1000
MIN_WATCH_INTERVAL_MS = 100  # faster than a person reads a counter; protects the server
# Unicode's control characters (category Cc): never part of an action type or an area. They
# would reach logs, JSON and widgets as they are; NUL cannot even be stored in PostgreSQL text.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


class ValidationError(ValueError):
    """A request field breaks a rule; the message names the field and the rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field


def _positive_id(field: str, value: int) -> int:
    if value <= 0:
        raise ValidationError(field, f"must be > 0, got {value}")
    return value


def _text(field: str, value: str, min_length: int, max_length: int) -> str:
    if not min_length <= len(value) <= max_length:
        raise ValidationError(
            field, f"must be {min_length}..{max_length} characters, got {len(value)}"
        )
    control = CONTROL_CHARACTER.search(value)
    if control:
        raise ValidationError(
            field,
            f"must not contain control characters, got U+{ord(control.group()):04X}"
            f" at character {control.start()}",
        )
    return value


def increment_from(request: stats_pb2.IncrementRequest) -> Increment:
    """The action an IncrementRequest reports; an empty area means no area."""
    area = request.area if request.HasField("area") else ""
    return Increment(
        campaign_id=_positive_id("campaign_id", request.campaign_id),
        org_id=_positive_id("org_id", request.org_id),
        action_type=_text("action_type", request.action_type, 1, MAX_ACTION_TYPE_LENGTH),
        area=_text("area", area, 0, MAX_AREA_LENGTH) or None,
        new_supporter=request.new_supporter,
        action_id=(
            _positive_id("action_id", request.action_id) if request.HasField("action_id") else None
        ),
    )


@dataclass(frozen=True, slots=True)
class Watch:
    """What a WatchStatsRequest asks for."""

    campaign_id: int
    min_interval: float  # seconds between two messages


@dataclass(frozen=True, slots=True)
class Target:
    """What a GetStatsRequest reads: a campaign, or the campaign of an action page."""

    campaign_id: int | None
    action_page_id: int | None


def target_from(request: stats_pb2.GetStatsRequest) -> Target:
    """The campaign or the action page a GetStatsRequest asks for: exactly one of the two.

    Without a page the campaign's own rule speaks (so a request with neither is
    told that campaign_id must be > 0, as before pages could be asked for).
    """
    if not request.action_page_id:
        return Target(_positive_id("campaign_id", request.campaign_id), None)
    if request.campaign_id:
        raise ValidationError("action_page_id", "give campaign_id or action_page_id, not both")
    return Target(None, _positive_id("action_page_id", request.action_page_id))


def campaign_ids_from(request: stats_pb2.BatchGetStatsRequest) -> list[int]:
    """The campaigns a BatchGetStatsRequest asks for, in its order, duplicates kept.

    An empty list is refused rather than answered empty: it is always a caller's
    mistake, and saying so helps more than an empty page.
    """
    ids = request.campaign_ids
    if not 1 <= len(ids) <= MAX_BATCH_IDS:
        raise ValidationError("campaign_ids", f"must hold 1..{MAX_BATCH_IDS} ids, got {len(ids)}")
    return [_positive_id(f"campaign_ids[{index}]", value) for index, value in enumerate(ids)]


def watch_from(request: stats_pb2.WatchStatsRequest) -> Watch:
    """The campaign a WatchStatsRequest watches and how often it may be told; 0 ms = default.

    Intervals under the minimum are refused, not raised to it, so a client
    never gets fewer messages than it asked for without being told.
    """
    campaign_id = _positive_id("campaign_id", request.campaign_id)
    interval_ms = request.min_interval_ms or DEFAULT_WATCH_INTERVAL_MS
    if interval_ms < MIN_WATCH_INTERVAL_MS:
        raise ValidationError(
            "min_interval_ms",
            f"must be 0 (default {DEFAULT_WATCH_INTERVAL_MS}) or >= {MIN_WATCH_INTERVAL_MS},"
            f" got {request.min_interval_ms}",
        )
    return Watch(campaign_id=campaign_id, min_interval=interval_ms / 1000)
