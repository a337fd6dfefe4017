"""Counters turned into the contract's CampaignStats message."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from proca_stats.contract.v1.stats_pb2 import CampaignStats
from proca_stats.server.state.counters import CampaignCounters


def campaign_stats(
    campaign_id: int, counters: CampaignCounters, synced_at: datetime | None
) -> CampaignStats:
    stats = CampaignStats(
        campaign_id=campaign_id,
        supporters=counters.supporters,
        actions_by_type=counters.actions_by_type,
        supporters_by_area=counters.supporters_by_area,
        supporters_by_org=counters.supporters_by_org,
    )
    if synced_at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(synced_at)
        stats.synced_at.CopyFrom(stamp)
    return stats
