"""Replicas sharing their Increments through PostgreSQL's LISTEN/NOTIFY."""
