"""Stored summaries (SPEC §4): `occlusion_bout` per finished bout, `gateway_stats` regularly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.support.harness import (
    MqttProbe,
    running_gateway,
    settings_against,
    wait_for,
)
from tests.support.roster import prescribed, roster
from tests.support.servers import InfluxDB1Server, MosquittoServer

TEAMS = roster({"t1": {"c1": "a-17"}}, athletes={"t1": prescribed("a-17")})
TARGET = 132.0  # 60 % of 220


def bout_readings(start_ms: int, seconds: range, seq0: int) -> list[dict[str, Any]]:
    """One reading a second of an inflated cuff, pressure swinging ±4 around the target."""
    return [
        {"ts": start_ms + s * 1000, "seq": seq0 + i, "elapsed_s": float(s),
         "pressure_mmhg": TARGET + (4.0 if s % 2 else -4.0), "inflated": True}
        for i, s in enumerate(seconds)
    ]


async def bouts(influxdb: InfluxDB1Server, db: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(
        influxdb.query, db,
        'SELECT * FROM occlusion_bout GROUP BY "team", "cuff", "athlete", "limb"',
    )


async def test_a_finished_bout_is_summarised(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    start = int(time.time() * 1000) - 40_000
    topic = f"{topic_root}/t1/cuffs/c1/telemetry"
    async with running_gateway(settings), MqttProbe(mosquitto.host, mosquitto.port) as dev:
        dev.publish(topic, bout_readings(start, range(21), 0))
        dev.publish(topic, {"ts": start + 21_000, "seq": 21, "elapsed_s": 0,
                            "pressure_mmhg": 3.0, "inflated": False})
        rows = await wait_for(lambda: bouts(influxdb, influx_db), what="a bout summary")
    [bout] = rows
    assert bout["time"] == start  # the bout's start, from the device clock
    assert (bout["team"], bout["cuff"], bout["athlete"], bout["limb"]) == (
        "t1", "c1", "a-17", "left_leg")
    assert bout["duration_s"] == 20.0
    assert bout["min_pressure_mmhg"] == TARGET - 4
    assert bout["max_pressure_mmhg"] == TARGET + 4
    assert abs(bout["mean_pressure_mmhg"] - TARGET) <= 0.5
    assert bout["target_mmhg"] == TARGET
    assert bout["time_in_band_pct"] == 100.0
    assert bout["alerts"] == 0


async def test_a_bout_spanning_a_gateway_restart_keeps_its_start_and_length(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path,
                                teams=TEAMS, instance="gw-bout")
    start = int(time.time() * 1000) - 60_000
    topic = f"{topic_root}/t1/cuffs/c1/telemetry"
    async with MqttProbe(mosquitto.host, mosquitto.port) as dev:
        async with running_gateway(settings) as gw:
            dev.publish(topic, bout_readings(start, range(11), 0))
            await wait_for(lambda: gw.counters.accepted == 11, what="first half accepted")
        async with running_gateway(settings) as gw:  # a new process would know no more
            dev.publish(topic, bout_readings(start, range(11, 31), 11))
            dev.publish(topic, {"ts": start + 31_000, "seq": 31, "elapsed_s": 0,
                                "pressure_mmhg": 2.0, "inflated": False})
            rows = await wait_for(lambda: bouts(influxdb, influx_db), what="a bout summary")
    [bout] = rows
    assert bout["time"] == start
    assert bout["duration_s"] == 30.0


async def test_gateway_stats_are_stored_every_interval(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path,
                                teams=TEAMS, instance="gw-stats")
    now = int(time.time() * 1000)
    topic = f"{topic_root}/t1/cuffs/c1/telemetry"
    async with running_gateway(settings, stats_interval_s=0.5) as gw, MqttProbe(
        mosquitto.host, mosquitto.port
    ) as dev:
        dev.publish(topic, [{"ts": now - 1000 + i, "seq": i, "elapsed_s": 0,
                             "pressure_mmhg": 1.0} for i in range(5)])
        dev.publish(topic, {"ts": now - 1000, "seq": 0, "elapsed_s": 0, "pressure_mmhg": 1.0})
        dev.publish(topic, b"not json")

        async def latest() -> dict[str, Any] | None:
            rows = await asyncio.to_thread(
                influxdb.query, influx_db,
                'SELECT * FROM gateway_stats WHERE "instance" = \'gw-stats\' ORDER BY time DESC '
                "LIMIT 1",
            )
            # the counters are cumulative; `written` catches up once the 1 s batch has gone
            done = rows and rows[0]["accepted"] == 5 and rows[0]["written"] >= 5
            return rows[0] if done else None

        row = await wait_for(latest, what="gateway_stats with the counts")
        assert row["received"] == 3
        assert row["rejected"] == 1
        assert row["duplicates"] == 1
        assert gw.counters.duplicates == 1
        assert row["alerts_open"] == 0
        for field in ("spooled", "spool_bytes", "lag_ms"):
            assert row[field] >= 0
