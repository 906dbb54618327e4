"""Sinks against real servers: InfluxDB 1.x (v1 API), VictoriaMetrics (v2 API), import files."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from servers import InfluxDB1Server, VictoriaMetricsServer, find_binary, free_port

import ingest
import ingest.errors
import ingest.query
import ingest.spool
from core.config import InfluxSettings
from core.model import Limb, Reading
from ingest import lineproto
from ingest.errors import IngestError
from ingest.sinks import (
    DEFAULT_TIMEOUT_S,
    FileSink,
    InfluxV1Sink,
    InfluxV2Sink,
    PermanentSinkError,
    RejectedBatchError,
    TransientSinkError,
    error_for_status,
    make_sink,
)

TS = 1_763_900_000_000  # 2025-11-23, inside VictoriaMetrics' retention and not in the future


def readings(
    n: int, *, athlete: str = "a 17,=x", cuff: str = "c7", digits: int | None = None
) -> list[Reading]:
    """Readings with full float64 pressures, or rounded to `digits` decimals."""
    return [
        Reading(
            team="t1", cuff=cuff, athlete=athlete, limb=Limb.RIGHT_ARM, ts_ms=TS + 250 * i,
            seq=i, pressure_mmhg=round(100.0 + i / 7, digits), elapsed_s=i * 0.25,
            inflated=i % 2 == 0,
            target_mmhg=None, battery_pct=55.5 if i % 3 else None, clock_skew_s=None,
            received_ms=TS + 250 * i + 3,
        )
        for i in range(n)
    ]


def body_of(rs: list[Reading]) -> bytes:
    return lineproto.encode_lines(lineproto.telemetry_line(r, target_mmhg=120.0) for r in rs)


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
    conflict = b'cuff_telemetry,team=t1 seq="not an integer" 1763900000001\n'
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


async def test_v1_sink_connection_refused_is_transient() -> None:
    sink = InfluxV1Sink(f"http://127.0.0.1:{free_port()}", "bfr", timeout_s=2.0)
    try:
        with pytest.raises(TransientSinkError):
            await sink.write(body_of(readings(1)), 1)
    finally:
        await sink.close()


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


async def test_v2_sink_connection_refused_is_transient() -> None:
    sink = InfluxV2Sink(f"http://127.0.0.1:{free_port()}", "club", "bfr", None, timeout_s=2.0)
    try:
        with pytest.raises(TransientSinkError):
            await sink.write(body_of(readings(1)), 1)
    finally:
        await sink.close()


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


def import_files(directory: Path, influxdb: InfluxDB1Server) -> None:
    """Check the hourly files and load each with InfluxDB 1.x's own `influx -import`."""
    files = sorted(p.name for p in directory.iterdir())
    assert files == ["cuffwatch-20251123-09.lp", "cuffwatch-20251123-10.lp"]
    second = (directory / files[1]).read_text()
    assert second.count("# DML") == 1  # one header per file, however many batches
    for name in files:
        result = subprocess.run(
            [find_binary("influx"), "-host", "127.0.0.1", "-port", str(influxdb.port),
             "-import", f"-path={directory / name}", "-precision=ms"],
            capture_output=True, text=True, check=False, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "Failed 0 inserts" in result.stdout + result.stderr


async def test_file_sink_disk_error_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    sink = FileSink(blocker / "data")
    with pytest.raises(TransientSinkError):
        await sink.write(b"m f=1i 1\n", 1)


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "text", "kind", "rejected"),
    [
        (400, '{"error":"partial write: field type conflict dropped=2"}', RejectedBatchError, 2),
        (400, "unable to parse 'x': a; unable to parse 'y': b dropped=0", RejectedBatchError, 2),
        (400, "bad request", RejectedBatchError, 10),
        (413, "too large", RejectedBatchError, 10),
        (422, "outside retention", RejectedBatchError, 10),
        (401, "unauthorized", PermanentSinkError, None),
        (403, "forbidden", PermanentSinkError, None),
        (404, "database not found", PermanentSinkError, None),
        (429, "slow down", TransientSinkError, None),
        (500, "timeout", TransientSinkError, None),
        (503, "unavailable", TransientSinkError, None),
    ],
)
def test_status_classification(status: int, text: str, kind: type, rejected: int | None) -> None:
    error = error_for_status(status, text, 10, "7")
    assert type(error) is kind
    if rejected is not None:
        assert isinstance(error, RejectedBatchError)
        assert error.rejected_lines == rejected
    if isinstance(error, TransientSinkError):
        assert error.retry_after_s == 7.0


def test_make_sink_follows_the_api_setting(tmp_path: Path) -> None:
    assert isinstance(make_sink(InfluxSettings(api="v1")), InfluxV1Sink)
    assert isinstance(make_sink(InfluxSettings(api="v2")), InfluxV2Sink)
    sink = make_sink(InfluxSettings(api="file", file_dir=str(tmp_path)))
    assert isinstance(sink, FileSink)
    assert sink.directory == tmp_path


def test_make_sink_passes_the_http_options_to_either_influxdb_sink() -> None:
    http = {"timeout_s": 3.5, "gzip": True, "verify_ssl": False}
    v1 = make_sink(InfluxSettings(api="v1", url="https://influx:8086", **http))
    assert isinstance(v1, InfluxV1Sink)
    assert (v1._timeout.total, v1._gzip, v1._ssl) == (3.5, True, False)
    v2 = make_sink(InfluxSettings(api="v2", **http))
    assert isinstance(v2, InfluxV2Sink)
    assert (v2._http.timeout_s, v2._http.gzip, v2._http.verify_ssl) == (3.5, True, False)
    assert InfluxV1Sink("http://x", "db")._timeout.total == DEFAULT_TIMEOUT_S


def test_every_ingest_exception_derives_from_ingest_error() -> None:
    defined = [
        obj
        for info in pkgutil.iter_modules(ingest.__path__, "ingest.")
        for obj in vars(importlib.import_module(info.name)).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
        and obj.__module__.startswith("ingest.")
    ]
    assert {e.__name__ for e in defined} >= {
        "SpoolError", "SpoolFull", "SinkError", "TransientSinkError", "PermanentSinkError",
        "RejectedBatchError", "QueryError", "CorruptRecordError", "_DeadlineReachedError",
    }
    assert [e for e in defined if not issubclass(e, IngestError)] == []
    # the names stay importable where they were
    assert ingest.spool.SpoolFull is ingest.errors.SpoolFull is ingest.SpoolFull
    assert ingest.sinks.SinkError is ingest.errors.SinkError is ingest.SinkError
    assert ingest.query.QueryError is ingest.errors.QueryError


async def test_sinks_close_cleanly_without_ever_writing() -> None:
    await InfluxV1Sink("http://127.0.0.1:1", "bfr").close()
    await InfluxV2Sink("http://127.0.0.1:1", "o", "b", None).close()
    await asyncio.sleep(0)
