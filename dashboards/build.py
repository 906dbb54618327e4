"""Grafana dashboards and provisioning as code (SPEC §5), built from the configuration.

Per team: a squad live dashboard and an athlete history dashboard, in a folder of the
team's own; one gateway health dashboard. Every query is InfluxQL against the provisioned
datasource (uid `cuffwatch-influx`). Output is deterministic so that committed files diff.
"""

# ruff: noqa: S608 - the InfluxQL below is fixed templates of constants; no user input
# reaches it (Grafana fills in $team, $athlete and $timeFilter, escaping them itself).
from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import bargauge, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash_builders
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

from core.config import AlertSettings, Settings, load_settings
from dashboards.influxql import (
    DATASOURCE_UID,
    InfluxQL,
    datasource_ref,
    dump_dashboard,
    load_dashboard,
)

__all__ = [
    "DashboardFile",
    "Flavor",
    "build",
    "build_command",
    "dashboard_files",
    "folder_uid",
    "stable_uid",
]

Flavor = Literal["v1", "v2"]

# Grafana rejects uids longer than 40 characters (dashboard and folder alike).
MAX_UID_LEN = 40
# Hex digits of the hash that keeps a shortened uid unique.
UID_HASH_LEN = 8
_UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

# Where Grafana finds the generated dashboards; deploy/grafana/ mounts them there.
DEFAULT_GRAFANA_PATH = "/var/lib/grafana/dashboards/cuffwatch"

LIVE_REFRESH = "5s"  # SPEC §5
LIVE_RANGE = "now-15m"  # a session's recent past: long enough to see a whole bout start
# The open-alerts tables look further back than the live range: an alert raised at the
# start of a session and still open must stay listed, and one row is stored per change only.
OPEN_ALERTS_WINDOW = "12h"
HISTORY_RANGE = "now-90d"
HISTORY_REFRESH = "5m"
GATEWAY_RANGE = "now-6h"
GATEWAY_REFRESH = "30s"
# gateway_stats arrive every 10 s (SPEC §4): finer buckets would be empty and break rates.
GATEWAY_MIN_INTERVAL = "10s"
# Readings arrive about once a second; finer buckets only add empty ones.
LIVE_MIN_INTERVAL = "1s"
# InfluxQL's time buckets start at the epoch, a Thursday; a 4 d offset starts weeks on Monday.
WEEK_OFFSET = "4d"
# Share of the spool cap at which the spool panel turns orange, then red.
SPOOL_WARN_SHARE = 0.5
SPOOL_CRIT_SHARE = 0.9
RECENT_BOUTS_LIMIT = 500  # the history table shows the latest bouts, not years of them

TEAM = "\"team\" = '$team'"
# ${var:regex} escapes every value as a regex and joins several as (a|b): safe for any name.
ATHLETE = '"athlete" =~ /^${athlete:regex}$/'
INSTANCE = '"instance" =~ /^${instance:regex}$/'
LEG_SERIES = r"^(left|right)_leg\b.*"

GREEN, ORANGE, RED = "green", "orange", "red"


def stable_uid(*parts: str) -> str:
    """`cw-` and the parts joined by `-`, shortened with a hash to Grafana's 40 chars."""
    uid = "-".join(("cw", *parts))
    if len(uid) > MAX_UID_LEN:
        digest = hashlib.sha256(uid.encode()).hexdigest()[:UID_HASH_LEN]
        uid = f"{uid[: MAX_UID_LEN - UID_HASH_LEN - 1]}-{digest}"
    if not _UID_RE.match(uid):
        raise ValueError(f"cannot make a Grafana uid from {parts!r}")
    return uid


def folder_uid(team: str) -> str:
    """The stable uid of a team's Grafana folder."""
    return stable_uid(team)


GATEWAY_UID = stable_uid("gateway")
GATEWAY_FOLDER_UID = stable_uid("system")
GATEWAY_FOLDER_TITLE = "cuffwatch"


@dataclass(frozen=True, slots=True)
class DashboardFile:
    """One generated dashboard: where it goes, in which folder, and its JSON."""

    relpath: str  # under out_dir/dashboards/
    folder_uid: str
    folder_title: str
    model: dict[str, Any]

    @property
    def uid(self) -> str:
        """The dashboard's uid."""
        return str(self.model["uid"])


class _Queries:
    """InfluxQL of every panel, for one retention policy (empty: the database's default)."""

    def __init__(self, retention_policy: str) -> None:
        self._rp = retention_policy

    def source(self, measurement: str) -> str:
        """The FROM target, qualified by the retention policy when one is configured."""
        name = _ident(measurement)
        return f"{_ident(self._rp)}.{name}" if self._rp else name

    def athletes(self) -> str:
        """Values of the `$athlete` variable: the team's athletes."""
        return (
            f'SHOW TAG VALUES FROM {self.source("cuff_telemetry")} WITH KEY = "athlete" '
            f"WHERE {TEAM} AND $timeFilter"
        )

    def instances(self) -> str:
        """Values of the `$instance` variable: the gateways."""
        return (
            f'SHOW TAG VALUES FROM {self.source("gateway_stats")} WITH KEY = "instance" '
            "WHERE $timeFilter"
        )

    def pressure(self, tolerance: float) -> str:
        """Mean pressure and target ± tolerance per interval and limb."""
        tol = _num(tolerance)
        return (
            'SELECT mean("pressure_mmhg") AS "pressure", mean("target_mmhg") AS "target", '
            f'mean("target_mmhg") - {tol} AS "band_low", '
            f'mean("target_mmhg") + {tol} AS "band_high" '
            f"FROM {self.source('cuff_telemetry')} WHERE {TEAM} AND {ATHLETE} AND $timeFilter "
            'GROUP BY time($__interval), "limb" fill(none)'
        )

    def elapsed(self) -> str:
        """The latest elapsed_s per limb."""
        return (
            f'SELECT last("elapsed_s") AS "elapsed" FROM {self.source("cuff_telemetry")} '
            f'WHERE {TEAM} AND {ATHLETE} AND $timeFilter GROUP BY "limb"'
        )

    def open_alerts(self, *, per_athlete: bool) -> str:
        """Latest state per (cuff, kind) where it is not resolved."""
        who = f" AND {ATHLETE}" if per_athlete else ""
        return (
            'SELECT "athlete", "cuff", "kind", "severity", "state", "value", "threshold", '
            '"message" FROM (SELECT last("state") AS "state", "severity", "athlete", "value", '
            f'"threshold", "message" FROM {self.source("alert")} WHERE {TEAM}{who} '
            'AND $timeFilter GROUP BY "cuff", "kind") '
            "WHERE \"state\" != 'resolved' ORDER BY time DESC"
        )

    def alert_annotations(self) -> str:
        """Every stored alert change of the team."""
        return (
            'SELECT "message", "athlete", "kind", "severity", "state" '
            f"FROM {self.source('alert')} WHERE {TEAM} AND $timeFilter"
        )

    def bouts_per_day(self) -> str:
        """Finished bouts per UTC day and athlete."""
        return (
            f'SELECT count("duration_s") AS "bouts" FROM {self.source("occlusion_bout")} '
            f"WHERE {TEAM} AND {ATHLETE} AND $timeFilter "
            'GROUP BY time(1d), "athlete" fill(none)'
        )

    def minutes_per_week(self) -> str:
        """Occlusion minutes per Monday-based UTC week and athlete."""
        return (
            f'SELECT sum("duration_s") / 60 AS "minutes" FROM {self.source("occlusion_bout")} '
            f"WHERE {TEAM} AND {ATHLETE} AND $timeFilter "
            f'GROUP BY time(7d, {WEEK_OFFSET}), "athlete" fill(none)'
        )

    def in_band_per_day(self) -> str:
        """Mean time_in_band_pct per UTC day and athlete."""
        return (
            'SELECT mean("time_in_band_pct") AS "in_band_pct" '
            f"FROM {self.source('occlusion_bout')} WHERE {TEAM} AND {ATHLETE} AND $timeFilter "
            'GROUP BY time(1d), "athlete" fill(none)'
        )

    def alerts_per_day(self) -> str:
        """Distinct alerts per UTC day and kind."""
        return (
            f'SELECT count(distinct("alert_id")) AS "alerts" FROM {self.source("alert")} '
            f"WHERE {TEAM} AND {ATHLETE} AND $timeFilter "
            'GROUP BY time(1d), "kind" fill(none)'
        )

    def recent_bouts(self) -> str:
        """The latest bouts, newest first."""
        return (
            'SELECT "athlete", "limb", "cuff", "duration_s", "mean_pressure_mmhg", '
            '"target_mmhg", "time_in_band_pct", "alerts" '
            f"FROM {self.source('occlusion_bout')} WHERE {TEAM} AND {ATHLETE} AND $timeFilter "
            f"ORDER BY time DESC LIMIT {RECENT_BOUTS_LIMIT}"
        )

    def counter_rates(self, *fields: str) -> str:
        """Per-second rates of cumulative gateway counters, resets dropped."""
        rates = ", ".join(f'non_negative_derivative(max("{f}"), 1s) AS "{f}"' for f in fields)
        return (
            f"SELECT {rates} FROM {self.source('gateway_stats')} WHERE {INSTANCE} AND $timeFilter "
            'GROUP BY time($__interval), "instance" fill(none)'
        )

    def gauge(self, field: str, agg: str) -> str:
        """One gateway level per interval and instance."""
        return (
            f'SELECT {agg}("{field}") AS "{field}" FROM {self.source("gateway_stats")} '
            f'WHERE {INSTANCE} AND $timeFilter GROUP BY time($__interval), "instance" fill(none)'
        )


def _ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, `\\` and `"` escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: float) -> str:
    """A number as InfluxQL and Grafana JSON show it: no trailing `.0`."""
    return f"{value:g}"


def _steps(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return dash.ThresholdsConfig(
        mode=dash.ThresholdsMode.ABSOLUTE,
        steps=[dash.Threshold(value=v, color=c) for v, c in steps],
    )


def _thresholds(*steps: tuple[float | None, str]) -> dash_builders.ThresholdsConfig:
    b = dash_builders.ThresholdsConfig().mode(dash.ThresholdsMode.ABSOLUTE)
    return b.steps([dash.Threshold(value=v, color=c) for v, c in steps])


def _pos(w: int, h: int) -> dash.GridPos:
    return dash.GridPos(w=w, h=h)


def _team_variable(team: str) -> dash_builders.ConstantVariable:
    return dash_builders.ConstantVariable("team").label("Team").value(team)


def _query_variable(name: str, label: str, query: str) -> dash_builders.QueryVariable:
    return (
        dash_builders.QueryVariable(name)
        .label(label)
        .datasource(datasource_ref())
        .query(query)
        .multi(True)
        .include_all(True)
        .current(dash.VariableOption(selected=True, text="All", value="$__all"))
        .refresh(dash.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash.VariableSort.ALPHABETICAL_ASC)
    )


def _pressure_panel(q: _Queries, limits: AlertSettings) -> timeseries.Panel:
    band = [
        dash.DynamicConfigValue(
            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
        ),
        dash.DynamicConfigValue(id_val="custom.lineWidth", value=1),
    ]
    hard_max = [
        dash.DynamicConfigValue(
            id_val="thresholds", value=_steps((None, GREEN), (limits.leg.hard_max_mmhg, RED))
        )
    ]
    return (
        timeseries.Panel()
        .title("$athlete: pressure vs target band")
        .description(
            f"Cuff pressure per limb against target ± {_num(limits.tolerance_mmhg)} mmHg "
            "(tolerance_mmhg); the red line is the hard ceiling (arm "
            f"{_num(limits.arm.hard_max_mmhg)}, leg {_num(limits.leg.hard_max_mmhg)} mmHg)."
        )
        .datasource(datasource_ref())
        .grid_pos(_pos(12, 8))
        .interval(LIVE_MIN_INTERVAL)
        .with_target(
            InfluxQL(q.pressure(limits.tolerance_mmhg)).ref_id("A").alias("$tag_limb $col")
        )
        .unit("mmHg")
        .min(0)
        .thresholds(_thresholds((None, GREEN), (limits.arm.hard_max_mmhg, RED)))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
        .override_by_regexp(LEG_SERIES, hard_max)
        .override_by_regexp(r".* band_(low|high)$", band)
    )


def _elapsed_panel(q: _Queries, limits: AlertSettings) -> bargauge.Panel:
    leg = [
        dash.DynamicConfigValue(
            id_val="thresholds",
            value=_steps((None, GREEN), (limits.warn_bout_s, ORANGE), (limits.leg.max_bout_s, RED)),
        ),
        dash.DynamicConfigValue(id_val="max", value=limits.leg.max_bout_s),
    ]
    return (
        bargauge.Panel()
        .title("$athlete: elapsed bout time")
        .description(
            f"Current bout per limb: orange at warn_bout_s ({_num(limits.warn_bout_s)} s), "
            f"red at max_bout_s (arm {_num(limits.arm.max_bout_s)} s, leg "
            f"{_num(limits.leg.max_bout_s)} s). Per-athlete prescriptions and the ipc protocol "
            "may set lower limits; the alerts use those."
        )
        .datasource(datasource_ref())
        .grid_pos(_pos(6, 8))
        .with_target(InfluxQL(q.elapsed()).ref_id("A").alias("$tag_limb"))
        .unit("s")
        .min(0)
        .max(limits.arm.max_bout_s)
        .thresholds(
            _thresholds((None, GREEN), (limits.warn_bout_s, ORANGE), (limits.arm.max_bout_s, RED))
        )
        .override_by_regexp(LEG_SERIES, leg)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _open_alerts_panel(q: _Queries, *, per_athlete: bool) -> table.Panel:
    title = "$athlete: open alerts" if per_athlete else "Open alerts (squad)"
    return (
        table.Panel()
        .title(title)
        .description(
            "Alerts whose latest stored state is not resolved (one per cuff and kind), "
            f"looking back {OPEN_ALERTS_WINDOW}."
        )
        .datasource(datasource_ref())
        .grid_pos(_pos(6 if per_athlete else 24, 8 if per_athlete else 6))
        .time_from(OPEN_ALERTS_WINDOW)
        .with_target(InfluxQL(q.open_alerts(per_athlete=per_athlete)).ref_id("A").table())
    )


def live_dashboard(team: str, settings: Settings, q: _Queries) -> dash.Dashboard:
    """The squad live dashboard of one team: a row per athlete on the session."""
    limits = settings.team_alerts(team)
    name = settings.teams[team].name or team
    builder = (
        dash_builders.Dashboard(f"{name}: squad live")
        .uid(stable_uid(team, "live"))
        .description(
            "One row per athlete with telemetry (see docs/dashboards.md); limits from the "
            "team's [alerts] configuration."
        )
        .tags(["cuffwatch", team])
        .editable()
        .refresh(LIVE_REFRESH)
        .time(LIVE_RANGE, "now")
        .tooltip(dash.DashboardCursorSync.CROSSHAIR)
        .with_variable(_team_variable(team))
        .with_variable(_query_variable("athlete", "Athlete", q.athletes()))
        .annotation(
            dash_builders.AnnotationQuery()
            .name("Alerts")
            .datasource(datasource_ref())
            .enable(True)
            .icon_color(RED)
            .target(
                InfluxQL(q.alert_annotations())
                .ref_id("Anno")
                .annotation(text="message", tags=["athlete", "kind", "severity", "state"])
            )
        )
        .with_row(dash_builders.Row("Squad"))
        .with_panel(_open_alerts_panel(q, per_athlete=False))
        .with_row(dash_builders.Row("$athlete").repeat("athlete"))
        .with_panel(_pressure_panel(q, limits))
        .with_panel(_elapsed_panel(q, limits))
        .with_panel(_open_alerts_panel(q, per_athlete=True))
    )
    return builder.build()


def _history_panel(
    title: str, description: str, query: InfluxQL, unit: str, *, bars: bool = True
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .grid_pos(_pos(12, 8))
        .with_target(query)
        .unit(unit)
        .min(0)
    )
    if bars:
        panel = (
            panel.draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(60)
            .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        )
    return panel


def history_dashboard(team: str, settings: Settings, q: _Queries) -> dash.Dashboard:
    """The athlete history dashboard of one team: bouts, minutes, band %, alerts."""
    limits = settings.team_alerts(team)
    name = settings.teams[team].name or team
    bouts_table = (
        table.Panel()
        .title("Recent bouts")
        .description(
            f"Latest {RECENT_BOUTS_LIMIT} bouts; duration orange from warn_bout_s "
            f"({_num(limits.warn_bout_s)} s), red from the arm limit "
            f"({_num(limits.arm.max_bout_s)} s)."
        )
        .datasource(datasource_ref())
        .grid_pos(_pos(24, 10))
        .with_target(InfluxQL(q.recent_bouts()).ref_id("A").table())
        .override_by_name(
            "duration_s",
            [
                dash.DynamicConfigValue(
                    id_val="thresholds",
                    value=_steps(
                        (None, GREEN), (limits.warn_bout_s, ORANGE), (limits.arm.max_bout_s, RED)
                    ),
                ),
                dash.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background"}
                ),
                dash.DynamicConfigValue(id_val="unit", value="s"),
            ],
        )
    )
    builder = (
        dash_builders.Dashboard(f"{name}: athlete history")
        .uid(stable_uid(team, "athlete"))
        .description("Days and weeks are UTC (InfluxQL buckets); see docs/dashboards.md.")
        .tags(["cuffwatch", team])
        .editable()
        .timezone("utc")
        .refresh(HISTORY_REFRESH)
        .time(HISTORY_RANGE, "now")
        .tooltip(dash.DashboardCursorSync.CROSSHAIR)
        .with_variable(_team_variable(team))
        .with_variable(_query_variable("athlete", "Athlete", q.athletes()))
        .with_panel(
            _history_panel(
                "Bouts per day",
                "Finished occlusion bouts per UTC day.",
                InfluxQL(q.bouts_per_day()).ref_id("A").alias("$tag_athlete"),
                "short",
            )
        )
        .with_panel(
            _history_panel(
                "Occlusion minutes per week",
                "Sum of bout durations per week (Monday 00:00 UTC to Monday).",
                InfluxQL(q.minutes_per_week()).ref_id("A").alias("$tag_athlete"),
                "m",
            )
        )
        .with_panel(
            _history_panel(
                "Pressure in band %",
                "Mean over the day's bouts of the share of time within target ± tolerance.",
                InfluxQL(q.in_band_per_day()).ref_id("A").alias("$tag_athlete"),
                "percent",
                bars=False,
            ).max(100)
        )
        .with_panel(
            _history_panel(
                "Alerts per day",
                "Distinct alerts per UTC day, by kind.",
                InfluxQL(q.alerts_per_day()).ref_id("A").alias("$tag_kind"),
                "short",
            )
        )
        .with_panel(bouts_table)
    )
    return builder.build()


def gateway_dashboard(settings: Settings, q: _Queries) -> dash.Dashboard:
    """The gateway health dashboard: throughput, rejects, spool, lag, open alerts."""
    cap = settings.spool.max_bytes
    rate_alias = "$tag_instance $col"

    def rate_panel(title: str, description: str, fields: Sequence[str]) -> timeseries.Panel:
        return (
            timeseries.Panel()
            .title(title)
            .description(description)
            .datasource(datasource_ref())
            .grid_pos(_pos(12, 8))
            .interval(GATEWAY_MIN_INTERVAL)
            .with_target(InfluxQL(q.counter_rates(*fields)).ref_id("A").alias(rate_alias))
            .unit("cps")
            .min(0)
        )

    def level_panel(title: str, field: str, agg: str, unit: str) -> timeseries.Panel:
        return (
            timeseries.Panel()
            .title(title)
            .datasource(datasource_ref())
            .grid_pos(_pos(12, 8))
            .interval(GATEWAY_MIN_INTERVAL)
            .with_target(InfluxQL(q.gauge(field, agg)).ref_id("A").alias("$tag_instance"))
            .unit(unit)
            .min(0)
        )

    builder = (
        dash_builders.Dashboard("cuffwatch: gateway health")
        .uid(GATEWAY_UID)
        .description("gateway_stats (every 10 s per instance); counters are cumulative.")
        .tags(["cuffwatch", "gateway"])
        .editable()
        .refresh(GATEWAY_REFRESH)
        .time(GATEWAY_RANGE, "now")
        .tooltip(dash.DashboardCursorSync.CROSSHAIR)
        .with_variable(_query_variable("instance", "Instance", q.instances()))
        .with_panel(
            rate_panel(
                "Throughput",
                "Readings received, accepted and written to InfluxDB per second.",
                ("received", "accepted", "written"),
            )
        )
        .with_panel(
            rate_panel(
                "Rejects and duplicates",
                "Messages rejected as invalid and QoS 1 redeliveries dropped, per second.",
                ("rejected", "duplicates"),
            )
        )
        .with_panel(
            level_panel("Spool size", "spool_bytes", "last", "bytes")
            .description(f"Bytes waiting in the on-disk spool; the cap is {cap} bytes.")
            .thresholds(
                _thresholds(
                    (None, GREEN), (cap * SPOOL_WARN_SHARE, ORANGE), (cap * SPOOL_CRIT_SHARE, RED)
                )
            )
            .thresholds_style(
                common_builders.GraphThresholdsStyleConfig().mode(
                    common.GraphThresholdsStyleMode.DASHED
                )
            )
        )
        .with_panel(
            level_panel("Lag", "lag_ms", "max", "ms").description(
                "Worst delay between a reading's arrival and its write, per interval."
            )
        )
        .with_panel(
            level_panel("Open alerts", "alerts_open", "last", "short").description(
                "Alerts open on each gateway."
            )
        )
    )
    return builder.build()


def _finish(model: dash.Dashboard) -> dict[str, Any]:
    """Number the panels and return the SDK's canonical JSON of the dashboard.

    Decoding once through the SDK's models fills in the defaults its panel plugins give
    (table cell options and the like), so the committed JSON is a fixed point of
    unmarshal-then-marshal: nothing in it is lost on the way through the models.
    """
    for i, panel in enumerate(model.panels or [], start=1):
        panel.id_val = i  # dashboard-unique, in layout order
    return dump_dashboard(load_dashboard(dump_dashboard(model)))


def _query_source(settings: Settings) -> _Queries:
    rp = settings.influx.retention_policy if settings.influx.api == "v1" else ""
    return _Queries(rp)


def dashboard_files(settings: Settings) -> list[DashboardFile]:
    """Every dashboard of the configuration, teams in sorted order, gateway last."""
    q = _query_source(settings)
    files: list[DashboardFile] = []
    for team in sorted(settings.teams):
        title = settings.teams[team].name or team
        for stem, make in (("live", live_dashboard), ("athlete", history_dashboard)):
            model = _finish(make(team, settings, q))
            files.append(DashboardFile(f"teams/{team}/{stem}.json", folder_uid(team), title, model))
    gateway = _finish(gateway_dashboard(settings, q))
    files.append(
        DashboardFile("gateway/gateway.json", GATEWAY_FOLDER_UID, GATEWAY_FOLDER_TITLE, gateway)
    )
    _check_unique_uids(files)
    return files


def _check_unique_uids(files: Sequence[DashboardFile]) -> None:
    """Refuse a uid shared by two dashboards, or by a dashboard and a folder (one uid space)."""
    dashboards = [f.uid for f in files]
    folders = {f.folder_uid for f in files}
    clashes = sorted(
        {u for u in dashboards if dashboards.count(u) > 1} | (set(dashboards) & folders)
    )
    if clashes:
        raise ValueError(f"Grafana uids used twice: {', '.join(clashes)} (rename a team)")


def to_json_text(data: object) -> str:
    """Deterministic JSON: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _num(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a YAML double-quoted one


def to_yaml_text(data: dict[str, Any], indent: int = 0) -> str:
    """Deterministic YAML for provisioning files (mappings, lists of mappings, scalars)."""
    pad = " " * indent
    out: list[str] = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, dict):
            out.append(f"{pad}{key}:\n{to_yaml_text(value, indent + 2)}")
        elif isinstance(value, list):
            out.append(f"{pad}{key}:\n")
            for item in value:
                body = to_yaml_text(item, indent + 4)
                out.append(f"{pad}  - {body[indent + 4 :]}")
        else:
            out.append(f"{pad}{key}: {_yaml_scalar(value)}\n")
    return "".join(out)


def datasource_provisioning(settings: Settings, flavor: Flavor) -> dict[str, Any]:
    """Grafana's datasource provisioning: InfluxDB in InfluxQL mode, uid cuffwatch-influx."""
    influx = settings.influx
    source: dict[str, Any] = {
        "name": "cuffwatch",
        "type": "influxdb",
        "uid": DATASOURCE_UID,
        "access": "proxy",
        "url": influx.url,
        "isDefault": False,
        "editable": False,
    }
    json_data: dict[str, Any] = {"version": "InfluxQL", "httpMode": "POST"}
    if flavor == "v1":
        json_data["dbName"] = influx.database
        source["user"] = influx.username
        source["secureJsonData"] = {"password": "$__env{INFLUX_PASSWORD}"}
    else:
        # InfluxDB 2.x/3.x answer InfluxQL for a bucket through its DBRP mapping.
        json_data["dbName"] = influx.bucket
        json_data["httpHeaderName1"] = "Authorization"
        source["secureJsonData"] = {"httpHeaderValue1": "Token $__env{INFLUX_TOKEN}"}
    source["jsonData"] = json_data
    return {"apiVersion": 1, "datasources": [source]}


def dashboard_provisioning(files: Sequence[DashboardFile], grafana_path: str) -> dict[str, Any]:
    """Grafana's dashboard provisioning: one file provider per folder."""
    providers: dict[str, dict[str, Any]] = {}
    for f in files:
        directory = f.relpath.rsplit("/", 1)[0]
        providers[directory] = {
            "name": f"cuffwatch-{directory.replace('/', '-')}",
            "orgId": 1,
            "type": "file",
            "folder": f.folder_title,
            "folderUid": f.folder_uid,
            "disableDeletion": False,
            "allowUiUpdates": False,
            "updateIntervalSeconds": 30,
            "options": {"path": f"{grafana_path}/{directory}"},
        }
    return {"apiVersion": 1, "providers": [providers[k] for k in sorted(providers)]}


def default_flavor(settings: Settings) -> Flavor:
    """The datasource variant for the configured InfluxDB: v1 for 1.x, else v2 (2.x/3.x)."""
    return "v1" if settings.influx.api == "v1" else "v2"


def build(
    settings: Settings,
    out_dir: Path,
    *,
    flavor: Flavor | None = None,
    grafana_path: str = DEFAULT_GRAFANA_PATH,
) -> list[Path]:
    """Write dashboards and provisioning under `out_dir`; return the paths written, sorted."""
    files = dashboard_files(settings)
    outputs: dict[Path, str] = {
        out_dir / "dashboards" / f.relpath: to_json_text(f.model) for f in files
    }
    provisioning = out_dir / "provisioning"
    outputs[provisioning / "datasources" / "cuffwatch.yaml"] = to_yaml_text(
        datasource_provisioning(settings, flavor or default_flavor(settings))
    )
    outputs[provisioning / "dashboards" / "cuffwatch.yaml"] = to_yaml_text(
        dashboard_provisioning(files, grafana_path)
    )
    for path in sorted(outputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs[path], encoding="utf-8")
    return sorted(outputs)


def build_command(settings: Settings, out_dir: Path) -> int:
    """`cuffwatch dashboards build`: write everything, print one line per file; exit code."""
    try:
        paths = build(settings, out_dir)
    except (OSError, ValueError) as exc:
        print(f"dashboards build: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dashboards.build CONFIG OUT_DIR`: rebuild committed output."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m dashboards.build CONFIG OUT_DIR", file=sys.stderr)
        return 2
    return build_command(load_settings(args[0]), Path(args[1]))


if __name__ == "__main__":
    raise SystemExit(main())
