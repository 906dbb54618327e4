"""Dashboards as code (SPEC §5): layout and thresholds, SDK round trips, drift of the
committed output, provisioning, uids.

Every query against a real InfluxDB 1.x: tests/integration/test_dashboards_influxdb.py; the
push against a recorded Grafana contract: tests/integration/test_dashboards_grafana.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from grafana_foundation_sdk.builders import stat
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from hypothesis import given
from hypothesis import strategies as st

from core.config import ID_PATTERN, Settings, load_settings
from dashboards.build import build, build_command, dashboard_files, folder_uid, stable_uid
from dashboards.influxql import (
    DATASOURCE_UID,
    InfluxQL,
    InfluxQLQuery,
    dump_dashboard,
    load_dashboard,
)
from dashboards.push import push_command
from ops.cli import build_parser
from tests.support.dashboard_json import (
    EXAMPLE,
    GENERATED,
    every_query,
    example_boards,
    example_settings,
    panel,
    variable,
)
from tests.support.paths import REPO


@pytest.fixture(scope="module")
def example() -> Settings:
    """The example configuration the committed dashboards are built from."""
    return example_settings()


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    """Every generated dashboard of the example, by its path under dashboards/."""
    return example_boards()


# -- every query ----------------------------------------------------------------------------------


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


# -- squad live -----------------------------------------------------------------------------------


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
    assert (athlete["type"], athlete["multi"], athlete["includeAll"]) == ("custom", True, True)
    rows = [p for p in live["panels"] if p["type"] == "row"]
    assert [(r["title"], r.get("repeat")) for r in rows] == [
        ("Squad", None),
        ("${athlete:text}", "athlete"),
    ]
    assert [p["id"] for p in live["panels"]] == list(range(1, len(live["panels"]) + 1))
    (annotation,) = live["annotations"]["list"]
    assert annotation["target"]["fromAnnotations"] is True
    assert annotation["target"]["textColumn"] == "message"


def test_live_pressure_thresholds_are_the_teams_hard_ceilings(
    boards: dict[str, dict[str, Any]],
) -> None:
    """Arm ceiling by default, leg ceiling for leg series, per team."""
    for team, arm, leg in (("t1", 250, 300), ("rehab", 220, 260)):
        p = panel(boards[f"teams/{team}/live.json"], "${athlete:text}: pressure vs target band")
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, arm]
        (leg_override,) = [
            o for o in p["fieldConfig"]["overrides"] if "leg" in o["matcher"]["options"]
        ]
        assert [s["value"] for s in leg_override["properties"][0]["value"]["steps"]] == [None, leg]
        assert re.match(leg_override["matcher"]["options"], "left_leg pressure")
        assert not re.match(leg_override["matcher"]["options"], "left_arm pressure")


# -- issue 15: names, not ids; each limb's own limits; the team's time zone ----------------------


def grafana_custom_options(query: str) -> list[tuple[str, str]]:
    """(text, value) of a custom variable's query, parsed as Grafana 11 (scenes) does."""
    options = []
    for raw in re.findall(r"(?:\\,|[^,])+", query):
        text = raw.replace("\\,", ",")
        match = re.match(r"^\s*(.+)\s:\s(.+)$", text)
        if match:
            options.append((match.group(1).strip(), match.group(2).strip()))
        else:
            options.append((text.strip(), text.strip()))
    return options


def test_the_athlete_variable_shows_names_and_selects_ids(
    boards: dict[str, dict[str, Any]],
) -> None:
    """`$athlete` is a custom variable from the configuration: text = name, value = id, the
    same in its query (what Grafana parses) and its options; All is every athlete stored."""
    expected = {"t1": [("Jo Example", "a-17"), ("Sam Sample", "a-23")], "rehab": [("p-01", "p-01")]}
    for team, pairs in expected.items():
        for stem in ("live", "athlete"):
            v = variable(boards[f"teams/{team}/{stem}.json"], "athlete")
            assert v["type"] == "custom"
            assert grafana_custom_options(v["query"]) == pairs
            assert [(o["text"], o["value"]) for o in v["options"]] == [("All", "$__all"), *pairs]
            assert (v["allValue"], v["current"]["value"]) == (".*", "$__all")
            assert (v["multi"], v["includeAll"]) == (True, True)


def test_athlete_names_survive_grafanas_custom_syntax() -> None:
    """Commas, line breaks, a shared name and a roster-only athlete; no athlete at all keeps
    the ids from the data (a query variable)."""
    settings = load_settings(
        None,
        teams={
            "t": {
                "athletes": {
                    "a-1": {"name": "Smith, Jo"},
                    "a-2": {"name": "Sam\n  Lee"},
                    "a-3": {"name": "Sam Lee"},
                    "a-4": {"name": "Ana : Bell"},
                    "a-9": {},  # no name: shown by id
                },
                "cuffs": {"c1": {"athlete": "a-9", "limb": "left_arm"}},
            },
            "bare": {"name": "No athletes"},
        },
    )
    files = {f.relpath: f.model for f in dashboard_files(settings)}
    v = variable(files["teams/t/live.json"], "athlete")
    assert grafana_custom_options(v["query"]) == [
        ("a-9", "a-9"),
        ("Ana : Bell", "a-4"),
        ("Sam Lee (a-2)", "a-2"),
        ("Sam Lee (a-3)", "a-3"),
        ("Smith, Jo", "a-1"),
    ]
    bare = variable(files["teams/bare/live.json"], "athlete")
    assert bare["type"] == "query"
    assert bare["query"].startswith('SHOW TAG VALUES FROM "cuff_telemetry" WITH KEY = "athlete"')


def _overrides(p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A panel's field overrides: matcher options to properties."""
    return {o["matcher"]["options"]: o["properties"] for o in p["fieldConfig"]["overrides"]}


def test_series_and_table_cells_name_the_athletes(boards: dict[str, dict[str, Any]]) -> None:
    """History series (one per athlete id) get the athlete's name as display name; the
    athlete column of every table maps ids to names; titles use ${athlete:text}."""
    history = boards["teams/t1/athlete.json"]
    for title in ("Bouts per day", "Occlusion minutes per week", "Pressure in band %"):
        found = _overrides(panel(history, title))
        assert found["a-17"] == [{"id": "displayName", "value": "Jo Example"}], title
        assert found["a-23"] == [{"id": "displayName", "value": "Sam Sample"}], title
    live = boards["teams/t1/live.json"]
    tables = [
        panel(live, "Open alerts (squad)"),
        panel(live, "${athlete:text}: open alerts"),
        panel(history, "Recent arm bouts"),
        panel(history, "Recent leg bouts"),
    ]
    for p in tables:
        ((mapping,),) = [prop["value"] for prop in _overrides(p)["athlete"]]
        assert mapping["type"] == "value"
        texts = {k: v["text"] for k, v in mapping["options"].items()}
        assert texts == {"a-17": "Jo Example", "a-23": "Sam Sample"}, p["title"]
    titles = [p["title"] for p in live["panels"]]
    assert not [t for t in titles if "$athlete" in t]


def _steps(p: dict[str, Any], field: str) -> list[float | None]:
    (props,) = [o["properties"] for o in p["fieldConfig"]["overrides"]
                if o["matcher"]["options"] == field]
    (thresholds,) = [prop["value"] for prop in props if prop["id"] == "thresholds"]
    return [s["value"] for s in thresholds["steps"]]


def test_recent_bouts_are_coloured_against_their_own_limbs_limit(
    boards: dict[str, dict[str, Any]],
) -> None:
    """A table each for arm and leg bouts, filtered by limb, each duration red from its own
    limb's max_bout_s (the team's): a 1,000 s leg bout is no longer red."""
    for team, warn, arm, leg in (("t1", 600, 900, 1200), ("rehab", 420, 600, 900)):
        history = boards[f"teams/{team}/athlete.json"]
        assert not [p for p in history["panels"] if p["title"] == "Recent bouts"]
        arms, legs = panel(history, "Recent arm bouts"), panel(history, "Recent leg bouts")
        assert _steps(arms, "duration_s") == [None, warn, arm]
        assert _steps(legs, "duration_s") == [None, warn, leg]
        assert "_arm$/" in arms["targets"][0]["query"]
        assert "_leg$/" in legs["targets"][0]["query"]


def test_dashboards_use_the_teams_time_zone(boards: dict[str, dict[str, Any]]) -> None:
    """t1 (Europe/London): both dashboards in its zone and day/week buckets at its midnight;
    rehab (UTC by default): Grafana's utc, and no tz() clause."""
    for stem in ("live", "athlete"):
        assert boards[f"teams/t1/{stem}.json"]["timezone"] == "Europe/London"
        assert boards[f"teams/rehab/{stem}.json"]["timezone"] == "utc"
    for title in ("Bouts per day", "Occlusion minutes per week", "Pressure in band %",
                  "Alerts per day"):
        t1 = panel(boards["teams/t1/athlete.json"], title)["targets"][0]["query"]
        assert t1.endswith("fill(none) tz('Europe/London')"), title
        rehab = panel(boards["teams/rehab/athlete.json"], title)["targets"][0]["query"]
        assert "tz(" not in rehab, title


# -- the SDK, committed output, provisioning ------------------------------------------------------


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
    compose = yaml.safe_load((REPO / "deploy/grafana/compose.yaml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    here = REPO / "deploy" / "grafana"
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


# -- the commands ---------------------------------------------------------------------------------


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
