"""Late Increments: counted after a swap although the snapshot that swap installed holds them.

An Increment reports an action its caller has stored. When it reaches the
server only after the swap of a snapshot taken after the action committed (a
slow network, a queue in the caller, a retry whose first attempt was lost, a
fan-out message delivered after a refresh), the figures count the action
twice: once in the snapshot, once more in memory. Nothing in memory can tell;
the snapshot can.

So every Increment with an action id counted after a swap is looked up in the
snapshot that swap installed, which the sync keeps open for its next refresh
anyway (``StatsStore.to_check``, ``Held.seen``); those it holds are taken back
(``StatsStore.take_back``), all of one round in one step of the store's lock.
Between the Increment and the end of its round, readers see it counted; after
it, the snapshot's figures plus the Increments it does not hold, which is what
a full calculation gives. A round whose answer comes after another swap is
refused: that swap's handover (handover.py) decided the same Increments
against its own, newer snapshot.

The look-ups run on a thread of their own, not on the sync's between refreshes:
a refresh may take minutes (a full calculation of a large database, a wait on
a lock) and with ``--sync-interval 0`` the sync sleeps until asked, while a
late Increment should be set right within one round whatever the sync does.
The held snapshot stays open until the next refresh has swapped its own in, so
rounds go on during a refresh. The RPC thread only appends to the store's log
and wakes this thread; a round waits ``BATCH_WINDOW`` for others to join, then
asks about all of them in one query, and what arrives meanwhile makes the next
round. A round costs the server a few statements' work on its interpreter:
under a full Increment load, rounds gathered over 5 ms cost Increment a fifth
of its throughput; over 50 ms, a few per cent of the server's CPU and nothing
measurable in latency (bench/README.md).

Increments without an action id are not looked up: nothing names their
action. They count as in Proca, and the next calculation corrects the figures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from proca_stats.server.retry import Backoff
from proca_stats.server.state.store import StatsStore

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.05  # seconds an Increment may wait for others to share its look-up
RETRY_BASE, RETRY_CAP = 0.1, 5.0  # seconds between failed rounds: doubling, capped


class LateCheck:
    """Looks up the Increments counted after each swap in its snapshot, from a thread of its own.

    ``taken_back(n)`` is told how many a round took back (for the metrics).
    """

    def __init__(
        self,
        store: StatsStore,
        taken_back: Callable[[int], None] = lambda n: None,
        window: float = BATCH_WINDOW,
    ) -> None:
        self._store = store
        self._taken_back = taken_back
        self._window = window
        self._stopping = threading.Event()
        self._retry = Backoff(RETRY_BASE, RETRY_CAP)
        self._thread = threading.Thread(target=self._run, name="proca-stats-late", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Start no round after this. One running ends with its query, which a stop of the
        sync cancels with the others on its pool (the thread is a daemon: nothing waits)."""
        self._stopping.set()
        self._store.arrived.set()

    def look_up(self) -> int | None:
        """One round, on the calling thread: how many Increments it took back, None when none
        waited. Raises what the look-up raises, unless a swap came meanwhile (its snapshot
        decided them, and the one asked may be gone)."""
        check = self._store.to_check()
        if check is None:
            return None
        try:
            seen = check.held.seen([arrival.action_id for arrival in check.arrivals])
        except Exception:
            if self._store.generation() != check.generation:
                return 0
            raise
        taken = self._store.take_back(check, seen)
        if taken:
            self._taken_back(taken)
        return taken

    def _run(self) -> None:
        while True:
            self._store.arrived.wait()
            if self._stopping.wait(self._window):  # later Increments join this round meanwhile
                break
            self._store.arrived.clear()  # before the round: what arrives during it wakes the next
            try:
                self.look_up()
            except Exception as error:  # the database, or a bug: the thread must go on
                if self._stopping.is_set():
                    break
                delay = self._retry.failed()
                log.warning(
                    "late check: cannot look Increments up in the held snapshot (%s); "
                    "next try in %.1f s",
                    str(error).strip() or type(error).__name__,
                    delay,
                )
                if self._stopping.wait(delay):
                    break
                self._store.arrived.set()
            else:
                self._retry.succeeded()
