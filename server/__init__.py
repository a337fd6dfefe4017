"""The proca-stats server.

Its parts, each a package: ``state`` holds the counters (and knows nothing of transports or
databases); ``api`` answers requests on them; ``sync`` recalculates them from PostgreSQL and
hands each new snapshot over; ``fanout`` links replicas. ``app`` wires them together.
"""

from importlib import metadata


def version() -> str:
    """The installed distribution's version, as pip knows it: the one number the command line,
    the log and the metrics all report, so that they can never disagree."""
    try:
        return metadata.version("proca-stats")
    except metadata.PackageNotFoundError:  # imported from a source tree nobody installed
        return "unknown"
