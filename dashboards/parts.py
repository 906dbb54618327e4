"""The building blocks every dashboard shares: colours, thresholds, layout, variables, headers."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash_builders
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

from core.config import Settings
from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.queries import Queries
from dashboards.uids import stable_uid

__all__ = [
    "GREEN",
    "ORANGE",
    "RED",
    "alarm_thresholds",
    "bout_steps",
    "dashboard",
    "dashed_thresholds",
    "pos",
    "query_variable",
    "team_dashboard",
    "thresholds",
    "thresholds_override",
    "timeseries_panel",
]

GREEN, ORANGE, RED = "green", "orange", "red"

Step = tuple[float | None, str]  # (from value, colour); None: from minus infinity


def bout_steps(warn_s: float, max_s: float) -> tuple[Step, Step, Step]:
    """A bout's length: green, orange from warn_s, red from max_s."""
    return (None, GREEN), (warn_s, ORANGE), (max_s, RED)


def thresholds_override(*steps: Step) -> dash.DynamicConfigValue:
    """Absolute thresholds as a field override's property, for the series it matches."""
    return dash.DynamicConfigValue(
        id_val="thresholds",
        value=dash.ThresholdsConfig(
            mode=dash.ThresholdsMode.ABSOLUTE,
            steps=[dash.Threshold(value=v, color=c) for v, c in steps],
        ),
    )


def thresholds(*steps: Step) -> dash_builders.ThresholdsConfig:
    """Absolute thresholds as a builder, for a panel's defaults."""
    b = dash_builders.ThresholdsConfig().mode(dash.ThresholdsMode.ABSOLUTE)
    return b.steps([dash.Threshold(value=v, color=c) for v, c in steps])


def dashed_thresholds() -> common_builders.GraphThresholdsStyleConfig:
    """Draw a time series' thresholds as dashed lines."""
    return common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)


def alarm_thresholds() -> common_builders.GraphThresholdsStyleConfig:
    """Draw a time series' thresholds as dashed lines over coloured areas (red: an alarm)."""
    return common_builders.GraphThresholdsStyleConfig().mode(
        common.GraphThresholdsStyleMode.DASHED_AND_AREA
    )


def pos(w: int, h: int) -> dash.GridPos:
    """A panel's size in grid units (24 wide); Grafana flows panels left to right."""
    return dash.GridPos(w=w, h=h)


def timeseries_panel(title: str, description: str, target: InfluxQL, unit: str) -> timeseries.Panel:
    """A half-width time series of one InfluxQL target, its axis from zero."""
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .grid_pos(pos(12, 8))
        .with_target(target)
        .unit(unit)
        .min(0)
    )


def query_variable(name: str, label: str, query: str) -> dash_builders.QueryVariable:
    """A multi-value variable from an InfluxQL query, All selected, refreshed with the range."""
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


def dashboard(
    title: str, uid: str, tag: str, *, description: str, refresh: str, time_from: str
) -> dash_builders.Dashboard:
    """An editable dashboard tagged cuffwatch and `tag`, from time_from to now, crosshair shared."""
    return (
        dash_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["cuffwatch", tag])
        .editable()
        .refresh(refresh)
        .time(time_from, "now")
        .tooltip(dash.DashboardCursorSync.CROSSHAIR)
    )


def team_dashboard(
    team: str,
    settings: Settings,
    q: Queries,
    *,
    stem: str,
    title: str,
    description: str,
    refresh: str,
    time_from: str,
) -> dash_builders.Dashboard:
    """`dashboard` titled `<team name>: title`, uid cw-<team>-<stem>, with $team and $athlete."""
    team_name = settings.teams[team].name or team
    return (
        dashboard(
            f"{team_name}: {title}",
            stable_uid(team, stem),
            team,
            description=description,
            refresh=refresh,
            time_from=time_from,
        )
        .with_variable(dash_builders.ConstantVariable("team").label("Team").value(team))
        .with_variable(query_variable("athlete", "Athlete", q.athletes()))
    )
