"""The first slice end to end, against real Mosquitto, InfluxDB 1.x and VictoriaMetrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.harness import (
    MqttProbe,
    gateway_settings,
    running_gateway,
    settings_against,
    wait_for,
)
from tests.support.roster import prescribed, roster
from tests.support.servers import InfluxDB1Server, MosquittoServer, VictoriaMetricsServer

TEAMS = roster({"t1": {"c1": "a-17", "c2": ("a-18", "right_arm")},
                "t2": {"c3": ("b 1,=x", "left_arm")}},
               # a-99: in the roster, on no cuff (assignments may name only roster athletes)
               athletes={"t1": {**prescribed("a-17"), "a-99": {}}})


def reading(seq: int, ts: int, pressure: float = 130.0, elapsed: float = 5.0,
            **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "seq": seq, "pressure_mmhg": pressure, "elapsed_s": elapsed, **extra}


async def count_points(influxdb: InfluxDB1Server, db: str, where: str = "") -> int:
    rows = await asyncio.to_thread(
        influxdb.query, db, "SELECT count(pressure_mmhg) FROM cuff_telemetry " + where
    )
    return int(rows[0]["count"]) if rows else 0


async def test_readings_land_in_influxdb_v1_with_exact_tags_fields_and_ms(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    now = int(time.time() * 1000)
    async with running_gateway(settings), MqttProbe(mosquitto.host, mosquitto.port) as dev:
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry",
                    reading(1, now - 2000, 131.5, 12.25, battery_pct=80, inflated=True))
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry",
                    [reading(10, now - 1999, 95.0, 3.0, target_mmhg=90),
                     reading(11, now - 999, 96.5, 4.0, target_mmhg=90)])
        dev.publish(f"{topic_root}/t2/cuffs/c3/telemetry", reading(0, now - 500, 0.0, 0.0))
        await wait_for(lambda: _eq(count_points(influxdb, influx_db), 4), what="4 points")

    rows = await asyncio.to_thread(
        influxdb.query, influx_db,
        'SELECT * FROM cuff_telemetry GROUP BY "team", "cuff", "athlete", "limb"',
    )
    by_seq = {int(r["seq"]): r for r in rows}
    c1 = by_seq[1]
    assert c1["time"] == now - 2000  # ms precision kept
    assert (c1["team"], c1["cuff"], c1["athlete"], c1["limb"]) == ("t1", "c1", "a-17", "left_leg")
    assert c1["pressure_mmhg"] == 131.5
    assert c1["elapsed_s"] == 12.25
    assert c1["inflated"] is True
    assert c1["battery_pct"] == 80.0
    assert c1["target_mmhg"] == 132.0  # the prescription's effective target is stored
    assert by_seq[11]["target_mmhg"] == 90.0
    assert by_seq[11]["time"] == now - 999
    c3 = by_seq[0]
    assert c3["athlete"] == "b 1,=x"  # escaped tag value survives line protocol
    assert c3["inflated"] is False


async def _eq(value: Any, expected: Any) -> bool:
    return bool((await value) == expected)


async def test_v2_write_path_into_victoriametrics(
    mosquitto: MosquittoServer, victoria: VictoriaMetricsServer, topic_root: str,
    tmp_path: Path,
) -> None:
    influx = {"api": "v2", "url": victoria.url, "org": "club", "bucket": "bfr", "token": "t"}
    settings = gateway_settings(broker_url=mosquitto.url, topic_root=topic_root,
                                spool_dir=tmp_path, teams=TEAMS, influx=influx)
    now = int(time.time() * 1000)
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        for i in range(5):
            dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry",
                        reading(i, now - 5000 + i * 1000, 100.0 + i, 1.0 + i))
        await wait_for(lambda: gw.pipeline.written_lines >= 5, what="5 lines written")
    series = await asyncio.to_thread(
        victoria.export, '{__name__="cuff_telemetry_pressure_mmhg",cuff="c2"}'
    )
    assert len(series) == 1
    s = series[0]
    assert s["metric"]["team"] == "t1"
    assert s["metric"]["athlete"] == "a-18"
    assert s["timestamps"] == [now - 5000 + i * 1000 for i in range(5)]
    assert s["values"] == [100.0, 101.0, 102.0, 103.0, 104.0]


async def test_bad_input_is_rejected_on_the_right_topic_and_others_keep_flowing(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    now = int(time.time() * 1000)
    r = topic_root
    bad: list[tuple[str, bytes, str]] = [
        (f"{r}/t1/cuffs/c1/telemetry", b"{not json", "invalid_json"),
        (f"{r}/t1/cuffs/c1/telemetry", b'{"ts":1,"seq":1,"pressure_mmhg":NaN,"elapsed_s":0}',
         "invalid_reading"),
        (f"{r}/t1/cuffs/c1/telemetry", json.dumps(reading(1, now, elapsed=-1)).encode(),
         "invalid_reading"),
        (f"{r}/t1/cuffs/c1/telemetry", b"[]", "empty_batch"),
        (f"{r}/t1/cuffs/c1/telemetry", b"[" + b" " * 70_000 + b"]", "too_large"),
        (f"{r}/t1/cuffs/zz/telemetry", json.dumps(reading(1, now)).encode(), "unknown_cuff"),
        (f"{r}/t9/cuffs/c9/telemetry", json.dumps(reading(1, now)).encode(), "unknown_team"),
        (f"{r}/t2/cuffs/c1/telemetry", json.dumps(reading(1, now)).encode(), "wrong_team"),
        (f"{r}/t1/cuffs/c2/assignment", b'{"limb": "left_leg"}', "invalid_assignment"),
        (f"{r}/t1/cuffs/c2/status", b"sleeping", "invalid_status"),
    ]
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        await dev.subscribe(f"{r}/+/cuffs/+/rejected")
        for i, (topic, payload, _) in enumerate(bad):
            dev.publish(topic, payload)
            dev.publish(f"{r}/t1/cuffs/c2/telemetry", reading(i, now - 10_000 + i * 100))
        await wait_for(lambda: sum(len(v) for v in dev.messages.values()) >= len(bad),
                       what="every rejection published")
        await wait_for(lambda: _eq(count_points(influxdb, influx_db), len(bad)),
                       what="the good readings of c2 stored")
        assert gw.counters.rejected == len(bad)
        assert gw.counters.internal_errors == 0
        codes: dict[str, list[str]] = {}
        for topic, msgs in dev.messages.items():
            for payload, _retain in msgs:
                body = json.loads(payload)
                codes.setdefault(topic, []).append(body["code"])
                assert body["reason"]
        assert codes[f"{r}/t1/cuffs/c1/rejected"] == [
            "invalid_json", "invalid_reading", "invalid_reading", "empty_batch", "too_large"]
        assert codes[f"{r}/t1/cuffs/zz/rejected"] == ["unknown_cuff"]
        assert codes[f"{r}/t9/cuffs/c9/rejected"] == ["unknown_team"]
        assert codes[f"{r}/t2/cuffs/c1/rejected"] == ["wrong_team"]
        assert codes[f"{r}/t1/cuffs/c2/rejected"] == ["invalid_assignment", "invalid_status"]
        echoed = json.loads(dev.messages[f"{r}/t1/cuffs/c1/rejected"][0][0])["payload"]
        assert echoed == "{not json"
    assert await count_points(influxdb, influx_db, "WHERE cuff = 'c1'") == 0


async def test_duplicates_dropped_and_assignment_changes_the_athlete_tag(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    now = int(time.time() * 1000)
    t = f"{topic_root}/t1/cuffs/c1/telemetry"
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        dev.publish(t, reading(1, now - 3000))
        dev.publish(t, reading(1, now - 3000))  # a QoS 1 redelivery
        dev.publish(t, [reading(1, now - 3000), reading(2, now - 2000)])
        await wait_for(lambda: gw.counters.accepted == 2 and gw.counters.duplicates == 2,
                       what="2 accepted, 2 duplicates")
        dev.publish(f"{topic_root}/t1/cuffs/c1/assignment",
                    {"athlete": "a-99", "limb": "right_leg"}, retain=True)
        await wait_for(lambda: gw.cuff("c1").athlete == "a-99", what="assignment applied")
        dev.publish(t, reading(3, now - 1000))
        await wait_for(lambda: _eq(count_points(influxdb, influx_db), 3), what="3 points")
        dev.publish(f"{topic_root}/t1/cuffs/c1/assignment", b"", retain=True)
        await wait_for(lambda: gw.cuff("c1").athlete == "a-17", what="assignment cleared")
    rows = await asyncio.to_thread(
        influxdb.query, influx_db,
        'SELECT pressure_mmhg, seq FROM cuff_telemetry GROUP BY "athlete", "limb"',
    )
    tags = {int(r["seq"]): (r["athlete"], r["limb"]) for r in rows}
    assert tags == {1: ("a-17", "left_leg"), 2: ("a-17", "left_leg"), 3: ("a-99", "right_leg")}


async def test_health_endpoints_and_gateway_status(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    settings = gateway_settings(broker_url=mosquitto.url, topic_root=topic_root,
                                spool_dir=tmp_path, teams=TEAMS)
    async with MqttProbe(mosquitto.host, mosquitto.port) as probe:
        await probe.subscribe(f"{topic_root}/_gateway/+/status")
        async with running_gateway(settings) as gw:
            base = f"http://127.0.0.1:{gw.health.port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as resp:
                    assert resp.status == 200
                async with http.get(f"{base}/readyz") as resp:
                    assert resp.status == 200
                probe.publish(f"{topic_root}/t1/cuffs/c1/telemetry", b"garbage")
                await wait_for(lambda: gw.counters.rejected == 1, what="one rejection")
                async with http.get(f"{base}/metrics") as resp:
                    text = await resp.text()
            assert 'cuffwatch_messages_rejected_total{reason="invalid_json"} 1.0' in text
            assert "cuffwatch_broker_connected 1.0" in text
        status = f"{topic_root}/_gateway/{settings.instance}/status"
        await wait_for(lambda: [p for p, _ in probe.messages[status]][-1:] == [b"offline"],
                       what="offline status on stop")
        assert probe.messages[status][0][0] == b"online"


async def test_publishes_with_mqtt5_properties_take_gmqtts_path_and_are_acknowledged(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    # The link parses plain QoS 1 PUBLISH packets itself and hands anything with MQTT 5
    # properties to gmqtt: both kinds, interleaved, must be stored and acknowledged.
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    now = int(time.time() * 1000)
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        topic = f"{topic_root}/t1/cuffs/c2/telemetry"
        for i in range(40):
            payload = json.dumps(reading(i, now - 40_000 + i * 1000)).encode()
            if i % 2:
                dev.client.publish(topic, payload, qos=1, content_type="application/json",
                                   user_property=[("fw", "1.2")], message_expiry_interval=600)
            else:
                dev.client.publish(topic, payload, qos=1)
        await wait_for(lambda: _eq(count_points(influxdb, influx_db), 40), what="40 points")
        await wait_for(lambda: gw.mqtt.pending_acks == 0, what="every message acknowledged")
        assert gw.counters.accepted == 40
        assert gw.counters.rejected == 0
    # the same client id resumes its session: an unacknowledged message would come again
    async with running_gateway(settings) as gw2:
        await asyncio.sleep(1.0)
        assert gw2.counters.received == 0
