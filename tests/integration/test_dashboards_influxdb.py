"""Dashboards as code (SPEC §5): every query of every dashboard against a real InfluxDB 1.x,
with Grafana's macros and variables expanded as its InfluxDB datasource does.

Layout, SDK round trips, provisioning: tests/unit/test_dashboards.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.config import load_settings
from dashboards.build import dashboard_files
from ingest.lineproto import line
from tests.support.dashboard_json import (
    every_query,
    example_boards,
    example_settings,
    panel,
    target,
    variable,
)
from tests.support.lineproto_ref import alert_point
from tests.support.servers import InfluxDB1Server

HOSTILE = 'o\'brien "x" /.*|(a)'  # quotes, a regex and the regex delimiter in one name


def ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return round(moment.timestamp() * 1000)


# -- Grafana's side: macros and variables as Grafana's InfluxDB datasource expands them -----------


_REGEX_SPECIALS = re.compile(r"[\\^$*+?.()|\[\]{}/]")  # @grafana/data escapeRegex


def escape_regex(value: str) -> str:
    """Grafana's escapeRegex: a backslash before every regex special and `/`."""
    return _REGEX_SPECIALS.sub(lambda m: "\\" + m.group(0), value)


def _duration(text: str) -> timedelta:
    number, unit = int(text[:-1]), text[-1]
    return {
        "s": timedelta(seconds=number),
        "m": timedelta(minutes=number),
        "h": timedelta(hours=number),
        "d": timedelta(days=number),
    }[unit]


@dataclass(frozen=True)
class Grafana:
    """A dashboard's time range, `$__interval` and variable values at query time."""

    start: datetime
    end: datetime
    interval: str
    variables: dict[str, list[str]] = field(default_factory=dict)
    # A variable's custom all value, used unescaped when its value is All ($__all).
    all_values: dict[str, str] = field(default_factory=dict)

    def expand(self, query: str, time_from: str | None = None) -> str:
        """The query as Grafana sends it: macros, `${v:regex}` and `$v` replaced."""
        start = self.end - _duration(time_from) if time_from else self.start
        text = query.replace("$timeFilter", f"time >= {ms(start)}ms and time <= {ms(self.end)}ms")
        text = text.replace("$__interval", self.interval)

        def regex(m: re.Match[str]) -> str:
            if self.variables[m.group(1)] == ["$__all"]:
                return self.all_values[m.group(1)]
            values = [escape_regex(v) for v in self.variables[m.group(1)]]
            return values[0] if len(values) == 1 else "(" + "|".join(values) + ")"

        def plain(m: re.Match[str]) -> str:
            (value,) = self.variables[m.group(1) or m.group(2)]
            return value

        text = re.sub(r"\$\{(\w+):regex\}", regex, text)
        text = re.sub(r"\$\{(\w+)\}|\$([A-Za-z_]\w*)", plain, text)
        assert not re.search(r"\$[\w{]", text), text
        return text

    def with_vars(self, **values: list[str]) -> Grafana:
        """A copy with some variables set to other values."""
        return Grafana(
            self.start, self.end, self.interval, self.variables | values, self.all_values
        )

    def with_all(self, model: dict[str, Any], name: str) -> Grafana:
        """A copy with `name` set to All, as the dashboard `model` defines it."""
        all_values = self.all_values | {name: variable(model, name)["allValue"]}
        return Grafana(
            self.start, self.end, self.interval, self.variables | {name: ["$__all"]}, all_values
        )


@dataclass(frozen=True)
class Frame:
    """One series of a result: its GROUP BY tags and its rows as dicts."""

    tags: dict[str, str]
    rows: list[dict[str, Any]]


def run(influxdb: InfluxDB1Server, db: str, query: str) -> list[Frame]:
    """Run InfluxQL on the real server; one Frame per series (an error fails the test)."""
    result = influxdb.query_raw(db, query)["results"][0]
    return [
        Frame(s.get("tags", {}), [dict(zip(s["columns"], v, strict=True)) for v in s["values"]])
        for s in result.get("series", [])
    ]


def by_tag(frames: list[Frame], tag: str, column: str) -> dict[tuple[str, int], Any]:
    """{(tag value, time ms): column value} over every frame."""
    return {(f.tags[tag], r["time"]): r[column] for f in frames for r in f.rows}


# -- the dashboards under test --------------------------------------------------------------------


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    """Every generated dashboard of the example, by its path under dashboards/."""
    return example_boards()


# -- known data -----------------------------------------------------------------------------------


H0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday: history days and weeks start here


DAY = timedelta(days=1)


L0 = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)  # the live window [L0, L0 + 15 min]


G0 = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)  # the gateway window [G0, G0 + 5 min]


GATEWAY_POINTS = 30


# (athlete, cuff, limb, start, duration_s, time_in_band_pct): team t1's finished bouts.
BOUTS = [
    ("a-17", "c7", "left_leg", H0 + timedelta(hours=9), 300.0, 90.0),
    ("a-17", "c7", "left_leg", H0 + timedelta(hours=10), 420.0, 80.0),
    ("a-17", "c7", "left_leg", H0 + timedelta(hours=11), 600.0, 70.0),
    ("a-17", "c7", "left_leg", H0 + DAY + timedelta(hours=9), 540.0, 60.0),
    ("a-17", "c7", "left_leg", H0 + DAY + timedelta(hours=10), 660.0, 100.0),
    ("a-17", "c7", "left_leg", H0 + 7 * DAY + timedelta(hours=9), 1200.0, 50.0),
    ("a-23", "c8", "right_arm", H0 + timedelta(hours=9), 900.0, 95.0),
    (HOSTILE, "c9", "left_arm", H0 + timedelta(hours=12), 240.0, 40.0),
    (HOSTILE, "c9", "left_arm", H0 + timedelta(hours=13), 360.0, 60.0),
    # Not in the example's configuration: only "All" ($athlete's all value) finds it. A
    # legal leg bout past the arm limit (issue 15: it was painted red).
    ("a-40", "c10", "left_leg", H0 + 2 * DAY + timedelta(hours=9), 1000.0, 85.0),
    # Summer (BST, UTC+1): 23:30 UTC on Tuesday 1 July is 00:30 on Wednesday 2 July in
    # London, t1's zone, in the week that began Monday 30 June 00:00 BST.
    ("a-17", "c7", "left_leg", datetime(2025, 7, 1, 23, 30, tzinfo=UTC), 480.0, 75.0),
]


# (team, athlete, cuff, kind, severity, state, alert_id, at): one stored alert change.
AlertRow = tuple[str, str, str, str, str, str, str, datetime]


HIST = H0 + timedelta(hours=9, minutes=10)


MINUTE = timedelta(minutes=1)


ALERTS: list[AlertRow] = [
    # History: A1 changes three times on day 0 but is one alert.
    ("t1", "a-17", "c7", "over_time", "warning", "firing", "A1", HIST),
    ("t1", "a-17", "c7", "over_time", "critical", "firing", "A1", HIST + 5 * MINUTE),
    ("t1", "a-17", "c7", "over_time", "critical", "resolved", "A1", HIST + 6 * MINUTE),
    ("t1", "a-17", "c7", "over_pressure", "warning", "firing", "A2", HIST + 60 * MINUTE),
    ("t1", "a-17", "c7", "over_time", "warning", "firing", "A3", HIST + DAY),
    ("rehab", "p-01", "r1", "over_time", "warning", "firing", "R1", HIST),
    # Live: L0 was raised 2 h before the window and is still open; L2 resolved in it.
    ("t1", "a-17", "c7", "sensor_fault", "warning", "firing", "L0", L0 - 120 * MINUTE),
    ("t1", "a-17", "c7", "over_time", "warning", "firing", "L1", L0 + MINUTE),
    ("t1", "a-17", "c7", "over_time", "critical", "firing", "L1", L0 + 2 * MINUTE),
    ("t1", "a-23", "c8", "battery_low", "info", "firing", "L2", L0 + MINUTE),
    ("t1", "a-23", "c8", "battery_low", "info", "resolved", "L2", L0 + 3 * MINUTE),
    ("rehab", "p-01", "r1", "over_time", "warning", "firing", "R2", L0 + MINUTE),
]


def _alert(row: AlertRow) -> str:
    team, athlete, cuff, kind, severity, state, alert_id, at = row
    return alert_point(team, athlete, cuff, kind=kind, severity=severity, state=state,
                       alert_id=alert_id, ts_ms=ms(at), message=f"{athlete} {kind} {state}")


def _telemetry(
    who: tuple[str, str, str, str], at: datetime, pressure: float, target: float, elapsed: float
) -> str:
    team, athlete, cuff, limb = who
    return line(
        "cuff_telemetry",
        [("team", team), ("cuff", cuff), ("athlete", athlete), ("limb", limb)],
        [
            ("pressure_mmhg", pressure),
            ("target_mmhg", target),
            ("elapsed_s", elapsed),
            ("inflated", elapsed > 0),
        ],
        ms(at),
    )


def seed_lines() -> list[str]:
    """Every point the dashboard tests query, as line protocol (ms)."""
    lines = [
        line(
            "occlusion_bout",
            [("team", "t1"), ("cuff", cuff), ("athlete", athlete), ("limb", limb)],
            [
                ("duration_s", duration),
                ("time_in_band_pct", band),
                ("mean_pressure_mmhg", 130.0),
                ("target_mmhg", 132.0),
                ("alerts", 0),
            ],
            ms(start),
        )
        for athlete, cuff, limb, start, duration, band in BOUTS
    ]
    lines += [
        line(
            "occlusion_bout",
            [("team", "rehab"), ("cuff", cuff), ("athlete", "p-01"), ("limb", limb)],
            [("duration_s", duration), ("time_in_band_pct", 75.0), ("alerts", 0)],
            ms(H0 + offset),
        )
        for cuff, limb, duration, offset in (
            ("r1", "right_leg", 480.0, timedelta(0)),
            ("r2", "left_arm", 300.0, timedelta(hours=1)),
        )
    ]
    lines += [_alert(row) for row in ALERTS]
    # Live: a-17 pressure 120, 122, … 138 (mean 129) around target 132, elapsed up to 709 s.
    for i in range(10):
        at = L0 + timedelta(minutes=5, seconds=i)
        lines.append(
            _telemetry(("t1", "a-17", "c7", "left_leg"), at, 120.0 + 2 * i, 132.0, 700.0 + i)
        )
        lines.append(_telemetry(("t1", "a-23", "c8", "right_arm"), at, 100.0, 100.0, 120.0))
        lines.append(_telemetry(("rehab", "p-01", "r1", "right_leg"), at, 141.0, 140.0, 60.0))
    lines.append(
        _telemetry(("t1", HOSTILE, "c9", "left_arm"), L0 + timedelta(minutes=1), 90.0, 90.0, 5.0)
    )
    # Gateway: cumulative counters every 10 s; gw-2 restarts half way (its counters reset).
    for k in range(GATEWAY_POINTS):
        at = G0 + timedelta(seconds=10 * k)
        for instance, n in (("gw-1", k), ("gw-2", k if k < GATEWAY_POINTS // 2 else k - 15)):
            lines.append(
                line(
                    "gateway_stats",
                    [("instance", instance)],
                    [
                        ("received", 100 * n),
                        ("accepted", 90 * n),
                        ("written", 90 * n),
                        ("rejected", 10 * n),
                        ("duplicates", 2 * n),
                        # InfluxDB refused 3 lines a point from the 20th on; gw-1 dropped
                        # the 12 of the oldest saved batch file at the 25th
                        ("refused", 3 * max(0, n - 19)),
                        ("refused_batches", max(0, n - 19)),
                        ("refused_dropped", 12 if instance == "gw-1" and k >= 25 else 0),
                        ("spooled", 0),
                        ("spool_bytes", 1000 * k),
                        ("alerts_open", 2),
                        ("lag_ms", 5 + k % 3),
                    ],
                    ms(at),
                )
            )
    return lines


@pytest.fixture(scope="module")
def seeded(influxdb: InfluxDB1Server) -> Iterator[str]:
    """A database holding the known data (read-only for every test of this module)."""
    db = "dashboards_seeded"
    influxdb.create_database(db)
    influxdb.write(db, "\n".join(seed_lines()))
    yield db
    influxdb.drop_database(db)


ALL_T1 = ["a-17", "a-23", HOSTILE]


LIVE = Grafana(L0, L0 + timedelta(minutes=15), "1m", {"team": ["t1"], "athlete": ["a-17"]})


HISTORY = Grafana(H0 - DAY, H0 + 14 * DAY, "1h", {"team": ["t1"], "athlete": ["a-17"]})


GATEWAY = Grafana(G0, G0 + timedelta(minutes=5), "10s", {"instance": ["gw-1", "gw-2"]})


# -- every query runs -----------------------------------------------------------------------------


def test_every_query_of_every_dashboard_runs_and_returns_data(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """All panel, variable and annotation queries run on InfluxDB 1.x and find the seeds."""
    contexts = {"live.json": LIVE, "athlete.json": HISTORY, "gateway.json": GATEWAY}
    athletes = {"t1": ALL_T1, "rehab": ["p-01"]}
    ran = 0
    for relpath, model in boards.items():
        ctx = contexts[relpath.rsplit("/", 1)[1]]
        if relpath.startswith("teams/"):
            team = relpath.split("/")[1]
            ctx = ctx.with_vars(team=[team], athlete=athletes[team])
        for where, query, time_from in every_query(model):
            frames = run(influxdb, seeded, ctx.expand(query, time_from))
            assert frames, f"{relpath} {where}: no data for {query}"
            ran += 1
    # per team: live 4 panels + annotation, history 6 panels ($athlete is a custom variable,
    # no query); the gateway 6 panels + its variable
    assert ran == 2 * 5 + 2 * 6 + 7


def test_a_configured_retention_policy_is_named_in_every_query(
    influxdb: InfluxDB1Server, influx_db: str
) -> None:
    """[influx] retention_policy (1.x) qualifies the measurements; data there is found."""
    influxdb.query(
        influx_db,
        f'CREATE RETENTION POLICY "two weeks" ON "{influx_db}" DURATION 14d REPLICATION 1',
    )
    athlete, cuff, limb, _, duration, band = BOUTS[0]
    point = line(
        "occlusion_bout",
        [("team", "t1"), ("cuff", cuff), ("athlete", athlete), ("limb", limb)],
        [("duration_s", duration), ("time_in_band_pct", band)],
        ms(datetime.now(UTC) - DAY),
    )
    influxdb.write(influx_db, point, rp="two weeks")
    settings = load_settings(
        None,
        influx={"api": "v1", "retention_policy": "two weeks"},
        teams={"t1": {"name": "First team"}},
    )
    boards = {f.relpath: f.model for f in dashboard_files(settings)}
    for relpath, model in boards.items():
        for where, query, _ in every_query(model):
            assert '"two weeks".' in query, f"{relpath} {where}"
    q = target(panel(boards["teams/t1/athlete.json"], "Bouts per day"))
    now = datetime.now(UTC)
    ctx = Grafana(now - 3 * DAY, now, "1h", {"team": ["t1"], "athlete": ["a-17"]})
    (frame,) = run(influxdb, influx_db, ctx.expand(q))
    assert [r["bouts"] for r in frame.rows] == [1]


# -- squad live -----------------------------------------------------------------------------------


def test_live_pressure_against_target_band(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Mean pressure and target ± the team's tolerance, per limb; rehab's tolerance is 10."""
    q = target(panel(boards["teams/t1/live.json"], "${athlete:text}: pressure vs target band"))
    (frame,) = run(influxdb, seeded, LIVE.expand(q))
    assert frame.tags == {"limb": "left_leg"}
    (row,) = [r for r in frame.rows if r["pressure"] is not None]
    assert row == {
        "time": ms(L0 + timedelta(minutes=5)),
        "pressure": 129.0,
        "target": 132.0,
        "band_low": 117.0,
        "band_high": 147.0,
    }

    rehab_live = boards["teams/rehab/live.json"]
    rehab = target(panel(rehab_live, "${athlete:text}: pressure vs target band"))
    ctx = LIVE.with_vars(team=["rehab"], athlete=["p-01"])
    (frame,) = run(influxdb, seeded, ctx.expand(rehab))
    (row,) = frame.rows
    assert (row["band_low"], row["band_high"]) == (130.0, 150.0)


def test_live_elapsed_bout_time_with_the_teams_limits(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Latest elapsed_s per limb; thresholds at warn_bout_s and the limb's max_bout_s."""
    p = panel(boards["teams/t1/live.json"], "${athlete:text}: elapsed bout time")
    frames = run(influxdb, seeded, LIVE.with_vars(athlete=["a-17", "a-23"]).expand(target(p)))
    assert {f.tags["limb"]: f.rows[0]["elapsed"] for f in frames} == {
        "left_leg": 709.0,
        "right_arm": 120.0,
    }
    for team, warn, arm, leg in (("t1", 600, 900, 1200), ("rehab", 420, 600, 900)):
        p = panel(boards[f"teams/{team}/live.json"], "${athlete:text}: elapsed bout time")
        defaults = p["fieldConfig"]["defaults"]
        assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, warn, arm]
        assert defaults["max"] == arm
        (override,) = p["fieldConfig"]["overrides"]
        props = {prop["id"]: prop["value"] for prop in override["properties"]}
        assert [s["value"] for s in props["thresholds"]["steps"]] == [None, warn, leg]
        assert props["max"] == leg


def test_open_alerts_are_the_latest_unresolved_state_per_cuff_and_kind(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """An alert raised 2 h ago is still listed (12 h look-back); resolved ones are not."""
    live = boards["teams/t1/live.json"]
    squad = panel(live, "Open alerts (squad)")
    assert squad["timeFrom"] == "12h"
    (frame,) = run(influxdb, seeded, LIVE.expand(target(squad), squad["timeFrom"]))
    assert sorted((r["cuff"], r["kind"], r["severity"], r["state"]) for r in frame.rows) == [
        ("c7", "over_time", "critical", "firing"),
        ("c7", "sensor_fault", "warning", "firing"),
    ]
    mine = panel(live, "${athlete:text}: open alerts")
    ctx = LIVE.with_vars(athlete=["a-23"])
    assert run(influxdb, seeded, ctx.expand(target(mine), mine["timeFrom"])) == []


def test_alert_annotations_and_athlete_variable(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Annotations: every alert change of the team in range. Athletes: the configured ones
    (names shown, ids selected), each finding its data; All finds every stored athlete."""
    live = boards["teams/t1/live.json"]
    (annotation,) = live["annotations"]["list"]
    (frame,) = run(influxdb, seeded, LIVE.expand(annotation["target"]["query"]))
    assert len(frame.rows) == 4
    assert {r["athlete"] for r in frame.rows} == {"a-17", "a-23"}
    for column in ["message", *annotation["target"]["tagsColumn"].split(",")]:
        assert all(r[column] for r in frame.rows)
    athlete = variable(live, "athlete")
    values = [o["value"] for o in athlete["options"] if o["value"] != "$__all"]
    assert values == ["a-17", "a-23"]
    elapsed = target(panel(live, "${athlete:text}: elapsed bout time"))
    for value in values:
        assert run(influxdb, seeded, LIVE.with_vars(athlete=[value]).expand(elapsed)), value
    history = boards["teams/t1/athlete.json"]
    q = target(panel(history, "Bouts per day"))
    frames = run(influxdb, seeded, HISTORY.with_all(history, "athlete").expand(q))
    assert {f.tags["athlete"] for f in frames} == {"a-17", "a-23", "a-40", HOSTILE}


def test_a_team_without_configured_athletes_lists_the_stored_ones(
    influxdb: InfluxDB1Server, seeded: str
) -> None:
    """No athlete in the configuration: `$athlete` falls back to the ids in the data."""
    settings = load_settings(None, teams={"t1": {"name": "First team"}})
    boards = {f.relpath: f.model for f in dashboard_files(settings)}
    athlete = variable(boards["teams/t1/live.json"], "athlete")
    assert athlete["type"] == "query"
    # InfluxDB 1.x ignores the time condition of SHOW TAG VALUES (docs/dashboards.md):
    # athletes seen before the window are listed too; 2.x/3.x honour it.
    (frame,) = run(influxdb, seeded, LIVE.expand(athlete["query"]))
    assert {r["value"] for r in frame.rows} == set(ALL_T1)  # a-40 has bouts, no telemetry


# -- athlete history ------------------------------------------------------------------------------


def test_history_bouts_per_day(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Seeded counts per UTC day; several athletes give a series each."""
    q = target(panel(boards["teams/t1/athlete.json"], "Bouts per day"))
    frames = run(influxdb, seeded, HISTORY.with_vars(athlete=["a-17", "a-23"]).expand(q))
    assert by_tag(frames, "athlete", "bouts") == {
        ("a-17", ms(H0)): 3,
        ("a-17", ms(H0 + DAY)): 2,
        ("a-17", ms(H0 + 7 * DAY)): 1,
        ("a-23", ms(H0)): 1,
    }


def test_history_hostile_athlete_name_matches_only_itself(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Quotes, `/` and regex characters in a name are escaped by ${athlete:regex}."""
    q = target(panel(boards["teams/t1/athlete.json"], "Bouts per day"))
    frames = run(influxdb, seeded, HISTORY.with_vars(athlete=[HOSTILE]).expand(q))
    assert by_tag(frames, "athlete", "bouts") == {(HOSTILE, ms(H0)): 2}


def test_history_occlusion_minutes_per_week_start_on_monday(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Sum of durations / 60 per Monday-to-Monday UTC week."""
    q = target(panel(boards["teams/t1/athlete.json"], "Occlusion minutes per week"))
    frames = run(influxdb, seeded, HISTORY.expand(q))
    assert by_tag(frames, "athlete", "minutes") == {
        ("a-17", ms(H0)): (300 + 420 + 600 + 540 + 660) / 60,
        ("a-17", ms(H0 + 7 * DAY)): 20.0,
    }


def test_history_pressure_in_band_and_alerts_per_day(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Mean in-band % per day; distinct alerts per kind per day (three changes, one alert)."""
    history = boards["teams/t1/athlete.json"]
    frames = run(influxdb, seeded, HISTORY.expand(target(panel(history, "Pressure in band %"))))
    assert by_tag(frames, "athlete", "in_band_pct") == {
        ("a-17", ms(H0)): 80.0,
        ("a-17", ms(H0 + DAY)): 80.0,
        ("a-17", ms(H0 + 7 * DAY)): 50.0,
    }
    frames = run(influxdb, seeded, HISTORY.expand(target(panel(history, "Alerts per day"))))
    assert by_tag(frames, "kind", "alerts") == {
        ("over_time", ms(H0)): 1,
        ("over_time", ms(H0 + DAY)): 1,
        ("over_pressure", ms(H0)): 1,
    }


def colour(steps: list[dict[str, Any]], value: float) -> str:
    """The colour Grafana gives `value` under absolute thresholds: the last step reached."""
    reached = [s["color"] for s in steps if s["value"] is None or value >= s["value"]]
    return str(reached[-1])


def duration_steps(p: dict[str, Any]) -> list[dict[str, Any]]:
    """The thresholds of a table's duration_s column."""
    (override,) = [
        o for o in p["fieldConfig"]["overrides"] if o["matcher"]["options"] == "duration_s"
    ]
    (steps,) = [
        prop["value"]["steps"] for prop in override["properties"] if prop["id"] == "thresholds"
    ]
    return list(steps)


def test_history_recent_bouts_coloured_by_their_limbs_limit(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Arms and legs in a table each, newest first; a duration is orange from warn_bout_s and
    red from its own limb's max_bout_s: a legal 1,000 s leg bout is orange, not red."""
    history = boards["teams/t1/athlete.json"]
    ctx = HISTORY.with_vars(athlete=["a-17", "a-23", "a-40", HOSTILE])
    legs = panel(history, "Recent leg bouts")
    (frame,) = run(influxdb, seeded, ctx.expand(target(legs)))
    coloured = [(r["athlete"], r["duration_s"], colour(duration_steps(legs), r["duration_s"]))
                for r in frame.rows]
    assert coloured == [
        ("a-17", 1200, "red"),
        ("a-40", 1000, "orange"),
        ("a-17", 660, "orange"),
        ("a-17", 540, "green"),
        ("a-17", 600, "orange"),
        ("a-17", 420, "green"),
        ("a-17", 300, "green"),
    ]
    arms = panel(history, "Recent arm bouts")
    (frame,) = run(influxdb, seeded, ctx.expand(target(arms)))
    steps = duration_steps(arms)
    assert [(r["athlete"], r["limb"], r["duration_s"], colour(steps, r["duration_s"]))
            for r in frame.rows] == [
        (HOSTILE, "left_arm", 360, "green"),
        (HOSTILE, "left_arm", 240, "green"),
        ("a-23", "right_arm", 900, "red"),
    ]


def test_history_days_and_weeks_are_the_teams(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """t1 is in Europe/London: a bout at 23:30 UTC on 1 July (BST) counts on 2 July, whose
    bucket starts at local midnight (23:00 UTC), and in the week from Monday 30 June 00:00
    BST. rehab's (UTC) queries bucket the same bout on 1 July UTC."""
    summer = Grafana(datetime(2025, 6, 25, tzinfo=UTC), datetime(2025, 7, 10, tzinfo=UTC), "1h",
                     {"team": ["t1"], "athlete": ["a-17"]})
    local_midnight = datetime(2025, 7, 1, 23, tzinfo=UTC)
    t1 = boards["teams/t1/athlete.json"]
    frames = run(influxdb, seeded, summer.expand(target(panel(t1, "Bouts per day"))))
    assert by_tag(frames, "athlete", "bouts") == {("a-17", ms(local_midnight)): 1}
    frames = run(influxdb, seeded, summer.expand(target(panel(t1, "Pressure in band %"))))
    assert by_tag(frames, "athlete", "in_band_pct") == {("a-17", ms(local_midnight)): 75.0}
    frames = run(influxdb, seeded, summer.expand(target(panel(t1, "Occlusion minutes per week"))))
    week = datetime(2025, 6, 29, 23, tzinfo=UTC)  # Monday 30 June 00:00 BST
    assert by_tag(frames, "athlete", "minutes") == {("a-17", ms(week)): 8.0}
    utc = target(panel(boards["teams/rehab/athlete.json"], "Bouts per day"))
    frames = run(influxdb, seeded, summer.expand(utc))
    assert by_tag(frames, "athlete", "bouts") == {("a-17", ms(datetime(2025, 7, 1, tzinfo=UTC))): 1}


def test_history_series_are_named_by_athlete_name(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Each series the data gives (alias $tag_athlete: the id) that is a configured athlete
    has a byName override to the athlete's name; others keep their id."""
    history = boards["teams/t1/athlete.json"]
    p = panel(history, "Bouts per day")
    frames = run(influxdb, seeded, HISTORY.with_all(history, "athlete").expand(target(p)))
    assert target_alias(p) == "$tag_athlete"
    display = {o["matcher"]["options"]: o["properties"][0]["value"]
               for o in p["fieldConfig"]["overrides"] if o["properties"][0]["id"] == "displayName"}
    names = {f.tags["athlete"]: display.get(f.tags["athlete"], f.tags["athlete"]) for f in frames}
    assert names == {"a-17": "Jo Example", "a-23": "Sam Sample", "a-40": "a-40", HOSTILE: HOSTILE}


def target_alias(p: dict[str, Any]) -> str:
    """The alias of a panel's single target."""
    (t,) = p["targets"]
    return str(t["alias"])


# -- gateway health -------------------------------------------------------------------------------


def test_gateway_rates_of_cumulative_counters(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Per-second rates per instance; a counter reset (restart) never shows as negative."""
    gateway = boards["gateway/gateway.json"]
    assert gateway["uid"] == "cw-gateway"
    frames = run(influxdb, seeded, GATEWAY.expand(target(panel(gateway, "Throughput"))))
    assert {f.tags["instance"] for f in frames} == {"gw-1", "gw-2"}
    (gw1,) = [f for f in frames if f.tags["instance"] == "gw-1"]
    assert len(gw1.rows) == GATEWAY_POINTS - 1
    assert {(r["received"], r["accepted"], r["written"]) for r in gw1.rows} == {(10.0, 9.0, 9.0)}
    (gw2,) = [f for f in frames if f.tags["instance"] == "gw-2"]
    assert min(r["received"] for r in gw2.rows) >= 0
    assert len(gw2.rows) == GATEWAY_POINTS - 2  # the reset interval is dropped

    only = GATEWAY.with_vars(instance=["gw-1"])
    frames = run(influxdb, seeded, only.expand(target(panel(gateway, "Rejects and duplicates"))))
    (frame,) = frames
    assert {(r["rejected"], r["duplicates"]) for r in frame.rows} == {(1.0, 0.2)}


def test_gateway_spool_lag_and_open_alerts(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Levels per 10 s bucket; spool thresholds from the configured cap."""
    gateway = boards["gateway/gateway.json"]
    only = GATEWAY.with_vars(instance=["gw-1"])
    spool = panel(gateway, "Spool size")
    (frame,) = run(influxdb, seeded, only.expand(target(spool)))
    assert [r["spool_bytes"] for r in frame.rows] == [1000 * k for k in range(GATEWAY_POINTS)]
    cap = example_settings().spool.max_bytes
    steps = spool["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, cap * 0.5, cap * 0.9]
    (frame,) = run(influxdb, seeded, only.expand(target(panel(gateway, "Lag"))))
    assert [r["lag_ms"] for r in frame.rows] == [5 + k % 3 for k in range(GATEWAY_POINTS)]
    (frame,) = run(influxdb, seeded, only.expand(target(panel(gateway, "Open alerts"))))
    assert {r["alerts_open"] for r in frame.rows} == {2}


def test_gateway_refused_lines_per_interval_turn_red_from_one(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Lines InfluxDB refused and lines dropped from rejected/, per 10 s; red from the first."""
    refused = panel(boards["gateway/gateway.json"], "Refused by InfluxDB")
    only = GATEWAY.with_vars(instance=["gw-1"])
    (frame,) = run(influxdb, seeded, only.expand(target(refused)))
    assert [r["refused"] for r in frame.rows] == [0] * 19 + [3] * 10
    assert [r["refused_dropped"] for r in frame.rows] == [0] * 24 + [12] + [0] * 4
    steps = refused["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (1, "red")]
