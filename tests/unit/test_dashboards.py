"""Dashboards as code (SPEC §5): every query against a real InfluxDB 1.x, SDK round trips,
drift of the committed output, provisioning, and the push against a recorded Grafana contract.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from grafana_foundation_sdk.builders import stat
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from hypothesis import given
from hypothesis import strategies as st
from servers import InfluxDB1Server

from core.config import ID_PATTERN, Settings, load_settings
from dashboards.build import (
    DashboardFile,
    build,
    build_command,
    dashboard_files,
    folder_uid,
    stable_uid,
)
from dashboards.influxql import (
    DATASOURCE_UID,
    InfluxQL,
    InfluxQLQuery,
    dump_dashboard,
    load_dashboard,
)
from dashboards.push import GrafanaPushError, push, push_command
from ingest.lineproto import line
from ops.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "dashboards" / "example.toml"
GENERATED = ROOT / "dashboards" / "generated"
CONTRACT = Path(__file__).resolve().parent / "data" / "grafana_contract"

HOSTILE = 'o\'brien "x" /.*|(a)'  # quotes, a regex and the regex delimiter in one name


def ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return round(moment.timestamp() * 1000)


# -- Grafana's side: macros and variables as Grafana's InfluxDB datasource expands them --------

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

    def expand(self, query: str, time_from: str | None = None) -> str:
        """The query as Grafana sends it: macros, `${v:regex}` and `$v` replaced."""
        start = self.end - _duration(time_from) if time_from else self.start
        text = query.replace("$timeFilter", f"time >= {ms(start)}ms and time <= {ms(self.end)}ms")
        text = text.replace("$__interval", self.interval)

        def regex(m: re.Match[str]) -> str:
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
        return Grafana(self.start, self.end, self.interval, self.variables | values)


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


# -- the dashboards under test ------------------------------------------------------------------


@pytest.fixture(scope="module")
def example() -> Settings:
    """The example configuration the committed dashboards are built from."""
    return load_settings(EXAMPLE)


@pytest.fixture(scope="module")
def boards(example: Settings) -> dict[str, dict[str, Any]]:
    """Every generated dashboard of the example, by its path under dashboards/."""
    return {f.relpath: f.model for f in dashboard_files(example)}


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel of a dashboard, in order."""
    return [p for p in model["panels"] if p["type"] != "row"]


def panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    """The panel with this title."""
    (found,) = [p for p in panels(model) if p["title"] == title]
    return dict(found)


def target(p: dict[str, Any]) -> str:
    """The panel's single InfluxQL query."""
    (t,) = p["targets"]
    assert t["rawQuery"] is True
    assert t["datasource"] == {"type": "influxdb", "uid": DATASOURCE_UID}
    return str(t["query"])


def variable(model: dict[str, Any], name: str) -> dict[str, Any]:
    """The template variable with this name."""
    (found,) = [v for v in model["templating"]["list"] if v["name"] == name]
    return dict(found)


def every_query(model: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(where, InfluxQL, panel timeFrom) of every panel target, variable and annotation."""
    for p in panels(model):
        for t in p["targets"]:
            yield f"panel {p['title']!r}", t["query"], p.get("timeFrom")
    for v in model["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"], None
    for a in model["annotations"].get("list", []):
        yield f"annotation {a['name']}", a["target"]["query"], None


# -- known data ---------------------------------------------------------------------------------

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
    return line(
        "alert",
        [
            ("team", team),
            ("cuff", cuff),
            ("athlete", athlete),
            ("kind", kind),
            ("severity", severity),
        ],
        [
            ("state", state),
            ("value", 1.0),
            ("threshold", 1.0),
            ("message", f"{athlete} {kind} {state}"),
            ("alert_id", alert_id),
        ],
        ms(at),
    )


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
    lines.append(
        line(
            "occlusion_bout",
            [("team", "rehab"), ("cuff", "r1"), ("athlete", "p-01"), ("limb", "right_leg")],
            [("duration_s", 480.0), ("time_in_band_pct", 75.0), ("alerts", 0)],
            ms(H0),
        )
    )
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


# -- every query runs -----------------------------------------------------------------------


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
    assert ran == 2 * 6 + 2 * 6 + 6  # per team: live 4 panels + variable + annotation,
    # history 5 panels + variable; gateway 5 panels + variable


def test_queries_quote_identifiers_and_use_the_macros(boards: dict[str, dict[str, Any]]) -> None:
    """Measurements and tags are double-quoted; every query is bounded by $timeFilter."""
    for relpath, model in boards.items():
        for where, query, _ in every_query(model):
            assert re.search(
                r'FROM (\(|"(cuff_telemetry|occlusion_bout|alert|gateway_stats)")', query
            ), where
            assert "$timeFilter" in query, f"{relpath} {where}"
            if relpath.startswith("teams/"):
                assert "\"team\" = '$team'" in query, f"{relpath} {where}"


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


# -- squad live -----------------------------------------------------------------------------


def test_live_layout_variables_and_refresh(boards: dict[str, dict[str, Any]]) -> None:
    """5 s refresh, last 15 min, hidden team constant, athlete repeat row, alert annotations."""
    live = boards["teams/t1/live.json"]
    assert (live["uid"], live["refresh"], live["time"]) == (
        "cw-t1-live",
        "5s",
        {"from": "now-15m", "to": "now"},
    )
    team = variable(live, "team")
    assert (team["type"], team["query"], team["hide"]) == ("constant", "t1", 2)
    athlete = variable(live, "athlete")
    assert (athlete["multi"], athlete["includeAll"], athlete["refresh"]) == (True, True, 2)
    rows = [p for p in live["panels"] if p["type"] == "row"]
    assert [(r["title"], r.get("repeat")) for r in rows] == [
        ("Squad", None),
        ("$athlete", "athlete"),
    ]
    assert [p["id"] for p in live["panels"]] == list(range(1, len(live["panels"]) + 1))
    (annotation,) = live["annotations"]["list"]
    assert annotation["target"]["fromAnnotations"] is True
    assert annotation["target"]["textColumn"] == "message"


def test_live_pressure_against_target_band(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Mean pressure and target ± the team's tolerance, per limb; rehab's tolerance is 10."""
    q = target(panel(boards["teams/t1/live.json"], "$athlete: pressure vs target band"))
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

    rehab = target(panel(boards["teams/rehab/live.json"], "$athlete: pressure vs target band"))
    ctx = LIVE.with_vars(team=["rehab"], athlete=["p-01"])
    (frame,) = run(influxdb, seeded, ctx.expand(rehab))
    (row,) = frame.rows
    assert (row["band_low"], row["band_high"]) == (130.0, 150.0)


def test_live_pressure_thresholds_are_the_teams_hard_ceilings(
    boards: dict[str, dict[str, Any]],
) -> None:
    """Arm ceiling by default, leg ceiling for leg series, per team."""
    for team, arm, leg in (("t1", 250, 300), ("rehab", 220, 260)):
        p = panel(boards[f"teams/{team}/live.json"], "$athlete: pressure vs target band")
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, arm]
        (leg_override,) = [
            o for o in p["fieldConfig"]["overrides"] if "leg" in o["matcher"]["options"]
        ]
        assert [s["value"] for s in leg_override["properties"][0]["value"]["steps"]] == [None, leg]
        assert re.match(leg_override["matcher"]["options"], "left_leg pressure")
        assert not re.match(leg_override["matcher"]["options"], "left_arm pressure")


def test_live_elapsed_bout_time_with_the_teams_limits(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Latest elapsed_s per limb; thresholds at warn_bout_s and the limb's max_bout_s."""
    p = panel(boards["teams/t1/live.json"], "$athlete: elapsed bout time")
    frames = run(influxdb, seeded, LIVE.with_vars(athlete=["a-17", "a-23"]).expand(target(p)))
    assert {f.tags["limb"]: f.rows[0]["elapsed"] for f in frames} == {
        "left_leg": 709.0,
        "right_arm": 120.0,
    }
    for team, warn, arm, leg in (("t1", 600, 900, 1200), ("rehab", 420, 600, 900)):
        p = panel(boards[f"teams/{team}/live.json"], "$athlete: elapsed bout time")
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
    mine = panel(live, "$athlete: open alerts")
    ctx = LIVE.with_vars(athlete=["a-23"])
    assert run(influxdb, seeded, ctx.expand(target(mine), mine["timeFrom"])) == []


def test_alert_annotations_and_athlete_variable(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Annotations: every alert change of the team in range; athletes: the team's only."""
    live = boards["teams/t1/live.json"]
    (annotation,) = live["annotations"]["list"]
    (frame,) = run(influxdb, seeded, LIVE.expand(annotation["target"]["query"]))
    assert len(frame.rows) == 4
    assert {r["athlete"] for r in frame.rows} == {"a-17", "a-23"}
    for column in ["message", *annotation["target"]["tagsColumn"].split(",")]:
        assert all(r[column] for r in frame.rows)
    # InfluxDB 1.x ignores the time condition of SHOW TAG VALUES (docs/dashboards.md):
    # athletes seen before the window are listed too; 2.x/3.x honour it.
    (frame,) = run(influxdb, seeded, LIVE.expand(variable(live, "athlete")["query"]))
    assert {r["value"] for r in frame.rows} == set(ALL_T1)


# -- athlete history --------------------------------------------------------------------------


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


def test_history_recent_bouts_table(
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]]
) -> None:
    """Newest first; the duration column is coloured from warn_bout_s."""
    p = panel(boards["teams/t1/athlete.json"], "Recent bouts")
    (frame,) = run(influxdb, seeded, HISTORY.expand(target(p)))
    assert [r["duration_s"] for r in frame.rows] == [1200, 660, 540, 600, 420, 300]
    (override,) = p["fieldConfig"]["overrides"]
    assert [s["value"] for s in override["properties"][0]["value"]["steps"]] == [None, 600, 900]


# -- gateway health ---------------------------------------------------------------------------


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
    influxdb: InfluxDB1Server, seeded: str, boards: dict[str, dict[str, Any]], example: Settings
) -> None:
    """Levels per 10 s bucket; spool thresholds from the configured cap."""
    gateway = boards["gateway/gateway.json"]
    only = GATEWAY.with_vars(instance=["gw-1"])
    spool = panel(gateway, "Spool size")
    (frame,) = run(influxdb, seeded, only.expand(target(spool)))
    assert [r["spool_bytes"] for r in frame.rows] == [1000 * k for k in range(GATEWAY_POINTS)]
    cap = example.spool.max_bytes
    steps = spool["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, cap * 0.5, cap * 0.9]
    (frame,) = run(influxdb, seeded, only.expand(target(panel(gateway, "Lag"))))
    assert [r["lag_ms"] for r in frame.rows] == [5 + k % 3 for k in range(GATEWAY_POINTS)]
    (frame,) = run(influxdb, seeded, only.expand(target(panel(gateway, "Open alerts"))))
    assert {r["alerts_open"] for r in frame.rows} == {2}


# -- the SDK, committed output, provisioning --------------------------------------------------


def test_generated_json_round_trips_through_the_sdk_models(
    boards: dict[str, dict[str, Any]],
) -> None:
    """Unmarshal then marshal gives the same JSON; targets decode as our InfluxQL variant."""
    for relpath, data in boards.items():
        model = load_dashboard(copy.deepcopy(data))
        assert dump_dashboard(model) == data, relpath
        for p in model.panels or []:
            for t in getattr(p, "targets", None) or []:
                assert isinstance(t, InfluxQLQuery)
        for a in model.annotations.list_val or []:
            assert isinstance(a.target, InfluxQLQuery)


def test_influxql_builder_with_the_sdk_panel_builder() -> None:
    """Our builder plugs into an SDK panel's with_target like the SDK's own dataqueries."""
    built = stat.Panel().with_target(InfluxQL('SELECT 1 FROM "x"').ref_id("B").table()).build()
    (t,) = built.targets or []
    data = json.loads(json.dumps(t, cls=JSONEncoder))
    assert data == {
        "refId": "B",
        "query": 'SELECT 1 FROM "x"',
        "rawQuery": True,
        "resultFormat": "table",
        "datasource": {"type": "influxdb", "uid": "cuffwatch-influx"},
    }
    assert json.loads(json.dumps(InfluxQLQuery.from_json(data), cls=JSONEncoder)) == data


def test_committed_output_matches_the_build(example: Settings, tmp_path: Path) -> None:
    """dashboards/generated/ is byte for byte what build() makes of dashboards/example.toml."""
    written = build(example, tmp_path)
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in written}
    committed = {
        p.relative_to(GENERATED).as_posix(): p.read_bytes()
        for p in sorted(GENERATED.rglob("*"))
        if p.is_file()
    }
    hint = "run: python -m dashboards.build dashboards/example.toml dashboards/generated"
    assert sorted(fresh) == sorted(committed), hint
    for name, content in fresh.items():
        assert committed[name] == content, f"{name} drifted; {hint}"
    assert build(example, tmp_path) == written  # deterministic


def test_build_command_prints_every_file(
    example: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit code 0 and one path per line."""
    assert build_command(example, tmp_path) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 7
    assert all(Path(p).is_file() for p in printed)


def test_datasource_provisioning_variants(example: Settings, tmp_path: Path) -> None:
    """1.x: database, user and password from the environment; 2.x/3.x: token header, bucket."""
    build(example, tmp_path / "v1", flavor="v1")
    build(example, tmp_path / "v2", flavor="v2")
    path = Path("provisioning/datasources/cuffwatch.yaml")
    (v1,) = yaml.safe_load((tmp_path / "v1" / path).read_text())["datasources"]
    (v2,) = yaml.safe_load((tmp_path / "v2" / path).read_text())["datasources"]
    for ds in (v1, v2):
        assert (ds["uid"], ds["type"], ds["jsonData"]["version"]) == (
            DATASOURCE_UID,
            "influxdb",
            "InfluxQL",
        )
    assert (v1["jsonData"]["dbName"], v1["user"]) == ("bfr", "grafana")
    assert v1["secureJsonData"] == {"password": "$__env{INFLUX_PASSWORD}"}
    assert v2["jsonData"]["dbName"] == example.influx.bucket
    assert v2["jsonData"]["httpHeaderName1"] == "Authorization"
    assert v2["secureJsonData"] == {"httpHeaderValue1": "Token $__env{INFLUX_TOKEN}"}


def test_dashboard_provisioning_has_a_folder_per_team(example: Settings, tmp_path: Path) -> None:
    """One file provider per folder, pointing at exactly that folder's dashboards."""
    build(example, tmp_path, grafana_path="/grafana/cw")
    doc = yaml.safe_load((tmp_path / "provisioning/dashboards/cuffwatch.yaml").read_text())
    providers = {p["folderUid"]: p for p in doc["providers"]}
    assert {uid: p["folder"] for uid, p in providers.items()} == {
        "cw-t1": "First team",
        "cw-rehab": "Rehab group",
        "cw-system": "cuffwatch",
    }
    for p in providers.values():
        directory = tmp_path / "dashboards" / p["options"]["path"].removeprefix("/grafana/cw/")
        assert sorted(f.name for f in directory.iterdir()) in (
            ["athlete.json", "live.json"],
            ["gateway.json"],
        )
        assert p["type"] == "file"


def test_deploy_compose_mounts_the_generated_output() -> None:
    """deploy/grafana mounts dashboards/generated where the provisioning points."""
    compose = yaml.safe_load((ROOT / "deploy/grafana/compose.yaml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    here = ROOT / "deploy" / "grafana"
    mounts = {v.split(":")[1]: (here / v.split(":")[0]).resolve() for v in volumes}
    assert mounts["/var/lib/grafana/dashboards/cuffwatch"] == GENERATED / "dashboards"
    assert mounts["/etc/grafana/provisioning"] == GENERATED / "provisioning"


@given(st.from_regex(ID_PATTERN, fullmatch=True))
def test_uids_are_short_safe_and_distinct(team: str) -> None:
    """Any team id gives valid (≤ 40 chars, safe) and distinct dashboard and folder uids."""
    uids = [stable_uid(team, "live"), stable_uid(team, "athlete"), folder_uid(team)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", u) for u in uids)
    assert len(set(uids)) == 3
    assert stable_uid(team, "live") == stable_uid(team, "live")


def test_long_team_ids_sharing_a_prefix_get_distinct_uids() -> None:
    """Shortening keeps a hash of the whole id."""
    a, b = "x" * 63 + "a", "x" * 63 + "b"
    assert stable_uid(a, "live") != stable_uid(b, "live")
    assert stable_uid("t1", "live") == "cw-t1-live"


def test_a_team_clashing_with_the_gateway_uids_is_refused() -> None:
    """A team called `gateway` would give folder uid cw-gateway, the gateway dashboard's."""
    settings = load_settings(None, teams={"gateway": {"name": "Gateway FC"}})
    with pytest.raises(ValueError, match="cw-gateway"):
        dashboard_files(settings)


# -- push: RECORDED Grafana HTTP API contract -------------------------------------------------
# Grafana cannot run here. tests/data/grafana_contract/*.json hold the request/response
# pairs of Grafana 11's documented folder and dashboard API; the stub below replays them
# and checks that our push makes exactly those requests (method, path, Bearer token, body).


class ContractStub:
    """An HTTP server replaying one recorded contract, in order, and noting every deviation."""

    def __init__(self, contract: dict[str, Any]) -> None:
        self.token: str = contract["token"]
        self.exchanges: list[dict[str, Any]] = contract["exchanges"]
        self.served = 0
        self.problems: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: deviations are collected, not printed."""

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, answer = stub.answer(self.command, self.path, dict(self.headers), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _handle  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="grafana-contract")

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        """Check one request against the next recorded one and return its recorded response."""
        if self.served >= len(self.exchanges):
            self.problems.append(f"unexpected extra request {method} {path}")
            return 500, {"message": "not in the contract"}
        expected = self.exchanges[self.served]
        self.served += 1
        want = expected["request"]
        seen = f"#{self.served} {method} {path}"
        if (method, path) != (want["method"], want["path"]):
            self.problems.append(f"{seen}: contract says {want['method']} {want['path']}")
        if headers.get("Authorization") != f"Bearer {self.token}":
            self.problems.append(f"{seen}: Authorization {headers.get('Authorization')!r}")
        if "body_keys" in want and sorted(body or {}) != sorted(want["body_keys"]):
            self.problems.append(f"{seen}: body keys {sorted(body or {})}")
        if "json" in want:
            if "application/json" not in headers.get("Content-Type", ""):
                self.problems.append(f"{seen}: body not sent as application/json")
            if not _contains(body, want["json"]):
                self.problems.append(f"{seen}: body {json.dumps(body)[:300]} lacks {want['json']}")
        return int(expected["response"]["status"]), expected["response"]["body"]

    def __enter__(self) -> ContractStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def check(self) -> None:
        """Fail unless every recorded exchange happened, exactly as recorded."""
        assert self.problems == []
        assert self.served == len(self.exchanges), "requests missing from the contract run"


def _contains(actual: Any, expected: Any) -> bool:
    """Whether `expected` (a JSON subset) is contained in `actual`."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)


def contract(name: str) -> dict[str, Any]:
    """A recorded contract from tests/data/grafana_contract/."""
    data: dict[str, Any] = json.loads((CONTRACT / f"{name}.json").read_text())
    assert "RECORDED" in data["_comment"]
    return data


@pytest.fixture
def one_team() -> list[DashboardFile]:
    """The dashboards of a one-team configuration (the contract's recording)."""
    return dashboard_files(load_settings(None, teams={"t1": {"name": "First team"}}))


def test_push_first_time_creates_folders_then_upserts(one_team: list[DashboardFile]) -> None:
    """404 on the folder → POST /api/folders; every dashboard POSTed with folderUid, overwrite."""
    recorded = contract("first_push")
    with ContractStub(recorded) as stub:
        result = push(one_team, stub.url, recorded["token"])
    stub.check()
    assert result.folders_created == ("cw-t1", "cw-system")
    assert result.dashboards == ("cw-t1-live", "cw-t1-athlete", "cw-gateway")


def test_push_again_is_idempotent(one_team: list[DashboardFile]) -> None:
    """Folders exist → nothing created; dashboards saved again under the same uids."""
    recorded = contract("second_push")
    with ContractStub(recorded) as stub:
        result = push(one_team, stub.url, recorded["token"])
    stub.check()
    assert (result.folders_created, result.folders_renamed) == ((), ())
    assert result.dashboards == ("cw-t1-live", "cw-t1-athlete", "cw-gateway")


def test_push_renames_a_folder_whose_team_was_renamed(one_team: list[DashboardFile]) -> None:
    """A folder with an old title is updated in place (PUT, same uid)."""
    recorded = contract("rename_folder")
    with ContractStub(recorded) as stub:
        result = push(one_team, stub.url, recorded["token"])
    stub.check()
    assert result.folders_renamed == ("cw-t1",)


def test_push_reports_grafana_refusing_the_token(one_team: list[DashboardFile]) -> None:
    """401 from Grafana becomes one GrafanaPushError line."""
    recorded = contract("unauthorized")
    with ContractStub(recorded) as stub, pytest.raises(GrafanaPushError, match="Unauthorized"):
        push(one_team, stub.url, recorded["token"])
    stub.check()


def test_push_command_pushes_the_built_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With out_dir it pushes what build wrote; the token comes from GRAFANA_TOKEN."""
    settings = load_settings(None, teams={"t1": {"name": "First team"}})
    recorded = contract("first_push")
    assert push_command(settings, tmp_path, "http://127.0.0.1:9", "x") == 1
    assert "dashboards build" in capsys.readouterr().err
    build(settings, tmp_path)
    monkeypatch.setenv("GRAFANA_TOKEN", recorded["token"])
    with ContractStub(recorded) as stub:
        assert push_command(settings, tmp_path, stub.url, None) == 0
    stub.check()
    assert "dashboard cw-gateway: saved" in capsys.readouterr().out


def test_push_command_needs_url_and_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit code 2 and one line naming what is missing."""
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    settings = load_settings(None)
    assert push_command(settings, None, None, "t") == 2
    assert push_command(settings, None, "http://127.0.0.1:9", None) == 2
    assert "GRAFANA_TOKEN" in capsys.readouterr().err


def test_the_cli_dashboards_build_end_to_end(tmp_path: Path) -> None:
    """`cuffwatch dashboards build -c example.toml --out DIR` writes the committed files."""
    args = build_parser().parse_args(
        ["dashboards", "build", "-c", str(EXAMPLE), "--out", str(tmp_path)]
    )
    assert args.func(args) == 0
    live = tmp_path / "dashboards" / "teams" / "t1" / "live.json"
    assert (
        live.read_bytes() == (GENERATED / "dashboards" / "teams" / "t1" / "live.json").read_bytes()
    )
