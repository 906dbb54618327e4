"""A full disk under the spool (issue #17, item 1): a state like a full spool, never a crash.

The real gateway process keeps its spool on a small real filesystem
(`tests/support/small_disk.py`: a 2 MiB tmpfs, or a file-size limit where mount is refused),
InfluxDB is stopped so that the spool fills it, and numbered readings arrive through real
Mosquitto. While the disk is full the gateway stays up, says so once (log, status,
/metrics, /readyz), still publishes alerts, and holds the acknowledgements of what it could
not store, so the broker keeps those messages. When room returns (InfluxDB drains the spool,
or space is freed) it recovers by itself and every reading lands in InfluxDB exactly once.
SIGTERM while the disk is full stops it cleanly within a bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.config import Settings
from tests.support.gateway_process import GatewayProcess, http_get
from tests.support.harness import MqttProbe, settings_against, wait_for
from tests.support.roster import roster
from tests.support.servers import InfluxDB1Server, MosquittoServer
from tests.support.small_disk import SmallDisk

CUFFS = ["c1", "c2", "c3", "c4"]
ALERT_CUFF = "c9"  # its readings are live (now), so its alerts are what staff would see
TEAMS = roster({"t1": {**{c: f"a-{c}" for c in CUFFS}, ALERT_CUFF: "a-alert"}})
BATCH = 10  # readings per message
ROUNDS_PER_CHECK = 5  # rounds (a message per cuff) published between looks at the gateway
MAX_READINGS = 60_000  # ~4x what fills 2 MiB and the spool's 1 MiB write buffer: a bug
HOLD_S = 3.0  # the disk stays full this long while readings keep arriving
# Every line the gateway logs from the disk filling up until it has room again: one for
# the disk, a few for the InfluxDB outage (its retries back off to one every 5 s), some
# slack. The bug was ~13,000 traceback lines in 4 minutes.
LOG_LINES_BOUND = 25
# SIGTERM while the disk is full: nothing can be drained to it, so the stop is quick.
STOP_BOUND_S = 12.0
STORED_TIMEOUT_S = 90.0  # the whole backlog, after the gateway is back, on a shared 2-core box


class Stream:
    """Numbered readings of CUFFS, a message of BATCH per cuff per round, QoS 1."""

    def __init__(self, probe: MqttProbe, topic_root: str) -> None:
        self.probe = probe
        self.root = topic_root
        self.t0 = int(time.time() * 1000) - 3_000_000  # a backlog the gateway accepts as is
        self.sent = 0  # readings per cuff

    async def send(self, rounds: int) -> None:
        for _ in range(rounds):
            for cuff in CUFFS:
                self.probe.publish(f"{self.root}/t1/cuffs/{cuff}/telemetry", [
                    {"ts": self.t0 + (self.sent + i) * 100, "seq": self.sent + i,
                     "pressure_mmhg": 120.0 + (self.sent + i) % 7, "elapsed_s": 0.0}
                    for i in range(BATCH)
                ])
            self.sent += BATCH
            await asyncio.sleep(0.002)

    @property
    def total(self) -> int:
        return self.sent * len(CUFFS)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk.create(tmp_path / "disk")
    print(f"disk-full tests on a {disk.describe()}")
    yield disk
    disk.close()


def settings_for(mosquitto: MosquittoServer, influxdb: InfluxDB1Server, root: str,
                 disk: SmallDisk, instance: str) -> Settings:
    return settings_against(mosquitto, influxdb, "bfr", root, disk.path / "spool", teams=TEAMS,
                            influx_options={"timeout_s": 2.0}, instance=instance,
                            spool_max_bytes=1 << 30)  # the cap far away: the disk is the limit


def stopped_influxdb(make_influxdb: Callable[[], InfluxDB1Server]) -> InfluxDB1Server:
    influxdb = make_influxdb()
    influxdb.create_database("bfr")
    influxdb.stop()  # the spool must hold everything, and so fill the disk
    return influxdb


async def metric(gw: GatewayProcess, name: str) -> float:
    return await asyncio.to_thread(gw.metric, name)


async def readyz(gw: GatewayProcess) -> tuple[int, str]:
    status, body = await asyncio.to_thread(http_get, gw.url("/readyz"))
    return status, body.decode()


async def fill_the_disk(gw: GatewayProcess, stream: Stream, disk: SmallDisk) -> float:
    """Publish until the gateway reports its spool cannot be written; when that was."""
    await stream.send(20)
    disk.squeeze(gw.pid)
    while (await readyz(gw))[0] == 200:
        await stream.send(ROUNDS_PER_CHECK)
        assert stream.total < MAX_READINGS, f"the disk never filled: {disk.describe()}"
    return time.monotonic()


def log_lines(gw: GatewayProcess) -> list[str]:
    return gw.log_path.read_text(errors="replace").splitlines()


def count(lines: list[str], text: str) -> int:
    return sum(text in line for line in lines)


async def stored_seqs(influxdb: InfluxDB1Server) -> dict[str, list[int]]:
    rows = await asyncio.to_thread(influxdb.query, "bfr",
                                   'SELECT "seq" FROM cuff_telemetry GROUP BY "cuff"')
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row["cuff"], []).append(int(row["seq"]))
    return out


async def assert_every_reading_once(influxdb: InfluxDB1Server, stream: Stream,
                                    extra: dict[str, int]) -> None:
    """Every published reading stored exactly once: lost = 0, no gaps, no repeats."""
    want = stream.total + sum(extra.values())

    async def stored() -> bool:
        return sum(map(len, (await stored_seqs(influxdb)).values())) >= want

    try:
        await wait_for(stored, timeout=STORED_TIMEOUT_S, what=f"{want} readings in InfluxDB")
    finally:
        seqs = await stored_seqs(influxdb)
    lost = {c: stream.sent - len(set(seqs.get(c, []))) for c in CUFFS}
    assert lost == dict.fromkeys(CUFFS, 0), f"lost per cuff: {lost}"
    for cuff in CUFFS:
        assert sorted(seqs[cuff]) == list(range(stream.sent)), f"{cuff}: gaps or repeats"
    for cuff, n in extra.items():
        assert len(seqs.get(cuff, [])) == n, f"{cuff}: {seqs.get(cuff)}"


async def over_pressure(dev: MqttProbe, root: str, seq: int) -> dict[str, object]:
    """Publish a reading over the hard ceiling; the alert the gateway publishes for it."""
    topic = f"{root}/t1/alerts/{ALERT_CUFF}/over_pressure"
    before = len(dev.messages[topic])
    dev.publish(f"{root}/t1/cuffs/{ALERT_CUFF}/telemetry",
                {"ts": int(time.time() * 1000), "seq": seq, "pressure_mmhg": 320.0,
                 "elapsed_s": 30.0})
    await wait_for(lambda: len(dev.messages[topic]) > before, timeout=10,
                   what="the over_pressure alert published while the disk is full")
    alert: dict[str, object] = json.loads(dev.messages[topic][-1][0])
    return alert


async def test_a_full_disk_holds_acks_keeps_alerts_and_recovers_once_influxdb_drains_it(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path, small_disk: SmallDisk,
) -> None:
    influxdb = stopped_influxdb(make_influxdb)
    settings = settings_for(mosquitto, influxdb, topic_root, small_disk, "gw-diskfull")
    status_topic = f"{topic_root}/_gateway/gw-diskfull/status"
    gw = GatewayProcess.for_settings(settings, tmp_path, log_pipe=True)
    await gw.started()
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
            await dev.subscribe(status_topic, f"{topic_root}/t1/alerts/#")
            stream = Stream(dev, topic_root)
            await fill_the_disk(gw, stream, small_disk)
            logged_before = len(log_lines(gw))

            # loud once: status, /readyz, /metrics, one log line
            await wait_for(lambda: dev.messages[status_topic][-1][0] == b"degraded",
                           what="status degraded while the disk is full")
            code, why = await readyz(gw)
            assert code == 503
            assert "disk full" in why
            assert await metric(gw, "cuffwatch_spool_disk_full") == 1
            assert await metric(gw, "cuffwatch_unacked_messages") > 0  # held, the broker keeps them

            # alerts do not depend on storage
            alert = await over_pressure(dev, topic_root, seq=0)
            assert (alert["state"], alert["severity"]) == ("firing", "critical")

            await stream.send(ROUNDS_PER_CHECK)  # still arriving while the disk is full
            await asyncio.sleep(HOLD_S)
            assert gw.running
            assert await metric(gw, "cuffwatch_spool_disk_full") == 1
            assert await metric(gw, "cuffwatch_unacked_messages") > 0

            # room comes back by itself once InfluxDB is back and drains the spool
            small_disk.room_from_drain(gw.pid)
            await asyncio.to_thread(influxdb.start)
            await assert_every_reading_once(influxdb, stream, {ALERT_CUFF: 1})
            await wait_for(lambda: _metric_is(gw, "cuffwatch_spool_disk_full", 0),
                           what="disk full cleared")
            await wait_for(lambda: _metric_is(gw, "cuffwatch_unacked_messages", 0),
                           what="every held message acknowledged")
            await wait_for(lambda: dev.messages[status_topic][-1][0] == b"online",
                           what="status online again")
            assert (await readyz(gw))[0] == 200

        lines = log_lines(gw)
        assert count(lines, "DISK FULL") == 1, "\n".join(lines[-40:])
        assert count(lines, "disk has room again") == 1, "\n".join(lines[-40:])
        during = lines[logged_before - 1:]
        recovered = next(k for k, line in enumerate(during) if "disk has room again" in line)
        assert recovered < LOG_LINES_BOUND, "\n".join(during[:recovered + 1])
        assert count(lines, "Traceback") == 0, "\n".join(lines[-40:])
        assert await gw.terminated() == 0
    finally:
        gw.kill()


async def test_room_freed_while_influxdb_is_still_down_ends_the_disk_full_state(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path, small_disk: SmallDisk,
) -> None:
    small_disk.leave_free(768 << 10)  # something else fills the disk; the spool gets the rest
    influxdb = stopped_influxdb(make_influxdb)
    settings = settings_for(mosquitto, influxdb, topic_root, small_disk, "gw-diskroom")
    gw = GatewayProcess.for_settings(settings, tmp_path, log_pipe=True)
    await gw.started()
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
            stream = Stream(dev, topic_root)
            await fill_the_disk(gw, stream, small_disk)
            assert await metric(gw, "cuffwatch_spool_disk_full") == 1
            await stream.send(ROUNDS_PER_CHECK)
            await asyncio.sleep(1.0)
            assert await metric(gw, "cuffwatch_unacked_messages") > 0

            small_disk.make_room(gw.pid)  # InfluxDB still down: the spool takes everything
            await wait_for(lambda: _metric_is(gw, "cuffwatch_spool_disk_full", 0),
                           what="disk full cleared by the room alone")
            await wait_for(lambda: _metric_is(gw, "cuffwatch_unacked_messages", 0),
                           what="every held message acknowledged, now fsynced")
            assert await metric(gw, "cuffwatch_ingest_failing") == 1  # InfluxDB is still away

            await asyncio.to_thread(influxdb.start)
            await stream.send(ROUNDS_PER_CHECK)
            await assert_every_reading_once(influxdb, stream, {})
        lines = log_lines(gw)
        assert (count(lines, "DISK FULL"), count(lines, "disk has room again")) == (1, 1)
        assert await gw.terminated() == 0
    finally:
        gw.kill()


async def test_sigterm_while_the_disk_is_full_stops_within_a_bound_and_loses_nothing(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path, small_disk: SmallDisk,
) -> None:
    influxdb = stopped_influxdb(make_influxdb)
    settings = settings_for(mosquitto, influxdb, topic_root, small_disk, "gw-diskterm")
    gw = GatewayProcess.for_settings(settings, tmp_path, log_pipe=True)
    await gw.started()
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
            stream = Stream(dev, topic_root)
            await fill_the_disk(gw, stream, small_disk)
            await stream.send(ROUNDS_PER_CHECK)
            await asyncio.sleep(1.0)
            assert await metric(gw, "cuffwatch_unacked_messages") > 0
            started = time.monotonic()
            assert await gw.terminated(STOP_BOUND_S + 10) == 0
            took = time.monotonic() - started
            assert took < STOP_BOUND_S, f"SIGTERM took {took:.1f} s"
            lines = log_lines(gw)
            assert count(lines, "Traceback") == 0, "\n".join(lines[-40:])

            # what it could not store was never acknowledged: the broker redelivers it to the
            # next run, which finds InfluxDB back and the spool's own files to drain first
            small_disk.room_from_drain(gw.pid)
            await asyncio.to_thread(influxdb.start)
            await gw.started()
            await stream.send(ROUNDS_PER_CHECK)
            await assert_every_reading_once(influxdb, stream, {})
            assert await gw.terminated() == 0
    finally:
        gw.kill()


def _metric_is(gw: GatewayProcess, name: str, value: float) -> bool:
    return gw.metric(name) == value
