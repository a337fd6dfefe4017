"""Crash safety: a real `proca-stats serve` on the change feed, killed with SIGKILL at random
points of its refreshes while changes stream in, started again: SERVING from the state file,
then figures equal to a full calculation, round after round."""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proca_stats.client import StatsClient
from proca_stats.server.sync.calculation import calculate
from tests.support.figures import figures
from tests.support.proca_data import ProcaData
from tests.support.servers import PROCA_STATS, clean_env, free_port, is_serving
from tests.support.waiting import wait_for

ROUNDS = 20


class Stream(threading.Thread):
    """Changes as Proca makes them, one after the other until stopped: new people (some
    fingerprints again), actions accepted or rejected, actions deleted."""

    def __init__(self, url: str, pages: dict[int, int]) -> None:
        super().__init__(daemon=True)
        self._url = url
        self._pages = pages  # page → campaign
        self._writing = threading.Lock()  # held while a change is made
        self._go = threading.Event()
        self._stopped = False
        self.changes = 0

    def run(self) -> None:
        chance = random.Random(18)
        with psycopg.connect(self._url, autocommit=True) as conn:
            data = ProcaData(conn)
            while not self._stopped:
                self._go.wait(0.1)
                with self._writing:
                    if self._go.is_set() and not self._stopped:
                        self._change(data, chance)
                        self.changes += 1

    def _change(self, data: ProcaData, chance: random.Random) -> None:
        what = chance.random()
        if what < 0.5:
            page = chance.choice(list(self._pages))
            fingerprint = f"person {chance.randrange(60)}".encode()
            data.person(self._pages[page], page, fingerprint, area=chance.choice(["DE", None]))
        elif what < 0.8:
            data.conn.execute(
                "UPDATE actions SET processing_status = %s WHERE id = (SELECT id FROM actions"
                " ORDER BY random() LIMIT 1)",
                (chance.choice([2, 3, 4]),),
            )
        else:
            data.conn.execute(
                "DELETE FROM actions WHERE id = (SELECT id FROM actions ORDER BY random() LIMIT 1)"
            )

    def pause(self) -> None:
        """Stop changing, once the change being made is committed."""
        self._go.clear()
        with self._writing:
            pass

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._stopped = True
        self._go.set()
        self.join()


@pytest.fixture
def stream(logical_url: str) -> Iterator[tuple[Stream, list[int]]]:
    with psycopg.connect(logical_url, autocommit=True) as conn:
        data = ProcaData(conn)
        pages = {}
        for extra in (0, 3):
            org = data.org()
            campaign = data.campaign(org)
            pages[data.page(campaign, org, extra_supporters=extra)] = campaign
            pages[data.page(campaign, data.org())] = campaign
    changes = Stream(logical_url, pages)
    changes.start()
    yield changes, sorted(set(pages.values()))
    changes.stop()


def serving_figures(port: int, campaigns: list[int]) -> dict[int, object]:
    with StatsClient(f"127.0.0.1:{port}") as client:
        return {c: figures(client.get_stats(c)) for c in campaigns}


def serve(url: str, state: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`proca-stats serve` on the feed, refreshing every 50 ms, once it is SERVING."""
    port = free_port()
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                PROCA_STATS,
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--database-url",
                url,
                "--change-feed",
                "logical",
                "--state-dir",
                str(state),
                "--sync-interval",
                "50",
            ],
            env=clean_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: process.poll() is not None or is_serving(port), 60, "SERVING")
    assert process.poll() is None, log.read_text()
    return process, port


def test_killed_at_random_points_of_refreshes_it_restarts_exact(
    logical_url: str, stream: tuple[Stream, list[int]], tmp_path: Path
) -> None:
    changes, campaigns = stream
    chance = random.Random(20)
    for round_ in range(ROUNDS + 1):
        log = tmp_path / f"round-{round_}.log"
        process, port = serve(logical_url, tmp_path / "state", log)
        try:
            if round_:
                assert "warm start: serving the figures" in log.read_text()
            changes.pause()
            with psycopg.connect(logical_url) as conn:
                expected = {c: calculate(conn).campaigns[c] for c in campaigns}
            wait_for(
                lambda: serving_figures(port, campaigns) == expected,  # noqa: B023
                30,
                f"round {round_}: the figures of a full calculation",
            )
            changes.resume()
            if round_ < ROUNDS:
                # A refresh starts every 50 ms and lasts about as long: a random moment of one.
                threading.Event().wait(chance.uniform(0.05, 0.4))
        finally:
            process.kill()
            process.wait()
    assert changes.changes > ROUNDS
