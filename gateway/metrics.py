"""What the gateway counts: counters, their Prometheus collector, rate-limited rejection logs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.decode import RejectReason

log = logging.getLogger("cuffwatch.gateway")
REJECT_LOG_INTERVAL_S = 60.0  # log a cuff's rejections at most once a minute (STYLE 5)
REJECT_LOG_MAX_KEYS = 10_000  # hostile ids are unbounded; the rate limiter's memory is not


@dataclass(slots=True)
class Counters:
    """Plain counters bumped on the hot path; read only when scraped or reported."""

    received: int = 0  # messages
    readings_received: int = 0
    accepted: int = 0  # readings
    rejected: int = 0  # messages
    duplicates: int = 0
    alerts_published: int = 0
    internal_errors: int = 0
    backpressure_waits: int = 0
    lag_ms_max: int = 0  # transport lag (receive − device time) of the last stats interval
    rejected_by_reason: dict[RejectReason, int] = field(
        default_factory=lambda: dict.fromkeys(RejectReason, 0)
    )


Gauges = Callable[[], dict[str, float]]
Labeled = Callable[[], Iterable[tuple[str, dict[str, str], float, str]]]


class GatewayCollector(Collector):
    """Exposes the gateway's counters and the stages' gauges in Prometheus format."""

    def __init__(self, counters: Counters, gauges: Gauges, labeled: Labeled) -> None:
        self._c = counters
        self._gauges = gauges
        self._labeled = labeled

    def collect(self) -> Iterable[Metric]:
        c = self._c
        for name, value, doc in (
            ("messages_received", c.received, "MQTT messages received"),
            ("readings_received", c.readings_received, "readings in received messages"),
            ("readings_accepted", c.accepted, "readings accepted and stored"),
            ("duplicates", c.duplicates, "QoS 1 redeliveries dropped by (cuff, seq)"),
            ("alerts_published", c.alerts_published, "alert state changes published"),
            ("internal_errors", c.internal_errors, "messages whose handling raised (a bug)"),
            ("backpressure_waits", c.backpressure_waits, "messages held while the spool was full"),
        ):
            yield CounterMetricFamily(f"cuffwatch_{name}", doc, value=value)
        rejected = CounterMetricFamily(
            "cuffwatch_messages_rejected", "messages rejected at the boundary", labels=["reason"]
        )
        for reason, n in c.rejected_by_reason.items():
            rejected.add_metric([reason.value], n)
        yield rejected
        for gauge, level in sorted(self._gauges().items()):
            yield GaugeMetricFamily(f"cuffwatch_{gauge}", gauge.replace("_", " "), value=level)
        families: dict[str, GaugeMetricFamily] = {}
        for family, labels, level, doc in self._labeled():
            fam = families.get(family)
            if fam is None:
                fam = families[family] = GaugeMetricFamily(
                    f"cuffwatch_{family}", doc, labels=sorted(labels)
                )
            fam.add_metric([labels[k] for k in sorted(labels)], level)
        yield from families.values()


class RejectLog:
    """Counts every rejection; logs each (team, cuff)'s at most once a minute, with how many
    were held back since."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def count(self, reason: RejectReason, team: str, cuff: str, detail: str, now_s: float) -> None:
        """Count one rejection and log it unless this cuff's were logged within the minute."""
        self.counters.rejected += 1
        self.counters.rejected_by_reason[reason] += 1
        key = (team, cuff)
        last, suppressed = self._last.get(key, (0.0, 0))
        if now_s - last < REJECT_LOG_INTERVAL_S:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) >= REJECT_LOG_MAX_KEYS:
            self._last.clear()
        more = f" (+{suppressed} more since last logged)" if suppressed else ""
        log.warning("rejected from %s/%s: %s: %s%s", team or "?", cuff or "?", reason.value,
                    detail, more)
        self._last[key] = (now_s, 0)
