"""Issue #17 on the readings path, against real Mosquitto and InfluxDB 1.x.

- 2a: a reading's `athlete` override must name a known athlete: a device cannot mint tag
  values (100k invented names had InfluxDB refuse new tag values, real athletes' too);
- 5: one point per accepted reading (SPEC §4), also for readings of one cuff in the same
  millisecond (whole-second RFC 3339 times at 5 Hz stored 5 of 20);
- 6a: a clock-skewed reading is stored at its receive time, not a millisecond per reading
  past it;
- 6b: a bad topic naming a roster cuff by a valid id is answered on that cuff's `rejected`.

The handler's side of each, without servers: tests/unit/test_handler.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.decode import RejectReason
from ingest.influxql import InfluxQLClient
from ingest.query import telemetry
from tests.support.harness import MqttProbe, running_gateway, settings_against, wait_for
from tests.support.roster import prescribed, roster
from tests.support.servers import InfluxDB1Server, MosquittoServer

TEAMS = roster(
    {"t1": {"c1": "a-17", "c2": ("a-18", "right_arm")}, "t2": {"c3": "b-1"}},
    athletes={"t1": prescribed("a-17") | {"a-19": {}}},
)
NS_PER_MS = 1_000_000


def reading(seq: int, ts: int | str, pressure: float = 130.0, **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "seq": seq, "pressure_mmhg": pressure, "elapsed_s": 5.0 + seq / 5,
            **extra}


async def rows_of(influxdb: InfluxDB1Server, db: str, cuff: str, *,
                  epoch: str = "ms") -> list[dict[str, Any]]:
    """The cuff's telemetry points, in time order (ties: as InfluxDB returns them)."""
    return await asyncio.to_thread(
        influxdb.query, db,
        f"SELECT * FROM cuff_telemetry WHERE cuff = '{cuff}' ORDER BY time", epoch=epoch,
    )


async def stored(influxdb: InfluxDB1Server, db: str, cuff: str, seq: int) -> bool:
    """Whether the cuff's reading `seq` (a sentinel sent last) is in InfluxDB: the gateway
    writes a cuff's readings in order, so everything it accepted before is there too."""
    return any(int(r["seq"]) == seq for r in await rows_of(influxdb, db, cuff))


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_device_cannot_mint_athletes(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    topic = f"{topic_root}/t1/cuffs/c1/telemetry"
    rejected = f"{topic_root}/t1/cuffs/c1/rejected"
    t0 = now_ms() - 60_000
    ghosts = 300
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        await dev.subscribe(rejected)
        for i in range(ghosts):  # every one used to be stored: a new tag value each
            dev.publish(topic, reading(i, t0 + i, athlete=f"ghost-{i}"))
        dev.publish(topic, [reading(1000, t0 + 1000, athlete="a-19"),  # the team's roster
                            reading(1001, t0 + 1001, athlete="a-18", limb="left_arm")])
        dev.publish(topic, reading(1002, t0 + 1002))  # no override: the cuff's own
        await wait_for(lambda: stored(influxdb, influx_db, "c1", 1002), what="the sentinel")
        await wait_for(lambda: len(dev.messages[rejected]) >= ghosts, timeout=5,
                       what="every invented athlete rejected")
        assert gw.counters.rejected_by_reason[RejectReason.UNKNOWN_ATHLETE] == ghosts
        assert gw.counters.internal_errors == 0
        # another team's athlete is no athlete of this team either
        dev.publish(f"{topic_root}/t2/cuffs/c3/telemetry", reading(1, t0, athlete="a-17"))
        await wait_for(lambda: gw.counters.rejected == ghosts + 1, what="b-1's cuff refused")
        # nor can an assignment bring one in: staff add a guest to the roster first
        dev.publish(f"{topic_root}/t1/cuffs/c2/assignment", {"athlete": "guest-1"})
        await wait_for(lambda: gw.counters.rejected == ghosts + 2, what="the assignment refused")
        dev.publish(topic, reading(1003, t0 + 1003, athlete="guest-1"))
        await wait_for(lambda: gw.counters.rejected == ghosts + 3, what="the guest's refused")
    echoes = [json.loads(p) for p, _ in dev.messages[rejected]]
    assert {e["code"] for e in echoes} == {"unknown_athlete"}
    assert "'ghost-0'" in echoes[0]["reason"]
    rows = await rows_of(influxdb, influx_db, "c1")
    assert [(int(r["seq"]), r["athlete"], r["limb"]) for r in rows] == [
        (1000, "a-19", "left_leg"), (1001, "a-18", "left_arm"), (1002, "a-17", "left_leg")]
    tags = await asyncio.to_thread(
        influxdb.query, influx_db, 'SHOW TAG VALUES FROM cuff_telemetry WITH KEY = "athlete"')
    assert {t["value"] for t in tags} == {"a-17", "a-18", "a-19"}


def rfc3339(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_every_reading_is_a_point_even_within_one_millisecond(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    second = now_ms() // 1000 - 30
    t2 = now_ms() - 20_000
    async with running_gateway(settings), MqttProbe(mosquitto.host, mosquitto.port) as dev:
        # a cuff at 5 Hz stamping whole seconds (RFC 3339): 4 seconds, 20 readings
        for seq in range(20):
            dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry",
                        reading(seq, rfc3339(second + seq // 5), 120.0 + seq))
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(99, (second + 5) * 1000))
        # an array stamped alike (epoch ms), seq wrapping a million between two of them
        seqs = [999_998, 999_999, 1_000_000, 1_000_001]
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry", [reading(s, t2) for s in seqs])
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry", reading(5, t2 + 1))
        await wait_for(lambda: stored(influxdb, influx_db, "c1", 99), what="c1's sentinel")
        await wait_for(lambda: stored(influxdb, influx_db, "c2", 5), what="c2's sentinel")

    rows = await rows_of(influxdb, influx_db, "c1")
    assert [int(r["seq"]) for r in rows] == [*range(20), 99]  # 20 of 20, in seq order
    assert [r["time"] for r in rows[:20]] == [(second + s // 5) * 1000 for s in range(20)]
    assert [r["pressure_mmhg"] for r in rows[:20]] == [120.0 + s for s in range(20)]
    exact = await rows_of(influxdb, influx_db, "c1", epoch="ns")
    stamps = [r["time"] for r in exact]
    assert len(set(stamps)) == len(stamps) == 21
    assert stamps == sorted(stamps)
    assert [s // NS_PER_MS for s in stamps[:20]] == [r["time"] for r in rows[:20]]

    c2 = await rows_of(influxdb, influx_db, "c2")
    assert sorted(int(r["seq"]) for r in c2) == sorted([*seqs, 5])  # every one of them
    assert [r["time"] for r in c2] == [t2] * 4 + [t2 + 1]

    # what analysts get (ingest.query, InfluxQL in whole ms): every reading, in its own ms
    client = InfluxQLClient(url=influxdb.url, database=influx_db)
    got = await asyncio.to_thread(telemetry, client, "t1", "a-17", start=second * 1000,
                                  end=(second + 4) * 1000)
    assert [(r["seq"], r["pressure_mmhg"]) for r in got] == [
        (s, 120.0 + s) for s in range(20)]
    assert len(await asyncio.to_thread(telemetry, client, "t1", "a-18", since="1h")) == 5


async def test_clock_skewed_readings_are_stored_at_their_receive_time(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    async with running_gateway(settings), MqttProbe(mosquitto.host, mosquitto.port) as dev:
        before = now_ms()
        ahead = before + 3_600_000  # an hour ahead: flagged (max_clock_skew_s 300)
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry",
                    [reading(seq, ahead + seq * 200) for seq in range(5)])
        await wait_for(lambda: stored(influxdb, influx_db, "c1", 4), what="the skewed array")
        after = now_ms()
    rows = await rows_of(influxdb, influx_db, "c1")
    assert [int(r["seq"]) for r in rows] == list(range(5))
    received = rows[0]["time"]
    assert before <= received <= after
    assert [r["time"] for r in rows] == [received] * 5  # its receive time, each of them
    for r in rows:
        assert 3599.0 < r["clock_skew_s"] < 3601.0
    exact = [r["time"] for r in await rows_of(influxdb, influx_db, "c1", epoch="ns")]
    assert exact == sorted(set(exact))  # five points, in seq order


async def test_a_bad_topic_naming_a_roster_cuff_is_answered_on_its_rejected_topic(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    r = topic_root
    payload = json.dumps(reading(1, now_ms()))
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        await dev.subscribe(f"{r}/+/cuffs/+/rejected")
        dev.publish(f"{r}/t.1/cuffs/c1/telemetry", payload)  # c1: a roster cuff of t1
        dev.publish(f"{r}/t1/cuffs/c 2/telemetry", payload)  # no valid cuff id: unanswerable
        dev.publish(f"{r}/t 9/cuffs/c99/telemetry", payload)  # no roster cuff: no team
        dev.publish(f"{r}/t1/cuffs/c2/telemetry", reading(7, now_ms()))
        await wait_for(lambda: stored(influxdb, influx_db, "c2", 7), what="c2's sentinel")
        await wait_for(lambda: dev.messages.get(f"{r}/t1/cuffs/c1/rejected"), timeout=5,
                       what="the bad topic answered")
        await asyncio.sleep(0.3)  # anything else published would have arrived by now
        assert gw.counters.rejected_by_reason[RejectReason.BAD_TOPIC] == 3
    assert list(dev.messages) == [f"{r}/t1/cuffs/c1/rejected"]
    [(raw, _retain)] = dev.messages[f"{r}/t1/cuffs/c1/rejected"]
    echo = json.loads(raw)
    assert echo["code"] == "bad_topic"
    assert "'t.1'" in echo["reason"]
    assert echo["payload"] == payload
