"""The building blocks every dashboard shares: colours, thresholds, layout, variables, headers.

Athletes are stored by id; people know them by name. A team dashboard's `$athlete` is a
custom variable built from the configuration, text = the athlete's name, value = the id
(`athlete_names`), and series and table cells keyed by an athlete id are shown by name
(`athlete_display_names`, `athlete_name_mapping`). Its time zone is the team's.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash_builders
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

from core.config import Settings
from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.queries import UTC_ZONES, Queries
from dashboards.uids import stable_uid

__all__ = [
    "ALL_ATHLETES",
    "GREEN",
    "ORANGE",
    "RED",
    "alarm_thresholds",
    "athlete_display_names",
    "athlete_name_mapping",
    "athlete_names",
    "athlete_variable",
    "bout_steps",
    "dashboard",
    "dashed_thresholds",
    "grafana_timezone",
    "pos",
    "query_variable",
    "team_dashboard",
    "thresholds",
    "thresholds_override",
    "timeseries_panel",
]

# `$athlete`'s All: every athlete in the data, configured or not (one assigned over MQTT
# only), not just the variable's options. Grafana inserts a custom all value unescaped.
ALL_ATHLETES = ".*"

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


def athlete_names(settings: Settings, team: str) -> dict[str, str]:
    """The team's configured athletes, id to the name a dashboard shows, sorted by that name.

    The configured athletes and the roster cuffs' default athletes; the name is
    `teams.T.athletes.A.name`, the id where none is given, and `name (id)` where two
    athletes share a name.
    """
    config = settings.teams[team]
    ids = set(config.athletes) | {c.athlete for c in config.cuffs.values() if c.athlete}
    configured = {a: config.athletes[a].name if a in config.athletes else "" for a in ids}
    # One line of single spaces: Grafana's option syntax ends at a line break.
    raw = {a: " ".join(name.split()) or a for a, name in configured.items()}
    shared = {n for n in raw.values() if list(raw.values()).count(n) > 1}
    names = {a: f"{n} ({a})" if n in shared else n for a, n in raw.items()}
    return dict(sorted(names.items(), key=lambda item: (item[1].casefold(), item[0])))


def _custom_value(text: str) -> str:
    """A custom variable's option text: its commas escaped (Grafana splits on `,`)."""
    return text.replace(",", "\\,")


def athlete_variable(
    names: dict[str, str], q: Queries
) -> dash_builders.CustomVariable | dash_builders.QueryVariable:
    """`$athlete`: the configured athletes, text = name, value = id; All (the default) is
    every athlete in the data. A team with no athlete configured lists the ids in the data."""
    if not names:
        return query_variable("athlete", "Athlete", q.athletes())
    return (
        dash_builders.CustomVariable("athlete")
        .label("Athlete")
        # Grafana's custom syntax `text : value` (or the value alone), comma separated; ids
        # never hold " : ".
        .values(
            ", ".join(f"{_custom_value(n)} : {a}" if n != a else a for a, n in names.items())
        )
        .options(
            [dash.VariableOption(selected=True, text="All", value="$__all")]
            + [dash.VariableOption(selected=False, text=n, value=a) for a, n in names.items()]
        )
        .multi(True)
        .include_all(True)
        .all_value(ALL_ATHLETES)
        .current(dash.VariableOption(selected=True, text="All", value="$__all"))
    )


def athlete_display_names(names: dict[str, str]) -> list[tuple[str, list[dash.DynamicConfigValue]]]:
    """Field overrides naming each athlete's series (named by id, `$tag_athlete`) by name."""
    return [
        (a, [dash.DynamicConfigValue(id_val="displayName", value=name)])
        for a, name in names.items()
        if name != a
    ]


def athlete_name_mapping(names: dict[str, str]) -> list[dash.DynamicConfigValue]:
    """An `athlete` column's override properties: a value mapping showing each configured id
    as the athlete's name (none when no athlete has a name of its own)."""
    named = [(a, name) for a, name in names.items() if name != a]
    if not named:
        return []
    options: dict[str, Any] = {
        a: dash.ValueMappingResult(text=name, index=i) for i, (a, name) in enumerate(named)
    }
    return [dash.DynamicConfigValue(id_val="mappings", value=[dash.ValueMap(options=options)])]


def grafana_timezone(settings: Settings, team: str) -> str:
    """The team's IANA time zone as a dashboard's `timezone` (`utc` for UTC)."""
    zone = settings.teams[team].timezone
    return "utc" if zone in UTC_ZONES else zone


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
    """`dashboard` titled `<team name>: title`, uid cw-<team>-<stem>, in the team's time
    zone, with $team and $athlete (names from the configuration)."""
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
        .timezone(grafana_timezone(settings, team))
        .with_variable(dash_builders.ConstantVariable("team").label("Team").value(team))
        .with_variable(athlete_variable(athlete_names(settings, team), q))
    )
