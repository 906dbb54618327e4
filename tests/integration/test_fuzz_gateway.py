"""Hostile input against a live gateway (SPEC §2, §4): 10,000 fuzzed messages, hostile
athlete names through InfluxDB's tags, hostile retained alerts at start-up.

The corpus (tests/data/hostile/) and the property tests on the decoders: tests/unit/test_fuzz.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.seq import SEQ_MODULUS
from gateway.decode import REJECTED_ECHO_BYTES
from ingest import lineproto
from tests.support.harness import (
    MqttProbe,
    running_gateway,
    settings_against,
    wait_for,
)
from tests.support.hostile import TARGET, TEAMS, VALID_CUFFS, Hostile, load_corpus
from tests.support.servers import InfluxDB1Server, MosquittoServer

FUZZ_MESSAGES = 10_000
FUZZ_SEED = 20261123
VALID_MESSAGES_PER_CUFF = 150
BIG_PAYLOAD_BYTES = 16 << 10  # corpus entries above this are sent once: they cost broker time
CORPUS_SHARE = 0.35  # of the fuzzed messages; 15 % bad topics, the rest generated garbage
TOPIC_SHARE = 0.15
PUBLISH_BURST = 250  # hostile publishes between yields to the event loop
PUBACK_WAIT_S = 0.005  # a publisher at the broker's receive maximum retries this often
# the fuzz run is many thousand messages on a shared 2-core box: a generous bound
FUZZ_WAIT_S = 90.0

CORPUS = load_corpus()


# -- the running gateway under fire ---------------------------------------------------------------


def kind_topic(root: str, team: str, cuff: str, kind: str, name: str = "") -> str:
    if kind == "ack":
        return f"{root}/{team}/alerts/{cuff}/over_pressure/ack"
    if kind == "alert":
        return f"{root}/{team}/alerts/{cuff}/{name or 'sensor_fault'}"
    return f"{root}/{team}/cuffs/{cuff}/{kind}"


def bad_topics(root: str) -> list[tuple[str, bool]]:
    """(topic, counted as a rejection) for a valid reading under a hostile topic."""
    return [
        (f"{root}/t1/cuffs/c.1/telemetry", True),
        (f"{root}/t1/cuffs/c\u00e91/telemetry", True),
        (f"{root}/t1/cuffs/{'c' * 65}/telemetry", True),
        (f"{root}/t1/cuffs/{'x' * 5000}/telemetry", True),
        (f"{root}//cuffs/c1/telemetry", True),
        (f"{root}/t1/cuffs//telemetry", True),
        (f"{root}/$SYS/cuffs/c1/telemetry", True),
        (f"{root}/t1/cuffs/$SYS/telemetry", True),
        (f"{root}/\U0001f600/cuffs/c1/telemetry", True),
        (f"{root}/t1/cuffs/c 1/telemetry", True),
        (f"{root}/t2/cuffs/c1/telemetry", True),  # wrong team
        (f"{root}/_gateway/cuffs/c1/telemetry", True),  # wrong team
        (f"{root}/t1/cuffs/c99/telemetry", True),  # unknown cuff
        (f"{root}/zz/cuffs/c99/telemetry", True),  # unknown team
        (f"{root}/t1/cuffs/c.1/status", True),
        (f"{root}/t1/alerts/c.1/over_pressure/ack", True),
        (f"{root}/t1/alerts/c1/no_such_kind/ack", True),
        (f"{root}/t1/cuffs/c1/telemetry/extra", False),  # not subscribed: never delivered
        (f"{root}/t1/cuffs/c1/extra/telemetry", False),
        (f"{root}/t1/cuffs/c1/TELEMETRY", False),  # delivered, not ours: ignored
        (f"{root}/_gateway/x/status", False),
    ]


def valid_reading(seq: int, ts: int) -> dict[str, Any]:
    return {"ts": ts, "seq": seq, "pressure_mmhg": 100.0 + (seq % 40) * 0.5,
            "elapsed_s": 1.0 + seq * 0.125, "inflated": True, "battery_pct": 80.0}


def garbage(rng: random.Random, now_ms: int) -> tuple[bytes, bool]:
    """(payload, rejected by construction) — random bytes and mutations of valid readings."""
    base = {"ts": now_ms - rng.randrange(10**6), "seq": rng.randrange(SEQ_MODULUS),
            "pressure_mmhg": rng.uniform(-100, 900), "elapsed_s": rng.uniform(0, 2000)}
    roll = rng.random()
    if roll < 0.2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200))), False
    if roll < 0.35:
        text = json.dumps(base).encode()
        return text[: rng.randrange(len(text))], True  # a strict prefix is never JSON
    if roll < 0.5:
        broken = dict(base)
        del broken[rng.choice(list(broken))]
        return json.dumps(broken).encode(), True
    if roll < 0.65:
        key = rng.choice(["pressure_mmhg", "elapsed_s", "battery_pct", "target_mmhg"])
        bad = rng.choice(["NaN", "Infinity", "-Infinity", '"12"', "true", "[]", "{}"])
        return json.dumps({**base, key: 0}).replace(f'"{key}": 0', f'"{key}": {bad}').encode(), True
    if roll < 0.75:
        good = [dict(base, seq=(base["seq"] + i) % SEQ_MODULUS)
                for i in range(rng.randrange(1, 30))]
        good.insert(rng.randrange(len(good) + 1), dict(base, seq=-1))
        return json.dumps(good).encode(), True  # one bad reading rejects the array
    if roll < 0.85:
        flipped = bytearray(json.dumps(base).encode())
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped), False  # a flipped byte may still be a valid reading
    readings = [dict(base, seq=(base["seq"] + i) % SEQ_MODULUS,
                     athlete="".join(chr(rng.choice([rng.randrange(32, 127),
                                                     rng.randrange(0x80, 0x2FFF)]))
                                     for _ in range(rng.randrange(1, 20))))
                for i in range(rng.randrange(1, 8))]
    return json.dumps(readings).encode(), False  # valid: stored for the target cuff


@dataclass
class FuzzPlan:
    """The hostile messages, in order, and what they must add up to."""

    messages: list[tuple[str, bytes, int]]
    min_rejections: int  # QoS 1 messages the gateway must count as rejected


def fuzz_plan(root: str, rng: random.Random) -> FuzzPlan:
    now_ms = int(time.time() * 1000)
    small = [h for h in CORPUS if len(h.payload) <= BIG_PAYLOAD_BYTES]
    big = [h for h in CORPUS if len(h.payload) > BIG_PAYLOAD_BYTES]
    rejects = [h for h in small if h.expect == "reject"]
    topics = bad_topics(root)
    plain = json.dumps(valid_reading(0, now_ms)).encode()
    messages: list[tuple[str, bytes, int]] = []
    min_rejections = 0

    def send_corpus(h: Hostile, qos: int) -> None:
        nonlocal min_rejections
        team, cuff = TARGET
        if h.expect == "reject" and rng.random() < 0.5:
            team, cuff = rng.choice(VALID_CUFFS)  # rejected payloads may hit any roster cuff
        messages.append((kind_topic(root, team, cuff, h.kind), h.payload, qos))
        if h.expect == "reject" and qos == 1:
            min_rejections += 1

    for h in [*big, *small]:  # every entry at least once, the big ones only once
        send_corpus(h, 1)
    while len(messages) < FUZZ_MESSAGES:
        qos = rng.choice((0, 1))
        roll = rng.random()
        if roll < CORPUS_SHARE:
            send_corpus(rng.choice(rejects if rng.random() < 0.5 else small), qos)
        elif roll < CORPUS_SHARE + TOPIC_SHARE:
            topic, counted = rng.choice(topics)
            messages.append((topic, plain, qos))
            min_rejections += counted and qos == 1
        else:
            payload, rejected = garbage(rng, now_ms)
            team, cuff = rng.choice(VALID_CUFFS) if rejected else TARGET
            messages.append((kind_topic(root, team, cuff, "telemetry"), payload, qos))
            min_rejections += rejected and qos == 1
    return FuzzPlan(messages, min_rejections)


def valid_stream(root: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Each valid cuff's readings in messages of one to four, interleaved across cuffs."""
    now_ms = int(time.time() * 1000)
    seqs = dict.fromkeys(VALID_CUFFS, 0)
    for i in range(VALID_MESSAGES_PER_CUFF):
        for n, (team, cuff) in enumerate(VALID_CUFFS):
            size = 1 + (i + n) % 4
            batch = []
            for _ in range(size):
                seq = seqs[(team, cuff)]
                seqs[(team, cuff)] += 1
                batch.append(valid_reading(seq, now_ms - 120_000 + seq * 10))
            yield f"{root}/{team}/cuffs/{cuff}/telemetry", batch


async def stored_rows(influxdb: InfluxDB1Server, db: str, where: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(
        influxdb.query, db,
        f'SELECT * FROM cuff_telemetry WHERE {where} GROUP BY "team", "cuff", "athlete", "limb"',
    )


async def count_valid(influxdb: InfluxDB1Server, db: str) -> int:
    rows = await asyncio.to_thread(
        influxdb.query, db,
        "SELECT count(seq) FROM cuff_telemetry WHERE cuff = 'c2' OR cuff = 'c3' OR cuff = 'c4'",
    )
    return int(rows[0]["count"]) if rows else 0


async def count_team(influxdb: InfluxDB1Server, db: str, team: str) -> int:
    rows = await asyncio.to_thread(
        influxdb.query, db, f"SELECT count(seq) FROM cuff_telemetry WHERE team = '{team}'")
    return int(rows[0]["count"]) if rows else 0


def internal_errors(caplog: pytest.LogCaptureFixture) -> str:
    """What the gateway logged about internal errors: the exceptions, by type and message."""
    seen = Counter(
        f"{r.exc_info[0].__name__}: {r.exc_info[1]}" if r.exc_info and r.exc_info[0] else
        r.getMessage()
        for r in caplog.records
        if "internal error" in r.getMessage() or r.levelno >= logging.ERROR
    )
    return "; ".join(f"{n}x {what}" for what, n in seen.most_common(10))


async def http_status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


async def test_gateway_survives_10000_hostile_messages_and_stores_every_valid_reading(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path, teams=TEAMS)
    plan = fuzz_plan(topic_root, random.Random(FUZZ_SEED))
    valid = list(valid_stream(topic_root))
    expected = {
        (m[0].split("/")[3], r["seq"]): r for m in valid for r in m[1]
    }
    host, port = mosquitto.host, mosquitto.port
    async with (
        running_gateway(settings) as gw,
        MqttProbe(host, port) as attacker,
        MqttProbe(host, port) as cuffs,
        MqttProbe(host, port) as watcher,
    ):
        await watcher.subscribe(f"{topic_root}/+/cuffs/+/rejected")
        every = len(plan.messages) // len(valid)
        pending = iter(valid)
        for i, (topic, payload, qos) in enumerate(plan.messages):
            await publish(attacker, topic, payload, qos)
            if i % every == 0:
                nxt = next(pending, None)
                if nxt is not None:
                    await publish(cuffs, nxt[0], json.dumps(nxt[1]).encode(), 1)
            if i % PUBLISH_BURST == 0:
                await asyncio.sleep(0)
        for topic, batch in pending:
            await publish(cuffs, topic, json.dumps(batch).encode(), 1)

        await wait_for(lambda: gw.counters.rejected >= plan.min_rejections, timeout=FUZZ_WAIT_S,
                       what=f">= {plan.min_rejections} rejections counted")
        await wait_for(lambda: _at_least(count_valid(influxdb, influx_db), len(expected)),
                       timeout=FUZZ_WAIT_S, what=f"{len(expected)} valid readings stored")
        # the 10 s gateway_stats point carries counters and the lag the hostile input drove
        await wait_for(lambda: _at_least(count_stats(influxdb, influx_db), 1),
                       what="a gateway_stats point stored")
        for code in ("too_large", "invalid_json", "invalid_reading", "too_many_readings",
                     "empty_batch", "invalid_status", "invalid_assignment", "wrong_team",
                     "unknown_cuff", "unknown_team"):
            await wait_for(lambda c=code: c in echoed_codes(watcher),  # type: ignore[misc]
                           what=f"a {code} rejection on the rejected topic")
        base = f"http://127.0.0.1:{gw.health.port}"
        assert await http_status(f"{base}/healthz") == 200
        assert await http_status(f"{base}/readyz") == 200
        assert gw.mqtt.connected.is_set()
        assert gw.mqtt.connections == 1, "the gateway lost its broker connection"
        assert gw.counters.internal_errors == 0, internal_errors(caplog)
        for topic, msgs in watcher.messages.items():
            assert re.fullmatch(rf"{topic_root}/[A-Za-z0-9_-]+/cuffs/[A-Za-z0-9_-]+/rejected",
                                topic)
            for raw, _ in msgs:
                assert echo_size(json.loads(raw)["payload"]) <= REJECTED_ECHO_BYTES
        batches = gw.pipeline.snapshot()
    assert batches.rejected_batches == 0, "InfluxDB refused lines the gateway produced"
    rows = await stored_rows(influxdb, influx_db, "cuff = 'c2' OR cuff = 'c3' OR cuff = 'c4'")
    got = Counter((r["cuff"], int(r["seq"])) for r in rows)
    extra = [r for r in rows if got[(r["cuff"], int(r["seq"]))] > 1
             or (r["cuff"], int(r["seq"])) not in expected]
    assert extra == [], "points that no valid reading sent"
    assert set(got) == set(expected)
    roster = {cuff: (team, spec["athlete"]) for team, t in TEAMS.items()
              for cuff, spec in t["cuffs"].items()}
    for row in rows:
        sent = expected[(row["cuff"], int(row["seq"]))]
        assert row["time"] == sent["ts"]
        assert (row["pressure_mmhg"], row["elapsed_s"]) == (sent["pressure_mmhg"],
                                                          sent["elapsed_s"])
        assert (row["inflated"], row["battery_pct"]) == (True, 80.0)
        assert (row["team"], row["athlete"]) == roster[row["cuff"]]
        assert row["clock_skew_s"] is None


async def publish(probe: MqttProbe, topic: str, payload: bytes, qos: int) -> None:
    """Publish as fast as the broker's receive maximum lets QoS 1 messages be in flight."""
    while True:
        try:
            probe.publish(topic, payload, qos=qos)
            return
        except OverflowError:  # gmqtt: every packet id is in flight; wait for PUBACKs
            await asyncio.sleep(PUBACK_WAIT_S)


def echoed_codes(watcher: MqttProbe) -> set[str]:
    return {json.loads(p)["code"] for msgs in watcher.messages.values() for p, _ in msgs}


def echo_size(echo: str) -> int:
    """Bytes of the original payload a `rejected` echo carries (UTF-8 text or base64)."""
    size = len(echo.encode())
    if size > REJECTED_ECHO_BYTES:
        return len(base64.b64decode(echo, validate=True))
    return size


async def count_stats(influxdb: InfluxDB1Server, db: str) -> int:
    rows = await asyncio.to_thread(influxdb.query, db, "SELECT count(received) FROM gateway_stats")
    return int(rows[0]["count"]) if rows else 0


async def _at_least(value: Any, expected: int) -> bool:
    return bool((await value) >= expected)


async def _eq(value: Any, expected: Any) -> bool:
    return bool((await value) == expected)


def athletes() -> list[str]:
    """The hostile athlete names of the corpus."""
    out = []
    for h in CORPUS:
        if h.name.startswith("athlete-") and h.expect == "accept":
            out.append(json.loads(h.payload)["athlete"])
    return out


def influxql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def test_hostile_athlete_names_round_trip_through_influxdb_tags(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    names = athletes()
    assert len(names) >= 25
    # a name staff typed reaches readings through the roster (a device cannot mint athletes,
    # nor can an assignment: `unknown_athlete`); ids are checked, a roster cuff's athlete of a
    # team without an athletes table is any text: one cuff per hostile name
    hostile = {"th": {"cuffs": {f"h{i}": {"athlete": name, "limb": "left_leg"}
                                for i, name in enumerate(names)}}}
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path,
                                teams={**TEAMS, **hostile})
    now = int(time.time() * 1000)
    async with running_gateway(settings) as gw, MqttProbe(mosquitto.host, mosquitto.port) as dev:
        for seq in range(len(names)):
            dev.publish(f"{topic_root}/th/cuffs/h{seq}/telemetry",
                        valid_reading(seq, now - 5000 + seq))
        await wait_for(lambda: _eq(count_team(influxdb, influx_db, "th"), len(names)),
                       what="every hostile-named reading stored")
        assert gw.counters.internal_errors == 0
        assert gw.counters.rejected == 0
    stored = [lineproto.normalize_name(name) for name in names]
    for name, tag in zip(names, stored, strict=True):
        # only what line protocol cannot carry changes (a line break, an ambiguous backslash)
        if not {"\n", "\r", "\\"} & set(name):
            assert tag == name
    rows = await asyncio.to_thread(influxdb.query, influx_db,
                                   'SELECT seq FROM cuff_telemetry GROUP BY "athlete"')
    assert sorted((int(r["seq"]), r["athlete"]) for r in rows) == list(enumerate(stored))
    # InfluxQL's scanner ends a string literal at NUL: those names are found by GROUP BY only
    for tag in {t for t in stored if "\x00" not in t}:
        rows = await asyncio.to_thread(
            influxdb.query, influx_db,
            f"SELECT seq, pressure_mmhg FROM cuff_telemetry WHERE athlete = "
            f"{influxql_string(tag)} GROUP BY \"athlete\", \"cuff\", \"team\"",
        )
        seqs = [seq for seq, other in enumerate(stored) if other == tag]
        assert [(r["athlete"], r["cuff"], r["team"], int(r["seq"])) for r in rows] == [
            (tag, f"h{seq}", "th", seq) for seq in seqs], repr(tag)
        for row in rows:
            assert row["pressure_mmhg"] == valid_reading(int(row["seq"]), 0)["pressure_mmhg"]


async def test_hostile_retained_alerts_at_start_up_neither_crash_nor_lose_readings(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    settings = settings_against(mosquitto, influxdb, influx_db, topic_root, tmp_path,
                                teams=TEAMS, alerts={"escalate_after_s": 1.0})
    over = f"{topic_root}/t1/alerts/c2/over_pressure"
    now = int(time.time() * 1000)
    async with MqttProbe(mosquitto.host, mosquitto.port) as rogue:
        # what a rogue client can leave retained where the gateway reads its open alerts back
        for h in CORPUS:
            if h.kind == "alert":
                rogue.publish(kind_topic(topic_root, "t1", "c1", "alert", h.name), h.payload,
                              retain=True)
        await rogue.subscribe(f"{topic_root}/t1/alerts/#")
        await wait_for(lambda: len(rogue.messages) == sum(h.kind == "alert" for h in CORPUS),
                       what="the hostile alerts retained")
        async with running_gateway(settings) as gw:
            # a live critical alert on c2 escalates: the timers run over the restored alerts
            rogue.publish(f"{topic_root}/t1/cuffs/c2/telemetry",
                          {**valid_reading(1, now), "pressure_mmhg": 320.0})
            await wait_for(lambda: any(a.get("escalated") for a in rogue.json(over)),
                           what="c2's over_pressure escalated")
            # a reading on c1 resolves whatever was restored there
            rogue.publish(f"{topic_root}/t1/cuffs/c1/telemetry", valid_reading(1, now))
            await wait_for(lambda: _eq(count_all(influxdb, influx_db), 2),
                           what="both readings stored")
            assert gw.counters.internal_errors == 0, internal_errors(caplog)
            assert gw.mqtt.connected.is_set()
            assert gw.pipeline.snapshot().rejected_batches == 0


async def count_all(influxdb: InfluxDB1Server, db: str) -> int:
    rows = await asyncio.to_thread(influxdb.query, db, "SELECT count(seq) FROM cuff_telemetry")
    return int(rows[0]["count"]) if rows else 0
