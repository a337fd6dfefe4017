"""The ``proca-stats`` command: server commands (serve, db init, dump; serve.py) and client
commands (get, increment; calls.py) on one command line made from the settings table
(options.py), every person's mistake ending in one line (commands.py)."""
