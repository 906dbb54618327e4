"""Analyst queries (SPEC §6): the Python functions, the `query` command's formats, escaping,
and every InfluxQL example of docs/analysts.md, all against a real InfluxDB 1.x.

Parsing, quoting and an unreachable server: tests/unit/test_query.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from core.config import Settings, load_settings
from ingest.lineproto import line
from ingest.query import (
    InfluxQLClient,
    QueryError,
    alerts,
    bouts,
    query_command,
    telemetry,
)
from ops.cli import build_parser
from tests.support.lineproto_ref import alert_point
from tests.support.paths import REPO
from tests.support.servers import InfluxDB1Server, free_port

DOCS = REPO / "docs" / "analysts.md"

H0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
START, END = H0, H0 + 14 * DAY
# A name built to break naive InfluxQL: quotes, a backslash and an always-true condition.
HOSTILE = "o'brien \"x\" \\d' OR '1'='1"

# (team, athlete, cuff, limb, start, duration_s, time_in_band_pct)
BOUTS = [
    ("t1", "a-17", "c7", "left_leg", H0 + 9 * HOUR, 300.0, 90.0),
    ("t1", "a-17", "c7", "left_leg", H0 + 10 * HOUR, 1250.0, 50.0),
    ("t1", "a-17", "c7", "left_leg", H0 + DAY + 9 * HOUR, 600.0, 100.0),
    ("t1", "a-17", "c7", "left_leg", H0 + 8 * DAY + 9 * HOUR, 1200.0, 80.0),
    ("t1", "a-23", "c8", "right_arm", H0 + 9 * HOUR, 900.0, 100.0),
    ("t1", "a-23", "c8", "right_arm", H0 + 2 * DAY + 9 * HOUR, 450.0, 40.0),
    ("t1", HOSTILE, "c9", "left_arm", H0 + 12 * HOUR, 200.0, 100.0),
    ("t2", "a-17", "x1", "left_leg", H0 + 9 * HOUR, 500.0, 10.0),  # another team
    ("t1", "a-17", "c7", "left_leg", H0 + 20 * DAY, 100.0, 100.0),  # after the window
]
# Team t3: a burst of telemetry longer than a table shows, its floats as a mean or a sum of
# tenths leaves them (142.70000000000005 is what the user saw).
T3 = H0 + 3 * DAY + 8 * HOUR
T3_READINGS = 250
NOISY_PRESSURE = 142.70000000000005
# (team, athlete, cuff, kind, severity, state, alert_id, acknowledged_by, at)
ALERTS: list[tuple[str, str, str, str, str, str, str, str | None, datetime]] = [
    ("t1", "a-17", "c7", "over_time", "warning", "firing", "A1", None, H0 + 10 * HOUR),
    (
        "t1",
        "a-17",
        "c7",
        "over_time",
        "critical",
        "firing",
        "A1",
        None,
        H0 + 10 * HOUR + 5 * MINUTE,
    ),
    ("t1", "a-17", "c7", "over_time", "critical", "acknowledged", "A1", "jo", H0 + 10.1 * HOUR),
    ("t1", "a-17", "c7", "over_time", "critical", "resolved", "A1", "jo", H0 + 10.5 * HOUR),
    ("t1", "a-23", "c8", "over_pressure", "critical", "firing", "A2", None, H0 + 9 * HOUR),
    ("t1", "a-23", "c8", "over_pressure", "critical", "resolved", "A2", None, H0 + 9.2 * HOUR),
    ("t1", "a-17", "c7", "battery_low", "info", "firing", "A3", None, H0 + DAY + 9 * HOUR),
    ("t1", "a-17", "c7", "battery_low", "info", "resolved", "A3", None, H0 + DAY + 10 * HOUR),
    ("t2", "a-17", "x1", "over_time", "warning", "firing", "B1", None, H0 + 9 * HOUR),
]


def ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return round(moment.timestamp() * 1000)


def seed_lines(now: datetime) -> list[str]:
    """The known bouts and alerts, plus telemetry 10 min and 3 h before `now`."""
    lines = [
        line(
            "occlusion_bout",
            [("team", team), ("cuff", cuff), ("athlete", athlete), ("limb", limb)],
            [
                ("duration_s", duration),
                ("mean_pressure_mmhg", 130.0),
                ("target_mmhg", 132.0),
                ("time_in_band_pct", band),
                ("alerts", 1),
            ],
            ms(start),
        )
        for team, athlete, cuff, limb, start, duration, band in BOUTS
    ]
    lines += [
        alert_point(team, athlete, cuff, kind=kind, severity=severity, state=state,
                    alert_id=alert_id, ts_ms=ms(at), message=f"{kind} {state}",
                    acknowledged_by=acked)
        for team, athlete, cuff, kind, severity, state, alert_id, acked, at in ALERTS
    ]
    lines += [
        line(
            "cuff_telemetry",
            [("team", "t3"), ("cuff", "c31"), ("athlete", "a-31"), ("limb", "right_leg")],
            [
                ("pressure_mmhg", NOISY_PRESSURE),
                ("elapsed_s", 0.1 * i),
                ("battery_pct", 86.6),
                ("seq", i),
            ],
            ms(T3 + i * timedelta(seconds=1)),
        )
        for i in range(T3_READINGS)
    ]
    for ago, seq in ((timedelta(minutes=10), 2), (timedelta(hours=3), 1)):
        lines.append(
            line(
                "cuff_telemetry",
                [("team", "t1"), ("cuff", "c7"), ("athlete", "a-17"), ("limb", "left_leg")],
                [("pressure_mmhg", 131.5), ("elapsed_s", 12.0), ("inflated", True), ("seq", seq)],
                ms(now - ago),
            )
        )
    return lines


@pytest.fixture(scope="module")
def now() -> datetime:
    """The wall clock the telemetry seeds are placed against, to the millisecond."""
    return datetime.fromtimestamp(ms(datetime.now(UTC)) / 1000, tz=UTC)


@pytest.fixture(scope="module")
def seeded(influxdb: InfluxDB1Server, now: datetime) -> Iterator[str]:
    """A database with the known data (read-only for every test of this module)."""
    db = "query_seeded"
    influxdb.create_database(db)
    influxdb.write(db, "\n".join(seed_lines(now)))
    yield db
    influxdb.drop_database(db)


@pytest.fixture
def client(influxdb: InfluxDB1Server, seeded: str) -> InfluxQLClient:
    """A client of the seeded database."""
    return InfluxQLClient(url=influxdb.url, database=seeded)


@pytest.fixture
def settings(influxdb: InfluxDB1Server, seeded: str) -> Settings:
    """A v1 configuration pointing at the seeded database."""
    return load_settings(None, influx={"api": "v1", "url": influxdb.url, "database": seeded})


# -- the Python functions against the real server -----------------------------------------


def test_bouts_of_one_athlete(client: InfluxQLClient) -> None:
    """Exact rows, oldest first, columns in the documented order; other teams excluded."""
    rows = bouts(client, "t1", "a-17", start=START, end=END)
    assert rows.columns == (
        "time",
        "team",
        "cuff",
        "athlete",
        "limb",
        "duration_s",
        "mean_pressure_mmhg",
        "min_pressure_mmhg",
        "max_pressure_mmhg",
        "target_mmhg",
        "time_in_band_pct",
        "alerts",
    )
    assert [(r["time"], r["duration_s"], r["time_in_band_pct"]) for r in rows] == [
        (H0 + 9 * HOUR, 300.0, 90.0),
        (H0 + 10 * HOUR, 1250.0, 50.0),
        (H0 + DAY + 9 * HOUR, 600.0, 100.0),
        (H0 + 8 * DAY + 9 * HOUR, 1200.0, 80.0),
    ]
    first = rows[0]
    assert (first["team"], first["cuff"], first["limb"], first["alerts"]) == (
        "t1",
        "c7",
        "left_leg",
        1,
    )
    assert first["min_pressure_mmhg"] is None  # not stored: present and empty
    assert len(bouts(client, "t1", start=START, end=END)) == 7


def test_a_hostile_athlete_name_finds_only_its_own_rows(client: InfluxQLClient) -> None:
    """Quotes, a backslash and `' OR '1'='1` are data, not InfluxQL."""
    rows = bouts(client, "t1", HOSTILE, start=START, end=END)
    assert [(r["athlete"], r["duration_s"]) for r in rows] == [(HOSTILE, 200.0)]
    assert alerts(client, "t1", HOSTILE, start=START, end=END) == []
    assert bouts(client, HOSTILE, start=START, end=END) == []


def test_alerts_and_telemetry_since(client: InfluxQLClient, now: datetime) -> None:
    """Alert changes with their fields; --since counts back from now."""
    rows = alerts(client, "t1", "a-17", start=START, end=END)
    assert [(r["alert_id"], r["state"], r["severity"], r["acknowledged_by"]) for r in rows] == [
        ("A1", "firing", "warning", None),
        ("A1", "firing", "critical", None),
        ("A1", "acknowledged", "critical", "jo"),
        ("A1", "resolved", "critical", "jo"),
        ("A3", "firing", "info", None),
        ("A3", "resolved", "info", None),
    ]
    recent = telemetry(client, "t1", "a-17", since="1h")
    assert [(r["time"], r["seq"], r["inflated"]) for r in recent] == [
        (now - timedelta(minutes=10), 2, True)
    ]
    assert len(telemetry(client, "t1", since="4h")) == 2


def test_rows_to_dataframe(client: InfluxQLClient) -> None:
    """A DataFrame with the same columns and a UTC time column."""
    frame = bouts(client, "t1", "a-23", start=START, end=END).to_dataframe()
    assert list(frame.columns)[:5] == ["time", "team", "cuff", "athlete", "limb"]
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["duration_s"].tolist() == [900.0, 450.0]


def test_query_errors_are_query_errors(influxdb: InfluxDB1Server) -> None:
    """A missing database or an unreachable server raise QueryError with the reason."""
    with pytest.raises(QueryError, match="database not found"):
        bouts(InfluxQLClient(url=influxdb.url, database="no_such_db"), "t1")
    with pytest.raises(QueryError, match="cannot query"):
        bouts(InfluxQLClient(url=f"http://127.0.0.1:{free_port()}", database="x"), "t1")


# -- InfluxDB 2.x/3.x v1 compatibility: a stub of the /query endpoint ---------------------


def test_token_client_speaks_the_v1_compatibility_api() -> None:
    """GET /query with db, epoch=ms and `Authorization: Token …` (InfluxDB 2.x/3.x)."""
    seen: list[tuple[str, dict[str, list[str]], str | None]] = []
    answer = {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {
                        "name": "occlusion_bout",
                        "columns": ["time", "team", "athlete", "duration_s"],
                        "values": [[ms(H0), "t1", "a-17", 300.0]],
                    }
                ],
            }
        ]
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            seen.append((url.path, urllib.parse.parse_qs(url.query), self.headers["Authorization"]))
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="influx-v2-stub")
    thread.start()
    try:
        client = InfluxQLClient(
            url=f"http://127.0.0.1:{server.server_address[1]}/", database="bfr", token="s3cret"
        )
        rows = bouts(client, "t1", start=START, end=END)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    ((path, params, auth),) = seen
    assert (path, auth, params["db"], params["epoch"]) == (
        "/query",
        "Token s3cret",
        ["bfr"],
        ["ms"],
    )
    assert params["q"][0].startswith('SELECT "team", "cuff", "athlete", "limb", "duration_s"')
    assert [(r["time"], r["athlete"], r["duration_s"], r["cuff"]) for r in rows] == [
        (H0, "a-17", 300.0, None)
    ]


# -- the query command -------------------------------------------------------------------


FROM, TO = "2025-03-03", "2025-03-17"  # --from/--to of the command tests


def test_query_command_csv(settings: Settings, client: InfluxQLClient, tmp_path: Path) -> None:
    """A header and one line per row; times RFC 3339 UTC; missing values empty."""
    out = tmp_path / "bouts.csv"
    assert (
        query_command(settings, "bouts", "t1", "a-17", fmt="csv", out=out, start=FROM, end=TO) == 0
    )
    with out.open(newline="") as fh:
        table = list(csv.reader(fh))
    rows = bouts(client, "t1", "a-17", start=START, end=END)
    assert table[0] == list(rows.columns)
    assert [r[0] for r in table[1:]] == [
        "2025-03-03T09:00:00.000Z",
        "2025-03-03T10:00:00.000Z",
        "2025-03-04T09:00:00.000Z",
        "2025-03-11T09:00:00.000Z",
    ]
    assert [float(r[5]) for r in table[1:]] == [r["duration_s"] for r in rows]
    assert table[1][6:9] == ["130.0", "", ""]


def test_query_command_json(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON array of objects on standard output."""
    assert query_command(settings, "alerts", "t1", "a-23", fmt="json", start=FROM, end=TO) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["time"], d["kind"], d["state"]) for d in data] == [
        ("2025-03-03T09:00:00.000Z", "over_pressure", "firing"),
        ("2025-03-03T09:12:00.000Z", "over_pressure", "resolved"),
    ]
    assert list(data[0]) == [
        "time",
        "team",
        "cuff",
        "athlete",
        "kind",
        "severity",
        "state",
        "value",
        "threshold",
        "message",
        "alert_id",
        "acknowledged_by",
    ]


def test_query_command_parquet(settings: Settings, client: InfluxQLClient, tmp_path: Path) -> None:
    """A typed Parquet file holding exactly the rows."""
    out = tmp_path / "bouts.parquet"
    assert query_command(settings, "bouts", "t1", fmt="parquet", out=out, start=FROM, end=TO) == 0
    table = pq.read_table(out)
    assert str(table.schema.field("time").type) == "timestamp[ms, tz=UTC]"
    assert str(table.schema.field("alerts").type) == "int64"
    assert table.to_pylist() == list(bouts(client, "t1", start=START, end=END))


def test_query_command_table(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A rich table with every row's values."""
    assert query_command(settings, "bouts", "t1", "a-17", start=FROM, end=TO) == 0
    text = capsys.readouterr().out
    assert "bouts of team t1, athlete a-17" in text
    for value in ("2025-03-03T09:00:00.000Z", "1250.0", "left_leg", "duration_s"):
        assert value in text


# (kind, format, --since, --from, --limit) and the message expected on standard error.
BAD_INPUT = [
    (("bouts", "parquet", None, None, None), "needs --out"),
    (("sessions", "csv", None, None, None), "unknown query"),
    (("bouts", "xml", None, None, None), "unknown format"),
    (("bouts", "csv", "7x", None, None), "since"),
    (("bouts", "csv", "7d", "2025-03-03", None), "either"),
    (("bouts", "csv", None, None, -1), "--limit"),
]


@pytest.mark.parametrize(("case", "message"), BAD_INPUT)
def test_query_command_bad_input(
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str, str | None, str | None, int | None],
    message: str,
) -> None:
    """Exit code 2 and one line on standard error."""
    kind, fmt, since, start, limit = case
    assert (
        query_command(settings, kind, "t1", fmt=fmt, since=since, start=start, limit=limit) == 2
    )
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


# -- docs/analysts.md: every example runs and answers what it claims ----------------------

W0, W1 = ms(H0), ms(H0 + 7 * DAY)
EXPECTED: dict[str, Any] = {
    "minutes-per-week": {
        ("a-17", W0): (300 + 1250 + 600) / 60,
        ("a-17", W1): 20.0,
        ("a-23", W0): (900 + 450) / 60,
        (HOSTILE, W0): 200 / 60,
    },
    "in-band-weighted": {
        ("a-17", 0): (270 + 625 + 600 + 960) / 3350 * 100,
        ("a-23", 0): 80.0,
        (HOSTILE, 0): 100.0,
    },
    "in-band-per-day": {
        (None, ms(H0)): 70.0,
        (None, ms(H0 + DAY)): 100.0,
        (None, ms(H0 + 8 * DAY)): 80.0,
    },
    "alerts-per-day": {
        ("over_time", W0): 1,
        ("over_pressure", W0): 1,
        ("battery_low", ms(H0 + DAY)): 1,
    },
    "alerts-per-session": {("a-17", W0): 1, ("a-23", W0): 1, ("a-17", ms(H0 + DAY)): 1},
    "critical-acknowledged-by": [
        ("A2", "a-23", "over_pressure", None),
        ("A1", "a-17", "over_time", "jo"),
    ],
    "bouts-over-limit": [
        ("a-23", "right_arm", "c8", 900),
        ("a-17", "left_leg", "c7", 1250),
        ("a-17", "left_leg", "c7", 1200),
    ],
    "bouts-over-limit-count": {("a-17", W0): 2, ("a-23", W0): 1},  # time: the range's start
    "bouts-per-day": {
        ("a-17", W0): 2,
        ("a-17", ms(H0 + DAY)): 1,
        ("a-17", ms(H0 + 8 * DAY)): 1,
        ("a-23", W0): 1,
        ("a-23", ms(H0 + 2 * DAY)): 1,
        (HOSTILE, W0): 1,
    },
}


def doc_examples() -> dict[str, str]:
    """Every `<!-- example: name -->` InfluxQL block of docs/analysts.md."""
    pattern = re.compile(r"<!-- example: ([\w-]+) -->\n```influxql\n(.*?)```", re.S)
    return dict(pattern.findall(DOCS.read_text(encoding="utf-8")))


def test_every_documented_example_is_checked() -> None:
    """Each example has expectations here, and each expectation an example."""
    assert sorted(doc_examples()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_documented_example(influxdb: InfluxDB1Server, seeded: str, name: str) -> None:
    """The example runs on InfluxDB 1.x and returns exactly the documented answer."""
    result = influxdb.query_raw(seeded, doc_examples()[name])["results"][0]
    series = result.get("series", [])
    expected = EXPECTED[name]
    if isinstance(expected, list):
        (s,) = series
        assert [tuple(v[1:]) for v in s["values"]] == expected
        return
    got = {}
    for s in series:
        tag = next(iter(s["tags"].values())) if s.get("tags") else None
        for t, value in s["values"]:
            got[(tag, t)] = value
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)


def test_csv_and_json_writers_handle_an_empty_result(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A known team with no rows in the window: a header alone, an empty array (exit 0)."""
    empty = ("2024-01-01", "2024-01-08")
    assert query_command(settings, "bouts", "t1", fmt="csv", start=empty[0], end=empty[1]) == 0
    assert next(csv.reader(io.StringIO(capsys.readouterr().out)))[0] == "time"
    assert query_command(settings, "bouts", "t1", fmt="json", start=empty[0], end=empty[1]) == 0
    assert json.loads(capsys.readouterr().out) == []


# -- issue 15: unknown names, empty windows, rounded and bounded tables ---------------------


def with_teams(settings: Settings, *teams: str) -> Settings:
    """The seeded database's settings with these teams configured (t1 with its athletes)."""
    roster: dict[str, Any] = {t: {"name": t.title()} for t in teams}
    if "t1" in roster:
        roster["t1"]["athletes"] = {"a-17": {"name": "Jo Example"}, "a-50": {"name": "Ana Bench"}}
    return load_settings(None, influx=settings.influx.model_dump(), teams=roster)


def test_an_unknown_team_is_refused_naming_the_known_ones(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--team senoirs`: exit 2 and one line with a close match and the known teams, not an
    empty table; known = configured or stored (a team out of the config keeps its history)."""
    configured = with_teams(settings, "seniors", "t1")
    assert query_command(configured, "bouts", "senoirs", start=FROM, end=TO) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "query: unknown team 'senoirs' (did you mean 'seniors'?); "
        "known teams: seniors (Seniors), t1 (T1), t2, t3\n"
    )
    # No config: the teams stored in InfluxDB are the known ones.
    assert query_command(settings, "alerts", "t9", fmt="csv", start=FROM, end=TO) == 2
    assert capsys.readouterr().err == "query: unknown team 't9'; known teams: t1, t2, t3\n"
    # A stored team missing from the configuration still answers.
    assert query_command(configured, "bouts", "t2", fmt="json", start=FROM, end=TO) == 0
    assert [d["cuff"] for d in json.loads(capsys.readouterr().out)] == ["x1"]


def test_an_unknown_athlete_is_refused_naming_the_teams_athletes(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--athlete a-71` in t1: exit 2, the close match and t1's athletes (names from the
    config); an athlete stored but not configured is known."""
    configured = with_teams(settings, "t1")
    assert query_command(configured, "bouts", "t1", "a-71", start=FROM, end=TO) == 2
    err = capsys.readouterr().err
    assert err.startswith("query: unknown athlete 'a-71' in team t1 (did you mean 'a-17'?); ")
    assert "known athletes: a-17 (Jo Example), a-23, a-50 (Ana Bench), " in err
    assert err.count("\n") == 1
    assert query_command(configured, "bouts", "t1", "jo exampel", start=FROM, end=TO) == 2
    assert "(did you mean 'a-17'?)" in capsys.readouterr().err  # a name suggests its id
    assert query_command(configured, "bouts", "t1", "a-23", fmt="csv", start=FROM, end=TO) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 2


def test_a_known_team_without_data_in_the_window_says_so(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0, nothing on stdout for a table, "no bouts for team … between … and …" on
    stderr; the same for a configured team or athlete that never stored anything."""
    configured = with_teams(settings, "seniors", "t1")
    assert query_command(configured, "bouts", "t1", start="2024-01-01", end="2024-01-08") == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "query: no bouts for team t1 between 2024-01-01T00:00:00Z and 2024-01-08T00:00:00Z\n"
    )
    assert query_command(configured, "alerts", "seniors", since="2d") == 0
    assert re.fullmatch(
        r"query: no alerts for team seniors between \S+Z and now\n", capsys.readouterr().err
    )
    assert query_command(configured, "telemetry", "t1", "a-50", start=FROM, end=TO) == 0
    assert capsys.readouterr().err == (
        "query: no telemetry for team t1, athlete a-50, between 2025-03-03T00:00:00Z and "
        "2025-03-17T00:00:00Z\n"
    )


def test_table_rounds_to_the_sensor_resolution_and_shows_the_latest_200(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """250 readings: the table has the latest 200, pressure 142.7 (not 142.70000000000005),
    elapsed to 0.1 s, battery whole, and a line saying how to get the rest."""
    assert query_command(settings, "telemetry", "t3", start=FROM, end=TO) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert captured.err == ""
    assert "142.70000000000005" not in text
    assert text.count(" 142.7 ") == 200
    first_shown = T3 + (T3_READINGS - 200) * timedelta(seconds=1)
    stamp = first_shown.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert stamp in text
    hidden = (first_shown - timedelta(seconds=1)).isoformat(timespec="milliseconds")
    assert hidden.replace("+00:00", "Z") not in text
    assert " 5.0 " in text  # elapsed 0.1 * 50 = 5.0, shown to 0.1 s
    assert " 24.9 " in text  # 0.1 * 249 = 24.900000000000002
    assert " 87 " in text  # battery 86.6 %: whole percent
    assert text.rstrip("\n").splitlines()[-1] == (
        "showing the latest 200 of 250 rows; --limit N or --format csv for all"
    )
    assert query_command(settings, "telemetry", "t3", start=FROM, end=TO, limit=0) == 0
    text = capsys.readouterr().out
    assert text.count(" 142.7 ") == 250
    assert "showing" not in text
    assert query_command(settings, "telemetry", "t3", start=FROM, end=TO, limit=5) == 0
    assert "showing the latest 5 of 250 rows" in capsys.readouterr().out


def test_csv_and_json_carry_every_row_as_stored(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """No default limit and no rounding outside the table: the values InfluxDB holds."""
    assert query_command(settings, "telemetry", "t3", fmt="csv", start=FROM, end=TO) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 1 + T3_READINGS
    column = table[0].index("pressure_mmhg")
    assert {r[column] for r in table[1:]} == {"142.70000000000005"}
    assert query_command(settings, "telemetry", "t3", fmt="json", start=FROM, end=TO) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == T3_READINGS
    assert data[3]["elapsed_s"] == 0.1 * 3  # 0.30000000000000004
    assert query_command(settings, "telemetry", "t3", fmt="json", start=FROM, end=TO, limit=3) == 0
    assert [d["seq"] for d in json.loads(capsys.readouterr().out)] == [247, 248, 249]


def test_python_limit_keeps_the_latest_rows_and_counts_them_all(client: InfluxQLClient) -> None:
    """`limit`: the latest rows, oldest first; `total` is every matching row."""
    rows = telemetry(client, "t3", start=START, end=END, limit=10)
    assert [r["seq"] for r in rows] == list(range(240, 250))
    assert (rows.total, rows.truncated) == (250, True)
    everything = telemetry(client, "t3", start=START, end=END)
    assert (len(everything), everything.total, everything.truncated) == (250, 250, False)
    few = bouts(client, "t1", "a-23", start=START, end=END, limit=10)
    assert (len(few), few.total) == (2, 2)


def test_the_cli_query_command_end_to_end(
    influxdb: InfluxDB1Server, seeded: str, tmp_path: Path, client: InfluxQLClient
) -> None:
    """`cuffwatch query bouts … --format csv --out FILE` through the real argument parser."""
    config = tmp_path / "cuffwatch.toml"
    config.write_text(f'[influx]\napi = "v1"\nurl = "{influxdb.url}"\ndatabase = "{seeded}"\n')
    out = tmp_path / "a17.csv"
    argv = [
        "query",
        "bouts",
        "-c",
        str(config),
        "--team",
        "t1",
        "--athlete",
        "a-17",
        "--from",
        FROM,
        "--to",
        TO,
        "--format",
        "csv",
        "--out",
        str(out),
    ]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    with out.open(newline="") as fh:
        assert len(list(csv.reader(fh))) == 1 + len(
            bouts(client, "t1", "a-17", start=START, end=END)
        )
