"""The ingest pipeline against real InfluxDB: outages, restarts, replay, bounded memory, close.

Into local sinks (batching, stats, retries, a full spool): tests/unit/test_pipeline.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingest.pipeline import IngestPipeline, PipelineState
from ingest.sinks import InfluxV1Sink
from ingest.spool import Spool
from tests.support.pipeline_rig import (
    MAX_BUFFER,
    Stream,
    chunk,
    fast,
    running,
    submit_range,
    until,
)
from tests.support.servers import InfluxDB1Server, free_port

STREAM_LINES_PER_S = 20_000  # a steady stream well within what InfluxDB takes in


def stored(server: InfluxDB1Server, db: str = "bfr") -> int:
    rows = server.query(db, "SELECT count(seq) FROM cuff_telemetry")
    return int(rows[0]["count"]) if rows else 0


def stored_seqs(server: InfluxDB1Server, db: str = "bfr") -> list[int]:
    return [row["seq"] for row in server.query(db, "SELECT seq FROM cuff_telemetry ORDER BY time")]


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
        await pipeline.submit(b'cuff_telemetry,team=t1 seq="text" 1763900000005000000\n', 1)
        await submit_range(pipeline, 100, 200)
        await until(lambda: spool.records_pending == 0, "past the bad line")
        assert pipeline.state is PipelineState.OK
    assert pipeline.rejected_lines == 1
    assert pipeline.rejected_batches == 1
    assert stored(influxdb, influx_db) == 200
    saved = list((spool.directory / "rejected").iterdir())
    assert len(saved) == 1
    assert b'seq="text"' in saved[0].read_bytes()
    assert b"\n# timestamps in ns\n" in saved[0].read_bytes()  # how to import it again


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
    stream = Stream(pipeline, STREAM_LINES_PER_S, bounded, pause_s=0)
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
