"""Waiting for a condition with a deadline, so no test sleeps in place of synchronising."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

POLL = 0.02  # seconds between checks: short beside any bound a test waits for


def wait_for(
    check: Callable[[], T],
    timeout: float = 15.0,
    what: str = "condition",
    *,
    since: float | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy, or fail once ``timeout`` seconds
    have passed since ``since`` (a ``time.monotonic()`` reading; by default, now).

    ``since`` lets a test bound the time from the event it is about, such as the
    return of the call that made a change, rather than from when it began to wait.
    The last check starts at the deadline, not up to one poll before it.
    """
    deadline = (time.monotonic() if since is None else since) + timeout
    while True:
        result = check()
        if result:
            return result
        now = time.monotonic()
        if now >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(min(POLL, deadline - now))
