"""Safety alerts (SPEC §2 alert topics, §3, §4 `alert`) through a running gateway.

Real Mosquitto, InfluxDB 1.x and local push receivers (aiohttp for json:// and ntfy://,
aiosmtpd for mailto://, a TCP server that never answers). Timers are shortened by config;
every wait polls for an outcome, no assertion depends on how long something took.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import gmqtt
import pytest
from pydantic import SecretStr

from alerts.push import PushDispatcher
from core.acktoken import verify
from core.config import AckSettings
from tests.support.alert_flow import (
    arm_team,
    now_ms,
    published,
    reading,
    settings_for,
    states,
)
from tests.support.gateway_process import GatewayProcess, run_cuffwatch, write_config
from tests.support.harness import MqttProbe, influx_v1, running_gateway, wait_for
from tests.support.receivers import HangingServer, HttpReceiver, MailBox, smtp_server
from tests.support.servers import InfluxDB1Server, MosquittoServer, free_port

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
ISO_MS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ALERT_KEYS = {
    "id", "team", "cuff", "athlete", "limb", "kind", "severity", "state", "value", "threshold",
    "unit", "message", "started_at", "updated_at", "acknowledged_by", "escalated",
}


def iso(ms: int) -> str:
    """Independent of alerts.model: RFC 3339 UTC with milliseconds and Z."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def epoch_ms(text: str) -> int:
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


# -- MQTT ------------------------------------------------------------------------------------------


async def watch_alerts(probe: MqttProbe, root: str) -> None:
    """Subscribe to every alert topic with retain-as-published (so the recorded retain flag is
    the gateway's own) and wait until the subscription is live (the retained gateway status)."""
    probe.client.subscribe([
        gmqtt.Subscription(f"{root}/+/alerts/#", qos=1, retain_as_published=True),
        gmqtt.Subscription(f"{root}/_gateway/+/status", qos=1),
    ])
    await wait_for(lambda: any("/_gateway/" in t for t in probe.messages), what="gateway status")


def alert_topics(probe: MqttProbe) -> set[str]:
    return {t for t in probe.messages if "/alerts/" in t and not t.endswith("/ack")}


async def nothing_retained(mosquitto: MosquittoServer, root: str, topic: str) -> bool:
    """A new subscriber gets no retained message on `topic` (retained status as the barrier)."""
    async with MqttProbe(mosquitto.host, mosquitto.port) as late:
        await late.subscribe(topic)
        await late.subscribe(f"{root}/_gateway/+/status")  # its retained message comes after
        await wait_for(lambda: any("/_gateway/" in t for t in late.messages), what="barrier")
        return topic not in late.messages


# -- receivers (`receiver`, `hanging`: tests/integration/conftest.py) ------------------------------


@pytest.fixture
async def mailbox() -> AsyncIterator[MailBox]:
    async with smtp_server("cuffwatch", "smtpSecret77") as box:
        yield box


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    """Gateway processes a test starts; any still running at the end are killed."""
    procs: list[GatewayProcess] = []
    yield procs
    for p in procs:
        p.kill()


ALERT_FIELDS = ("state", "value", "threshold", "message", "alert_id", "acknowledged_by")


async def alert_rows(influxdb: InfluxDB1Server, db: str, where: str = "") -> list[dict[str, Any]]:
    """`alert` points, oldest first; a field the point lacks is None (as InfluxQL shows it)."""
    rows = await asyncio.to_thread(
        influxdb.query, db, f'SELECT * FROM "alert" {where} GROUP BY *')
    rows = [dict.fromkeys(ALERT_FIELDS) | r for r in rows]
    return sorted(rows, key=lambda r: (r["time"], r["cuff"]))


def as_row(a: dict[str, Any]) -> dict[str, Any]:
    """The `alert` point SPEC §4 stores for a published alert object."""
    return {
        "time": epoch_ms(a["updated_at"]),
        "team": a["team"], "cuff": a["cuff"], "athlete": a["athlete"], "kind": a["kind"],
        "severity": a["severity"],
        "state": a["state"], "value": a["value"], "threshold": a["threshold"],
        "message": a["message"], "alert_id": a["id"], "acknowledged_by": a["acknowledged_by"],
    }


# -- 1. raise, retained, resolve, cleared ----------------------------------------------------------


async def test_hard_ceiling_raises_a_retained_critical_alert_and_resolution_clears_it(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1")})
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    ts0 = now_ms() - 20_000  # live (< alert_max_age_s), in device time we control
    async with running_gateway(settings) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(tel, reading(0, ts0, 140.0, 10.0))  # within every limit
        dev.publish(tel, reading(1, ts0 + 1000, 262.0, 11.0))  # arm hard ceiling: 250
        await wait_for(lambda: published(watch, topic), what="over_pressure raised")
        [(raised, retained)] = published(watch, topic)
        assert retained
        assert raised is not None
        assert set(raised) == ALERT_KEYS
        assert ULID_RE.match(raised["id"])
        assert raised == {
            "id": raised["id"], "team": "t1", "cuff": "c1", "athlete": "a-1", "limb": "left_arm",
            "kind": "over_pressure", "severity": "critical", "state": "firing",
            "value": 262.0, "threshold": 250.0, "unit": "mmHg",
            "message": "a-1 left_arm cuff at 262 mmHg (limit 250)",
            "started_at": iso(ts0 + 1000), "updated_at": iso(ts0 + 1000),
            "acknowledged_by": None, "escalated": False,
        }
        assert isinstance(raised["value"], float)
        assert isinstance(raised["threshold"], float)
        assert ISO_MS_RE.match(raised["started_at"])
        assert ISO_MS_RE.match(raised["updated_at"])
        assert alert_topics(watch) == {topic}  # the in-range reading raised nothing

        # a subscriber arriving after the fact gets the open alert, retained
        async with MqttProbe(mosquitto.host, mosquitto.port) as late:
            await late.subscribe(topic)
            await wait_for(lambda: late.messages.get(topic), what="retained alert")
            assert late.messages[topic] == [(watch.messages[topic][0][0], True)]

        # back in range, but the ceiling reading is < 5 s of device time old: still open
        for i in range(2, 6):
            dev.publish(tel, reading(i, ts0 + i * 1000, 150.0, 10.0 + i))
        await wait_for(lambda: gw.counters.accepted == 6, what="6 readings accepted")
        assert states(watch, topic) == ["firing"]
        # 5 s of device time after the ceiling reading (5 s mean 168.7 ≤ 180): resolved
        dev.publish(tel, reading(6, ts0 + 6000, 150.0, 16.0))
        await wait_for(lambda: len(published(watch, topic)) == 3, what="resolved + cleared")
        (_, _), (resolved, resolved_retained), (cleared, cleared_retained) = published(watch, topic)
        assert resolved == {**raised, "state": "resolved", "updated_at": iso(ts0 + 6000)}
        assert not resolved_retained  # the resolution itself is not retained …
        assert (cleared, cleared_retained) == (None, True)  # … the empty retained one clears it
        assert await nothing_retained(mosquitto, topic_root, topic)


async def test_alerts_have_their_own_connection_and_outlast_its_loss(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    # Alerts leave on a connection of their own (not queued behind the data connection's
    # PUBACKs). Kicked off the broker (another client takes its id), the lane reconnects
    # and an alert raised meanwhile still arrives, and a retained topic ends in its latest
    # state.
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1", "c2")})
    ts0 = now_ms() - 20_000
    async with running_gateway(settings) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        await wait_for(lambda: gw.delivery.on_lane, what="alerts on their lane")
        assert gw.alert_link.client._client_id != gw.mqtt.client._client_id
        first = f"{topic_root}/t1/alerts/c1/over_pressure"
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(0, ts0, 262.0, 10.0))
        await wait_for(lambda: states(watch, first) == ["firing"], what="first alert")

        intruder = gmqtt.Client(gw.alert_link.client._client_id)
        await intruder.connect(mosquitto.host, mosquitto.port)  # the broker drops the lane
        await wait_for(lambda: not gw.alert_link.connected.is_set(), what="lane dropped")
        second = f"{topic_root}/t1/alerts/c2/over_pressure"
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry", reading(0, ts0, 262.0, 10.0))
        await wait_for(lambda: gw.counters.accepted == 2, what="second reading accepted")
        await intruder.disconnect()
        # the broker lost the lane's session with the takeover: the lane republishes the
        # latest state of every alert topic
        await wait_for(lambda: states(watch, second) == ["firing"], timeout=30,
                       what="the alert raised while the lane was down")
        assert gw.alert_link.connected.is_set()
        assert gw.mqtt.connected.is_set()  # the data connection was never touched
        for i in range(1, 7):  # the first cuff back in range for 5 s: resolved, cleared
            dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry",
                        reading(i, ts0 + i * 1000, 150.0, 10.0 + i))
        await wait_for(lambda: states(watch, first)[-2:] == ["resolved", None],
                       what="first alert resolved")
        assert await nothing_retained(mosquitto, topic_root, first)


# -- 2. acknowledgement via the ack topic and the CLI, then refire -------------------------------


async def test_ack_by_topic_and_by_cli_silences_then_the_alert_fires_again(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1")},
                            alerts={"ack_silence_s": 1.0})
    config = write_config(tmp_path / "cuffwatch.toml", settings)
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    async with running_gateway(settings), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(0, now_ms(), 270.0, 30.0))
        await wait_for(lambda: states(watch, topic) == ["firing"], what="raised")

        dev.publish(f"{topic}/ack", {"by": "physio"})
        await wait_for(lambda: len(published(watch, topic)) >= 2, what="acknowledged")
        # no reading since: the condition still holds, so the silence ends in a new firing
        await wait_for(lambda: len(published(watch, topic)) >= 3, what="fires again")

        cli = await asyncio.to_thread(
            run_cuffwatch, "ack", "-c", str(config), "--team", "t1", "--cuff", "c1",
            "--kind", "over_pressure", "--by", "coach",
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == ("acknowledged: over_pressure on t1/c1 by coach "
                                      "(a-1 left_arm cuff at 270 mmHg (limit 250))")
        await wait_for(lambda: len(published(watch, topic)) >= 5, what="CLI ack, then refire")

        msgs = published(watch, topic)
        alerts = [a for a, _ in msgs]
        assert all(a is not None for a in alerts)
        assert [a["state"] for a in alerts if a] == [
            "firing", "acknowledged", "firing", "acknowledged", "firing"]
        assert all(retained for _, retained in msgs)  # open the whole time: retained
        assert len({a["id"] for a in alerts if a}) == 1  # one alert, never a new one
        first, ack1, _refire1, ack2, _refire2 = (a for a in alerts if a)
        assert ack1["acknowledged_by"] == "physio"
        assert ack2["acknowledged_by"] == "coach"
        assert all(a["severity"] == "critical" for a in alerts if a)
        assert all(a["started_at"] == first["started_at"] for a in alerts if a)


# -- 3. escalation --------------------------------------------------------------------------------


async def test_unacknowledged_critical_escalates_to_the_escalation_route_only(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, receiver: HttpReceiver,
) -> None:
    routes = [{"url": receiver.url("/staff")},
              {"url": receiver.url("/lead"), "escalation": True}]
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1", routes=routes)},
                            alerts={"escalate_after_s": 1.0})
    push = PushDispatcher.from_settings(settings)
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    ts0 = now_ms() - 5000  # so that a deflation "now" is 5 s of device time later
    async with running_gateway(settings, notifiers=[push]), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(tel, reading(0, ts0, 280.0, 40.0))
        await wait_for(lambda: len(published(watch, topic)) == 2, what="raised, then escalated")
        (raised, r1), (escalated, r2) = published(watch, topic)
        assert raised is not None
        assert escalated is not None
        assert (raised["state"], raised["escalated"], r1) == ("firing", False, True)
        assert escalated == {**raised, "escalated": True, "updated_at": escalated["updated_at"]}
        assert r2  # re-published retained
        await wait_for(lambda: receiver.titles("/lead") and receiver.titles("/staff"),
                       what="pushes to both routes")
        stats = push.stats()
        assert stats["t1/0-json"].queue_depth == 0  # the escalation was never queued for staff
        assert receiver.titles("/staff") == ["Pressure too high — a-1"]
        assert receiver.titles("/lead") == ["Escalated: pressure too high — a-1"]

        dev.publish(tel, reading(1, max(now_ms(), ts0 + 5000), 0.0, 0.0, inflated=False))
        await wait_for(lambda: len(receiver.titles("/staff")) == 2
                       and len(receiver.titles("/lead")) == 2, what="resolution pushed")
        await wait_for(lambda: len(published(watch, topic)) == 4, what="resolved + cleared")
        assert receiver.titles("/staff")[1] == "Resolved: pressure too high — a-1"
        assert receiver.titles("/lead")[1] == "Resolved: pressure too high — a-1"
        # what ended it, not the 280 mmHg that raised it
        assert receiver.at("/staff")[1].body["message"].startswith(
            "Left arm: pressure back within limits\nLasted ")
        assert states(watch, topic) == ["firing", "firing", "resolved", None]


async def test_pushes_of_a_firing_alert_carry_a_signed_ack_link(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, receiver: HttpReceiver,
) -> None:
    """[ack] on (issue 16): the raised and the escalated push each carry their own link,
    naming the alert as MQTT has it and the route's person; the resolution carries none."""
    routes = [{"url": receiver.url("/staff"), "person": "Sam (physio)"},
              {"url": receiver.url("/lead"), "escalation": True}]
    secret = "e2e-ack-secret-0123456789abcdef-0123"
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1", routes=routes)},
                            alerts={"escalate_after_s": 1.0})
    public = "https://club.example.org/cuffwatch"
    settings = settings.model_copy(update={"ack": AckSettings(
        public_url=public, secret=SecretStr(secret), port=0, link_ttl_s=600)})
    push = PushDispatcher.from_settings(settings)
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    ts0 = now_ms() - 5000
    async with running_gateway(settings, notifiers=[push]), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(tel, reading(0, ts0, 280.0, 40.0))
        await wait_for(lambda: receiver.at("/staff") and receiver.at("/lead"),
                       what="raised and escalated pushes")
        sent = time.time()
        dev.publish(tel, reading(1, max(now_ms(), ts0 + 5000), 0.0, 0.0, inflated=False))
        await wait_for(lambda: len(receiver.at("/staff")) == 2 and len(receiver.at("/lead")) == 2,
                       what="resolution pushed")
    (firing, _), *_ = published(watch, topic)
    assert firing is not None
    (staff, staff_done), (lead, lead_done) = receiver.at("/staff"), receiver.at("/lead")
    for push_, person in ((staff, "Sam (physio)"), (lead, "")):
        link = push_.body["ack_url"]
        assert push_.body["message"].endswith(f"\nAcknowledge: {link}")
        assert link.startswith(f"{public}/ack/")
        claims = verify(secret.encode(), link.removeprefix(f"{public}/ack/"), now=time.time())
        assert (claims.alert_id, claims.team, claims.cuff, claims.kind, claims.person) == (
            firing["id"], "t1", "c1", "over_pressure", person)
        assert sent - 30 <= claims.expires_at - 600 <= sent
    for done in (staff_done, lead_done):
        assert "ack_url" not in done.body
        assert "/ack/" not in done.body["message"]


# -- 4. `alert` points in InfluxDB -----------------------------------------------------------------


async def test_every_state_change_is_an_alert_point_in_influxdb(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    teams = {"t1": {"cuffs": {"c1": {"athlete": "Jo \"J\" O'Neil, =x", "limb": "right_leg"}}}}
    settings = settings_for(mosquitto, topic_root, tmp_path, teams,
                            alerts={"ack_silence_s": 1.0}, influx=influx_v1(influxdb, influx_db))
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    ts0 = now_ms() - 6000
    async with running_gateway(settings), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(tel, reading(0, ts0, 312.5, 100.0))  # leg hard ceiling: 300
        await wait_for(lambda: states(watch, topic) == ["firing"], what="raised")
        dev.publish(f"{topic}/ack", {"by": "physio, \"PT\""})
        await wait_for(lambda: states(watch, topic) == ["firing", "acknowledged", "firing"],
                       what="acknowledged, then refired")
        dev.publish(tel, reading(1, now_ms(), 0.0, 0.0, inflated=False))  # deflated, now
        await wait_for(lambda: len(published(watch, topic)) == 5, what="resolved + cleared")
        changes = [a for a, _ in published(watch, topic) if a is not None]
        assert [a["state"] for a in changes] == ["firing", "acknowledged", "firing", "resolved"]

        expected = [as_row(a) for a in changes]
        await wait_for(lambda: _rows_are(alert_rows(influxdb, influx_db), len(expected)),
                       what="4 alert points")
    rows = await alert_rows(influxdb, influx_db)
    assert rows == expected
    # and, independently of the published objects:
    assert {r["alert_id"] for r in rows} == {changes[0]["id"]}
    assert [r["acknowledged_by"] for r in rows] == [None, 'physio, "PT"', 'physio, "PT"',
                                                     'physio, "PT"']
    assert rows[0]["time"] == ts0
    assert {(r["team"], r["cuff"], r["athlete"], r["kind"], r["severity"]) for r in rows} == {
        ("t1", "c1", "Jo \"J\" O'Neil, =x", "over_pressure", "critical")}
    assert {(r["value"], r["threshold"]) for r in rows} == {(312.5, 300.0)}
    assert rows[0]["message"] == "Jo \"J\" O'Neil, =x right_leg cuff at 312.5 mmHg (limit 300)"
    keys = await asyncio.to_thread(influxdb.query, influx_db, 'SHOW TAG KEYS FROM "alert"')
    assert {k["tagKey"] for k in keys} == {"team", "cuff", "athlete", "kind", "severity"}
    fields = await asyncio.to_thread(influxdb.query, influx_db, 'SHOW FIELD KEYS FROM "alert"')
    assert {f["fieldKey"]: f["fieldType"] for f in fields} == {
        "state": "string", "value": "float", "threshold": "float", "message": "string",
        "alert_id": "string", "acknowledged_by": "string"}


async def test_state_changes_stay_distinct_points_when_the_device_clock_lags(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path,
) -> None:
    """A cuff whose clock runs 10 s behind (accepted as is: within max_backlog_s, and live
    for alert_max_age_s): the alert is raised, acknowledged by staff, and resolved by the
    deflation, each a state change (SPEC §4: one `alert` point per state change)."""
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1")},
                            influx=influx_v1(influxdb, influx_db))
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    lag = 10_000
    ts0 = now_ms() - lag - 6000  # the ceiling reading, 6 s ago by a device clock 10 s behind
    async with running_gateway(settings), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(tel, reading(0, ts0, 260.0, 20.0))
        await wait_for(lambda: states(watch, topic) == ["firing"], what="raised")
        dev.publish(f"{topic}/ack", {"by": "physio"})
        await wait_for(lambda: states(watch, topic) == ["firing", "acknowledged"], what="acked")
        dev.publish(tel, [reading(i, ts0 + i * 1000, 150.0, 20.0 + i) for i in range(1, 6)]
                    + [reading(6, now_ms() - lag, 0.0, 0.0, inflated=False)])
        await wait_for(lambda: len(published(watch, topic)) == 4, what="resolved + cleared")
        changes = [a for a, _ in published(watch, topic) if a is not None]
        assert [a["state"] for a in changes] == ["firing", "acknowledged", "resolved"]
        await wait_for(lambda: _has_state(influxdb, influx_db, "resolved"), what="resolved stored")
    rows = await alert_rows(influxdb, influx_db)
    assert [r["state"] for r in rows] == ["firing", "acknowledged", "resolved"], (
        "one alert point per state change; updated_at of the three: "
        + ", ".join(a["updated_at"] for a in changes))


async def _has_state(influxdb: InfluxDB1Server, db: str, state: str) -> bool:
    return any(r["state"] == state for r in await alert_rows(influxdb, db))


async def _rows_are(rows: Awaitable[list[dict[str, Any]]], n: int) -> bool:
    return len(await rows) == n


# -- 5. pushes from a running gateway -------------------------------------------------------------


async def test_pushes_reach_json_ntfy_and_mail_and_a_dead_route_delays_nothing(
    *, mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, receiver: HttpReceiver,
    hanging: HangingServer, mailbox: MailBox,
) -> None:
    """Written for a lock screen (SPEC §3): the configured names, the team's local time."""
    routes = [
        {"url": receiver.url("/staff")},  # min_severity warning (default)
        {"url": f"ntfy://127.0.0.1:{receiver.port}/cuffs-t1"},
        {"url": mailbox.url(), "min_severity": "critical"},
        {"url": receiver.url("/log"), "min_severity": "info"},
        # a read timeout far beyond the test: the connection hangs until the server closes it
        {"url": f"json://127.0.0.1:{hanging.port}/dead?rto=60", "min_severity": "info"},
    ]
    zone = "Australia/Sydney"  # far from UTC whenever the test runs
    team = arm_team("c1", "c2", routes=routes, name="Senior squad", timezone=zone,
                    athletes={"a-1": {"name": "Jamie Striker"},
                              "a-2": {}})  # a-2 is listed (issue 15) but has no name: its id
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": team})
    push = PushDispatcher.from_settings(settings)
    async with running_gateway(settings, notifiers=[push]), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)

        # info: only the info routes want it (the dead one takes it and hangs on it)
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry",
                    reading(0, now_ms(), 140.0, 5.0, battery_pct=10.0))
        await wait_for(lambda: receiver.titles("/log") and hanging.requests == 1,
                       what="battery_low pushed to the info routes")
        assert receiver.titles("/log") == ["Cuff battery low — a-2"]
        stats = push.stats()
        # submit() queues on every route at once: the warning routes never got it
        for label in ("t1/0-json", "t1/1-ntfy", "t1/2-mailto"):
            assert (stats[label].queue_depth, stats[label].sent) == (0, 0), label

        # critical: MQTT and every healthy route while the dead route's request still hangs
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(0, now_ms(), 290.0, 60.0))
        op = f"{topic_root}/t1/alerts/c1/over_pressure"
        await wait_for(lambda: published(watch, op) and receiver.titles("/staff")
                       and receiver.ntfy("cuffs-t1") and len(receiver.titles("/log")) == 2
                       and mailbox.envelopes, what="critical alert everywhere healthy")
        assert (hanging.requests, hanging.open) == (1, 1)  # still hanging, nothing answered
        assert push.stats()["t1/4-json"].sent == 0
        assert states(watch, op) == ["firing"]
        battery = published(watch, f"{topic_root}/t1/alerts/c2/battery_low")[0][0]
        critical = published(watch, op)[0][0]
        assert battery is not None
        assert critical is not None

    def local(alert: dict[str, Any]) -> str:  # independent of alerts.render
        return datetime.fromtimestamp(epoch_ms(alert["started_at"]) / 1000,
                                      tz=ZoneInfo(zone)).strftime("%H:%M")

    title = "Pressure too high — Jamie Striker"
    body = ("Left arm cuff at 290 mmHg, limit 250 mmHg\n"
            "Deflate the cuff now\n"
            f"Senior squad · since {local(critical)}")
    info = ("Left arm cuff battery at 10 %, limit 15 %\n"
            "Swap or charge the battery\n"
            f"Senior squad · since {local(battery)}")
    assert [(r.body["title"], r.body["message"]) for r in receiver.at("/staff")] == [(title, body)]
    assert [(r.body["title"], r.body["message"]) for r in receiver.at("/log")] == [
        ("Cuff battery low — a-2", info), (title, body)]
    [ntfy] = receiver.ntfy("cuffs-t1")
    assert (ntfy.body["title"], ntfy.body["message"]) == (title, body)
    assert ntfy.headers["X-Priority"] == "max"
    [mail] = mailbox.envelopes
    assert mail.rcpt_tos == ["staff@example.org"]
    assert [(subject, text.rstrip("\n")) for subject, text in mailbox.texts()] == [(title, body)]
    # the MQTT alert object keeps its own message (SPEC §3): pushes are separate
    assert critical["message"] == "a-1 left_arm cuff at 290 mmHg (limit 250)"


# -- 6. restart ------------------------------------------------------------------------------------


async def test_open_alert_survives_a_gateway_restart_and_resolves_with_its_id(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
    processes: list[GatewayProcess],
) -> None:
    port = free_port()
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1")},
                            health={"host": "127.0.0.1", "port": port})
    config = write_config(tmp_path / "cuffwatch.toml", settings)
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    ts0 = now_ms() - 6000
    first = await GatewayProcess(config, port, tmp_path / "gw1.log").started()
    processes.append(first)
    async with MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(tel, reading(0, ts0, 265.0, 30.0))
        await wait_for(lambda: states(watch, topic) == ["firing"], what="raised")
        [(raised, _)] = published(watch, topic)
        assert raised is not None
        first.kill()  # SIGKILL: the alert lives on only as the broker's retained message

        second = await GatewayProcess(config, port, tmp_path / "gw2.log").started()
        processes.append(second)
        await wait_for(lambda: _metric_is(second, "cuffwatch_alerts_open", 1.0),
                       what=f"retained alert re-adopted\n{second.log_tail()}")
        dev.publish(tel, reading(1, now_ms(), 0.0, 0.0, inflated=False))
        await wait_for(lambda: len(published(watch, topic)) == 3, what="resolved + cleared")
        (_, _), (resolved, resolved_retained), (cleared, _) = published(watch, topic)
        assert resolved is not None
        assert not resolved_retained
        assert cleared is None
        assert resolved["id"] == raised["id"]
        assert resolved["state"] == "resolved"
        assert resolved["started_at"] == raised["started_at"]
        assert (resolved["value"], resolved["threshold"]) == (265.0, 250.0)
        assert resolved["message"] == raised["message"]
        assert await nothing_retained(mosquitto, topic_root, topic)
        assert second.metric("cuffwatch_alerts_open") == 0.0
        assert await second.terminated() == 0


def _metric_is(proc: GatewayProcess, name: str, value: float) -> bool:
    return proc.metric(name) == value


# -- 7. backlog ------------------------------------------------------------------------------------


async def test_backlog_readings_raise_and_store_alerts_without_pushes(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, receiver: HttpReceiver,
) -> None:
    routes = [{"url": receiver.url("/staff"), "min_severity": "info"},
              {"url": receiver.url("/lead"), "escalation": True}]
    settings = settings_for(mosquitto, topic_root, tmp_path,
                            {"t1": arm_team("c1", "c2", routes=routes)},
                            alerts={"escalate_after_s": 0.5}, influx=influx_v1(influxdb, influx_db))
    push = PushDispatcher.from_settings(settings)
    old = now_ms() - 120_000  # older than alert_max_age_s (60), newer than max_backlog_s
    async with running_gateway(settings, notifiers=[push]), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(0, old, 275.0, 30.0))
        backlog = f"{topic_root}/t1/alerts/c1/over_pressure"
        await wait_for(lambda: published(watch, backlog), what="backlog alert published")
        # then a live one on another cuff: its pushes (and escalation) come after anything
        # the backlog alert would have caused, on the same route queues and the same ticks
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry", reading(0, now_ms(), 275.0, 30.0))
        live = f"{topic_root}/t1/alerts/c2/over_pressure"
        await wait_for(lambda: len(published(watch, live)) == 2, what="live raised + escalated")
        await wait_for(lambda: receiver.titles("/staff") and receiver.titles("/lead"),
                       what="live alert pushed")
        await wait_for(lambda: _rows_are(alert_rows(influxdb, influx_db, "WHERE cuff = 'c1'"), 1),
                       what="backlog alert stored")

        [(stored_alert, retained)] = published(watch, backlog)  # raised, retained, never escalated
        assert stored_alert is not None
        assert retained
        assert (stored_alert["state"], stored_alert["escalated"]) == ("firing", False)
        assert stored_alert["started_at"] == iso(old)
        assert receiver.titles("/staff") == ["Pressure too high — a-2"]
        assert receiver.titles("/lead") == ["Escalated: pressure too high — a-2"]
        assert [s.queue_depth for s in push.stats().values()] == [0, 0]
    [row] = await alert_rows(influxdb, influx_db, "WHERE cuff = 'c1'")
    assert row == as_row(stored_alert)


# -- 8. cuff_offline -------------------------------------------------------------------------------


async def test_silent_inflated_cuff_goes_offline_via_the_ticker_and_a_reading_resolves_it(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    settings = settings_for(mosquitto, topic_root, tmp_path,
                            {"t1": arm_team("c1", alerts={"stale_after_s": 1.0})})
    tel = f"{topic_root}/t1/cuffs/c1/telemetry"
    topic = f"{topic_root}/t1/alerts/c1/cuff_offline"
    async with running_gateway(settings), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(tel, reading(0, now_ms(), 150.0, 30.0))
        await wait_for(lambda: states(watch, topic) == ["firing"], what="cuff_offline raised")
        [(raised, retained)] = published(watch, topic)
        assert raised is not None
        assert retained
        assert (raised["severity"], raised["unit"], raised["threshold"]) == ("critical", "s", 1.0)
        assert raised["value"] >= 1.0
        assert raised["message"] == (
            f"a-1 left_arm cuff silent for {raised['value']:g} s while inflated (limit 1 s)")

        dev.publish(tel, reading(1, now_ms(), 150.0, 31.0))  # still inflated
        await wait_for(lambda: len(published(watch, topic)) >= 3, what="resolved + cleared")
        # silent again within reraise_after_s: the same alert reopens
        await wait_for(lambda: len(published(watch, topic)) >= 4, what="reopened")
        dev.publish(tel, reading(2, now_ms(), 0.0, 0.0, inflated=False))  # deflated: done
        await wait_for(lambda: len(published(watch, topic)) == 6, what="resolved again")
        msgs = published(watch, topic)
        assert [(a["state"] if a else None, r) for a, r in msgs] == [
            ("firing", True), ("resolved", False), (None, True),
            ("firing", True), ("resolved", False), (None, True)]
        assert {a["id"] for a, _ in msgs if a} == {raised["id"]}


async def test_offline_status_while_inflated_raises_cuff_offline_at_once(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    settings = settings_for(mosquitto, topic_root, tmp_path, {"t1": arm_team("c1", "c2")})
    topic = f"{topic_root}/t1/alerts/c1/cuff_offline"
    async with running_gateway(settings) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as watch:
        await watch_alerts(watch, topic_root)
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(0, now_ms(), 150.0, 30.0))
        dev.publish(f"{topic_root}/t1/cuffs/c2/telemetry",
                    reading(0, now_ms(), 0.0, 0.0, inflated=False))
        await wait_for(lambda: gw.counters.accepted == 2, what="readings accepted")
        # stale_after_s is 120 s: only the status can raise it now
        dev.publish(f"{topic_root}/t1/cuffs/c2/status", b"offline", retain=True)  # deflated
        dev.publish(f"{topic_root}/t1/cuffs/c1/status", b"offline", retain=True)  # inflated
        await wait_for(lambda: published(watch, topic), what="cuff_offline raised")
        [(raised, _)] = published(watch, topic)
        assert raised is not None
        assert (raised["state"], raised["severity"], raised["threshold"]) == (
            "firing", "critical", None)
        assert raised["message"].startswith("a-1 left_arm cuff went offline while inflated")
        assert alert_topics(watch) == {topic}  # the deflated cuff c2 raised nothing

        dev.publish(f"{topic_root}/t1/cuffs/c1/status", b"online", retain=True)
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(1, now_ms(), 150.0, 31.0))
        await wait_for(lambda: len(published(watch, topic)) == 3, what="resolved + cleared")
        assert states(watch, topic) == ["firing", "resolved", None]
