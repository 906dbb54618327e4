"""A team's squad live dashboard (teams/<team>/live.json): a row per athlete on the session."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash_builders
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

from core.config import AlertSettings, Settings
from dashboards.influxql import InfluxQL, datasource_ref
from dashboards.parts import (
    GREEN,
    RED,
    athlete_name_mapping,
    athlete_names,
    bout_steps,
    dashed_thresholds,
    pos,
    team_dashboard,
    thresholds,
    thresholds_override,
    timeseries_panel,
)
from dashboards.queries import Queries, num

__all__ = ["live_dashboard"]

LIVE_REFRESH = "5s"  # SPEC §5
LIVE_RANGE = "now-15m"  # a session's recent past: long enough to see a whole bout start
# The open-alerts tables look further back than the live range: an alert raised at the
# start of a session and still open must stay listed, and one row is stored per change only.
OPEN_ALERTS_WINDOW = "12h"
# Readings arrive about once a second; finer buckets only add empty ones.
LIVE_MIN_INTERVAL = "1s"
# Series of the legs, which have limits of their own; the panels' defaults are the arms'.
LEG_SERIES = r"^(left|right)_leg\b.*"
# The athlete of a repeated row by name (`$athlete` would be the id).
ATHLETE = "${athlete:text}"


def _pressure_panel(q: Queries, limits: AlertSettings) -> timeseries.Panel:
    """Pressure per limb against its target band, the hard ceiling as a dashed red line."""
    band = [
        dash.DynamicConfigValue(
            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
        ),
        dash.DynamicConfigValue(id_val="custom.lineWidth", value=1),
    ]
    hard_max = [thresholds_override((None, GREEN), (limits.leg.hard_max_mmhg, RED))]
    return (
        timeseries_panel(
            f"{ATHLETE}: pressure vs target band",
            f"Cuff pressure per limb against target ± {num(limits.tolerance_mmhg)} mmHg "
            "(tolerance_mmhg); the red line is the hard ceiling (arm "
            f"{num(limits.arm.hard_max_mmhg)}, leg {num(limits.leg.hard_max_mmhg)} mmHg).",
            InfluxQL(q.pressure(limits.tolerance_mmhg)).ref_id("A").alias("$tag_limb $col"),
            "mmHg",
        )
        .interval(LIVE_MIN_INTERVAL)
        .thresholds(thresholds((None, GREEN), (limits.arm.hard_max_mmhg, RED)))
        .thresholds_style(dashed_thresholds())
        .override_by_regexp(LEG_SERIES, hard_max)
        .override_by_regexp(r".* band_(low|high)$", band)
    )


def _elapsed_panel(q: Queries, limits: AlertSettings) -> bargauge.Panel:
    """The current bout's elapsed time per limb, against warn_bout_s and max_bout_s."""
    leg = [
        thresholds_override(*bout_steps(limits.warn_bout_s, limits.leg.max_bout_s)),
        dash.DynamicConfigValue(id_val="max", value=limits.leg.max_bout_s),
    ]
    return (
        bargauge.Panel()
        .title(f"{ATHLETE}: elapsed bout time")
        .description(
            f"Current bout per limb: orange at warn_bout_s ({num(limits.warn_bout_s)} s), "
            f"red at max_bout_s (arm {num(limits.arm.max_bout_s)} s, leg "
            f"{num(limits.leg.max_bout_s)} s). Per-athlete prescriptions and the ipc protocol "
            "may set lower limits; the alerts use those."
        )
        .datasource(datasource_ref())
        .grid_pos(pos(6, 8))
        .with_target(InfluxQL(q.elapsed()).ref_id("A").alias("$tag_limb"))
        .unit("s")
        .min(0)
        .max(limits.arm.max_bout_s)
        .thresholds(thresholds(*bout_steps(limits.warn_bout_s, limits.arm.max_bout_s)))
        .override_by_regexp(LEG_SERIES, leg)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _open_alerts_panel(q: Queries, names: dict[str, str], *, per_athlete: bool) -> table.Panel:
    """Unresolved alerts of one athlete (a third of a row) or of the squad (a full row), the
    athlete column showing names."""
    title = f"{ATHLETE}: open alerts" if per_athlete else "Open alerts (squad)"
    panel = (
        table.Panel()
        .title(title)
        .description(
            "Alerts whose latest stored state is not resolved (one per cuff and kind), "
            f"looking back {OPEN_ALERTS_WINDOW}."
        )
        .datasource(datasource_ref())
        .grid_pos(pos(6 if per_athlete else 24, 8 if per_athlete else 6))
        .time_from(OPEN_ALERTS_WINDOW)
        .with_target(InfluxQL(q.open_alerts(per_athlete=per_athlete)).ref_id("A").table())
    )
    if mapping := athlete_name_mapping(names):
        panel = panel.override_by_name("athlete", mapping)
    return panel


def _alert_annotations(q: Queries) -> dash_builders.AnnotationQuery:
    """Every alert change of the team as a red marker on the time series."""
    return (
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


def live_dashboard(team: str, settings: Settings, q: Queries) -> dash.Dashboard:
    """The squad live dashboard of one team: a row per athlete on the session."""
    limits = settings.team_alerts(team)
    names = athlete_names(settings, team)
    builder = (
        team_dashboard(
            team,
            settings,
            q,
            stem="live",
            title="squad live",
            description="One row per athlete with telemetry (see docs/dashboards.md); limits "
            "from the team's [alerts] configuration.",
            refresh=LIVE_REFRESH,
            time_from=LIVE_RANGE,
        )
        .annotation(_alert_annotations(q))
        .with_row(dash_builders.Row("Squad"))
        .with_panel(_open_alerts_panel(q, names, per_athlete=False))
        .with_row(dash_builders.Row(ATHLETE).repeat("athlete"))
        .with_panel(_pressure_panel(q, limits))
        .with_panel(_elapsed_panel(q, limits))
        .with_panel(_open_alerts_panel(q, names, per_athlete=True))
    )
    return builder.build()
