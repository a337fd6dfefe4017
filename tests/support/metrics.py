"""A server's metrics, read from its own registry rather than scraped."""

from __future__ import annotations

from proca_stats.server.app import StatsServer


def sample(server: StatsServer, name: str, **labels: str) -> float:
    """A metric's value on ``server``, summed over the series that carry ``labels`` (so
    that ``method`` and ``code`` alone add up every protocol). A labelled series appears
    at its first change and counts 0 until then; an unlabelled one is exported from the
    start."""
    values = [
        s.value
        for family in server.metrics.registry.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert values or labels, f"{name} is not exported"
    return sum(values)
