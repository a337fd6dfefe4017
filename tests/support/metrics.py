"""A server's metrics, read from its own registry rather than scraped."""

from __future__ import annotations

from proca_stats.server.app import StatsServer


def sample(server: StatsServer, name: str, **labels: str) -> float:
    """A metric's value on ``server``. A labelled series appears at its first change and
    counts 0 until then; an unlabelled one is exported from the start."""
    value = server.metrics.registry.get_sample_value(name, labels or None)
    if value is None:
        assert labels, f"{name} is not exported"
        return 0.0
    return value
