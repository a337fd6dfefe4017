"""One server's state file: read back at start, written after each settled refresh and at stop.

The figures written are the held snapshot's (the refresher's ``HeldFigures``), with the action
ids that snapshot confirmed when it was swapped in and the Increments counted on top
of it. At start they go into the store as a snapshot would (handover.py), so that
Increments that arrived meanwhile keep their guarantee, and those counted on top of
them in the last run are counted again, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from contextlib import suppress
from pathlib import Path

from proca_stats.server.state.counters import Increment, Snapshot
from proca_stats.server.state.handover import Lookup
from proca_stats.server.state.store import CapacityError, StatsStore
from proca_stats.server.sync.refresh import HeldFigures, Refresher
from proca_stats.server.sync.snapshots import Snapshots
from proca_stats.server.sync.statefile import Saved, StateFile
from proca_stats.server.sync.warm import Identity, identify
from proca_stats.server.sync.worker import Deliver

log = logging.getLogger(__name__)


class StateKeeper:
    """Keeps the state file of the database the sync reads."""

    def __init__(self, directory: Path, store: StatsStore, snapshots: Snapshots) -> None:
        """``snapshots``: the refresher's, whose connections a stop cancels."""
        self._file = StateFile(directory)
        self._store = store
        self._snapshots = snapshots
        self._lock = threading.Lock()  # the sync thread writes, and the stopping one
        self._identity: Identity | None = None
        self._held: HeldFigures | None = None
        self._confirmed: frozenset[int] = frozenset()
        self._failing = False

    def delivering(self, deliver: Deliver) -> Deliver:
        """``deliver``, noting which action ids the snapshot confirmed as it was swapped in."""

        def noting(snapshot: Snapshot, seen: Lookup) -> None:
            confirmed: set[int] = set()

            def looking_up(action_ids: Collection[int]) -> set[int]:
                found = seen(action_ids)
                confirmed.update(found)
                return found

            deliver(snapshot, looking_up)
            self._confirmed = frozenset(confirmed)

        return noting

    def restore(self, refresher: Refresher, deliver: Deliver, ready: Callable[[], None]) -> None:
        """Serve the saved figures of this database, if a trusted file has them: swapped in
        with ``deliver``, the Increments counted on top of them again, then ``ready()``, so
        that the first answers are those the last run gave."""
        with self._snapshots.connection() as conn:
            self._identity = identify(conn.cursor())
        saved = self._file.read(self._identity)
        if saved is None:
            return
        snapshot = refresher.load(saved.held)
        deliver(snapshot, lambda action_ids: set(action_ids) & saved.confirmed)
        for increment in saved.pending:
            with suppress(CapacityError):  # past a cap now: the next refresh counts it
                self._store.increment(increment)
        self._held, self._confirmed = saved.held, saved.confirmed
        # Said before SERVING: whoever sees the server SERVING can tell where its figures
        # came from.
        log.info(
            "warm start: serving the figures of the snapshot of %s from %s",
            saved.held.taken_at.isoformat(),
            self._file.path(self._identity),
        )
        ready()

    def persist(self, held: HeldFigures) -> None:
        """Write the held snapshot (the refresher's hook, after each settled refresh)."""
        self._held = held
        self._write(tuple(arrival.increment for arrival in self._store.carried()))

    def close(self) -> None:
        """At stop: write the last held snapshot once more, with every Increment since."""
        if self._held is not None:
            counted = [*self._store.carried(), *self._store.arrived_since(0)[0]]
            self._write(tuple(arrival.increment for arrival in counted))

    def _write(self, pending: tuple[Increment, ...]) -> None:
        held, identity = self._held, self._identity
        if held is None or identity is None:
            return
        saved = Saved(held, self._confirmed, pending)
        with self._lock:
            try:
                self._file.write(identity, saved)
            except OSError as error:
                if not self._failing:
                    log.warning(
                        "warm start: cannot write the state file in %s: %s",
                        self._file.directory,
                        error.strerror or error,
                    )
                self._failing = True
                return
            self._failing = False
