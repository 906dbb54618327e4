"""What the gateway counts: counters, their Prometheus collector, rate-limited rejection logs."""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.decode import RejectReason

log = logging.getLogger("cuffwatch.gateway")
REJECT_LOG_INTERVAL_S = 60.0  # log a cuff's rejections at most once a minute (STYLE 5)
REJECT_LOG_MAX_KEYS = 10_000  # hostile ids are unbounded; the rate limiter's memory is not
# On top of the per-cuff limit, at most this many rejection lines per interval in all: the
# per-cuff limit alone let 100k made-up cuff ids write 100k lines (13 MB) in 8 s. 100 lines
# a minute name every cuff of a misconfigured team (a squad is tens of cuffs) in its first
# minute; past it, a whole misconfigured fleet or a flood of fake ids costs one more line
# and a summary per minute (~15 KB: ~22 MB a day if a flood never stops).
REJECT_LOG_BUDGET = 100
REJECT_LOG_DETAIL_MAX = 200  # chars of a rejection's detail logged: bytes per line bounded too


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
    ack_links_acknowledged: int = 0  # alerts acknowledged through a push's link
    ack_links_refused: int = 0  # ack endpoint requests answered 403, 404 or 410
    ack_links_limited: int = 0  # ack endpoint requests over a rate limit (429)
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
            ("ack_links_acknowledged", c.ack_links_acknowledged,
             "alerts acknowledged through a push's link (ack endpoint)"),
            ("ack_links_refused", c.ack_links_refused,
             "ack endpoint requests refused (403, 404, 410)"),
            ("ack_links_limited", c.ack_links_limited,
             "ack endpoint requests over a rate limit (429)"),
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
    were held back since, and at most REJECT_LOG_BUDGET lines a minute in all."""

    # Over the budget a rejection is still counted (and still published on `rejected`, by
    # the edge), only not logged: one line says the budget is spent, and a summary once the
    # interval is over says how many were held back, from how many ids, by reason. The
    # summary comes with the first rejection after the interval, or from `flush`, which the
    # gateway calls on a timer and, with final=True, as it stops.
    # Per interval: at most REJECT_LOG_BUDGET + 2 lines, whatever the number of ids.

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        # (team, cuff) -> (when last logged, rejections not logged since); at most
        # REJECT_LOG_MAX_KEYS of them, the first remembered forgotten first (OrderedDict:
        # popping a plain dict's first key gets slower with every key popped before it)
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._window_start: float | None = None  # when this interval of the budget began
        self._window_logged = 0
        self._held: Counter[RejectReason] = Counter()  # over the budget, this interval
        self._held_ids: set[int] = set()  # hashes of the ids held back, at most MAX_KEYS

    def count(self, reason: RejectReason, team: str, cuff: str, detail: str, now_s: float) -> None:
        """Count one rejection and log it unless this cuff's were logged within the minute,
        or the minute's budget of lines is spent."""
        self.counters.rejected += 1
        self.counters.rejected_by_reason[reason] += 1
        self.flush(now_s)
        key = (team, cuff)
        last, held = self._last.get(key, (-math.inf, 0))
        if 0.0 <= now_s - last < REJECT_LOG_INTERVAL_S:  # a clock stepped back: log again
            self._last[key] = (last, held + 1)
            return
        if self._window_start is None:
            self._window_start = now_s
        if self._window_logged >= REJECT_LOG_BUDGET:
            if not self._held:
                log.warning("rejection log budget spent (%d lines per %.0f s): further "
                            "rejections are counted but not logged until a summary at the "
                            "interval's end", REJECT_LOG_BUDGET, REJECT_LOG_INTERVAL_S)
            self._held[reason] += 1
            if len(self._held_ids) < REJECT_LOG_MAX_KEYS:
                self._held_ids.add(hash(key))
            self._remember(key, last, held + 1)  # not logged: tried again next time
            return
        self._window_logged += 1
        if len(detail) > REJECT_LOG_DETAIL_MAX:
            detail = f"{detail[:REJECT_LOG_DETAIL_MAX]}… ({len(detail)} chars)"
        more = f" (+{held} more since last logged)" if held else ""
        log.warning("rejected from %s/%s: %s: %s%s", team or "?", cuff or "?", reason.value,
                    detail, more)
        self._remember(key, now_s, 0)

    def flush(self, now_s: float, *, final: bool = False) -> None:
        """End the budget's interval if it is over (or `final`, at shutdown): log the summary
        of what it held back, if anything."""
        start = self._window_start
        if start is None or (not final and 0.0 <= now_s - start < REJECT_LOG_INTERVAL_S):
            return
        if self._held:
            n_ids = len(self._held_ids)
            ids = f"at least {n_ids}" if n_ids >= REJECT_LOG_MAX_KEYS else str(n_ids)
            by_reason = ", ".join(f"{r.value} {n}" for r, n in self._held.most_common())
            log.warning("rejections not logged over the budget (%d lines per %.0f s) in the "
                        "last %.0f s: %d, from %s distinct ids; by reason: %s",
                        REJECT_LOG_BUDGET, REJECT_LOG_INTERVAL_S, max(now_s - start, 0.0),
                        self._held.total(), ids, by_reason)
        self._window_start = None
        self._window_logged = 0
        self._held.clear()
        self._held_ids.clear()

    def _remember(self, key: tuple[str, str], last: float, held: int) -> None:
        last_by_key = self._last
        if key not in last_by_key and len(last_by_key) >= REJECT_LOG_MAX_KEYS:
            last_by_key.popitem(last=False)
        last_by_key[key] = (last, held)
