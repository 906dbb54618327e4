"""Scale-out (SPEC §9): several gateway processes against one Mosquitto and one InfluxDB.

Partition by team (`broker.teams`): every reading is stored exactly once, every alert is
raised once, and each team's readings and alerts are handled by its own gateway. And the
subtlety that rules out `broker.shared_group` on Mosquitto for per-cuff state: its shared
subscriptions hand out messages round-robin per message, so one cuff's readings reach
both gateways (docs/scaleout.md: hash-by-topic needs EMQX or HiveMQ).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway_process import GatewayProcess
from tests.support.harness import MqttProbe, settings_against, wait_for
from tests.support.roster import roster
from tests.support.servers import InfluxDB1Server, MosquittoServer

READINGS_PER_CUFF = 30
SQUAD = {"t1": ("a1", "a2", "a3"), "t2": ("b1", "b2", "b3")}
TEAMS = roster({team: {c: f"{c}-ath" for c in cuffs} for team, cuffs in SQUAD.items()})
CROSSING = {"t1": "a2", "t2": "b3"}  # one cuff per team goes over the hard ceiling once


@contextlib.asynccontextmanager
async def gateway_processes(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, db: str, topic_root: str,
    tmp: Path, partitions: list[dict[str, Any]],
) -> AsyncIterator[list[GatewayProcess]]:
    """One ready gateway process per partition (its `[broker]` keys), stopped afterwards."""
    procs: list[GatewayProcess] = []
    try:
        for k, broker in enumerate(partitions):
            name = f"gw{k}"
            settings = settings_against(mosquitto, influxdb, db, topic_root, tmp / name,
                                        teams=TEAMS, instance=f"{topic_root[:8]}-{name}",
                                        broker=broker)
            procs.append(GatewayProcess.for_settings(settings, tmp, name).start())
        for p in procs:
            await asyncio.to_thread(p.wait_ready)
        await asyncio.sleep(0.3)  # SUBACK before the cuffs publish
        yield procs
    finally:
        for p in procs:
            await asyncio.to_thread(p.stop)


def _reading(seq: int, ts: int, pressure: float = 4.0) -> dict[str, Any]:
    """A deflated cuff's reading: no bout, so no stale-cuff alert when the test pauses."""
    return {"ts": ts, "seq": seq, "pressure_mmhg": pressure, "elapsed_s": 0.0, "inflated": False}


def _publish_squad(dev: MqttProbe, topic_root: str, start_ms: int) -> None:
    """READINGS_PER_CUFF per cuff, alternating single objects and arrays of 3."""
    for team, cuffs in SQUAD.items():
        for cuff in cuffs:
            topic = f"{topic_root}/{team}/cuffs/{cuff}/telemetry"
            seq = 0
            while seq < READINGS_PER_CUFF:
                if seq % 2:
                    dev.publish(topic, _reading(seq, start_ms + seq * 1000))
                    seq += 1
                else:
                    n = min(3, READINGS_PER_CUFF - seq)
                    dev.publish(topic, [_reading(s, start_ms + s * 1000)
                                        for s in range(seq, seq + n)])
                    seq += n


def _stored_by_cuff(influxdb: InfluxDB1Server, db: str) -> dict[tuple[str, str], list[int]]:
    rows = influxdb.query(db, 'SELECT "seq" FROM cuff_telemetry GROUP BY "team", "cuff"')
    out: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        out.setdefault((row["team"], row["cuff"]), []).append(int(row["seq"]))
    return out


def _stored_count(influxdb: InfluxDB1Server, db: str) -> int:
    rows = influxdb.query(db, 'SELECT count("seq") FROM cuff_telemetry')
    return int(rows[0]["count"]) if rows else 0


@pytest.fixture
def now_ms() -> int:
    """A device-time origin a minute back, so readings and the crossing stay recent."""
    return int(time.time() * 1000) - 60_000


@pytest.mark.timeout(180)
async def test_by_team_partition_stores_each_reading_once_and_raises_each_alert_once(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, now_ms: int,
) -> None:
    partitions: list[dict[str, Any]] = [{"teams": ["t1"]}, {"teams": ["t2"]}]
    total = READINGS_PER_CUFF * sum(len(c) for c in SQUAD.values())
    processes = gateway_processes(mosquitto=mosquitto, influxdb=influxdb, db=influx_db,
                                  topic_root=topic_root, tmp=tmp_path, partitions=partitions)
    async with processes as (gw1, gw2), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as staff:
        await staff.subscribe(f"{topic_root}/+/alerts/+/+")
        _publish_squad(dev, topic_root, now_ms)
        for team, cuff in CROSSING.items():
            dev.publish(f"{topic_root}/{team}/cuffs/{cuff}/telemetry",
                        _reading(READINGS_PER_CUFF, now_ms + READINGS_PER_CUFF * 1000, 320.0))
        await wait_for(lambda: _stored_count(influxdb, influx_db) == total + len(CROSSING),
                       what="every reading in InfluxDB")
        await wait_for(lambda: len(_firing(staff, topic_root)) == len(CROSSING),
                       what="one firing alert per crossing cuff")
        await asyncio.sleep(1.0)  # time for a duplicate, were there one
        accepted = [g.metric("cuffwatch_readings_accepted_total") for g in (gw1, gw2)]
        alerts = [g.metric("cuffwatch_alerts_published_total") for g in (gw1, gw2)]

    stored = await asyncio.to_thread(_stored_by_cuff, influxdb, influx_db)
    for team, cuffs in SQUAD.items():
        for cuff in cuffs:
            extra = 1 if CROSSING[team] == cuff else 0
            seqs = stored[(team, cuff)]
            assert sorted(seqs) == list(range(READINGS_PER_CUFF + extra)), (team, cuff)
    per_team = READINGS_PER_CUFF * len(SQUAD["t1"]) + 1
    assert accepted == [per_team, per_team]  # each team wholly on its own gateway, once
    firing = _firing(staff, topic_root)
    assert Counter(firing) == {(t, c, "over_pressure"): 1 for t, c in CROSSING.items()}
    assert alerts == [1.0, 1.0]  # t1's alert from gateway 1, t2's from gateway 2


def _firing(probe: MqttProbe, topic_root: str) -> list[tuple[str, str, str]]:
    out = []
    for topic, messages in probe.messages.items():
        if not topic.startswith(f"{topic_root}/") or topic.endswith("/ack"):
            continue
        for payload, retained in messages:
            if payload and not retained:
                alert = json.loads(payload)
                if alert["state"] == "firing":
                    out.append((alert["team"], alert["cuff"], alert["kind"]))
    return out


@pytest.mark.timeout(180)
async def test_shared_subscription_on_mosquitto_splits_one_cuff_across_gateways(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, now_ms: int,
) -> None:
    """Stored once still, but per-cuff state is split: why docs/scaleout.md partitions by team."""
    group = f"g{topic_root[:12]}"
    partitions: list[dict[str, Any]] = [{"shared_group": group}, {"shared_group": group}]
    processes = gateway_processes(mosquitto=mosquitto, influxdb=influxdb, db=influx_db,
                                  topic_root=topic_root, tmp=tmp_path, partitions=partitions)
    async with processes as (gw1, gw2), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev:
        topic = f"{topic_root}/t1/cuffs/a1/telemetry"
        for seq in range(READINGS_PER_CUFF):
            dev.publish(topic, _reading(seq, now_ms + seq * 1000))
        await wait_for(lambda: _stored_count(influxdb, influx_db) == READINGS_PER_CUFF,
                       what="the cuff's readings in InfluxDB")
        accepted = [g.metric("cuffwatch_readings_accepted_total") for g in (gw1, gw2)]
    assert sum(accepted) == READINGS_PER_CUFF  # each message to one member of the group
    assert min(accepted) > 0, accepted  # ...but one cuff's messages went to both gateways
