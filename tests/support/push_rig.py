"""Driving a PushDispatcher in a test: run it for a block, and wait for what it delivers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from alerts.push import PushDispatcher

WAIT_S = 10.0  # upper bound for "eventually"; every wait here normally ends in milliseconds


async def eventually(condition: Callable[[], Any]) -> None:
    """Poll `condition` (counters, receivers: no event to await) until it holds."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(dispatcher: PushDispatcher) -> AsyncIterator[PushDispatcher]:
    """The dispatcher's workers running for the block, closed (queues drained) after it."""
    task = asyncio.create_task(dispatcher.run(), name="test.push.run")
    try:
        yield dispatcher
    finally:
        await dispatcher.aclose()
        await task
