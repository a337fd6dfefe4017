"""WatchStats delivers every change within min_interval_ms + 100 ms, over a real stream.

The bound is the contract: a change waits at most one interval for the next
message (changes in between are coalesced into it), plus delivery, and 100 ms
is far above one local round trip plus a thread switch (about 1 ms). What keeps
it steady on a loaded two-core machine is that the budget is spent only where
it belongs: the held-back part of a latency is bounded by the interval, which
the server keeps with its own clock, and the clock starts at the change.

The server is a `proca-stats serve` process of its own, as in production, so
the measuring client never competes with it for the interpreter lock. Each
change's latency runs from the return of its Increment (the server applied it
before answering) to the arrival of the first message that includes it; taken
from before the call, it would also charge the change with however long the
request waited to be read on a busy machine, before there was any change. The
arrival time is taken by the reading thread as each message comes. *Every*
change must meet the bound: no averaging, no retries.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable

from proca_stats.client import StatsClient
from tests.support.servers import clean_env
from tests.support.watching import Recorder

INTERVAL_MS = 200
SLACK = 0.100
CHANGES = 25


def test_every_change_arrives_within_the_interval_plus_100_ms(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    _, port = serve(env=clean_env(DATABASE_URL=database_url, SYNC_INTERVAL="0"))
    pace = random.Random(5)  # gaps shorter and longer than the interval, reproducibly
    changed_at: list[float] = []
    with StatsClient(f"127.0.0.1:{port}") as client:
        recorder = Recorder(client.watch_stats(9, min_interval_ms=INTERVAL_MS))
        try:
            recorder.wait_for_count(1)
            for _ in range(CHANGES):
                # Pacing, the shape of the load: nothing waits on these gaps.
                time.sleep(pace.uniform(0, 1.5 * INTERVAL_MS / 1000))
                client.increment(9, 1, "signature", new_supporter=True)
                changed_at.append(time.monotonic())
            latencies = [
                recorder.arrival(lambda s, n=n: s.supporters >= n, f"change {n}") - changed
                for n, changed in enumerate(changed_at, 1)
            ]
        finally:
            recorder.close()
    bound = INTERVAL_MS / 1000 + SLACK
    in_ms = [round(latency * 1000) for latency in latencies]
    late = [f"change {n}: {ms} ms" for n, ms in enumerate(in_ms, 1) if ms > bound * 1000]
    assert not late, f"over {bound * 1000:.0f} ms: {late}; all (ms): {in_ms}"
    # Coalescing held some changes back and let others through at once.
    assert min(latencies) < SLACK < max(latencies)
