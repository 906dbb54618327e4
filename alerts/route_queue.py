"""One push route's side of the dispatcher: which transitions it takes, its bounded queue
(critical first), its rate limit, its Apprise services (and how each carries an ack link) and
thread, and its counters.

The policies are summed up in `alerts.push`; `PushDispatcher` fans transitions out to the
`RouteQueue`s and runs one worker per queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from alerts.ackpush import Carrier, carrier_for
from alerts.model import Alert, AlertState, Change, Transition
from alerts.notify import RouteStats
from alerts.routes import RouteSpec, critical_url, load_apprise
from core.model import Severity

__all__ = [
    "CRITICAL_RESERVE",
    "FAILING_AFTER_FAILURES",
    "LOG_INTERVAL_S",
    "TRACKED_ALERTS_MAX",
    "QueuedPush",
    "RouteQueue",
    "TokenBucket",
    "about",
    "is_critical",
]

# Logged as `alerts.push`, with the dispatcher: one logger names every push log line.
log = logging.getLogger("alerts.push")

# Tokens non-critical pushes leave in the bucket, so a critical one right after a burst of
# warnings goes out at once instead of waiting for a refill.
CRITICAL_RESERVE = 1
# One failed attempt is a retry, not an outage; three in a row (≈ 7 s with the default
# backoff) put the route in `failing_routes()`.
FAILING_AFTER_FAILURES = 3
# Drop and expiry warnings are logged at most this often per route (with running counts).
LOG_INTERVAL_S = 60.0
# Alerts remembered per route (for resolutions and severity upgrades): far above the open
# alerts of a squad; only bounds memory when resolutions never come (gateway restart).
TRACKED_ALERTS_MAX = 4096

# Transitions worth a push on an ordinary route (UPDATED only when the severity rises).
_PUSHED_CHANGES = frozenset({Change.RAISED, Change.REOPENED, Change.REFIRED, Change.UPDATED})


def about(a: Alert) -> str:
    """`critical over_pressure t1/c7`: an alert as log lines name it."""
    return f"{a.severity.label} {a.kind.value} {a.team}/{a.cuff}"


def is_critical(transition: Transition) -> bool:
    """A critical alert, not its resolution: jumps the queue and waits out the rate limit."""
    return (
        transition.alert.severity is Severity.CRITICAL
        and transition.alert.state is not AlertState.RESOLVED
    )


class TokenBucket:
    """`capacity` tokens, refilled at `capacity` per `window_s`; pure, clock passed in."""

    def __init__(self, capacity: int, window_s: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window_s
        self.tokens = float(capacity)
        self._stamp = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, now: float, *, keep: int = 0) -> bool:
        """Take one token if `keep` tokens are still left afterwards."""
        self._refill(now)
        if self.tokens >= 1.0 + keep:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until one token is available."""
        self._refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)


@dataclass(slots=True)
class QueuedPush:
    """One transition waiting on one route, until `deadline` (the dispatcher's clock)."""

    transition: Transition
    critical: bool
    deadline: float


@dataclass(slots=True)
class _Mark:
    """What a route has been given of one alert."""

    severity: Severity  # highest severity selected for the route
    delivered_ms: int = -1  # `updated_at_ms` of the newest message delivered


class RouteQueue:
    """One route's queue, Apprise services, thread, rate limit and counters.

    Check `problem` after construction: not None when Apprise cannot use the route's URL.
    """

    def __init__(self, spec: RouteSpec, *, queue_size: int, window_s: float, now: float) -> None:
        self.spec = spec
        self.label = spec.label
        self.queue_size = queue_size
        self.urgent: deque[QueuedPush] = deque()  # critical pushes, served first
        self.normal: deque[QueuedPush] = deque()
        self.wakeup = asyncio.Event()
        self.bucket = TokenBucket(spec.max_per_minute, window_s, now)
        self.keep = min(CRITICAL_RESERVE, spec.max_per_minute - 1)
        self.alerts: OrderedDict[str, _Mark] = OrderedDict()
        obj, self.problem = load_apprise(spec.url)
        # what ordinary pushes go through, and critical ones (the service's top priority)
        self.plain: Carrier = Carrier(obj)
        self.critical: Carrier = self.plain
        if self.problem is None:
            self.plain = self.critical = carrier_for(spec.url, obj)
            if (crit := critical_url(spec.url)) != spec.url:
                crit_obj, self.problem = load_apprise(crit)
                if self.problem is None:
                    self.critical = carrier_for(crit, crit_obj)
        # One thread per route: a hanging service blocks only its own route (Apprise's
        # shared pool has cpu+4 threads, a few dead routes could starve it).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"push[{self.label}]")
        # the counters `stats()` reports
        self.sent = self.failed = self.retried = 0
        self.dropped_full = self.dropped_rate = self.superseded = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None  # an exception class name
        self.suppressed = 0  # rate-limited since the last push that went out
        self._logged: dict[str, float] = {}

    @property
    def depth(self) -> int:
        return len(self.urgent) + len(self.normal)

    @property
    def failing(self) -> bool:
        return self.consecutive_failures >= FAILING_AFTER_FAILURES

    def stats(self) -> RouteStats:
        return RouteStats(
            sent=self.sent, failed=self.failed, retried=self.retried,
            dropped_full=self.dropped_full, dropped_rate=self.dropped_rate,
            superseded=self.superseded, queue_depth=self.depth,
            consecutive_failures=self.consecutive_failures, failing=self.failing,
            last_error=self.last_error,
        )

    def log_due(self, key: str, now: float) -> bool:
        """True at most once per LOG_INTERVAL_S for this route and key."""
        last = self._logged.get(key)
        if last is not None and now - last < LOG_INTERVAL_S:
            return False
        self._logged[key] = now
        return True

    # -- which transitions the route gets --------------------------------------------------

    def mark(self, alert_id: str) -> _Mark | None:
        return self.alerts.get(alert_id)

    def remember(self, alert_id: str, severity: Severity) -> None:
        mark = self.alerts.get(alert_id)
        if mark is None:
            self.alerts[alert_id] = _Mark(severity)
            if len(self.alerts) > TRACKED_ALERTS_MAX:
                self.alerts.popitem(last=False)
        else:
            mark.severity = max(mark.severity, severity)
            self.alerts.move_to_end(alert_id)

    def wants(self, t: Transition) -> bool:
        """Whether this route gets the transition; updates what it has been given."""
        a = t.alert
        if t.change is Change.RESOLVED or a.state is AlertState.RESOLVED:
            return self.alerts.pop(a.id, None) is not None and t.push
        if not t.push or a.severity < self.spec.min_severity:
            return False
        if self.spec.escalation:
            if not t.escalation:
                return False
        elif t.change not in _PUSHED_CHANGES:
            return False
        elif t.change is Change.UPDATED:
            mark = self.alerts.get(a.id)
            if mark is not None and a.severity <= mark.severity:
                return False
        self.remember(a.id, a.severity)
        return True

    # -- the queue ---------------------------------------------------------------------------

    def put(self, item: QueuedPush, now: float) -> None:
        """Append without blocking; when full, drop the oldest non-critical message."""
        if self.depth >= self.queue_size:
            victim = (self.normal or self.urgent).popleft()
            self.dropped_full += 1
            level = logging.ERROR if victim.critical else logging.WARNING
            if victim.critical or self.log_due("full", now):
                log.log(
                    level, "push[%s] queue full (%d): dropped %s (%d dropped so far)",
                    self.label, self.queue_size, about(victim.transition.alert),
                    self.dropped_full,
                )
        (self.urgent if item.critical else self.normal).append(item)
        self.wakeup.set()

    async def get(self) -> QueuedPush:
        while not (self.urgent or self.normal):
            self.wakeup.clear()
            await self.wakeup.wait()
        return (self.urgent or self.normal).popleft()

    def clear(self) -> int:
        """Drop every queued push and stop the route's thread; how many were dropped."""
        lost = self.depth
        self.urgent.clear()
        self.normal.clear()
        # A thread stuck in a hanging request ends at Apprise's socket timeout.
        self.executor.shutdown(wait=False, cancel_futures=True)
        return lost
