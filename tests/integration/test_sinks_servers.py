"""Sinks against real servers: InfluxDB 1.x (v1 API), VictoriaMetrics (v2 API), import files.

What needs no server (errors, classification, make_sink): tests/unit/test_sinks.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.model import Reading
from ingest import lineproto
from ingest.sinks import (
    FileSink,
    InfluxV1Sink,
    InfluxV2Sink,
    PermanentSinkError,
    RejectedBatchError,
    TransientSinkError,
)
from tests.support.lineproto_ref import BATCH_TS, body_of, readings
from tests.support.servers import InfluxDB1Server, VictoriaMetricsServer


def assert_stored_exactly(influxdb: InfluxDB1Server, db: str, rs: list[Reading]) -> None:
    rows = influxdb.query(db, "SELECT * FROM cuff_telemetry ORDER BY time")
    assert len(rows) == len(rs)
    for row, r in zip(rows, rs, strict=True):
        assert row["time"] == r.ts_ms
        assert (row["team"], row["cuff"], row["athlete"], row["limb"]) == (
            r.team, r.cuff, r.athlete, r.limb.value
        )
        assert float(row["pressure_mmhg"]) == r.pressure_mmhg
        assert float(row["elapsed_s"]) == r.elapsed_s
        assert row["inflated"] is r.inflated
        assert row["seq"] == r.seq
        assert row["target_mmhg"] == 120.0
        assert row["battery_pct"] == r.battery_pct


# -- InfluxDB 1.x --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
async def test_v1_sink_stores_every_value_exactly(
    influxdb: InfluxDB1Server, influx_db: str, compress: bool
) -> None:
    rs = readings(300)
    sink = InfluxV1Sink(influxdb.url, influx_db, gzip=compress, timeout_s=5.0)
    try:
        await sink.write(body_of(rs[:150]), 150)
        await sink.write(body_of(rs[150:]), 150)  # the same session again
    finally:
        await sink.close()
    assert_stored_exactly(influxdb, influx_db, rs)


async def test_v1_sink_keeps_readings_of_one_millisecond_apart(
    influxdb: InfluxDB1Server, influx_db: str
) -> None:
    """SPEC §4, one point per reading (issue #17, 5): readings of one cuff stamped alike."""
    rs = [r._replace(ts_ms=BATCH_TS) for r in readings(20)]
    sink = InfluxV1Sink(influxdb.url, influx_db)
    try:
        await sink.write(body_of(rs), len(rs))
    finally:
        await sink.close()
    assert_stored_exactly(influxdb, influx_db, rs)  # 20 points, in seq order, at their ms
    exact = influxdb.query(influx_db, "SELECT seq FROM cuff_telemetry", epoch="ns")
    assert [row["time"] for row in exact] == [BATCH_TS * lineproto.NS_PER_MS + r.seq for r in rs]


async def test_v1_sink_writes_to_the_named_retention_policy(
    influxdb: InfluxDB1Server, influx_db: str
) -> None:
    influxdb.query(
        influx_db, f'CREATE RETENTION POLICY "short" ON "{influx_db}" DURATION 1000w REPLICATION 1'
    )
    sink = InfluxV1Sink(influxdb.url, influx_db, retention_policy="short")
    try:
        await sink.write(body_of(readings(3)), 3)
    finally:
        await sink.close()
    assert len(influxdb.query(influx_db, 'SELECT * FROM "short".cuff_telemetry')) == 3
    assert influxdb.query(influx_db, "SELECT * FROM cuff_telemetry") == []


async def test_v1_sink_reports_a_bad_line_as_rejected_with_the_servers_count(
    influxdb: InfluxDB1Server, influx_db: str
) -> None:
    good = lineproto.encode_lines(lineproto.telemetry_line(r) for r in readings(3))
    conflict = b'cuff_telemetry,team=t1 seq="not an integer" 1763900000001000000\n'
    sink = InfluxV1Sink(influxdb.url, influx_db)
    try:
        await sink.write(good, 3)
        with pytest.raises(RejectedBatchError) as info:
            await sink.write(conflict + good, 4)
        assert info.value.rejected_lines == 1
        assert info.value.status == 400
        with pytest.raises(RejectedBatchError) as info:
            await sink.write(b"this is not line protocol\n" + good, 4)
        assert info.value.rejected_lines == 1
    finally:
        await sink.close()
    assert len(influxdb.query(influx_db, "SELECT * FROM cuff_telemetry")) == 3  # the rest is kept


async def test_v1_sink_missing_database_is_permanent(influxdb: InfluxDB1Server) -> None:
    sink = InfluxV1Sink(influxdb.url, "no_such_database_here")
    try:
        with pytest.raises(PermanentSinkError) as info:
            await sink.write(body_of(readings(1)), 1)
    finally:
        await sink.close()
    assert info.value.status == 404
    assert not isinstance(info.value, RejectedBatchError)


async def test_v1_sink_timeout_on_a_frozen_server_is_transient(
    make_influxdb: Callable[[], InfluxDB1Server],
) -> None:
    server = make_influxdb()
    server.create_database("bfr")
    sink = InfluxV1Sink(server.url, "bfr", timeout_s=0.3)
    server.pause()
    try:
        with pytest.raises(TransientSinkError):
            await sink.write(body_of(readings(1)), 1)
    finally:
        server.resume()
        await sink.close()


# -- the v2 API (VictoriaMetrics stands in) --------------------------------------------------


def _series(victoria: VictoriaMetricsServer, name: str, cuff: str) -> dict[str, Any]:
    found = victoria.export(f'{{__name__="{name}",cuff="{cuff}"}}')
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("compress", [False, True])
async def test_v2_sink_writes_exact_values_and_timestamps(
    victoria: VictoriaMetricsServer, compress: bool
) -> None:
    cuff = f"v2-{compress}"
    # VictoriaMetrics keeps about 12 significant digits (InfluxDB keeps float64 exactly)
    rs = readings(50, cuff=cuff, athlete="a-17", digits=3)
    sink = InfluxV2Sink(victoria.url, "club", "bfr", "secret-token", gzip=compress)
    try:
        await sink.write(body_of(rs), len(rs))
    finally:
        await sink.close()
    pressure = _series(victoria, "cuff_telemetry_pressure_mmhg", cuff)
    assert pressure["metric"] == {
        "__name__": "cuff_telemetry_pressure_mmhg", "team": "t1", "cuff": cuff,
        "athlete": "a-17", "limb": "right_arm",
    }
    assert pressure["timestamps"] == [r.ts_ms for r in rs]
    assert pressure["values"] == [r.pressure_mmhg for r in rs]
    seq = _series(victoria, "cuff_telemetry_seq", cuff)
    assert seq["values"] == [float(r.seq) for r in rs]
    inflated = _series(victoria, "cuff_telemetry_inflated", cuff)
    assert inflated["values"] == [1.0 if r.inflated else 0.0 for r in rs]


async def test_v2_sink_timeout_on_a_frozen_server_is_transient(
    make_victoria: Callable[[], VictoriaMetricsServer],
) -> None:
    server = make_victoria()
    sink = InfluxV2Sink(server.url, "club", "bfr", None, timeout_s=0.3)
    server.pause()
    try:
        with pytest.raises(TransientSinkError):
            await sink.write(body_of(readings(1)), 1)
    finally:
        server.resume()
        await sink.close()


# -- files -----------------------------------------------------------------------------------


async def test_file_sink_writes_hourly_files_that_influx_import_reads(
    tmp_path: Path, influxdb: InfluxDB1Server, influx_db: str
) -> None:
    now = [datetime(2025, 11, 23, 9, 59, 59, tzinfo=UTC).timestamp()]
    sink = FileSink(tmp_path, database=influx_db, clock=lambda: now[0])
    rs = readings(20)
    await sink.write(body_of(rs[:10]), 10)
    now[0] += 2  # the next hour
    await sink.write(body_of(rs[10:15]), 5)
    await sink.write(body_of(rs[15:]), 5)
    await sink.close()
    await asyncio.to_thread(import_files, tmp_path, influxdb)
    assert_stored_exactly(influxdb, influx_db, rs)


async def test_an_hour_begun_in_ms_by_an_earlier_gateway_imports_whole(
    tmp_path: Path, influxdb: InfluxDB1Server, influx_db: str
) -> None:
    """After an upgrade, the hour's ms file stays as it was and the ns lines go beside it:
    each file imports with the precision its header names, and every reading is stored."""
    now = BATCH_TS / 1000 + 60
    rs = readings(20)
    first = FileSink(tmp_path, database=influx_db, clock=lambda: now)
    old_header = (  # as the earlier gateway wrote it
        "# cuffwatch line protocol (SPEC §4), timestamps in ms. Import with\n"
        "#   InfluxDB 1.x: influx -import -path=FILE -precision=ms\n"
        f"#   InfluxDB 2.x: influx write --bucket {influx_db} --precision ms --file FILE\n"
        f"# DML\n# CONTEXT-DATABASE: {influx_db}\n"
    ).encode()
    old_lines = b"".join(line.rsplit(b" ", 1)[0] + b" %d\n" % r.ts_ms
                         for line, r in zip(body_of(rs[:8]).splitlines(), rs[:8], strict=True))
    await asyncio.to_thread(first.path_for(now).write_bytes, old_header + old_lines)
    await first.write(body_of(rs[8:]), 12)
    await asyncio.to_thread(import_each_as_its_header_says, tmp_path, influxdb)
    assert_stored_exactly(influxdb, influx_db, rs)


def import_each_as_its_header_says(directory: Path, influxdb: InfluxDB1Server) -> None:
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["cuffwatch-20251123-12-ns.lp", "cuffwatch-20251123-12.lp"]
    for name in files:
        header = (directory / name).read_text().splitlines()[0]
        precision = "ns" if name.endswith("-ns.lp") else "ms"
        assert header.endswith(f"timestamps in {precision}. Import with")
        influxdb.import_file(directory / name, precision)


def import_files(directory: Path, influxdb: InfluxDB1Server) -> None:
    """Check the hourly files and load each with InfluxDB 1.x's own `influx -import`."""
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["cuffwatch-20251123-09.lp", "cuffwatch-20251123-10.lp"]
    second = (directory / files[1]).read_text()
    assert second.count("# DML") == 1  # one header per file, however many batches
    for name in files:
        influxdb.import_file(directory / name)
