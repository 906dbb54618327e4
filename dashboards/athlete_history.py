"""A team's athlete history dashboard (teams/<team>/athlete.json): bouts, band %, alerts."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

from core.config import AlertSettings, Settings
from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.parts import (
    athlete_display_names,
    athlete_name_mapping,
    athlete_names,
    bout_steps,
    pos,
    team_dashboard,
    thresholds_override,
    timeseries_panel,
)
from dashboards.queries import RECENT_BOUTS_LIMIT, UTC_ZONES, LimbKind, Queries, num

__all__ = ["history_dashboard"]

HISTORY_RANGE = "now-90d"  # some 13 weeks: enough of the weekly minutes to show a trend
HISTORY_REFRESH = "5m"  # a bout is stored when it ends; nothing here changes by the second
BAR_FILL_OPACITY = 60  # percent: the bars stay see-through, the grid visible behind a stack


def _history_panel(
    title: str,
    description: str,
    query: InfluxQL,
    unit: str,
    *,
    bars: bool = True,
    names: dict[str, str] | None = None,
) -> timeseries.Panel:
    """A half-width series per athlete (or kind): stacked bars, or lines when bars is False.

    With `names`, each athlete's series (named by its id) is shown by the athlete's name.
    """
    panel = timeseries_panel(title, description, query, unit)
    for athlete, properties in athlete_display_names(names or {}):
        panel = panel.override_by_name(athlete, properties)
    if bars:
        panel = (
            panel.draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(BAR_FILL_OPACITY)
            .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        )
    return panel


def _recent_bouts_panel(
    q: Queries, limits: AlertSettings, limbs: LimbKind, names: dict[str, str]
) -> table.Panel:
    """The latest bouts on arms (or legs) as a table, each duration coloured against that
    limb's limits.

    A table colours a cell by thresholds of its own column, the same for every row, and the
    limits differ by limb: so arms and legs get a table each, and a legal 1,000 s leg bout is
    not red for passing the arm's 900 s.
    """
    max_bout_s = (limits.arm if limbs == "arm" else limits.leg).max_bout_s
    duration = [
        thresholds_override(*bout_steps(limits.warn_bout_s, max_bout_s)),
        dash.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
        dash.DynamicConfigValue(id_val="unit", value="s"),
    ]
    panel = (
        table.Panel()
        .title(f"Recent {limbs} bouts")
        .description(
            f"Latest {RECENT_BOUTS_LIMIT} bouts on {limbs}s; duration orange from warn_bout_s "
            f"({num(limits.warn_bout_s)} s), red from the {limbs} limit max_bout_s "
            f"({num(max_bout_s)} s). Per-athlete prescriptions and the ipc protocol may set "
            "lower limits; the alerts column counts what the bout raised."
        )
        .datasource(datasource_ref())
        .grid_pos(pos(24, 8))
        .with_target(InfluxQL(q.recent_bouts(limbs)).ref_id("A").table())
        .override_by_name("duration_s", duration)
    )
    if mapping := athlete_name_mapping(names):
        panel = panel.override_by_name("athlete", mapping)
    return panel


def history_dashboard(team: str, settings: Settings, q: Queries) -> dash.Dashboard:
    """The athlete history dashboard of one team: bouts, minutes, band %, alerts.

    Days and weeks are the team's (its time zone's midnight, Monday to Monday), in the
    dashboard and in the InfluxQL buckets alike.
    """
    zone = settings.teams[team].timezone
    local = "UTC" if zone in UTC_ZONES else f"{zone} time"
    names = athlete_names(settings, team)
    limits = settings.team_alerts(team)
    builder = (
        team_dashboard(
            team,
            settings,
            q,
            stem="athlete",
            title="athlete history",
            description=f"Days and weeks are the team's ({local}); see docs/dashboards.md.",
            refresh=HISTORY_REFRESH,
            time_from=HISTORY_RANGE,
        )
        .with_panel(
            _history_panel(
                "Bouts per day",
                f"Finished occlusion bouts per day ({local}).",
                InfluxQL(q.bouts_per_day(zone)).ref_id("A").alias("$tag_athlete"),
                "short",
                names=names,
            )
        )
        .with_panel(
            _history_panel(
                "Occlusion minutes per week",
                f"Sum of bout durations per week (Monday 00:00 to Monday, {local}).",
                InfluxQL(q.minutes_per_week(zone)).ref_id("A").alias("$tag_athlete"),
                "m",
                names=names,
            )
        )
        .with_panel(
            _history_panel(
                "Pressure in band %",
                "Mean over the day's bouts of the share of time within target ± tolerance.",
                InfluxQL(q.in_band_per_day(zone)).ref_id("A").alias("$tag_athlete"),
                "percent",
                bars=False,
                names=names,
            ).max(100)
        )
        .with_panel(
            _history_panel(
                "Alerts per day",
                f"Distinct alerts per day ({local}), by kind.",
                InfluxQL(q.alerts_per_day(zone)).ref_id("A").alias("$tag_kind"),
                "short",
            )
        )
        .with_panel(_recent_bouts_panel(q, limits, "arm", names))
        .with_panel(_recent_bouts_panel(q, limits, "leg", names))
    )
    return builder.build()
