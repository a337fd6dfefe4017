"""The counters in memory: every campaign's figures, Increments and their action ids, the
swap of a new snapshot, and who watches. No transport, no database."""
