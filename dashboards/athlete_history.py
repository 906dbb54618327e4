"""A team's athlete history dashboard (teams/<team>/athlete.json): bouts, band %, alerts."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

from core.config import AlertSettings, Settings
from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.parts import (
    bout_steps,
    pos,
    team_dashboard,
    thresholds_override,
    timeseries_panel,
)
from dashboards.queries import RECENT_BOUTS_LIMIT, Queries, num

__all__ = ["history_dashboard"]

HISTORY_RANGE = "now-90d"  # some 13 weeks: enough of the weekly minutes to show a trend
HISTORY_REFRESH = "5m"  # a bout is stored when it ends; nothing here changes by the second
BAR_FILL_OPACITY = 60  # percent: the bars stay see-through, the grid visible behind a stack


def _history_panel(
    title: str, description: str, query: InfluxQL, unit: str, *, bars: bool = True
) -> timeseries.Panel:
    """A half-width series per athlete (or kind): stacked bars, or lines when bars is False."""
    panel = timeseries_panel(title, description, query, unit)
    if bars:
        panel = (
            panel.draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(BAR_FILL_OPACITY)
            .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        )
    return panel


def _recent_bouts_panel(q: Queries, limits: AlertSettings) -> table.Panel:
    """The latest bouts as a table, each duration coloured against the bout limits."""
    duration = [
        thresholds_override(*bout_steps(limits.warn_bout_s, limits.arm.max_bout_s)),
        dash.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
        dash.DynamicConfigValue(id_val="unit", value="s"),
    ]
    return (
        table.Panel()
        .title("Recent bouts")
        .description(
            f"Latest {RECENT_BOUTS_LIMIT} bouts; duration orange from warn_bout_s "
            f"({num(limits.warn_bout_s)} s), red from the arm limit "
            f"({num(limits.arm.max_bout_s)} s)."
        )
        .datasource(datasource_ref())
        .grid_pos(pos(24, 10))
        .with_target(InfluxQL(q.recent_bouts()).ref_id("A").table())
        .override_by_name("duration_s", duration)
    )


def history_dashboard(team: str, settings: Settings, q: Queries) -> dash.Dashboard:
    """The athlete history dashboard of one team: bouts, minutes, band %, alerts."""
    builder = (
        team_dashboard(
            team,
            settings,
            q,
            stem="athlete",
            title="athlete history",
            description="Days and weeks are UTC (InfluxQL buckets); see docs/dashboards.md.",
            refresh=HISTORY_REFRESH,
            time_from=HISTORY_RANGE,
        )
        .timezone("utc")
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
        .with_panel(_recent_bouts_panel(q, limits=settings.team_alerts(team)))
    )
    return builder.build()
