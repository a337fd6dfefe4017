"""The state's own caps: how much Increments may add to the memory of a server.

`proca-stats serve` offers each as a flag; the defaults are declared here alone,
and the settings table reads them from ``Limits()``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps that keep a flood of Increments with fresh ids or strings from exhausting memory.

    Figures loaded from the database are never capped: the database is trusted.
    """

    max_campaigns: int = 100_000
    max_keys_per_map: int = 10_000
    max_request_bytes: int = 64 * 1024
    # Action ids remembered between two syncs (retries count once; see StatsStore).
    max_action_ids: int = 100_000
