"""Sinks without a server: unreachable endpoints and disk errors, status classification,
make_sink, the ingest exception tree. Against real servers: tests/integration/test_sinks_servers.py.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import ingest
import ingest.errors
import ingest.query
import ingest.spool
from core.config import InfluxSettings
from ingest import lineproto
from ingest.errors import IngestError
from ingest.sinks import (
    DEFAULT_TIMEOUT_S,
    LEGACY_MS_HEADER,
    FileSink,
    InfluxV1Sink,
    InfluxV2Sink,
    PermanentSinkError,
    RejectedBatchError,
    TransientSinkError,
    error_for_status,
    make_sink,
)
from tests.support.lineproto_ref import TS, body_of, reading, readings
from tests.support.servers import free_port

# -- unreachable or unwritable -----------------------------------------------------------------


async def test_v1_sink_connection_refused_is_transient() -> None:
    sink = InfluxV1Sink(f"http://127.0.0.1:{free_port()}", "bfr", timeout_s=2.0)
    try:
        with pytest.raises(TransientSinkError):
            await sink.write(body_of(readings(1)), 1)
    finally:
        await sink.close()


async def test_v2_sink_connection_refused_is_transient() -> None:
    sink = InfluxV2Sink(f"http://127.0.0.1:{free_port()}", "club", "bfr", None, timeout_s=2.0)
    try:
        with pytest.raises(TransientSinkError):
            await sink.write(body_of(readings(1)), 1)
    finally:
        await sink.close()


async def test_file_sink_disk_error_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    sink = FileSink(blocker / "data")
    with pytest.raises(TransientSinkError):
        await sink.write(b"m f=1i 1\n", 1)


# -- the precision: every writer declares the one the lines are in ---------------------------------


async def test_every_writer_declares_the_precision_lines_are_written_in(tmp_path: Path) -> None:
    assert lineproto.PRECISION == "ns"
    assert InfluxV1Sink("http://127.0.0.1:1", "bfr")._params["precision"] == lineproto.PRECISION
    v2 = InfluxV2Sink("http://127.0.0.1:1", "o", "b", None)
    seen: dict[str, Any] = {}

    class WriteApi:
        async def write(self, **kwargs: Any) -> bool:
            seen.update(kwargs)
            return True

    v2._write_api = WriteApi()
    try:
        await v2.write(b"m v=1i 1\n", 1)
    finally:
        v2._write_api = None
        await v2.close()
    assert seen["write_precision"] == lineproto.PRECISION
    sink = FileSink(tmp_path)
    assert f"-precision={lineproto.PRECISION}" in sink.header().decode()
    assert f"--precision {lineproto.PRECISION}" in sink.header().decode()


async def test_the_file_sink_never_mixes_ns_lines_into_an_earlier_gateways_ms_file(
    tmp_path: Path,
) -> None:
    now = TS / 1000
    sink = FileSink(tmp_path, clock=lambda: now)
    first = sink.path_for(now)
    old = LEGACY_MS_HEADER + b" Import with\n# DML\nm v=1 1763900000000\n"
    first.write_bytes(old)
    await sink.write(lineproto.encode_lines([lineproto.telemetry_line(reading())]), 1)
    assert first.read_bytes() == old  # left as it was: `influx write --precision ms` imports it
    beside = first.with_name(first.stem + "-ns.lp")
    text = beside.read_text()
    assert text.startswith(sink.header().decode())
    assert text.endswith(f" {TS * lineproto.NS_PER_MS + 42}\n")
    await sink.write(lineproto.encode_lines([lineproto.telemetry_line(reading(seq=43))]), 1)
    assert beside.read_text().count("\ncuff_telemetry") == 2
    later = now + 3600  # the next hour's file is new: its own name, in ns
    sink = FileSink(tmp_path, clock=lambda: later)
    await sink.write(lineproto.encode_lines([lineproto.telemetry_line(reading())]), 1)
    assert sink.path_for(later).read_text().startswith(sink.header().decode())


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
