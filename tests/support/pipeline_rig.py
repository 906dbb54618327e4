"""The ingest pipeline under test: tuned for seconds-long tests, fed numbered lines.

Both tiers drive IngestPipeline with these: the unit tier into local sinks (files, paced or
failing ones), the integration tier into a real InfluxDB it pauses, stops and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from core.model import Limb, Reading
from ingest import lineproto
from ingest.pipeline import IngestPipeline, PipelineState
from ingest.sinks import Sink
from ingest.spool import Spool

TS = 1_763_900_000_000
WAIT_S = 60.0  # ceiling for a condition that normally holds within a second; never a timing check
POLL_S = 0.01

MAX_BUFFER = 100  # lines the in-memory buffer may hold in these tests


def fast(spool: Spool, sink: Sink) -> IngestPipeline:
    """A pipeline tuned so each test takes seconds: small batches, short interval and backoff."""
    return IngestPipeline(
        spool, sink, batch_lines=50, batch_interval_s=0.05, max_buffer_lines=MAX_BUFFER,
        retry_initial_s=0.02, retry_max_s=0.2, permanent_retry_s=0.2,
    )


def chunk(start: int, n: int) -> bytes:
    """n telemetry lines for seq start..start+n-1, one ms apart (distinct points)."""
    return lineproto.encode_lines(
        lineproto.telemetry_line(
            Reading(
                team="t1", cuff="c7", athlete="a-17", limb=Limb.LEFT_LEG, ts_ms=TS + i, seq=i,
                pressure_mmhg=150.0 + i % 10, elapsed_s=i / 10, inflated=True, target_mmhg=None,
                battery_pct=None, clock_skew_s=None, received_ms=TS + i,
            )
        )
        for i in range(start, start + n)
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition (polling); fail after a generous ceiling."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 -- the states polled here have no event
            await asyncio.sleep(POLL_S)
    assert condition(), what


@contextlib.asynccontextmanager
async def running(
    pipeline: IngestPipeline, close_timeout_s: float = 10.0
) -> AsyncIterator[asyncio.Task[None]]:
    """Run the pipeline in a task; aclose() it and wait for the task on the way out."""
    task = asyncio.create_task(pipeline.run(), name="test.ingest")
    try:
        yield task
    finally:
        await pipeline.aclose(close_timeout_s)
        await task


async def submit_range(pipeline: IngestPipeline, start: int, stop: int, step: int = 10,
                       check: Callable[[], None] | None = None) -> None:
    """Submit lines start..stop-1 in chunks of `step`, calling `check()` after each."""
    for i in range(start, stop, step):
        await pipeline.submit(chunk(i, step), step)
        if check is not None:
            check()


class Stream:
    """Submits 10-line chunks at `rate` lines/s until stopped, yielding between turns.

    Each turn calls `bounded()` (the test's memory checks) and sets `resumed` once the
    pipeline is back in memory mode after a spill.
    """

    def __init__(self, pipeline: IngestPipeline, rate: float, bounded: Callable[[], None],
                 pause_s: float) -> None:
        self.pipeline = pipeline
        self.rate = rate
        self.bounded = bounded
        self.pause_s = pause_s
        self.next_seq = 0
        self.resumed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pipeline = self.pipeline
        while not stop.is_set():
            due = int((loop.time() - t0) * self.rate)
            while self.next_seq < due:
                start, self.next_seq = self.next_seq, self.next_seq + 10
                pipeline.submit_nowait(chunk(start, 10), 10)
            self.bounded()
            if pipeline.spills and pipeline.state is PipelineState.OK:
                self.resumed.set()
            await asyncio.sleep(self.pause_s)
