"""The InfluxQL of every panel and variable: fixed templates over the stored schema.

Grafana fills in `$team`, `$athlete`, `$instance`, `$timeFilter` and `$__interval` at query
time; everything else is a constant of this module or of the configuration. Days and weeks
are the team's: a history query given the team's IANA zone ends in `tz('Europe/London')`, so
InfluxDB starts its buckets at local midnight (and local Monday), daylight saving included.
"""

# ruff: noqa: S608 - the InfluxQL below is fixed templates of constants; no user input
# reaches it (Grafana fills in $team, $athlete and $timeFilter, escaping them itself).
from __future__ import annotations

from typing import Literal

from core.config import Settings

__all__ = ["RECENT_BOUTS_LIMIT", "UTC_ZONES", "LimbKind", "Queries", "num", "queries_for"]

LimbKind = Literal["arm", "leg"]
# IANA names of UTC itself: no tz() clause, and Grafana's own "utc".
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Etc/Universal", "Zulu",
                       "Etc/Zulu"})

# InfluxQL's time buckets start at the epoch, a Thursday; a 4 d offset starts weeks on Monday.
WEEK_OFFSET = "4d"
RECENT_BOUTS_LIMIT = 500  # the history table shows the latest bouts, not years of them

TEAM = "\"team\" = '$team'"
# ${var:regex} escapes every value as a regex and joins several as (a|b): safe for any name.
ATHLETE = '"athlete" =~ /^${athlete:regex}$/'
INSTANCE = '"instance" =~ /^${instance:regex}$/'


def num(value: float) -> str:
    """A number as InfluxQL and Grafana JSON show it: no trailing `.0`."""
    return f"{value:g}"


def _ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, `\\` and `"` escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tz(zone: str) -> str:
    """The time zone clause of day and week buckets: none for UTC, InfluxQL's default."""
    if zone in UTC_ZONES:
        return ""
    return " tz('" + zone.replace("\\", "\\\\").replace("'", "\\'") + "')"


class Queries:
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

    def _series(
        self, select: str, measurement: str, bucket: str, tag: str, zone: str = "UTC"
    ) -> str:
        """`select` from `measurement` for the team's chosen athletes, per `bucket` and `tag`
        (buckets of a day or more start at midnight in `zone`)."""
        return (
            f"SELECT {select} FROM {self.source(measurement)} "
            f"WHERE {TEAM} AND {ATHLETE} AND $timeFilter "
            f'GROUP BY time({bucket}), "{tag}" fill(none){_tz(zone)}'
        )

    def pressure(self, tolerance: float) -> str:
        """Mean pressure and target ± tolerance per interval and limb."""
        tol = num(tolerance)
        select = (
            'mean("pressure_mmhg") AS "pressure", mean("target_mmhg") AS "target", '
            f'mean("target_mmhg") - {tol} AS "band_low", '
            f'mean("target_mmhg") + {tol} AS "band_high"'
        )
        return self._series(select, "cuff_telemetry", "$__interval", "limb")

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

    def bouts_per_day(self, zone: str = "UTC") -> str:
        """Finished bouts per day (in `zone`) and athlete."""
        return self._series(
            'count("duration_s") AS "bouts"', "occlusion_bout", "1d", "athlete", zone
        )

    def minutes_per_week(self, zone: str = "UTC") -> str:
        """Occlusion minutes per Monday-based week (in `zone`) and athlete."""
        return self._series(
            'sum("duration_s") / 60 AS "minutes"',
            "occlusion_bout",
            f"7d, {WEEK_OFFSET}",
            "athlete",
            zone,
        )

    def in_band_per_day(self, zone: str = "UTC") -> str:
        """Mean time_in_band_pct per day (in `zone`) and athlete."""
        return self._series(
            'mean("time_in_band_pct") AS "in_band_pct"', "occlusion_bout", "1d", "athlete", zone
        )

    def alerts_per_day(self, zone: str = "UTC") -> str:
        """Distinct alerts per day (in `zone`) and kind."""
        return self._series(
            'count(distinct("alert_id")) AS "alerts"', "alert", "1d", "kind", zone
        )

    def recent_bouts(self, limbs: LimbKind) -> str:
        """The latest bouts on arms, or on legs, newest first (each has its own limits)."""
        return (
            'SELECT "athlete", "limb", "cuff", "duration_s", "mean_pressure_mmhg", '
            '"target_mmhg", "time_in_band_pct", "alerts" '
            f"FROM {self.source('occlusion_bout')} WHERE {TEAM} AND {ATHLETE} "
            f'AND "limb" =~ /^(left|right)_{limbs}$/ AND $timeFilter '
            f"ORDER BY time DESC LIMIT {RECENT_BOUTS_LIMIT}"
        )

    def counter_rates(self, *fields: str) -> str:
        """Per-second rates of cumulative gateway counters, resets dropped."""
        rates = ", ".join(f'non_negative_derivative(max("{f}"), 1s) AS "{f}"' for f in fields)
        return (
            f"SELECT {rates} FROM {self.source('gateway_stats')} WHERE {INSTANCE} AND $timeFilter "
            'GROUP BY time($__interval), "instance" fill(none)'
        )

    def counter_increase(self, *fields: str) -> str:
        """How much cumulative gateway counters grew per interval, resets dropped."""
        steps = ", ".join(f'non_negative_difference(max("{f}")) AS "{f}"' for f in fields)
        return (
            f"SELECT {steps} FROM {self.source('gateway_stats')} WHERE {INSTANCE} AND $timeFilter "
            'GROUP BY time($__interval), "instance" fill(none)'
        )

    def gauge(self, field: str, agg: str) -> str:
        """One gateway level per interval and instance."""
        return (
            f'SELECT {agg}("{field}") AS "{field}" FROM {self.source("gateway_stats")} '
            f'WHERE {INSTANCE} AND $timeFilter GROUP BY time($__interval), "instance" fill(none)'
        )


def queries_for(settings: Settings) -> Queries:
    """The queries for the configured InfluxDB: 1.x may name a retention policy, 2.x/3.x not."""
    rp = settings.influx.retention_policy if settings.influx.api == "v1" else ""
    return Queries(rp)
