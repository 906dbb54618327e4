"""The ingest pipeline against real InfluxDB: outages, restarts, replay, bounded memory, close."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from servers import InfluxDB1Server, free_port

from core.model import Limb, Reading
from ingest import lineproto
from ingest.pipeline import IngestPipeline, PipelineState, PipelineStats
from ingest.sinks import FileSink, InfluxV1Sink, Sink
from ingest.spool import Spool, SpoolFull

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


def stored(server: InfluxDB1Server, db: str = "bfr") -> int:
    rows = server.query(db, "SELECT count(seq) FROM cuff_telemetry")
    return int(rows[0]["count"]) if rows else 0


def stored_seqs(server: InfluxDB1Server, db: str = "bfr") -> list[int]:
    return [row["seq"] for row in server.query(db, "SELECT seq FROM cuff_telemetry ORDER BY time")]


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


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool", segment_bytes=16 << 10) as s:
        yield s


@pytest.fixture
def private_influx(make_influxdb: Callable[[], InfluxDB1Server]) -> InfluxDB1Server:
    server = make_influxdb()
    server.create_database("bfr")
    return server


def v1(server: InfluxDB1Server, timeout_s: float = 0.5) -> InfluxV1Sink:
    return InfluxV1Sink(server.url, "bfr", timeout_s=timeout_s)


async def submit_range(pipeline: IngestPipeline, start: int, stop: int, step: int = 10,
                       check: Callable[[], None] | None = None) -> None:
    for i in range(start, stop, step):
        await pipeline.submit(chunk(i, step), step)
        if check is not None:
            check()


# -- healthy path ----------------------------------------------------------------------------


async def test_everything_submitted_is_written_once_in_order(
    spool: Spool, influxdb: InfluxDB1Server, influx_db: str
) -> None:
    pipeline = fast(spool, InfluxV1Sink(influxdb.url, influx_db))
    async with running(pipeline):
        await submit_range(pipeline, 0, 1000)
        await until(lambda: spool.records_pending == 0, "all written")
        assert pipeline.state is PipelineState.OK
    assert stored_seqs(influxdb, influx_db) == list(range(1000))
    stats = pipeline.snapshot()
    assert stats.written_lines == stats.submitted_lines == 1000
    assert stats.failed_batches == 0
    assert stats.pending_records == 0
    assert spool.bytes_used < 16 << 10  # written segments were deleted


# the names /metrics shows as ingest_<name>: the gateway's dashboards and alerts use them
STATS_KEYS = [
    "state", "replaying", "failing", "submitted_lines", "written_lines", "batches",
    "failed_batches", "replayed_lines", "rejected_lines", "rejected_batches",
    "last_batch_latency_s", "buffered_lines", "in_flight_lines", "buffered_bytes", "tail_lines",
    "max_buffer_lines", "spills", "spooled_bytes", "pending_bytes", "pending_records",
    "spool_full", "syncs",
]


async def test_stats_are_a_typed_snapshot_with_the_names_metrics_show(
    spool: Spool, tmp_path: Path
) -> None:
    pipeline = fast(spool, FileSink(tmp_path / "lp"))
    async with running(pipeline):
        await submit_range(pipeline, 0, 30)
        await until(lambda: spool.records_pending == 0, "all written")
        snapshot = pipeline.snapshot()
    assert isinstance(snapshot, PipelineStats)
    assert snapshot.state is PipelineState.OK
    assert (snapshot.written_lines, snapshot.submitted_lines, snapshot.pending_records) == (
        30, 30, 0
    )
    assert [f.name for f in dataclasses.fields(snapshot)] == STATS_KEYS
    gauges = dict(snapshot.gauges())
    assert list(gauges) == STATS_KEYS[1:]  # every number, in order; not the state's text
    assert all(type(v) is float for v in gauges.values())
    assert gauges == {k: float(getattr(snapshot, k)) for k in STATS_KEYS[1:]}


async def test_a_partial_batch_goes_after_the_interval(spool: Spool, tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "lp")
    pipeline = IngestPipeline(spool, sink, batch_lines=5000, batch_interval_s=0.05)
    async with running(pipeline):
        await pipeline.submit(chunk(0, 7), 7)
        await until(lambda: pipeline.written_lines == 7, "the interval flushed 7 lines")
        assert pipeline.batches == 1


class RecordingSink:
    """A real sink that also notes each batch's line count."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    async def write(self, body: bytes, lines: int) -> None:
        assert body.count(b"\n") == lines
        await self.inner.write(body, lines)
        self.sizes.append(lines)

    async def close(self) -> None:
        await self.inner.close()


async def test_batches_never_exceed_their_cap_and_no_line_is_repeated(
    spool: Spool, tmp_path: Path
) -> None:
    """A burst overflows the memory buffer: catch-up from the spool, then memory again."""
    sink = RecordingSink(FileSink(tmp_path / "lp"))
    pipeline = IngestPipeline(
        spool, sink, batch_lines=10, batch_interval_s=0.05, max_buffer_lines=20
    )
    async with running(pipeline):
        await pipeline.submit(chunk(0, 1), 1)
        await until(lambda: pipeline.state is PipelineState.OK, "memory mode reached")
        await asyncio.gather(*(pipeline.submit(chunk(i, 1), 1) for i in range(1, 300)))
        await until(lambda: spool.records_pending == 0, "burst written")
        assert pipeline.spills >= 1
        assert pipeline.max_buffered_lines_seen <= 20
        await submit_range(pipeline, 300, 400, step=1)
        await until(lambda: spool.records_pending == 0, "tail written")
        assert pipeline.state is PipelineState.OK
    written = [ln for f in sorted((tmp_path / "lp").iterdir()) for ln in f.read_bytes().splitlines()
               if not ln.startswith(b"#")]
    assert written == chunk(0, 400).splitlines()  # every line exactly once, oldest first
    # a backlog goes out in bigger batches, never beyond the cap
    assert 10 < max(sink.sizes) <= pipeline.max_batch_lines == 40
    assert sum(sink.sizes) == 400


async def test_aclose_flushes_the_buffer_without_waiting_for_the_interval(
    spool: Spool, influxdb: InfluxDB1Server, influx_db: str
) -> None:
    pipeline = IngestPipeline(spool, InfluxV1Sink(influxdb.url, influx_db), batch_interval_s=3600)
    async with running(pipeline):
        await pipeline.submit(chunk(0, 25), 25)
    assert stored(influxdb, influx_db) == 25
    assert spool.records_pending == 0


# -- outages --------------------------------------------------------------------------------


async def test_a_frozen_influxdb_loses_nothing_and_memory_stays_bounded(
    spool: Spool, private_influx: InfluxDB1Server
) -> None:
    pipeline = fast(spool, v1(private_influx, timeout_s=0.3))

    def bounded() -> None:
        assert pipeline.buffered_lines <= MAX_BUFFER

    async with running(pipeline):
        await submit_range(pipeline, 0, 200, check=bounded)
        await until(lambda: spool.records_pending == 0, "healthy start")
        private_influx.pause()
        try:
            await submit_range(pipeline, 200, 1200, check=bounded)
            await until(lambda: pipeline.state is PipelineState.FAILING, "write timed out")
            await submit_range(pipeline, 1200, 2000, check=bounded)
            assert pipeline.buffered_lines == 0  # while failing, lines go to the spool only
            assert spool.records_pending > 0
        finally:
            private_influx.resume()
        await until(lambda: spool.records_pending == 0, "backlog replayed")
        await until(lambda: pipeline.state is PipelineState.OK, "back to memory mode")
        await submit_range(pipeline, 2000, 2100, check=bounded)
        await until(lambda: spool.records_pending == 0, "tail written")
    assert stored(private_influx) == 2100
    assert stored_seqs(private_influx) == list(range(2100))
    assert pipeline.failed_batches >= 1
    assert pipeline.replayed_lines >= 800
    assert pipeline.max_buffered_lines_seen <= MAX_BUFFER


async def test_a_stopped_and_restarted_influxdb_loses_nothing(
    spool: Spool, private_influx: InfluxDB1Server
) -> None:
    pipeline = fast(spool, v1(private_influx))
    async with running(pipeline):
        await submit_range(pipeline, 0, 300)
        await until(lambda: spool.records_pending == 0, "healthy start")
        private_influx.stop()
        await submit_range(pipeline, 300, 1500)
        await until(lambda: pipeline.state is PipelineState.FAILING, "connection refused")
        assert pipeline.buffered_lines == 0
        private_influx.start()
        await until(lambda: spool.records_pending == 0, "backlog replayed")
    assert stored(private_influx) == 1500


async def test_a_restarted_pipeline_replays_what_the_spool_holds_first(
    tmp_path: Path, private_influx: InfluxDB1Server
) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, segment_bytes=4096) as spool:
        down = InfluxV1Sink(f"http://127.0.0.1:{free_port()}", "bfr", timeout_s=0.5)
        first = fast(spool, down)
        async with running(first, close_timeout_s=0.2):
            await submit_range(first, 0, 700)
        assert spool.records_pending == 70
    with Spool(directory, segment_bytes=4096) as spool:
        assert spool.records_pending == 70
        second = fast(spool, v1(private_influx))
        async with running(second):
            await submit_range(second, 700, 800)  # new lines queue behind the backlog
            await until(lambda: spool.records_pending == 0, "replayed")
        assert second.replayed_lines >= 700
    assert stored_seqs(private_influx) == list(range(800))


async def test_aclose_gives_up_at_its_deadline_and_keeps_the_rest(
    spool: Spool, private_influx: InfluxDB1Server
) -> None:
    pipeline = fast(spool, v1(private_influx, timeout_s=3600))
    task = asyncio.create_task(pipeline.run(), name="test.ingest")
    private_influx.pause()
    try:
        await submit_range(pipeline, 0, 100)
        await until(lambda: pipeline.in_flight_lines > 0, "a batch in flight")
        await pipeline.aclose(0.2)  # the hour-long write is abandoned at the deadline
        assert task.done()
        await task
    finally:
        private_influx.resume()
    assert pipeline.failed_batches == 0
    assert spool.records_pending == 10


# -- bad data, full spool ------------------------------------------------------------------


async def test_a_rejected_batch_is_set_aside_and_the_rest_flows(
    spool: Spool, influxdb: InfluxDB1Server, influx_db: str
) -> None:
    pipeline = fast(spool, InfluxV1Sink(influxdb.url, influx_db))
    async with running(pipeline):
        await submit_range(pipeline, 0, 100)
        await until(lambda: spool.records_pending == 0, "good lines")
        await pipeline.submit(b'cuff_telemetry,team=t1 seq="text" 1763900000005\n', 1)
        await submit_range(pipeline, 100, 200)
        await until(lambda: spool.records_pending == 0, "past the bad line")
        assert pipeline.state is PipelineState.OK
    assert pipeline.rejected_lines == 1
    assert pipeline.rejected_batches == 1
    assert stored(influxdb, influx_db) == 200
    saved = list((spool.directory / "rejected").iterdir())
    assert len(saved) == 1
    assert b'seq="text"' in saved[0].read_bytes()


async def test_a_failing_sink_is_retried_until_fixed(spool: Spool, tmp_path: Path) -> None:
    """A FileSink whose directory cannot be created fails; once it can, every line arrives once."""
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the directory should be")
    sink = FileSink(blocker / "lp")
    pipeline = fast(spool, sink)
    async with running(pipeline):
        await submit_range(pipeline, 0, 300)
        await until(lambda: pipeline.failed_batches >= 3, "retrying")
        assert pipeline.state is PipelineState.FAILING
        blocker.unlink()
        await until(lambda: spool.records_pending == 0, "written after the fix")
    written = [ln for f in sorted((blocker / "lp").iterdir()) for ln in f.read_bytes().splitlines()
               if not ln.startswith(b"#")]
    assert written == chunk(0, 300).splitlines()


async def test_a_full_spool_refuses_submissions(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", max_bytes=4096, segment_bytes=1024) as spool:
        down: Sink = InfluxV1Sink(f"http://127.0.0.1:{free_port()}", "bfr", timeout_s=0.5)
        pipeline = fast(spool, down)
        async with running(pipeline, close_timeout_s=0.1):
            with pytest.raises(SpoolFull):
                await submit_range(pipeline, 0, 1000)
            assert pipeline.snapshot().spool_full == 1
            assert spool.bytes_used <= 4096


async def test_run_twice_is_refused(spool: Spool, tmp_path: Path) -> None:
    pipeline = fast(spool, FileSink(tmp_path / "lp"))
    async with running(pipeline):
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already"):
            await pipeline.run()



STREAM_LINES_PER_S = 20_000  # a steady stream well within what InfluxDB takes in


class _Stream:
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


async def test_after_a_spill_memory_mode_resumes_under_a_steady_stream(
    spool: Spool, private_influx: InfluxDB1Server
) -> None:
    # A slow write (InfluxDB paused, within the timeout) overflows the buffer: the pipeline
    # catches up from the spool. The stream never pauses (an append every millisecond, well
    # within what InfluxDB takes), so the spool grows during every read: replay must still
    # hand over to memory mode, not read the spool back for as long as the stream lasts.
    pipeline = IngestPipeline(
        spool, v1(private_influx, timeout_s=10.0), batch_lines=1000, batch_interval_s=0.05,
        max_buffer_lines=4000,
    )

    def bounded() -> None:
        assert pipeline.buffered_lines <= 4000
        assert pipeline.snapshot().tail_lines <= 4000

    # yielding between appends, no sleep: some append lands in every read
    stream = _Stream(pipeline, STREAM_LINES_PER_S, bounded, pause_s=0)
    async with running(pipeline):
        stop = asyncio.Event()
        streamer = asyncio.create_task(stream.run(stop))
        try:
            await until(lambda: stream.next_seq >= 2000, "streaming")
            private_influx.pause()
            try:
                await until(lambda: pipeline.spills >= 1, "buffer overflowed in the slow write")
            finally:
                private_influx.resume()
            await asyncio.wait_for(stream.resumed.wait(), 20.0)  # the stream goes on meanwhile
        finally:
            stop.set()
            await streamer
        await until(lambda: spool.records_pending == 0, "all written")
    assert pipeline.failed_batches == 0  # slow, never failing: a spill, not an outage
    assert stored_seqs(private_influx) == list(range(stream.next_seq))


class _PacedSink:
    """Our FileSink, each write taking `write_s` (fsync included): a sink of known capacity.

    The case below needs a stream held within one batch of what the sink takes in, which a
    real server's varying latency cannot hold steady; `gate` pauses writes to force a spill.
    """

    def __init__(self, directory: Path, write_s: float) -> None:
        self.inner = FileSink(directory)
        self.write_s = write_s
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, body: bytes, lines: int) -> None:
        await self.gate.wait()
        started = asyncio.get_running_loop().time()
        await self.inner.write(body, lines)
        await asyncio.sleep(started + self.write_s - asyncio.get_running_loop().time())

    async def close(self) -> None:
        await self.inner.close()


async def test_memory_mode_resumes_when_the_stream_runs_near_the_sinks_capacity(
    spool: Spool, tmp_path: Path
) -> None:
    # Each write takes 100 ms and carries up to 400 lines (4,000 lines/s); the stream sends
    # 3,200 lines/s, so ~320 lines wait behind every write: memory mode holds them (the cap
    # is 400), but after a spill the backlog never drops below 300. Replay must still hand
    # over (a batch leaves at once on the switch), not read the spool back for the rest of
    # the stream, the trap a full bench run fell into (1.44M of 1.85M lines read back).
    sink = _PacedSink(tmp_path / "lp", write_s=0.1)
    pipeline = IngestPipeline(spool, sink, batch_lines=100, batch_interval_s=0.05,
                              max_buffer_lines=400)

    def bounded() -> None:
        assert pipeline.buffered_lines <= 400

    stream = _Stream(pipeline, 3_200, bounded, pause_s=0.002)
    async with running(pipeline):
        stop = asyncio.Event()
        streamer = asyncio.create_task(stream.run(stop))
        try:
            await until(lambda: stream.next_seq >= 2000, "streaming")
            sink.gate.clear()
            try:
                await until(lambda: pipeline.spills >= 1, "buffer overflowed while paused")
            finally:
                sink.gate.set()
            await asyncio.wait_for(stream.resumed.wait(), 10.0)  # the stream goes on meanwhile
        finally:
            stop.set()
            await streamer
        await until(lambda: spool.records_pending == 0, "all written")
    written = b"".join(p.read_bytes() for p in sorted((tmp_path / "lp").glob("*.lp")))
    assert written.count(b"cuff_telemetry") == stream.next_seq
