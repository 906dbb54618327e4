"""Nothing lost (SPEC §4): InfluxDB outages, gateway SIGKILL, broker restart, a corrupt spool.

Every test streams numbered readings through real servers, breaks something mid-stream,
and then counts: every reading present, each exactly once.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gmqtt
import pytest

from core.config import Settings
from ingest.lineproto import NS_PER_MS
from ingest.spool import Spool
from ingest.spool_files import MARK_FILE, segment_name
from tests.support.gateway_process import GatewayProcess
from tests.support.harness import (
    MqttProbe,
    running_gateway,
    settings_against,
    wait_for,
)
from tests.support.roster import roster
from tests.support.servers import InfluxDB1Server, MosquittoServer

CUFFS = ["c1", "c2", "c3", "c4"]
TEAMS = roster({"t1": {c: f"a-{c}" for c in CUFFS}})
INFLUX_TIMEOUT_S = 2.0  # a frozen InfluxDB shows as failed writes within the tests' waits
BATCH = 10  # readings per message: realistic for a cuff buffering at 10 Hz


class Stream:
    """Publishes numbered readings for CUFFS, QoS 1, in arrays of BATCH."""

    def __init__(self, probe: MqttProbe, topic_root: str) -> None:
        self.probe = probe
        self.root = topic_root
        # an hour's backlog is accepted as is (max_backlog_s); stay inside it and in the past
        self.t0 = int(time.time() * 1000) - 3_000_000
        self.sent = 0  # readings per cuff

    async def send(self, n_messages: int, *, pause: float = 0.002) -> None:
        for _ in range(n_messages):
            for cuff in CUFFS:
                batch = [
                    {"ts": self.t0 + (self.sent + i) * 100, "seq": self.sent + i,
                     "pressure_mmhg": 120.0 + (self.sent + i) % 7, "elapsed_s": 0.0}
                    for i in range(BATCH)
                ]
                self.probe.publish(f"{self.root}/t1/cuffs/{cuff}/telemetry", batch)
            self.sent += BATCH
            await asyncio.sleep(pause)

    @property
    def total(self) -> int:
        return self.sent * len(CUFFS)

    async def acked(self) -> None:
        """Wait until the broker has PUBACKed everything we published."""
        await asyncio.wait_for(self.probe.client._persistent_storage.wait_empty(), 30)


async def stored(influxdb: InfluxDB1Server, db: str) -> int:
    rows = await asyncio.to_thread(
        influxdb.query, db, 'SELECT count("seq") FROM cuff_telemetry GROUP BY "cuff"'
    )
    return sum(int(r["count"]) for r in rows)


async def assert_every_reading_once(influxdb: InfluxDB1Server, db: str, stream: Stream) -> None:
    try:
        await wait_for(lambda: _equals(stored(influxdb, db), stream.total), timeout=60,
                       what=f"{stream.total} readings in InfluxDB")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stored {await stored(influxdb, db)}") from None
    rows = await asyncio.to_thread(
        influxdb.query, db, 'SELECT "seq" FROM cuff_telemetry GROUP BY "cuff"'
    )
    for cuff in CUFFS:
        seqs = sorted(int(r["seq"]) for r in rows if r["cuff"] == cuff)
        assert seqs == list(range(stream.sent)), f"{cuff}: gaps or repeats"


async def _equals(value: Any, expected: int) -> bool:
    return bool((await value) == expected)


def settings_for(broker: MosquittoServer, influxdb: InfluxDB1Server, db: str, root: str,
                 tmp_path: Path, **extra: Any) -> Settings:
    """The gateway under test: TEAMS, its spool in tmp_path/spool, 2 s InfluxDB writes."""
    return settings_against(broker, influxdb, db, root, tmp_path / "spool", teams=TEAMS,
                            influx_options={"timeout_s": INFLUX_TIMEOUT_S}, **extra)


async def test_influxdb_paused_then_resumed_loses_nothing(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path,
) -> None:
    influxdb = make_influxdb()
    influxdb.create_database("bfr")
    settings = settings_for(mosquitto, influxdb, "bfr", topic_root, tmp_path)
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        stream = Stream(dev, topic_root)
        await stream.send(20)
        influxdb.pause()
        try:
            await stream.send(40)
            await stream.acked()
            await wait_for(lambda: gw.counters.accepted == stream.total, what="all accepted")
            assert gw.spool.pending_bytes > 0  # held on disk while InfluxDB is frozen
        finally:
            influxdb.resume()
        await stream.send(20)
        await assert_every_reading_once(influxdb, "bfr", stream)
        await wait_for(lambda: gw.spool.pending_bytes == 0, what="spool drained")


async def test_influxdb_killed_and_restarted_loses_nothing(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path,
) -> None:
    influxdb = make_influxdb()
    influxdb.create_database("bfr")
    settings = settings_for(mosquitto, influxdb, "bfr", topic_root, tmp_path)
    status = f"{topic_root}/_gateway/{settings.instance}/status"
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        await dev.subscribe(status)
        stream = Stream(dev, topic_root)
        await stream.send(20)
        influxdb.kill()
        await stream.send(40)
        await stream.acked()
        await wait_for(lambda: gw.counters.accepted == stream.total, what="all accepted")
        await wait_for(lambda: gw.pipeline.snapshot().failed_batches, what="a failed batch")
        await wait_for(lambda: dev.messages[status][-1][0] == b"degraded",
                       what="status degraded while InfluxDB is down")
        await asyncio.to_thread(influxdb.start)
        await stream.send(20)
        await assert_every_reading_once(influxdb, "bfr", stream)
        await wait_for(lambda: dev.messages[status][-1][0] == b"online",
                       what="status online again")


@pytest.mark.parametrize("protocol", [5, 3])
async def test_gateway_sigkill_mid_stream_loses_nothing(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, protocol: int,
) -> None:
    # MQTT 3.1.1 too: the gateway acknowledges only what is fsynced on both versions
    settings = settings_for(mosquitto, influxdb, influx_db, topic_root, tmp_path,
                            protocol=protocol, instance=f"gw-kill{protocol}")
    gw = await GatewayProcess.for_settings(settings, tmp_path).started()
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
            stream = Stream(dev, topic_root)
            await stream.send(30, pause=0.001)
            gw.kill()  # mid-stream: messages in flight, batches unwritten
            await stream.send(30)  # queued by the broker for the gateway's session
            await stream.acked()
            await gw.started()
            await stream.send(10)
            await assert_every_reading_once(influxdb, influx_db, stream)
            assert await gw.terminated() == 0
    finally:
        gw.kill()


async def test_sigterm_drains_and_exits_cleanly(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_for(mosquitto, influxdb, influx_db, topic_root, tmp_path,
                            instance="gw-term")
    gw = await GatewayProcess.for_settings(settings, tmp_path).started()
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
            await dev.subscribe(f"{topic_root}/_gateway/gw-term/status")
            stream = Stream(dev, topic_root)
            await stream.send(20, pause=0)
            await stream.acked()
            await wait_for(lambda: _accepted(gw, stream.total), what="all accepted")
            assert await gw.terminated() == 0  # SIGTERM: flush, then exit 0
            # everything was written before exit: no gateway is running to replay it
            assert await stored(influxdb, influx_db) == stream.total
            await wait_for(lambda: dev.messages[f"{topic_root}/_gateway/gw-term/status"][-1][0]
                           == b"offline", what="offline status")
    finally:
        gw.kill()


def _metric_is(gw: GatewayProcess, name: str, value: float) -> bool:
    return gw.metric(name) == value


def _accepted(gw: GatewayProcess, n: int) -> bool:
    return gw.metric("cuffwatch_readings_accepted_total") >= n


async def test_broker_restart_mid_stream_loses_nothing(
    make_mosquitto: Callable[..., MosquittoServer], influxdb: InfluxDB1Server, influx_db: str,
    topic_root: str, tmp_path: Path,
) -> None:
    broker = make_mosquitto()
    settings = settings_for(broker, influxdb, influx_db, topic_root, tmp_path)
    async with running_gateway(settings) as gw:
        stream: Stream
        async with MqttProbe(broker.host, broker.port) as dev:
            stream = Stream(dev, topic_root)
            await stream.send(30, pause=0)
            await stream.acked()  # in the broker: some queued for, some in flight to, the gateway
        await asyncio.to_thread(broker.stop)  # SIGTERM: Mosquitto saves its persistence
        await asyncio.to_thread(broker.start)
        await wait_for(lambda: gw.mqtt.connections >= 2, what="gateway reconnected")
        async with MqttProbe(broker.host, broker.port) as dev:
            stream.probe = dev
            await stream.send(20)
            await stream.acked()
        await assert_every_reading_once(influxdb, influx_db, stream)


async def spooled_while_influxdb_is_unreachable(
    mosquitto: MosquittoServer, settings: Settings, topic_root: str, rounds: int,
) -> Stream:
    """A gateway run whose InfluxDB cannot be reached (port 1 refuses; a stopped server's
    port could be reused): `rounds` of readings sent, accepted, and left in the spool."""
    down = settings.model_copy(update={"influx": settings.influx.model_copy(
        update={"url": "http://127.0.0.1:1"})})
    async with running_gateway(down) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        stream = Stream(dev, topic_root)
        await stream.send(rounds)
        await stream.acked()
        await wait_for(lambda: gw.counters.accepted == stream.total, what="all accepted")
    return stream


async def test_corrupt_spool_tail_is_skipped_and_good_records_replayed(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path,
) -> None:
    influxdb = make_influxdb()
    influxdb.create_database("bfr")
    spool_dir = tmp_path / "spool"
    settings = settings_for(mosquitto, influxdb, "bfr", topic_root, tmp_path)
    # first run: InfluxDB unreachable
    stream = await spooled_while_influxdb_is_unreachable(mosquitto, settings, topic_root, 25)
    # the gateway stopped with everything on disk; now a crash mangles the tail
    segments = sorted(spool_dir.glob("*.seg"))
    assert segments, "the spool holds the outage's readings"
    with segments[-1].open("ab") as fh:
        fh.write(b"\x00garbage after a torn write\xff" * 3)
    async with running_gateway(settings) as gw:
        assert gw.spool.corrupt_records + gw.spool.truncated_bytes > 0
        await assert_every_reading_once(influxdb, "bfr", stream)
        assert gw.mqtt.connected.is_set()


def rewrite_as_the_previous_version(spool_dir: Path) -> int:
    """Make the spool what the gateway before ns precision leaves: the same pending records,
    each framed `CWS1` (the same layout), its lines timed in ms, the reading's own ms and
    no seq part (that version's line protocol). Returns how many records there are."""
    with Spool(spool_dir) as spool:
        records = [payload for _, payload in spool.read(spool.written_position, 1 << 30)]
    old = bytearray()
    for ordinal, payload in enumerate(records, 1):
        lines = payload.rstrip(b"\n").split(b"\n")
        ms = b"".join(b"%s %d\n" % (head, int(stamp) // NS_PER_MS)
                      for head, _, stamp in (x.rpartition(b" ") for x in lines))
        crc = zlib.crc32(ms, zlib.crc32(struct.pack("<IQ", len(ms), ordinal)))
        old += struct.pack("<4sIIQ", b"CWS1", len(ms), crc, ordinal) + ms
    for path in spool_dir.glob("*.seg"):
        path.unlink()
    (spool_dir / segment_name(0)).write_bytes(old)
    (spool_dir / MARK_FILE).write_text("cuffwatch-spool-mark 1 0 0\n")
    return len(records)


async def test_a_spool_left_by_the_previous_version_replays_at_the_right_times(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path,
) -> None:
    """An upgrade with readings still spooled in ms (the version before ns precision): they
    reach InfluxDB at their own times, not in 1970, and the new ones follow in ns."""
    influxdb = make_influxdb()
    influxdb.create_database("bfr")
    spool_dir = tmp_path / "spool"
    settings = settings_for(mosquitto, influxdb, "bfr", topic_root, tmp_path)
    stream = await spooled_while_influxdb_is_unreachable(mosquitto, settings, topic_root, 10)
    assert rewrite_as_the_previous_version(spool_dir) > 0
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        assert gw.spool.corrupt_records == 0
        upgraded_from = stream.sent
        stream.probe = dev
        await stream.send(5)
        await assert_every_reading_once(influxdb, "bfr", stream)
    rows = await asyncio.to_thread(
        influxdb.query, "bfr", 'SELECT "seq" FROM cuff_telemetry GROUP BY "cuff"', epoch="ns")
    assert len(rows) == stream.total
    for row in rows:
        seq = int(row["seq"])
        at_ms = (stream.t0 + seq * 100) * NS_PER_MS
        # spooled before the upgrade: at its ms; after it: its seq below the ms
        assert row["time"] == (at_ms if seq < upgraded_from else at_ms + seq), row


@pytest.mark.slow
async def test_memory_stays_bounded_through_a_long_outage(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path,
) -> None:
    influxdb = make_influxdb()
    influxdb.create_database("bfr")
    settings = settings_for(mosquitto, influxdb, "bfr", topic_root, tmp_path, instance="gw-rss")
    gw = await GatewayProcess.for_settings(settings, tmp_path).started()
    influxdb.pause()  # frozen for the whole stream: every write times out
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
            stream = Stream(dev, topic_root)
            await stream.send(100, pause=0)
            await stream.acked()
            await wait_for(lambda: _accepted(gw, stream.total), what="warm-up accepted")
            warm = gw.rss_bytes()
            for _ in range(10):  # 10x the warm-up volume, all held on disk
                await stream.send(100, pause=0)
                await stream.acked()
            await wait_for(lambda: _accepted(gw, stream.total), what="all accepted")
            grown = gw.rss_bytes() - warm
            buffered = gw.metric("cuffwatch_ingest_buffered_lines")
            limit = gw.metric("cuffwatch_ingest_max_buffer_lines")
            assert buffered <= limit
            assert grown < 30 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB in the outage"
            assert gw.metric("cuffwatch_spool_bytes") > 0
            await wait_for(lambda: _metric_is(gw, "cuffwatch_ingest_failing", 1),
                           what="the pipeline to notice the outage")
            assert gw.rss_bytes() - warm < 30 * 1024 * 1024
            influxdb.resume()
            await assert_every_reading_once(influxdb, "bfr", stream)
        assert await gw.terminated() == 0
    finally:
        influxdb.resume()
        gw.kill()


async def test_gmqtt_publisher_sanity() -> None:
    # the helper above relies on gmqtt's storage API: fail loudly if it changes
    storage = gmqtt.Client("x")._persistent_storage
    assert hasattr(storage, "wait_empty")


async def test_a_queued_backlog_is_spooled_a_read_at_a_time_and_acked_once(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    # A backlog reaches the gateway as a burst: the messages of one socket read share one
    # spool record (staged, then flushed once), and each is acknowledged once that record
    # is fsynced: a later session gets nothing again.
    settings = settings_for(mosquitto, influxdb, influx_db, topic_root, tmp_path)
    async with running_gateway(settings):
        pass  # the session and its subscriptions now exist on the broker
    async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
        stream = Stream(dev, topic_root)
        await stream.send(75, pause=0)  # 300 messages queued for the absent gateway
        await stream.acked()
        messages = 75 * len(CUFFS)
        async with running_gateway(settings) as gw:
            await assert_every_reading_once(influxdb, influx_db, stream)
            await wait_for(lambda: gw.mqtt.pending_acks == 0, what="every message acknowledged")
            assert gw.counters.received == messages
            assert gw.spool.appended_records <= messages // 2, gw.spool.appended_records
    async with running_gateway(settings) as gw:
        await asyncio.sleep(1.0)
        assert gw.counters.received == 0  # all 300 were acknowledged


async def test_a_full_spool_holds_messages_unacknowledged_until_influxdb_drains_it(
    mosquitto: MosquittoServer, make_influxdb: Callable[[], InfluxDB1Server], topic_root: str,
    tmp_path: Path,
) -> None:
    # SPEC §4: reaching the cap is loud (status degraded) and never a silent drop. The
    # messages of a read whose record does not fit are held, unacknowledged, and stored
    # once InfluxDB is back and the spool has room.
    influxdb = make_influxdb()
    influxdb.create_database("bfr")
    settings = settings_for(mosquitto, influxdb, "bfr", topic_root, tmp_path,
                            spool_max_bytes=1 << 20)
    status = f"{topic_root}/_gateway/{settings.instance}/status"
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        await dev.subscribe(status)
        stream = Stream(dev, topic_root)
        influxdb.pause()
        try:
            while gw.counters.backpressure_waits == 0:  # ~1 MiB of lines fills the spool
                await stream.send(10, pause=0)
                assert stream.total < 100_000, "the spool never filled"
            await wait_for(lambda: dev.messages[status][-1][0] == b"degraded",
                           what="status degraded while the spool is full")
            assert gw.mqtt.pending_acks > 0  # held, not acknowledged, not dropped
            assert gw.spool.bytes_used <= 1 << 20
            await stream.send(10, pause=0)  # still arriving while full
        finally:
            influxdb.resume()
        await assert_every_reading_once(influxdb, "bfr", stream)
        await wait_for(lambda: gw.mqtt.pending_acks == 0, what="held messages acknowledged")
        await wait_for(lambda: dev.messages[status][-1][0] == b"online",
                       what="status online again")


async def test_publishes_a_broker_never_acknowledged_go_out_again_on_a_new_session(
    make_mosquitto: Callable[..., MosquittoServer],
) -> None:
    """A broker that lost its state (kill -9, no persistence) still gets our alert transitions.

    gmqtt drops unacknowledged publishes when the broker has no session for us; a `resolved`
    alert (not retained) would then never reach a staff app subscribed at the time.
    """
    import shutil

    from gateway.mqtt import MqttLink

    broker = make_mosquitto()
    topic = "bfr/t1/alerts/c1/over_pressure"
    link = MqttLink(client_id="gw-lost-session", host=broker.host, port=broker.port,
                    session_expiry_s=3600)
    await link.connect(retry=False)
    try:
        assert link.publish(topic, b"firing", retain=True)
        await asyncio.wait_for(link.outbound.publishes_acked(), 10)
        broker.pause()  # what follows stays in the broker's socket, never acknowledged
        assert link.publish(topic, b"resolved")
        assert link.publish(topic, b"", retain=True)
        assert link.outbound.unacked_publishes == 2
        broker.kill()  # lost with the process: those two, and (below) every session
        shutil.rmtree(broker.persistence_dir)
        broker.start()
        async with MqttProbe(broker.host, broker.port) as staff:
            await staff.subscribe("bfr/t1/alerts/#")
            await wait_for(lambda: not link.connected.is_set(), what="link saw the loss")
            await link.connect(retry=False)
            await wait_for(lambda: link.outbound.unacked_publishes == 0, what="resent ones acked")
            await wait_for(lambda: len(staff.messages[topic]) == 2, what="both delivered")
        assert staff.messages[topic] == [(b"resolved", False), (b"", False)]
    finally:
        await link.disconnect()


async def test_publishes_past_the_brokers_receive_maximum_wait_their_turn_in_order(
    make_mosquitto: Callable[..., MosquittoServer],
) -> None:
    # Mosquitto's default allows 20 unacknowledged publishes per client: a burst of alert
    # transitions (or a broker outage) exhausts them. gmqtt refuses the next publish; the
    # link holds it and sends it when a PUBACK frees a packet id, in order.
    from gateway.mqtt import MqttLink

    broker = make_mosquitto(extra_config=["max_inflight_messages 20"])
    topic = "bfr/t1/alerts/c1/over_pressure"
    link = MqttLink(client_id="gw-window", host=broker.host, port=broker.port)
    await link.connect(retry=False)
    try:
        async with MqttProbe(broker.host, broker.port) as staff:
            await staff.subscribe("bfr/t1/alerts/#")
            for i in range(100):  # no await between: the window fills at once
                link.publish(topic, str(i).encode())
            assert link.outbound.held_publishes > 0
            await wait_for(lambda: link.outbound.unacked_publishes == 0, what="all acknowledged")
            await wait_for(lambda: len(staff.messages[topic]) >= 100, what="all delivered")
        assert [p for p, _ in staff.messages[topic]] == [str(i).encode() for i in range(100)]
        assert link.outbound.dropped_publishes == 0
    finally:
        await link.disconnect()
