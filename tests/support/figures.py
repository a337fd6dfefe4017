"""A server's answers as counters, so tests compare them with the store and a calculation."""

from __future__ import annotations

from proca_stats.contract.v1.stats_pb2 import CampaignStats
from proca_stats.server.state.counters import CampaignCounters


def figures(stats: CampaignStats) -> CampaignCounters:
    """An answer's counters, comparable with the store's and a calculation's."""
    return CampaignCounters(
        stats.supporters,
        dict(stats.actions_by_type),
        dict(stats.supporters_by_area),
        dict(stats.supporters_by_org),
    )
