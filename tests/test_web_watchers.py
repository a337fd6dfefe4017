"""Hundreds of HTTP watchers on one campaign: one Increment reaches them all, on one event
loop (no thread per stream)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from proca_stats.server.app import StatsServer
from tests.support.web import async_stream, port_of, post_json, start_web

WATCHERS = 300
INCREMENT = {"campaign_id": 7, "org_id": 2, "action_type": "signature", "new_supporter": True}


def test_300_http_watchers_all_see_one_increment_within_3_s(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url, max_watchers=WATCHERS)
    threads_before = threading.active_count()

    async def watch_all() -> list[float]:
        opened = [asyncio.Event() for _ in range(WATCHERS)]
        seen: list[float] = []

        async def one(connected: asyncio.Event) -> None:
            async for message in async_stream(port_of(server), {"campaign_id": 7}, connected):
                if message["stats"]["supporters"] == "1":
                    seen.append(time.monotonic())
                    return

        tasks = [asyncio.create_task(one(event)) for event in opened]
        async with asyncio.timeout(60):
            for event in opened:
                await event.wait()
            while len(server.watchers) < WATCHERS:  # every place taken: every first read done
                await asyncio.sleep(0.02)
        assert threading.active_count() <= threads_before + 2  # the server's loop, not a pool
        sent = time.monotonic()
        await asyncio.to_thread(post_json, server, "Increment", INCREMENT)
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
        return [at - sent for at in seen]

    delays = asyncio.run(watch_all())
    assert len(delays) == WATCHERS
    assert max(delays) < 3.0, f"the last watcher saw the Increment after {max(delays):.2f} s"
