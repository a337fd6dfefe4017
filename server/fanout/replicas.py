"""Fan-out: an Increment counted by one replica reaches the others through PostgreSQL.

Every replica LISTENs on one channel and publishes there, with NOTIFY, the
Increments its own clients sent and its store counted. A retry that the store
refused (its action id was counted already) is not published again: the first
one was. What arrives from the others goes through ``StatsStore.increment``,
exactly like a local Increment, so an action id counts at most once on every
replica, whichever replicas its retries reached.

Publishing never slows an Increment down: the RPC thread only appends to a
list; a thread of its own waits a short batching window, packs everything
that arrived into as few payloads as fit (payload.py) and sends them in one
transaction, on a connection of its own.

NOTIFY is not durable: a message sent while a replica is not listening is
lost to it. So whenever the listener has to reconnect, it asks the sync for a
refresh, which recounts from the database what the lost messages carried.

A message can also arrive after a refresh whose snapshot holds its actions
already (that refresh, or a periodic one, landed between the NOTIFY's commit
and its delivery). Each payload names the transaction that sent it; when the
snapshot the figures come from saw that transaction commit, its Increments
with an action id are not applied (their ids are remembered, so a retry is
refused as if they had counted). Otherwise they count like a local Increment,
and the late check (state/late.py) looks them up in that snapshot as it does
every Increment counted after a swap.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from proca_stats.server.database import connection_options
from proca_stats.server.fanout.payload import (
    TAGGED,
    Message,
    PayloadError,
    decode,
    encode,
    sender_prefix,
)
from proca_stats.server.metrics import FanoutMetrics
from proca_stats.server.retry import Backoff
from proca_stats.server.state.counters import Increment
from proca_stats.server.state.store import CapacityError, StatsStore

log = logging.getLogger(__name__)

LISTENER_NAME = "proca-stats-fanout-listen"  # application_name, to find it in pg_stat_activity
PUBLISHER_NAME = "proca-stats-fanout-publish"
BATCH_WINDOW = 0.005  # seconds an Increment may wait for others to share its NOTIFY
MAX_PENDING = 100_000  # Increments waiting to be published; more are dropped (and counted)
POLL = 0.5  # seconds the listener waits for messages before it checks whether it must stop
RETRY_BASE, RETRY_CAP = 0.1, 5.0  # seconds between connection attempts: doubling, capped
# One statement: one round trip, one transaction, payloads in order, each tagged with its id.
PUBLISH = (
    f"SELECT pg_notify(%s, {TAGGED}) FROM unnest(%s::text[]) WITH ORDINALITY AS p(payload, n) "
    "ORDER BY n"
)


class Publisher:
    """Sends counted Increments to the channel in batches, from a thread of its own."""

    def __init__(
        self,
        connect: Callable[[str], psycopg.Connection[TupleRow]],
        channel: str,
        replica: str,
        metrics: FanoutMetrics,
        window: float = BATCH_WINDOW,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._replica = replica
        self._metrics = metrics
        self._window = window
        self._cond = threading.Condition()
        self._pending: list[Increment] = []
        self._oldest = 0.0  # when the oldest pending Increment was accepted (Unix time)
        self._stopping = False
        self._number = 0  # of the next payload
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._retry = Backoff(RETRY_BASE, RETRY_CAP)
        self._thread = threading.Thread(target=self._run, name="proca-stats-publish", daemon=True)

    def publish(self, inc: Increment) -> None:
        """Queue an Increment; it leaves within the batching window (when the database answers)."""
        with self._cond:
            if len(self._pending) >= MAX_PENDING:
                self._metrics.dropped.inc()
                return
            if not self._pending:
                self._oldest = time.time()
                self._cond.notify()
            self._pending.append(inc)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Send what is queued (one attempt), then close the connection."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                # The window: later Increments join this batch meanwhile.
                self._cond.wait_for(lambda: self._stopping, self._window)
                batch, accepted_at, self._pending = self._pending, self._oldest, []
                stopping = self._stopping
            if batch and not self._send(batch, accepted_at) and not stopping:
                delay = self._retry.failed()
                log.warning("fan-out: cannot publish; next try in %.1f s", delay)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, delay)
            if stopping:
                break
        if self._conn is not None:
            self._conn.close()

    def _send(self, batch: list[Increment], accepted_at: float) -> bool:
        """Publish one batch in one transaction; False (batch dropped) when that failed."""
        payloads = encode(self._replica, self._number, accepted_at, batch)
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(PUBLISHER_NAME)
            self._conn.execute(PUBLISH, (self._channel, payloads))
        except psycopg.Error as error:
            log.warning("fan-out: dropped %d increments: %s", len(batch), str(error).strip())
            self._metrics.dropped.inc(len(batch))
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return False
        self._number += len(payloads)
        self._metrics.published.inc(len(batch))
        self._retry.succeeded()
        return True


class Listener:
    """Applies the other replicas' Increments to the store, reconnecting when the link drops.

    ``connected(state)`` is told when listening starts and ends; ``missed()``
    when it starts again after a gap, during which messages may have been lost.
    ``by_transaction``: the store's held snapshot is of the database this
    listens on, so a message's transaction can be looked for in it (held.py).
    """

    def __init__(
        self,
        connect: Callable[[str], psycopg.Connection[TupleRow]],
        channel: str,
        replica: str,
        store: StatsStore,
        metrics: FanoutMetrics,
        *,
        connected: Callable[[bool], None],
        missed: Callable[[], None],
        by_transaction: bool = True,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._by_transaction = by_transaction
        self._own = sender_prefix(replica)
        self._store = store
        self._metrics = metrics
        self._connected = connected
        self._missed = missed
        self._stopping = threading.Event()
        self._tried = threading.Event()  # the first connection attempt is over
        # Tests hold a received message here, to apply it after a refresh they run: the
        # race of a refresh landing between a NOTIFY's commit and its delivery.
        self.before_apply: Callable[[], None] = lambda: None
        self._retry = Backoff(RETRY_BASE, RETRY_CAP)
        self._thread = threading.Thread(target=self._run, name="proca-stats-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_first_attempt(self, timeout: float) -> None:
        """Wait until the first connection listens or failed (at most ``timeout`` s)."""
        self._tried.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._listen()
            except psycopg.Error as error:
                message = str(error).strip() or type(error).__name__
                log.warning("fan-out: listening connection lost: %s", message)
            except Exception:
                # A bug must not end the thread: the replica would silently stop hearing.
                log.exception("fan-out: unexpected error while listening")
            if self._stopping.is_set():
                break
            delay = self._retry.failed()
            self._tried.set()
            log.warning("fan-out: reconnecting in %.1f s", delay)
            self._stopping.wait(delay)

    def _listen(self) -> None:
        with self._connect(LISTENER_NAME) as conn:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            after_gap = self._retry.failures > 0
            self._retry.succeeded()
            self._tried.set()
            self._connected(True)
            self._metrics.connected.set(1)
            try:
                if after_gap:
                    log.info("fan-out: listening again; refreshing what may have been missed")
                    self._missed()
                while not self._stopping.is_set():
                    for notify in conn.notifies(timeout=POLL):
                        self._apply(notify.payload)
            finally:
                self._metrics.connected.set(0)
                self._connected(False)

    def _apply(self, payload: str) -> None:
        if payload.startswith(self._own):
            return
        self.before_apply()
        try:
            message = decode(payload)
        except PayloadError as error:
            log.warning("fan-out: ignored a message that is not a fan-out payload: %s", error)
            return
        self._metrics.received.inc(len(message.increments))
        for inc in self._not_held(message):
            try:
                self._store.increment(inc)
            except CapacityError as error:
                log.warning("fan-out: not counted: %s", error)
        self._metrics.delivery_seconds.observe(max(0.0, time.time() - message.accepted_at))

    def _not_held(self, message: Message) -> list[Increment]:
        """The message's Increments to count: all of them, unless the held snapshot saw its
        transaction commit, which holds the actions of those with an action id already."""
        held = self._store.held() if self._by_transaction else None
        if message.transaction is None or held is None:
            return message.increments
        if not held.sees_transaction(message.transaction):
            return message.increments
        known = [inc.action_id for inc in message.increments if inc.action_id is not None]
        self._store.remember_held(known)
        self._metrics.held.inc(len(known))
        return [inc for inc in message.increments if inc.action_id is None]


class Fanout:
    """The publisher and the listener of one replica, with a random id to tell its messages.

    ``by_transaction``: the sync reads the database at ``database_url`` too (see Listener).
    """

    def __init__(
        self,
        database_url: str,
        channel: str,
        store: StatsStore,
        metrics: FanoutMetrics,
        *,
        connected: Callable[[bool], None],
        missed: Callable[[], None],
        connect_timeout: float = 10.0,
        by_transaction: bool = True,
    ) -> None:
        self.replica = secrets.token_hex(8)
        self._url = database_url
        self._connect_timeout = max(1, round(connect_timeout))
        self._publisher = Publisher(self._connection, channel, self.replica, metrics)
        self.listener = Listener(
            self._connection,
            channel,
            self.replica,
            store,
            metrics,
            connected=connected,
            missed=missed,
            by_transaction=by_transaction,
        )

    def _connection(self, name: str) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(
            self._url, autocommit=True, **connection_options(name, self._connect_timeout)
        )

    def publish(self, inc: Increment) -> None:
        self._publisher.publish(inc)

    def start(self, wait: float) -> None:
        """Start both threads; return once the listener listens, or after its first failure,
        or after ``wait`` seconds, whichever comes first.

        The caller starts the first calculation after that: what other replicas
        publish before its snapshot is then either in the snapshot or heard.
        """
        self.listener.start()
        self._publisher.start()
        self.listener.wait_first_attempt(wait)

    def stop(self) -> None:
        self._publisher.stop()
        self.listener.stop()
