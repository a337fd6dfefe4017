"""With action ids, the figures equal a full calculation once the look-ups settle, whatever the
order of Increments, commits and refreshes.

One store, the server's refresher over a real database, its handover and the late check's
rounds, all run on the test's thread in the order hypothesis draws: actions stored (each
committed at once) and their Increments delivered later, late or not, some again as
retries; refreshes taken (snapshot and calculation) and swapped in as separate steps, so
that Increments and look-ups fall between them; look-up rounds anywhere. Whenever every
stored action has been reported and no round has anything left to do, the figures must be
a full calculation's, exactly. Increments without an action id count as in Proca: they
only have to agree with a full calculation after a refresh that none races.
"""

from __future__ import annotations

import random
from dataclasses import replace

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proca_stats.server.state.counters import Increment, Snapshot
from proca_stats.server.state.handover import swap_in
from proca_stats.server.state.late import LateCheck
from proca_stats.server.state.store import StatsStore
from proca_stats.server.sync.held import ASIDE_CONNECTIONS
from proca_stats.server.sync.refresh import Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS
from tests.support.database import Refreshing
from tests.support.proca_data import ProcaData
from tests.test_fanout import Actions, truth

steps = st.lists(
    st.one_of(
        st.just(("store",)),
        st.tuples(st.just("deliver"), st.integers(0, 50)),
        st.tuples(st.just("retry"), st.integers(0, 50)),
        st.just(("take",)),
        st.just(("swap",)),
        st.just(("look up",)),
        st.just(("settle",)),
    ),
    max_size=40,
)


class World:
    """The store, the refresher and what the test stored and reported so far."""

    def __init__(self, database_url: str, refresher: Refresher, actions: Actions, ids: str) -> None:
        self.database_url = database_url
        self.store = StatsStore()
        self.late = LateCheck(self.store)
        self.refresher = refresher
        self.actions = actions
        self.ids = ids
        self.unreported: list[Increment] = []  # stored, their Increment not delivered yet
        self.reported: list[Increment] = []
        self.taken: Snapshot | None = None  # a refresh's result, not swapped in yet

    def deliver(self, inc: Increment) -> None:
        """Count it, with its action id or (as the draw says) without."""
        assert inc.action_id is not None
        with_id = self.ids == "all" or (self.ids == "some" and inc.action_id % 2 == 0)
        self.store.increment(inc if with_id else replace(inc, action_id=None))

    def take(self) -> None:
        if self.taken is None:
            self.taken, _ = self.refresher.run(increments_before=self.store.arrivals())

    def swap(self) -> None:
        if self.taken is not None:
            swap_in(self.store, self.taken, self.refresher.seen, self.refresher.held())
            self.refresher.settle()
            self.taken = None

    def step(self, step: tuple[object, ...]) -> None:
        match step:
            case ("store",):
                self.unreported.append(self.actions.next())
            case ("deliver", int(which)) if self.unreported:
                inc = self.unreported.pop(which % len(self.unreported))
                self.deliver(inc)
                self.reported.append(inc)
            case ("retry", int(which)) if self.reported:
                self.deliver(self.reported[which % len(self.reported)])
            case ("take",):
                self.take()
            case ("swap",):
                self.swap()
            case ("look up",):
                self.late.look_up()
            case ("settle",):
                self.settle()

    def settle(self) -> None:
        """Report every stored action, let the rounds finish; with ids, compare."""
        while self.unreported:
            self.step(("deliver", 0))
        while self.late.look_up() is not None:
            pass
        if self.ids == "all":
            self.compare("once every action is reported and the look-ups settled")

    def compare(self, when: str) -> None:
        expected = truth(self.database_url)
        held = {campaign: self.store.get(campaign)[0] for campaign in expected}
        assert held == expected, when


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ids=st.sampled_from(["all", "some", "none"]), steps=steps, rng=st.randoms(use_true_random=False)
)
def test_with_action_ids_the_figures_equal_a_full_calculation_once_looked_up(
    database_url: str,
    refreshing: Refreshing,
    ids: str,
    steps: list[tuple[object, ...]],
    rng: random.Random,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE actions, supporters, action_pages, campaigns, orgs RESTART IDENTITY CASCADE"
        )
        actions = Actions(ProcaData(conn), rng)
        with refreshing(connections=CONNECTIONS + ASIDE_CONNECTIONS) as refresher:
            world = World(database_url, refresher, actions, ids)
            world.take()
            world.swap()  # the first calculation
            for step in steps:
                world.step(step)
            world.settle()
            world.swap()
            world.take()  # a refresh no Increment races sets every figure right
            world.swap()
            world.compare("after a refresh")
