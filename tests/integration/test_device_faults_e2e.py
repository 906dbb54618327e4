"""Device faults that must never hide a danger (SPEC §2-§4, §11 v2), through a running gateway.

Real Mosquitto, real InfluxDB 1.x, the gateway in-process (tests/harness.py). Each test
reproduces one defect from the tracker: a restarted cuff, a device clock that jumps, an
absurd `elapsed_s`, a slow reporting cadence, a retained telemetry message, a forged
retained alert. Every wait polls for an outcome; where a test asserts that something did
*not* happen it first waits for a later message to be handled (a barrier), never for a
length of time alone.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gmqtt
import pytest

from alerts.engine import ulid_factory
from alerts.model import Alert, AlertKind, AlertState
from alerts.push import PushDispatcher
from core.model import Severity
from tests.support.alert_flow import (
    arm_team,
    now_ms,
    published,
    reading,
    settings_for,
    states,
)
from tests.support.harness import MqttProbe, influx_v1, running_gateway, wait_for
from tests.support.receivers import HttpReceiver
from tests.support.servers import InfluxDB1Server, MosquittoServer

MAX_TS_MS = 253_402_300_799_999  # SPEC §2: the largest `ts` a reading may carry (9999-12-31)
# Once a barrier proves the gateway handled a message, its MQTT publishes are on loopback:
# this is only how long a broken gateway makes the test wait before it fails.
AFTER_BARRIER_S = 10.0


# -- helpers -----------------------------------------------------------------------------------


async def telemetry_rows(influxdb: InfluxDB1Server, db: str, cuff: str) -> list[dict[str, Any]]:
    """The cuff's stored `cuff_telemetry` points (time, seq, pressure), oldest first."""
    rows = await asyncio.to_thread(
        influxdb.query, db,
        f"SELECT seq, pressure_mmhg, clock_skew_s FROM cuff_telemetry WHERE cuff = '{cuff}'")
    return sorted(rows, key=lambda r: int(r["time"]))


async def stored(influxdb: InfluxDB1Server, db: str, cuff: str) -> int:
    return len(await telemetry_rows(influxdb, db, cuff))


async def stored_is(influxdb: InfluxDB1Server, db: str, cuff: str, n: int) -> bool:
    return await stored(influxdb, db, cuff) == n


async def subscribe(probe: MqttProbe, root: str, *filters: str) -> None:
    """Subscribe (retain as published: the recorded flag is the publisher's) and wait until
    the subscription is live: a message of our own on a barrier topic has come back."""
    barrier = f"{root}/_probe/{uuid.uuid4().hex}"
    probe.client.subscribe([gmqtt.Subscription(f, qos=1, retain_as_published=True)
                            for f in (*filters, barrier)])
    probe.publish(barrier, b"barrier")
    await wait_for(lambda: barrier in probe.messages, what="probe subscription live")


async def eventually(predicate: Callable[[], Any], what: str, state: Callable[[], object]) -> Any:
    """wait_for (after a barrier), failing with `what` and what `state()` shows at the end."""
    try:
        return await wait_for(predicate, AFTER_BARRIER_S, what=what)
    except AssertionError:
        raise AssertionError(f"expected {what}; at the deadline: {state()!r}") from None


def criticals(probe: MqttProbe, topic: str) -> list[dict[str, Any]]:
    """Alert publishes on the topic that are critical and firing."""
    return [a for a, _ in published(probe, topic)
            if a is not None and a["severity"] == "critical" and a["state"] == "firing"]


async def nothing_retained(mosquitto: MosquittoServer, root: str, topic: str) -> bool:
    """A new subscriber gets no retained message on `topic` (its barrier comes after)."""
    async with MqttProbe(mosquitto.host, mosquitto.port) as late:
        await subscribe(late, root, topic)
        return topic not in late.messages


# -- 1. a restarted cuff ---------------------------------------------------------------------------

# The restart reading's device time, from the last reading's before the restart.
RESTARTS: dict[str, Callable[[int], int]] = {
    "clock_reset_to_5s": lambda last: 5000,  # flagged as clock skew, stored at receive time
    # these two land on an earlier reading's device time (seq 99, seq 79): both are stored,
    # a point each (the restart's seq 0 sets it apart below the millisecond)
    "same_ts_as_last": lambda last: last,
    "2s_before_last": lambda last: last - 2000,
    "running_clock": lambda last: last + 100,
}


@pytest.mark.parametrize(
    ("restart", "max_ts_before"),
    [*((name, False) for name in RESTARTS), ("running_clock", True)],
    ids=[*RESTARTS, "running_clock_after_a_max_ts_reading"],
)
async def test_restarted_cuff_reading_is_stored_and_raises_its_alert(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, restart: str, max_ts_before: bool,
) -> None:
    """SPEC §4: a restarted cuff counts seq from 0 with a device time that may be later,
    equal, earlier or reset; its readings and their alerts are never dropped, and (§3) a
    restart is no sensor_fault."""
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1", "c2")},
                            influx=influx_v1(influxdb, influx_db))
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    op = f"{topic_root}/t1/alerts/c1/over_pressure"
    fault = f"{topic_root}/t1/alerts/c1/sensor_fault"
    t0 = now_ms() - 12_000
    before = [reading(i, t0 + 100 * i, 150.0, 20.0 + 0.1 * i) for i in range(100)]
    if max_ts_before:
        before[50]["ts"] = MAX_TS_MS  # accepted, flagged as clock skew, stored at receive time
    last = t0 + 99 * 100
    restart_ts = RESTARTS[restart](last)
    async with running_gateway(settings) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await subscribe(watch, topic_root, f"{topic_root}/+/alerts/#")
        for i in range(0, 100, 10):
            dev.publish(tel, before[i:i + 10])
        await wait_for(lambda: stored_is(influxdb, influx_db, "c1", 100),
                       what="the 100 readings before the restart stored")
        assert not criticals(watch, op), "150 mmHg on an arm raised over_pressure"

        dev.publish(tel, {"seq": 0, "ts": restart_ts, "pressure_mmhg": 380, "elapsed_s": 1})
        # barrier: a later message on another cuff, stored after anything the restart stored
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry",
                    reading(0, now_ms(), 0.0, 0.0, inflated=False))
        await wait_for(lambda: stored_is(influxdb, influx_db, "c2", 1), what="barrier stored")

        rows = await telemetry_rows(influxdb, influx_db, "c1")
        restarted = [r for r in rows if r["pressure_mmhg"] == 380]
        assert restarted, (
            f"the restarted cuff's reading (seq 0, ts {restart_ts}, 380 mmHg) was dropped, not "
            f"stored: {gw.counters.duplicates} reading(s) counted as duplicates")
        # one point per accepted reading (SPEC §4), also where the restart's device time is
        # an earlier reading's (issue #17, item 5: it used to replace that reading's point)
        assert len(rows) == 101, f"{len(rows)} cuff_telemetry points for c1"
        assert sorted(int(r["seq"]) for r in rows if r["pressure_mmhg"] == 150) == list(range(100))
        assert int(restarted[0]["seq"]) == 0
        await wait_for(lambda: criticals(watch, op), timeout=AFTER_BARRIER_S,
                       what="critical over_pressure from the restarted cuff's 380 mmHg")
        raised = criticals(watch, op)[0]
        assert (raised["value"], raised["threshold"]) == (380.0, 250.0)
        assert fault not in watch.messages, (
            f"a restarted cuff raised sensor_fault: {published(watch, fault)}")


# -- 2. a device clock that jumps must not blind the mean rules ---------------------------------


def leg_team_with_lop() -> dict[str, Any]:
    """Leg cuffs c1 (a-17) and c2 (a-18, the control), both prescribed LOP 220, 60 %."""
    rx = {"prescriptions": {"left_leg": {"lop_mmhg": 220, "target_pct_lop": 60}}}
    return {
        "athletes": {"a-17": rx, "a-18": rx},
        "cuffs": {"c1": {"athlete": "a-17", "limb": "left_leg"},
                  "c2": {"athlete": "a-18", "limb": "left_leg"}},
    }


HZ10_MS = 100
CALM = 10  # readings at 130 mmHg before the excess
EXCESS = 50  # readings at 240 mmHg (≥ LOP 220, < the leg's hard ceiling 300): 5 s at 10 Hz


@pytest.mark.parametrize(
    "fault",
    ["glitch_200s_ahead", "step_120s_back"],
)
async def test_device_clock_jump_does_not_blind_the_lop_mean(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, fault: str,
) -> None:
    """A 10 Hz leg cuff: 1 s at 130 mmHg, then its clock jumps (one reading 200 s ahead and
    back, or a step 120 s back for good), then 240 mmHg ≥ LOP for 5 s: the 2 s mean ≥ LOP
    must raise a critical over_pressure, as on the control cuff c2 whose clock runs true
    (which alerts about 2 s into the excess)."""
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": leg_team_with_lop()},
                            influx=influx_v1(influxdb, influx_db))
    ops = {c: f"{topic_root}/t1/alerts/{c}/over_pressure" for c in ("c1", "c2")}
    total = CALM + (1 if fault == "glitch_200s_ahead" else 0) + EXCESS
    async with running_gateway(settings), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await subscribe(watch, topic_root, f"{topic_root}/+/alerts/#")
        t0 = now_ms()
        for i in range(total):  # live: one message each, paced in real time
            ts = t0 + HZ10_MS * i
            pressure = 130.0 if i < total - EXCESS else 240.0
            faulty_ts = ts
            if fault == "glitch_200s_ahead" and i == CALM:
                faulty_ts = ts + 200_000  # one reading; the clock is back at the next
            elif fault == "step_120s_back" and i >= CALM:
                faulty_ts = ts - 120_000
            elapsed = 30.0 + 0.1 * i
            dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry",
                        reading(i, faulty_ts, pressure, elapsed))
            dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry", reading(i, ts, pressure, elapsed))
            await asyncio.sleep(HZ10_MS / 1000)

        await wait_for(lambda: criticals(watch, ops["c2"]),
                       what="the control cuff's critical over_pressure (test setup)")
        await wait_for(lambda: stored_is(influxdb, influx_db, "c2", total),
                       what=f"all {total} readings of the control cuff stored")
        await wait_for(lambda: stored_is(influxdb, influx_db, "c1", total),
                       what=f"all {total} readings of the cuff whose clock jumped stored")
        await eventually(lambda: criticals(watch, ops["c1"]),
                         f"critical over_pressure on the cuff whose clock jumped ({fault}) after "
                         "5 s at 240 mmHg ≥ LOP 220", lambda: published(watch, ops["c1"]))
        first = criticals(watch, ops["c1"])[0]
        assert first["value"] >= 220.0
        assert first["threshold"] == 220.0


# -- 3. an absurd elapsed_s ---------------------------------------------------------------------


async def test_huge_elapsed_s_keeps_the_message_its_readings_and_the_alert(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    """elapsed_s 1e306 is a valid number ≥ 0 (SPEC §2): the array's four readings are stored,
    380 mmHg on an arm raises a critical over_pressure, and the gateway goes on."""
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1", "c2")},
                            influx=influx_v1(influxdb, influx_db))
    op = f"{topic_root}/t1/alerts/c1/over_pressure"
    t = now_ms()
    batch = [
        {"ts": t, "seq": 100, "pressure_mmhg": 0, "elapsed_s": 0},
        {"ts": t + 100, "seq": 101, "pressure_mmhg": 380, "elapsed_s": 1e306},
        {"ts": t + 200, "seq": 102, "pressure_mmhg": 380, "elapsed_s": 0.2},
        {"ts": t + 300, "seq": 103, "pressure_mmhg": 380, "elapsed_s": 0.3},
    ]
    async with running_gateway(settings) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await subscribe(watch, topic_root, f"{topic_root}/+/alerts/#")
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", batch)
        # the next message (another cuff): handled and stored after the array
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry", reading(0, t + 400, 120.0, 5.0))
        await wait_for(lambda: stored_is(influxdb, influx_db, "c2", 1),
                       what="the next message handled and stored")
        rows = await telemetry_rows(influxdb, influx_db, "c1")
        assert [int(r["seq"]) for r in rows] == [100, 101, 102, 103], (
            f"readings of the array with elapsed_s 1e306 lost: stored seqs "
            f"{[int(r['seq']) for r in rows]}, gateway internal errors "
            f"{gw.counters.internal_errors}")
        await wait_for(lambda: criticals(watch, op), timeout=AFTER_BARRIER_S,
                       what="critical over_pressure from 380 mmHg next to elapsed_s 1e306")
        assert gw.counters.internal_errors == 0


# -- 4. a slow reporting cadence ----------------------------------------------------------------


@pytest.mark.parametrize(
    "prescription",
    [None, {"lop_mmhg": 200, "target_mmhg": 130}],
    ids=["no_prescription", "lop_prescribed"],
)
async def test_cuff_reporting_every_2_5_s_resolves_its_hard_ceiling_alert(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
    prescription: dict[str, Any] | None,
) -> None:
    """One 380 mmHg reading, then 130 mmHg every 2.5 s of device time: once the ceiling
    reading is more than 5 s old and the 5 s mean is back in range the alert resolves.
    With an LOP prescribed, the 2 s LOP mean never spans its window at this cadence (every
    gap is longer than 2 s): that must not keep the alert open for ever."""
    team = arm_team("c1")
    if prescription is not None:
        team["athletes"] = {"a-1": {"prescriptions": {"left_arm": prescription}}}
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": team})
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    op = f"{topic_root}/t1/alerts/c1/over_pressure"
    n_low = 8  # 20 s of device time after the ceiling reading
    t0 = now_ms() - 2500 * n_low  # the last reading is at now: live, no clock skew
    async with running_gateway(settings) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await subscribe(watch, topic_root, f"{topic_root}/+/alerts/#")
        dev.publish(tel, reading(0, t0, 380.0, 10.0))
        await wait_for(lambda: criticals(watch, op), what="over_pressure raised")
        for i in range(1, n_low + 1):  # published at once; the gateway judges by device time
            dev.publish(tel, reading(i, t0 + 2500 * i, 130.0, 10.0 + 2.5 * i))
        await wait_for(lambda: gw.counters.accepted == n_low + 1, what="all readings accepted")
        await eventually(lambda: "resolved" in states(watch, op),
                         f"over_pressure resolved after {2.5 * n_low:g} s of device time at "
                         "130 mmHg every 2.5 s", lambda: states(watch, op))
        await wait_for(lambda: states(watch, op)[-1:] == [None], what="retained alert cleared")
        (resolved, resolved_retained), (cleared, cleared_retained) = published(watch, op)[-2:]
        assert resolved is not None
        assert resolved["state"] == "resolved"
        assert not resolved_retained
        assert (cleared, cleared_retained) == (None, True)
        assert await nothing_retained(mosquitto, topic_root, op)


# -- 5. a retained telemetry message is not a live reading --------------------------------------


async def test_retained_telemetry_is_rejected_not_stored_and_raises_nothing(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    """Telemetry is QoS 1, not retained (SPEC §2): a retained reading (2 h old, 380 mmHg)
    handed to the gateway on subscribe is rejected, not stored at receive time, no alert."""
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1", "c2")},
                            influx=influx_v1(influxdb, influx_db))
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    op = f"{topic_root}/t1/alerts/c1/over_pressure"
    rejected = f"{topic_root}/t1/cuffs/c1/rejected"
    stale = json.dumps(reading(7, now_ms() - 2 * 3600 * 1000, 380.0, 30.0))
    async with MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        try:
            await subscribe(watch, topic_root, f"{topic_root}/+/alerts/#",
                            f"{topic_root}/+/cuffs/+/rejected")
            dev.publish(tel, stale, retain=True)
            async with MqttProbe(mosquitto.host, mosquitto.port) as check:  # it is retained
                await subscribe(check, topic_root, tel)
                assert [p for p, _ in check.messages[tel]] == [stale.encode()]
            async with running_gateway(settings):
                # barrier: a live reading after the gateway subscribed (so after the retained
                # one was delivered to it), handled and stored
                dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry",
                            reading(0, now_ms(), 120.0, 5.0))
                await wait_for(lambda: stored_is(influxdb, influx_db, "c2", 1),
                               what="the live control reading stored")
                await asyncio.sleep(2.0)  # settle: publishes made before the barrier arrive
                assert op not in watch.messages, (
                    f"a retained (replayed) 2 h old reading raised over_pressure: "
                    f"{published(watch, op)}")
                rows = await telemetry_rows(influxdb, influx_db, "c1")
                assert rows == [], f"a retained telemetry message was stored again: {rows}"
                await wait_for(lambda: watch.messages.get(rejected), timeout=AFTER_BARRIER_S,
                               what="the retained telemetry message reported on rejected")
                body = json.loads(watch.messages[rejected][0][0])
                assert body["payload"] == stale
                assert body["reason"]
        finally:
            dev.publish(tel, b"", retain=True)  # clear the retained message


# -- 6. a forged retained alert -----------------------------------------------------------------


async def test_forged_retained_acknowledged_alert_does_not_silence_a_real_one(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, receiver: HttpReceiver,
) -> None:
    """Anyone can publish a retained "acknowledged" over_pressure before the gateway starts;
    a real over-pressure afterwards (300 mmHg on an arm, ceiling 250) must still fire as
    critical on MQTT and reach the team's push route."""
    teams = {"t1": {**arm_team("c1"), "routes": [{"url": receiver.url("/staff")}]}}
    settings = settings_for(mosquitto, topic_root, tmp_path, teams)
    op = f"{topic_root}/t1/alerts/c1/over_pressure"
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    forged_at = now_ms() - 5000
    forged = Alert(
        id=ulid_factory()(forged_at), team="t1", cuff="c1", athlete="a-1", limb="left_arm",
        kind=AlertKind.OVER_PRESSURE, severity=Severity.CRITICAL,
        state=AlertState.ACKNOWLEDGED, value=300.0, threshold=250.0, unit="mmHg",
        message="a-1 left_arm cuff at 300 mmHg (limit 250)", started_at_ms=forged_at,
        updated_at_ms=forged_at, acknowledged_by="nobody",
    )
    push = PushDispatcher.from_settings(settings)
    async with MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        try:
            dev.publish(op, forged.to_json(), retain=True)
            await subscribe(watch, topic_root, f"{topic_root}/+/alerts/#")
            assert states(watch, op) == ["acknowledged"]  # the forgery, retained
            async with running_gateway(settings, notifiers=[push]) as gw:
                t0 = now_ms()
                for i in range(20):  # 2 s at 10 Hz, at 300 mmHg
                    dev.publish(tel, reading(i, t0 + 100 * i, 300.0, 10.0 + 0.1 * i))
                    await asyncio.sleep(0.1)
                await wait_for(lambda: gw.counters.accepted == 20, what="readings accepted")
                await eventually(lambda: criticals(watch, op),
                                 "a firing critical over_pressure despite the forged "
                                 "acknowledged one", lambda: states(watch, op))
                await wait_for(lambda: "Pressure too high — a-1" in receiver.titles("/staff"),
                               what="the critical over_pressure pushed to the team's route")
        finally:
            dev.publish(op, b"", retain=True)  # clear whatever is retained there


async def test_a_retained_ack_is_rejected_and_silences_nothing(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    """A retained ack would be replayed to the gateway on every start: it must not be taken
    as someone acting now (SPEC §2: acks are not retained)."""
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1")})
    op = f"{topic_root}/t1/alerts/c1/over_pressure"
    ack = f"{op}/ack"
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    rejected = f"{topic_root}/t1/cuffs/c1/rejected"
    async with MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        try:
            dev.publish(ack, {"by": "nobody"}, retain=True)
            await subscribe(watch, topic_root, f"{topic_root}/+/alerts/#", rejected)
            async with running_gateway(settings) as gw:
                await eventually(lambda: rejected in watch.messages,
                                 "the retained ack rejected", lambda: dict(watch.messages))
                first = published(watch, rejected)[0][0]
                assert first is not None
                assert first["code"] == "retained"
                t0 = now_ms()
                for i in range(10):
                    dev.publish(tel, reading(i, t0 + 100 * i, 300.0, 10.0 + 0.1 * i))
                await wait_for(lambda: gw.counters.accepted == 10, what="readings accepted")
                await eventually(lambda: criticals(watch, op), "a firing critical over_pressure",
                                 lambda: states(watch, op))
                assert states(watch, op) == ["firing"]
        finally:
            dev.publish(ack, b"", retain=True)
            dev.publish(op, b"", retain=True)
