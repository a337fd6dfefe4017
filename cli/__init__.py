"""The ``proca-stats`` command: server commands (serve, db, dump) and client commands (get,
increment) on one command line, every person's mistake ending in one line."""
