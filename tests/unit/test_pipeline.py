"""The ingest pipeline into local sinks: batching, stats, retries, a full spool, spills.

Against a real InfluxDB (outages, restarts, replay): tests/integration/test_pipeline_influxdb.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingest.errors import RejectedBatchError
from ingest.pipeline import IngestPipeline, PipelineState, PipelineStats
from ingest.sinks import FileSink, InfluxV1Sink, Sink
from ingest.spool import Spool, SpoolFull
from tests.support.pipeline_rig import Stream, chunk, fast, running, submit_range, until
from tests.support.servers import free_port


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool", segment_bytes=16 << 10) as s:
        yield s


# the names /metrics shows as ingest_<name>: the gateway's dashboards and alerts use them
STATS_KEYS = [
    "state", "replaying", "failing", "submitted_lines", "written_lines", "batches",
    "failed_batches", "replayed_lines", "rejected_lines", "rejected_batches",
    "last_batch_latency_s", "buffered_lines", "in_flight_lines", "buffered_bytes", "tail_lines",
    "max_buffer_lines", "spills", "spooled_bytes", "pending_bytes", "pending_records",
    "spool_full", "syncs", "refusing", "rejected_files_deleted", "rejected_lines_deleted",
    "rejected_unsaved_batches", "rejected_unsaved_lines", "spool_disk_full",
    "spool_disk_full_refusals", "spool_read_failures", "disk_waits",
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

    stream = Stream(pipeline, 3_200, bounded, pause_s=0.002)
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


# -- batches InfluxDB refuses ----------------------------------------------------------------------

REFUSED_MARK = b"refuse_me"


class _RefusingSink:
    """Our FileSink behind InfluxDB's partial write: lines holding REFUSED_MARK are refused
    (as a field type conflict is), the rest of the batch is stored, and the batch is
    reported as rejected with the count."""

    def __init__(self, directory: Path) -> None:
        self.inner = FileSink(directory)

    async def write(self, body: bytes, lines: int) -> None:
        good = [ln for ln in body.splitlines(keepends=True) if REFUSED_MARK not in ln]
        if good:
            await self.inner.write(b"".join(good), len(good))
        if len(good) < lines:
            raise RejectedBatchError("partial write: field type conflict", status=400,
                                     rejected_lines=lines - len(good))

    async def close(self) -> None:
        await self.inner.close()


def refused_chunk(k: int) -> bytes:
    """Nine good lines and one InfluxDB refuses."""
    return chunk(10 * k, 9) + REFUSED_MARK + b" v=1i %d\n" % k


async def test_refused_batches_are_loud_and_rejected_files_are_deleted_only_with_a_count(
    spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pipeline = IngestPipeline(spool, _RefusingSink(tmp_path / "lp"), batch_lines=10,
                              batch_interval_s=0.02, rejected_max_files=3, refusing_s=0.5)
    assert not pipeline.refusing

    def refused(n: int) -> Callable[[], bool]:
        return lambda: pipeline.rejected_batches == n

    async with running(pipeline):
        for k in range(5):
            await pipeline.submit(refused_chunk(k), 10)
            await until(refused(k + 1), "batch refused")
            assert pipeline.refusing  # the gateway reports `degraded` meanwhile
        await until(lambda: spool.records_pending == 0, "passed over, never blocking")
        stats = pipeline.snapshot()
        assert (stats.rejected_batches, stats.rejected_lines, stats.refusing) == (5, 5, 1)
        assert stats.written_lines == 45  # a partial write keeps the good lines
        # rejected/ holds the newest 3; the 2 deleted are counted, lines and all, and logged
        saved = sorted((spool.directory / "rejected").glob("rejected-*.lp"))
        assert [p.read_bytes().count(REFUSED_MARK) for p in saved] == [1, 1, 1]
        assert [b"%s v=1i %d" % (REFUSED_MARK, k) in p.read_bytes()
                for k, p in zip((2, 3, 4), saved, strict=True)] == [True] * 3
        assert (stats.rejected_files_deleted, stats.rejected_lines_deleted) == (2, 20)
        assert (stats.rejected_unsaved_batches, stats.rejected_unsaved_lines) == (0, 0)
        await until(lambda: not pipeline.refusing, "refusing ends by itself")
    logged = [r.getMessage() for r in caplog.records]
    assert sum("InfluxDB rejected 1 of 10 line(s)" in m for m in logged) == 5
    deletions = [m for m in logged if "oldest refused batch file(s)" in m]
    assert len(deletions) == 2
    assert "2 file(s), 20 line(s) deleted so far" in deletions[-1]


async def test_a_refused_batch_that_cannot_be_saved_is_counted(
    spool: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where rejected/ should be")
    pipeline = IngestPipeline(spool, _RefusingSink(tmp_path / "lp"), batch_lines=10,
                              batch_interval_s=0.02, rejected_dir=blocker / "rejected")
    async with running(pipeline):
        await pipeline.submit(refused_chunk(0), 10)
        # counted as refused first, then the save is tried (off the loop): wait for its end
        await until(lambda: pipeline.snapshot().rejected_unsaved_batches == 1, "save failed")
        stats = pipeline.snapshot()
        assert pipeline.rejected_batches == 1
        assert (stats.rejected_unsaved_batches, stats.rejected_unsaved_lines) == (1, 10)
        assert stats.refusing == 1
    assert any("could not be saved" in r.getMessage() for r in caplog.records)
