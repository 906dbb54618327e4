"""The gateway health dashboard (gateway/gateway.json): throughput, rejects, spool, refused
batches, lag, alerts."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.models import dashboard as dash

from core.config import Settings
from dashboards.influxql import InfluxQL
from dashboards.parts import (
    GREEN,
    ORANGE,
    RED,
    alarm_thresholds,
    dashboard,
    dashed_thresholds,
    query_variable,
    thresholds,
    timeseries_panel,
)
from dashboards.queries import Queries
from dashboards.uids import stable_uid
from ingest.pipeline_stats import REFUSING_S

__all__ = ["GATEWAY_UID", "gateway_dashboard"]

GATEWAY_UID = stable_uid("gateway")
GATEWAY_RANGE = "now-6h"  # a working day's sessions at a glance
GATEWAY_REFRESH = "30s"  # stats arrive every 10 s: a redraw every third one is fresh enough
# gateway_stats arrive every 10 s (SPEC §4): finer buckets would be empty and break rates.
GATEWAY_MIN_INTERVAL = "10s"
# Share of the spool cap at which the spool panel turns orange, then red.
SPOOL_WARN_SHARE = 0.5
SPOOL_CRIT_SHARE = 0.9
# Lines InfluxDB refused in an interval from which the refused panel turns red: any. A refused
# line is a reading that is not stored (it waits in <spool>/rejected/ for a human).
REFUSED_ALARM_LINES = 1


def _rate_panel(
    q: Queries, title: str, description: str, fields: Sequence[str]
) -> timeseries.Panel:
    """Per-second rates of cumulative counters, a series per instance and counter."""
    target = InfluxQL(q.counter_rates(*fields)).ref_id("A").alias("$tag_instance $col")
    return timeseries_panel(title, description, target, "cps").interval(GATEWAY_MIN_INTERVAL)


def _level_panel(
    q: Queries, title: str, description: str, *, field: str, agg: str, unit: str
) -> timeseries.Panel:
    """One gateway_stats level (`agg` per interval), a series per instance."""
    target = InfluxQL(q.gauge(field, agg)).ref_id("A").alias("$tag_instance")
    return timeseries_panel(title, description, target, unit).interval(GATEWAY_MIN_INTERVAL)


def _spool_panel(q: Queries, cap: int) -> timeseries.Panel:
    """Spool bytes against the cap: orange from half of it, red near it."""
    return (
        _level_panel(
            q,
            "Spool size",
            f"Bytes waiting in the on-disk spool; the cap is {cap} bytes.",
            field="spool_bytes",
            agg="last",
            unit="bytes",
        )
        .thresholds(
            thresholds(
                (None, GREEN), (cap * SPOOL_WARN_SHARE, ORANGE), (cap * SPOOL_CRIT_SHARE, RED)
            )
        )
        .thresholds_style(dashed_thresholds())
    )


def _refused_panel(q: Queries) -> timeseries.Panel:
    """Lines InfluxDB refused per interval, and lines of refused batches no longer kept: red
    from the first one."""
    target = (
        InfluxQL(q.counter_increase("refused", "refused_dropped"))
        .ref_id("A")
        .alias("$tag_instance $col")
    )
    return (
        timeseries_panel(
            "Refused by InfluxDB",
            "Lines InfluxDB refused as bad data per interval (kept in <spool>/rejected/ with "
            f"the server's reason; the gateway's status is degraded for {REFUSING_S / 60:g} "
            "minutes after each), "
            "and lines of refused batches deleted from there to bound it, or never saved. "
            "Anything above zero needs a look at the gateway's log.",
            target,
            "short",
        )
        .interval(GATEWAY_MIN_INTERVAL)
        .thresholds(thresholds((None, GREEN), (REFUSED_ALARM_LINES, RED)))
        .thresholds_style(alarm_thresholds())
    )


def gateway_dashboard(settings: Settings, q: Queries) -> dash.Dashboard:
    """The gateway health dashboard: throughput, rejects, spool, refused lines, lag, open
    alerts."""
    builder = (
        dashboard(
            "cuffwatch: gateway health",
            GATEWAY_UID,
            "gateway",
            description="gateway_stats (every 10 s per instance); counters are cumulative.",
            refresh=GATEWAY_REFRESH,
            time_from=GATEWAY_RANGE,
        )
        .with_variable(query_variable("instance", "Instance", q.instances()))
        .with_panel(
            _rate_panel(
                q,
                "Throughput",
                "Readings received, accepted and written to InfluxDB per second.",
                ("received", "accepted", "written"),
            )
        )
        .with_panel(
            _rate_panel(
                q,
                "Rejects and duplicates",
                "Messages rejected as invalid and QoS 1 redeliveries dropped, per second.",
                ("rejected", "duplicates"),
            )
        )
        .with_panel(_spool_panel(q, settings.spool.max_bytes))
        .with_panel(_refused_panel(q))
        .with_panel(
            _level_panel(
                q,
                "Lag",
                "Worst delay between a reading's arrival and its write, per interval.",
                field="lag_ms",
                agg="max",
                unit="ms",
            )
        )
        .with_panel(
            _level_panel(
                q,
                "Open alerts",
                "Alerts open on each gateway.",
                field="alerts_open",
                agg="last",
                unit="short",
            )
        )
    )
    return builder.build()
