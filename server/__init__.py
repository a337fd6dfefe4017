"""The proca-stats server.

Its parts, each a package: ``state`` holds the counters (and knows nothing of transports or
databases); ``api`` answers requests on them; ``sync`` recalculates them from PostgreSQL and
hands each new snapshot over; ``fanout`` links replicas. ``app`` wires them together.
"""
