"""The gateway's staging rules, in-process: a real spool, the handlers called directly.

A message is acknowledged only once its record is fsynced, a duplicate only once its
original's is, and records the full spool refuses are held in order. No broker is needed to
call the handlers; the same rules end to end are in tests/integration/test_durability.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import gateway_settings
from tests.support.roster import roster
from tests.support.small_disk import refusing_writes

TEAMS = roster({"t1": {c: f"a-{c}" for c in ("c1", "c2", "c3", "c4")}})


def _staging_gateway(tmp_path: Path, spool_max_bytes: int = 1 << 20) -> Any:
    from gateway.app import Gateway

    settings = gateway_settings(broker_url="mqtt://127.0.0.1:1", topic_root="bfr",
                                spool_dir=tmp_path / "spool", teams=TEAMS,
                                spool_max_bytes=spool_max_bytes)
    return Gateway(settings, health=False)


# One clock for the whole module: a redelivery repeats its payload byte for byte, and the
# same seq with a newer device time is a rebooted cuff, not a duplicate (CuffState).
_DEVICE_T0_MS = int(time.time() * 1000) - 5000


def _message(gw: Any, seq: int) -> Any:
    reading = {"ts": _DEVICE_T0_MS + seq, "seq": seq, "pressure_mmhg": 120.0, "elapsed_s": 0.0}
    return gw.on_message("bfr/t1/cuffs/c1/telemetry", json.dumps(reading).encode(), 1,
                               False)


async def test_a_message_of_duplicates_waits_for_its_originals_to_be_durable(
    tmp_path: Path,
) -> None:
    from gateway.mqtt import STAGED

    gw = _staging_gateway(tmp_path)
    try:
        assert _message(gw, 1) is STAGED
        original = gw.flush_stage()
        assert isinstance(original, int)
        # redelivered (a reconnect) before the original's record was fsynced: acknowledging
        # it now would let the broker forget a reading a crash could still lose
        assert _message(gw, 1) is STAGED
        duplicate = gw.flush_stage()
        assert isinstance(duplicate, int)
        assert duplicate >= original
        assert gw.spool.synced_position < duplicate
        assert gw.flush_stage() is None  # nothing staged, nothing owed
    finally:
        gw.spool.close()


async def test_records_the_spool_refuses_are_held_in_order_with_their_duplicates(
    tmp_path: Path,
) -> None:
    from gateway.mqtt import STAGED

    gw = _staging_gateway(tmp_path)
    try:
        filler = gw.spool.append(b"x" * ((1 << 20) - 64))  # the cap is reached
        assert _message(gw, 1) is STAGED
        held = asyncio.ensure_future(gw.flush_stage())  # refused: a coroutine holds it
        assert _message(gw, 1) is STAGED  # its duplicate: must not be acknowledged first
        dup = asyncio.ensure_future(gw.flush_stage())
        assert _message(gw, 2) is STAGED  # a later reading queues behind the held one
        later = asyncio.ensure_future(gw.flush_stage())
        await asyncio.sleep(0.3)
        assert [f.done() for f in (held, dup, later)] == [False, False, False]
        assert gw.counters.backpressure_waits > 0
        finished: list[str] = []
        for name, fut in (("held", held), ("dup", dup), ("later", later)):
            fut.add_done_callback(lambda _f, name=name: finished.append(name))
        gw.spool.sync()
        gw.spool.mark_written(filler)  # InfluxDB took the filler: room again
        await asyncio.wait_for(asyncio.gather(held, dup, later), 10)
        assert finished == ["held", "dup", "later"]
        stored = b"".join(p for _, p in gw.spool.read(filler, 1 << 20))
        assert stored.count(b"cuff_telemetry") == 2
        assert b" seq=1i," in stored
        assert b" seq=2i," in stored
    finally:
        gw.spool.close()


async def test_a_full_disk_holds_records_once_is_loud_once_and_ends_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.hold import HoldState
    from gateway.mqtt import STAGED
    from ingest.spool import HEADER_BYTES, WRITE_BUFFER_BYTES, DiskFull

    caplog.set_level(logging.INFO)
    gw = _staging_gateway(tmp_path, spool_max_bytes=64 << 20)  # the disk is the limit
    try:
        assert _message(gw, 1) is STAGED
        first = gw.flush_stage()
        assert isinstance(first, int)
        await gw.hold.wait_durable(first)
        with refusing_writes():
            assert _message(gw, 2) is STAGED
            second = gw.flush_stage()  # the write buffer takes it; the disk does not
            assert isinstance(second, int)
            acks = asyncio.ensure_future(gw.hold.wait_durable(second))  # the link's acks
            buffered = gw.spool.end_position - gw.spool.in_files_position
            filling = b"y" * (WRITE_BUFFER_BYTES - buffered - HEADER_BYTES - 50)
            filler = gw.spool.append(filling)  # the buffer is full
            with pytest.raises(DiskFull):
                gw.spool.append(b"z" * 100)
            assert _message(gw, 3) is STAGED
            held = asyncio.ensure_future(gw.flush_stage())  # refused: a coroutine holds it
            await asyncio.sleep(1.5)  # several retries
            assert not acks.done()
            assert not held.done()
            assert gw.hold.disk_full
            assert gw.hold.state is HoldState.DISK_FULL
            assert gw._storage_status() == "degraded"
            assert gw._gauges()["spool_disk_full"] == 1.0
        await asyncio.wait_for(asyncio.gather(acks, held), 10)  # room again: no restart
        assert (gw.hold.disk_full, gw.hold.state) == (False, HoldState.OPEN)
        assert gw._gauges()["spool_disk_full"] == 0.0
        logged = [r.getMessage() for r in caplog.records]
        assert sum("DISK FULL" in m for m in logged) == 1, logged
        assert sum("disk has room again" in m for m in logged) == 1, logged
        # each record once (a retry waits for its first append), in order
        records = [p for _, p in gw.spool.read(0, 1 << 30)]
        telemetry = [p for p in records if b"cuff_telemetry" in p]
        assert [t.count(b"cuff_telemetry") for t in telemetry] == [1, 1, 1]
        assert [b" seq=%di," % k in t for k, t in enumerate(telemetry, 1)] == [True] * 3
        assert records.index(telemetry[1]) < records.index(filling) < records.index(telemetry[2])
        assert gw.spool.end_position > filler
    finally:
        gw.spool.close()
