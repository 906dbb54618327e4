"""Log floods and forged log lines (issue #17 item 4) against a real `cuffwatch run` process.

Thousands of rejections from distinct made-up cuff ids write at most the rejection log's
budget of lines and a summary of the rest (gateway/metrics.py), while every one of them is
still counted; text from MQTT carrying newlines, NULs and line separators stays on its
record's line, escaped (core/logsafe.py, installed by `ops.cli.setup_logging`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path

import pytest

from gateway.metrics import REJECT_LOG_INTERVAL_S
from tests.support.gateway_process import GatewayProcess
from tests.support.harness import MqttProbe, gateway_settings, running_gateway, wait_for
from tests.support.roster import prescribed, roster
from tests.support.servers import MosquittoServer

# docs/contract.md: at most 100 rejection lines a minute in all; the contract's number, so
# that changing gateway.metrics.REJECT_LOG_BUDGET is seen to change the contract
BUDGET = 100
# c7b: no `c{i}` of the flood (x{i}/cuffs/c{i} must stay an unknown team, not a wrong one)
TEAMS = roster({"t1": {"c7": "a-17", "c7b": "a-18"}}, athletes={"t1": prescribed("a-17")})
FAKE_IDS = 3_000  # distinct made-up ids: 30 times the budget, sent in a second or two
PUBACK_WAIT_S = 0.005  # a publisher at the broker's receive maximum retries this often
FLOOD_WAIT_S = 90.0  # a bound for a loaded 2-core box, never a performance claim
# one record starts every line of the log: its time, then its level
RECORD_START = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S")
FORGED = "2026-12-07 00:00:00,000 CRITICAL FORGED"
# a retained assignment's athlete (≤ 64 chars): JSON "\n", "\u0000", "\r", "\u2028", "\u001b"
FORGED_ATHLETE = f"a\n{FORGED}\x00\r\u2028\x1b[2Jx"
# refused (no roster athlete has such a name), and quoted as it was sent in the rejection
FORGED_REFUSED = (f"unknown_athlete: athlete 'a\\n{FORGED}\\x00\\r\\u2028\\x1b[2Jx' is not "
                  "in team t1's roster")
# an ack's topic level, quoted in its rejection; Mosquitto refuses C0 controls in topic
# names, not a line separator
FORGED_KIND = f"k\u2028{FORGED}"
FORGED_KIND_REJECTED = f"invalid_status: no alert kind k\\u2028{FORGED}"
SUMMARY = re.compile(r"rejections not logged over the budget .*: (\d+), from (\d+) distinct "
                     r"ids; by reason: (.*)$")


async def publish(probe: MqttProbe, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """QoS 1 as fast as the broker's receive maximum lets messages be in flight."""
    while True:
        try:
            probe.publish(topic, payload, retain=retain)
            return
        except OverflowError:  # gmqtt: every packet id is in flight; wait for PUBACKs
            await asyncio.sleep(PUBACK_WAIT_S)


async def rejected(gw: GatewayProcess, *reasons: str) -> dict[str, float]:
    metrics = await asyncio.to_thread(gw.metrics)
    return {reason: metrics.get(f'cuffwatch_messages_rejected_total{{reason="{reason}"}}', 0.0)
            for reason in reasons}


def log_lines(gw: GatewayProcess) -> list[str]:
    """The gateway's log, split wherever a reader or a shipper could see a line break."""
    lines = gw.log_path.read_text(errors="replace").splitlines()  # \r, \x1c-\x1e, \x85, U+2028…
    stray = [line for line in lines if not RECORD_START.match(line)]
    assert not stray, f"lines that are no record of their own: {stray[:5]}"
    return lines


async def test_a_flood_of_fake_ids_is_logged_within_budget_with_a_summary(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    settings = gateway_settings(broker_url=mosquitto.url, topic_root=topic_root,
                                spool_dir=tmp_path / "spool", teams=TEAMS)
    gw = await GatewayProcess.for_settings(settings, tmp_path).started()
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as probe:
            started = time.monotonic()
            for i in range(FAKE_IDS):
                # unknown cuffs of a known team and unknown teams, alternately: two reasons
                topic = (f"{topic_root}/t1/cuffs/fake{i}/telemetry" if i % 2 else
                         f"{topic_root}/x{i}/cuffs/c{i}/telemetry")
                await publish(probe, topic, b"{}")
                if i % 250 == 0:
                    await asyncio.sleep(0)
            every = {"unknown_cuff": FAKE_IDS / 2, "unknown_team": FAKE_IDS / 2}

            async def all_counted() -> bool:
                return await rejected(gw, *every) == every

            # counting is not bounded: every rejection is in /metrics
            await wait_for(all_counted, timeout=FLOOD_WAIT_S, what=f"{FAKE_IDS} rejections counted")
            elapsed = time.monotonic() - started
        assert await gw.terminated() == 0  # the last summary comes as it stops
    finally:
        gw.kill()

    lines = log_lines(gw)
    intervals = int(elapsed // REJECT_LOG_INTERVAL_S) + 1  # of the budget, the flood spans
    logged = {reason: sum(f": {reason}: " in line and " rejected from " in line for line in lines)
              for reason in every}
    assert 0 < sum(logged.values()) <= BUDGET * intervals, (logged, intervals)
    spent = [line for line in lines if "rejection log budget spent" in line]
    assert 1 <= len(spent) <= intervals
    summaries = [m for line in lines if (m := SUMMARY.search(line))]
    assert 1 <= len(summaries) <= intervals, summaries
    # every rejection is in a line of its own or in a summary: ids are distinct, so the
    # per-cuff limit held none back
    held = dict.fromkeys(every, 0)
    for m in summaries:
        assert m.group(1) == m.group(2)  # as many ids as rejections
        for part in m.group(3).split(", "):
            reason, n = part.split(" ")
            held[reason] += int(n)
    assert {r: logged[r] + held[r] for r in every} == every
    # the flood's warnings (not start-up ones, e.g. `cuffwatch: team t1: no push route`)
    warnings = [line for line in lines if " WARNING cuffwatch.gateway: " in line]
    assert len(warnings) <= (BUDGET + 2) * intervals, len(warnings)


async def test_text_from_mqtt_cannot_forge_a_log_line(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    settings = gateway_settings(broker_url=mosquitto.url, topic_root=topic_root,
                                spool_dir=tmp_path / "spool", teams=TEAMS)
    gw = await GatewayProcess.for_settings(settings, tmp_path).started()
    try:
        async with MqttProbe(mosquitto.host, mosquitto.port) as probe:
            assignment = f"{topic_root}/t1/cuffs/c7/assignment"
            await publish(probe, assignment, json.dumps({"athlete": FORGED_ATHLETE}).encode(),
                          retain=True)
            # on another cuff: each cuff's rejections are logged once a minute
            await publish(probe, f"{topic_root}/t1/alerts/c7b/{FORGED_KIND}/ack", b"")

            async def both_logged() -> bool:
                text = gw.log_path.read_text(errors="replace")
                return "unknown_athlete" in text and "no alert kind" in text

            await wait_for(both_logged, what="the assignment and the rejected ack logged")
            await publish(probe, assignment, b"", retain=True)  # leave no retained message
            await wait_for(lambda: "cleared" in gw.log_path.read_text(errors="replace"),
                           what="the assignment cleared")
        assert await gw.terminated() == 0
    finally:
        gw.kill()

    lines = log_lines(gw)
    assert not any(line.startswith(FORGED) for line in lines)
    assert "\x00" not in gw.log_path.read_text(errors="replace")
    [refused] = [line for line in lines if "unknown_athlete" in line]
    assert f"WARNING cuffwatch.gateway: rejected from t1/c7: {FORGED_REFUSED}" in refused, refused
    [ack] = [line for line in lines if "no alert kind" in line]
    assert ack.endswith(f"WARNING cuffwatch.gateway: rejected from t1/c7b: {FORGED_KIND_REJECTED}")


async def test_the_summary_comes_on_a_timer_once_the_interval_is_over(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # in process, with a clock the test moves on: the flood stops, the gateway keeps running,
    # and its timer, not a later rejection nor the shutdown, logs the summary
    caplog.set_level(logging.WARNING, logger="cuffwatch.gateway")
    skew_s = [0.0]
    settings = gateway_settings(broker_url=mosquitto.url, topic_root=topic_root,
                                spool_dir=tmp_path / "spool", teams=TEAMS)
    async with (running_gateway(settings, clock=lambda: time.time() + skew_s[0]) as gw,
                MqttProbe(mosquitto.host, mosquitto.port) as probe):
        for i in range(BUDGET + 50):
            await publish(probe, f"{topic_root}/t1/cuffs/fake{i}/telemetry", b"{}")
        await wait_for(lambda: gw.counters.rejected == BUDGET + 50, what="rejections counted")
        assert not [r for r in caplog.records if "rejections not logged" in r.getMessage()]
        skew_s[0] = REJECT_LOG_INTERVAL_S + 1
        summary = await wait_for(
            lambda: [r.getMessage() for r in caplog.records
                     if "rejections not logged" in r.getMessage()],
            what="the summary")
        assert summary[0].endswith(": 50, from 50 distinct ids; by reason: unknown_cuff 50")
