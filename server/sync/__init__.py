"""Recalculating the figures from PostgreSQL: the full calculation, incremental refreshes
over kept snapshots, and the thread that runs them and hands each snapshot over."""
