"""Push delivery of alert transitions to staff phones through Apprise (SPEC §3, push routes).

Each team has a list of routes (Apprise URLs). `PushDispatcher.submit()` is synchronous and
never blocks or raises: it picks the routes a transition goes to and appends it to each
route's own bounded queue. One worker task per route (`push[{label}]`, run by `run()`)
sends in the route's own thread, with a per-attempt timeout, jittered exponential backoff
and a per-route rate limit, so a slow or dead route delays neither the MQTT alert nor
another route.

Which transitions a route gets:

- nothing with `transition.push` False (backlog readings, silenced refreshes);
- ordinary routes: `raised`, `reopened`, `refired`, and `updated` to a severity above any
  already pushed for that alert, when the alert's severity ≥ the route's `min_severity`;
  `acknowledged` is not pushed (staff did it; the state is on MQTT and the dashboards) and
  `escalated` goes to escalation routes only (SPEC: "sent again to the escalation routes");
- escalation routes: only transitions with `transition.escalation` set (and severity ≥
  their `min_severity`);
- `resolved`: only to the routes that were given the alert, ordinary or escalation.

Policies (each count is in `stats()`):

- queue full (`queue_size`): the oldest non-critical message is dropped, else the oldest
  critical one; never blocks the caller.
- critical messages (a critical alert, not its resolution) jump ahead of the others.
- rate limit (`max_per_minute`, a token bucket holding a minute's worth): a critical
  message waits for a token, never dropped; any other message is dropped when the bucket
  is down to its last token (kept for a critical one), and the next push that goes out
  says how many were left out. A queued non-critical message is also skipped when a newer
  message about the same alert has already gone out (`superseded`).
- retries: up to `max_attempts` with jittered exponential backoff, and never past
  `give_up_after_s` from submission; then the message is logged as an error and counted in
  `failed`. A route with `FAILING_AFTER_FAILURES` failed attempts in a row is in
  `failing_routes()` until its next success.
- critical alerts use each service's highest priority (ntfy `max`, Pushover `emergency`,
  …) unless the route's URL sets a priority of its own; resolutions use the URL as given.

Pushes are best effort: pending ones are not persisted and `aclose()` drops them. MQTT
(retained alert topics) and InfluxDB carry every alert durably.

Route URLs carry tokens and passwords: they appear in no log, stat or repr; routes are
named by their label (`t1/0-ntfy`). Apprise's own DEBUG log prints request headers
(an ntfy token among them), so the `apprise` logger must stay at INFO or above.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import apprise

from alerts.model import AlertState, Change, Transition, iso_ms
from core.model import Severity

if TYPE_CHECKING:  # alerts/ imports core.model only at run time (docs/architecture.md)
    from core.config import Settings

__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "CRITICAL_PRIORITY",
    "GIVE_UP_AFTER_S",
    "MAX_ATTEMPTS",
    "QUEUE_SIZE",
    "PushConfigError",
    "PushDispatcher",
    "PushError",
    "PushFailedError",
    "PushMessage",
    "PushTimeoutError",
    "RouteSpec",
    "TokenBucket",
    "critical_url",
    "render",
    "route_label",
    "routes_from_settings",
]

log = logging.getLogger(__name__)

# -- tuning --------------------------------------------------------------------------------

# Messages waiting per route: a squad's worth of alerts; beyond that a route is down and
# the oldest news is the least useful.
QUEUE_SIZE = 100
# Longer than Apprise's own socket timeouts (HTTP: 4 s connect + 4 s read; SMTP: 15 s), so
# a slow but working service is not cut off; the backstop for a plugin that never returns.
ATTEMPT_TIMEOUT_S = 30.0
# The first retry comes soon (most failures are a blip: a 502 during a deploy), then
# doubling up to a minute: a push that waits longer between tries has lost its point.
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
# Each delay is drawn from [1 - JITTER, 1] × the nominal one, so routes that failed
# together (one ntfy server, one network outage) do not retry in lockstep.
BACKOFF_JITTER = 0.5
# 1 + 2 + 4 + … + 60 s ≈ 2 min of trying …
MAX_ATTEMPTS = 8
# … and never later than 5 min after the alert: staff get pushes about now (SPEC §3); an
# alert still open by then has been escalated or refired as a new push.
GIVE_UP_AFTER_S = 300.0
# `max_per_minute` is per this window; tests shorten it.
RATE_WINDOW_S = 60.0
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

# Per Apprise scheme, the query parameter and value of the service's highest priority, used
# for critical alerts when the route's URL does not set that parameter itself. Pushover's
# emergency priority repeats until acknowledged in the Pushover app; Apprise supplies its
# required interval (900 s) and expiry (3600 s) unless the URL sets `interval`/`expire`.
CRITICAL_PRIORITY: Mapping[str, tuple[str, str]] = {
    "ntfy": ("priority", "max"),
    "ntfys": ("priority", "max"),
    "pover": ("priority", "emergency"),
    "gotify": ("priority", "emergency"),
    "gotifys": ("priority", "emergency"),
    "prowl": ("priority", "emergency"),
    "psafer": ("priority", "emergency"),
    "psafers": ("priority", "emergency"),
    "join": ("priority", "emergency"),
    "opsgenie": ("priority", "emergency"),
    "bark": ("level", "critical"),
    "barks": ("level", "critical"),
}

_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]{0,15}$")

# -- errors --------------------------------------------------------------------------------


class PushError(Exception):
    """A push attempt did not deliver; the worker retries it with backoff."""


class PushFailedError(PushError):
    """The service refused the message or could not be reached (Apprise does not say which)."""


class PushTimeoutError(PushError):
    """No outcome within the per-attempt timeout; the attempt's thread may still be running."""


class PushConfigError(ValueError):
    """Routes Apprise cannot use; `problems` holds one line per route, by label, no URL."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- routes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec:
    """One push route: an Apprise URL (secret) and which alerts it receives."""

    label: str  # names the route in logs and metrics; never derived from more than the scheme
    url: str = field(repr=False)  # carries tokens/passwords: never logged
    min_severity: Severity = Severity.WARNING
    escalation: bool = False  # True: receives escalations only
    max_per_minute: int = 30


def route_label(team: str, index: int, url: str) -> str:
    """`t1/0-ntfy`: team, position in the team's list, and the URL's scheme (nothing else)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return f"{team}/{index}-{scheme if _SCHEME_RE.match(scheme) else 'url'}"


def routes_from_settings(settings: Settings) -> dict[str, list[RouteSpec]]:
    """Every team's push routes from the configuration (reads `url_file` secrets)."""
    out: dict[str, list[RouteSpec]] = {}
    problems: list[str] = []
    for team_id, team in settings.teams.items():
        specs: list[RouteSpec] = []
        for index, route in enumerate(team.routes):
            try:
                url = route.secret_url()
            except OSError as exc:
                problems.append(f"teams.{team_id}.routes[{index}]: url_file unreadable: {exc}")
                continue
            specs.append(
                RouteSpec(
                    label=route_label(team_id, index, url),
                    url=url,
                    min_severity=route.severity,
                    escalation=route.escalation,
                    max_per_minute=route.max_per_minute,
                )
            )
        out[team_id] = specs
    if problems:
        raise PushConfigError(problems)
    return out


def critical_url(url: str) -> str:
    """`url` with its service's highest priority added, unless it sets that parameter."""
    parts = urlsplit(url)
    rule = CRITICAL_PRIORITY.get(parts.scheme.lower())
    if rule is None:
        return url
    key, value = rule
    if any(k.lower() == key for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return url
    query = f"{parts.query}&{key}={value}" if parts.query else f"{key}={value}"
    return urlunsplit(parts._replace(query=query))


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushMessage:
    """What one push says: title, body and Apprise notification type."""

    title: str
    body: str
    notify_type: apprise.NotifyType


_NOTIFY_TYPE = {
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.INFO: apprise.NotifyType.INFO,
}


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def render(transition: Transition, *, suppressed: int = 0) -> PushMessage:
    """Title `CRITICAL over_pressure — a-17 left_leg` (or `RESOLVED …`) and a short body."""
    a = transition.alert
    who = " ".join(p for p in (a.athlete, a.limb) if p) or f"cuff {a.cuff}"
    where = f"team {a.team} · cuff {a.cuff}"
    if a.state is AlertState.RESOLVED:
        title = f"RESOLVED {a.kind.value} — {who}"
        lasted = _duration((a.updated_at_ms - a.started_at_ms) / 1000.0)
        status = f"resolved {iso_ms(a.updated_at_ms)} after {lasted} · {where}"
        notify_type = apprise.NotifyType.SUCCESS
    else:
        title = f"{a.severity.name} {a.kind.value} — {who}"
        if transition.escalation:
            title += " (escalated)"
        status = f"{a.state.value} since {iso_ms(a.started_at_ms)} · {transition.change.value}"
        if a.acknowledged_by:
            status += f" · acknowledged by {a.acknowledged_by}"
        status += f" · {where}"
        notify_type = _NOTIFY_TYPE[a.severity]
    lines = [a.message, status] if a.message else [status]
    if suppressed:
        lines.append(
            f"(+{suppressed} earlier push(es) left out by the rate limit; see the dashboard)"
        )
    return PushMessage(title=title, body="\n".join(lines), notify_type=notify_type)


# -- rate limit ----------------------------------------------------------------------------


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


# -- the dispatcher --------------------------------------------------------------------------


def _is_critical(transition: Transition) -> bool:
    return (
        transition.alert.severity is Severity.CRITICAL
        and transition.alert.state is not AlertState.RESOLVED
    )


@dataclass(slots=True)
class _Item:
    transition: Transition
    critical: bool
    deadline: float


@dataclass(slots=True)
class _Mark:
    """What a route has been given of one alert."""

    severity: Severity  # highest severity selected for the route
    delivered_ms: int = -1  # `updated_at_ms` of the newest message delivered


# Transitions worth a push on an ordinary route (UPDATED only when the severity rises).
_PUSHED_CHANGES = frozenset({Change.RAISED, Change.REOPENED, Change.REFIRED, Change.UPDATED})


class _Route:
    """One route's queue, Apprise objects, thread, rate limit and counters."""

    def __init__(
        self, team: str, spec: RouteSpec, *, queue_size: int, window_s: float, now: float
    ) -> None:
        self.team = team
        self.spec = spec
        self.label = spec.label
        self.queue_size = queue_size
        self.urgent: deque[_Item] = deque()
        self.normal: deque[_Item] = deque()
        self.wakeup = asyncio.Event()
        self.bucket = TokenBucket(spec.max_per_minute, window_s, now)
        self.keep = min(CRITICAL_RESERVE, spec.max_per_minute - 1)
        self.alerts: OrderedDict[str, _Mark] = OrderedDict()
        self.apprise, problem = _load(spec.url)
        self.critical_apprise = self.apprise
        if problem is None and (crit := critical_url(spec.url)) != spec.url:
            self.critical_apprise, problem = _load(crit)
        self.problem = problem
        # One thread per route: a hanging service blocks only its own route (Apprise's
        # shared pool has cpu+4 threads, a few dead routes could starve it).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"push[{self.label}]")
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.dropped_full = 0
        self.dropped_rate = 0
        self.superseded = 0
        self.suppressed = 0  # rate-limited since the last push that went out
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._logged: dict[str, float] = {}

    @property
    def depth(self) -> int:
        return len(self.urgent) + len(self.normal)

    @property
    def failing(self) -> bool:
        return self.consecutive_failures >= FAILING_AFTER_FAILURES

    def log_due(self, key: str, now: float) -> bool:
        """True at most once per LOG_INTERVAL_S for this route and key."""
        last = self._logged.get(key)
        if last is not None and now - last < LOG_INTERVAL_S:
            return False
        self._logged[key] = now
        return True

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

    def put(self, item: _Item, now: float) -> None:
        """Append without blocking; when full, drop the oldest non-critical message."""
        if self.depth >= self.queue_size:
            victim = (self.normal or self.urgent).popleft()
            self.dropped_full += 1
            level = logging.ERROR if victim.critical else logging.WARNING
            if victim.critical or self.log_due("full", now):
                va = victim.transition.alert
                log.log(
                    level,
                    "push[%s] queue full (%d): dropped %s %s %s/%s (%d dropped so far)",
                    self.label, self.queue_size, va.severity.label, va.kind.value,
                    va.team, va.cuff, self.dropped_full,
                )
        (self.urgent if item.critical else self.normal).append(item)
        self.wakeup.set()

    async def get(self) -> _Item:
        while not (self.urgent or self.normal):
            self.wakeup.clear()
            await self.wakeup.wait()
        return (self.urgent or self.normal).popleft()

    def stats(self) -> dict[str, int | bool | str | None]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "dropped_full": self.dropped_full,
            "dropped_rate": self.dropped_rate,
            "superseded": self.superseded,
            "queue_depth": self.depth,
            "consecutive_failures": self.consecutive_failures,
            "failing": self.failing,
            "last_error": self.last_error,
        }


def _load(url: str) -> tuple[apprise.Apprise, str | None]:
    """An Apprise object holding exactly this one URL, or the reason it cannot."""
    # No Apprise-level deadline or retries (ours are per attempt), and our own User-Agent.
    asset = apprise.AppriseAsset(service_timeout=0, app_id="cuffwatch")
    obj = apprise.Apprise(asset=asset)
    with warnings.catch_warnings():
        # Loading Apprise's e-mail plugin imports the stdlib's deprecated imghdr (3.11).
        warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
        loaded = obj.add(url)
    if not loaded or len(obj) == 0:
        return obj, "Apprise cannot load this URL (unknown scheme or bad syntax)"
    if len(obj) != 1:
        return obj, "one Apprise URL per route (this one reads as several)"
    for service in obj:
        # Our token bucket is the route's rate limit; Apprise's built-in 5.5 s pause between
        # two sends of one plugin would hold a critical push behind the previous one.
        service.request_rate_per_sec = 0
    return obj, None


def _send_blocking(obj: apprise.Apprise, message: PushMessage) -> None:
    """One delivery attempt, run in the route's thread; raises PushFailedError if not delivered."""
    result = obj.notify(
        body=message.body,
        title=message.title,
        notify_type=message.notify_type,
        body_format=apprise.NotifyFormat.TEXT,
    )
    with result:
        if not result:
            raise PushFailedError(result.status.name)


class PushDispatcher:
    """Pushes alert transitions to each team's Apprise routes; `submit()` never blocks."""

    def __init__(
        self,
        routes: Mapping[str, Sequence[RouteSpec]],
        *,
        clock: Callable[[], float] = time.monotonic,
        queue_size: int = QUEUE_SIZE,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        max_attempts: int = MAX_ATTEMPTS,
        give_up_after_s: float = GIVE_UP_AFTER_S,
        rate_window_s: float = RATE_WINDOW_S,
    ) -> None:
        """Load every route's URL; raise PushConfigError naming the routes Apprise rejects."""
        if queue_size < 1 or max_attempts < 1 or attempt_timeout_s <= 0 or rate_window_s <= 0:
            raise ValueError(
                "queue_size, max_attempts, attempt_timeout_s and rate_window_s must be > 0"
            )
        self._clock = clock
        self._attempt_timeout_s = attempt_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._max_attempts = max_attempts
        self._give_up_after_s = give_up_after_s
        self._by_team: dict[str, list[_Route]] = {}
        self._routes: list[_Route] = []
        problems: list[str] = []
        labels: set[str] = set()
        now = clock()
        for team, specs in routes.items():
            for spec in specs:
                if spec.label in labels:
                    problems.append(f"{spec.label}: duplicate route label")
                    continue
                labels.add(spec.label)
                if spec.max_per_minute < 1:
                    problems.append(f"{spec.label}: max_per_minute must be ≥ 1")
                    continue
                route = _Route(team, spec, queue_size=queue_size, window_s=rate_window_s, now=now)
                if route.problem is not None:
                    route.executor.shutdown(wait=False)
                    problems.append(f"{spec.label}: {route.problem}")
                    continue
                self._routes.append(route)
                self._by_team.setdefault(team, []).append(route)
        if problems:
            for route in self._routes:
                route.executor.shutdown(wait=False)
            raise PushConfigError(problems)
        self._closed = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None

    # -- the caller's side (sync, never blocks) ---------------------------------------------

    def submit(self, transition: Transition) -> None:
        """Queue the transition on every route that gets it (see the module doc); never raises."""
        try:
            if self._closed.is_set():
                return
            routes = self._by_team.get(transition.alert.team, ())
            if not routes:
                return
            now = self._clock()
            critical = _is_critical(transition)
            for route in routes:
                if route.wants(transition):
                    route.put(_Item(transition, critical, now + self._give_up_after_s), now)
        except Exception:  # a bug here must not break the alert path (the MQTT publish)
            log.exception("push: could not queue a transition")

    # -- metrics ----------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int | bool | str | None]]:
        """Counters per route label (plain dicts; `last_error` is an exception class name)."""
        return {route.label: route.stats() for route in self._routes}

    def failing_routes(self) -> list[str]:
        """Labels of the routes whose last FAILING_AFTER_FAILURES attempts all failed."""
        return [route.label for route in self._routes if route.failing]

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run one worker per route until `aclose()`; run it in the gateway's TaskGroup."""
        if self._run_task is not None:
            raise RuntimeError("PushDispatcher.run() is already running or has run")
        self._run_task = asyncio.current_task()
        async with asyncio.TaskGroup() as tg:
            workers = [
                tg.create_task(self._work(route), name=f"push[{route.label}]")
                for route in self._routes
            ]
            await self._closed.wait()
            for worker in workers:
                worker.cancel()

    async def aclose(self) -> None:
        """Stop the workers and drop pending pushes (not persisted: MQTT and InfluxDB are)."""
        if self._closed.is_set():
            return
        self._closed.set()
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.wait([task])
        lost = 0
        for route in self._routes:
            lost += route.depth
            route.urgent.clear()
            route.normal.clear()
            # A thread stuck in a hanging request ends at Apprise's socket timeout.
            route.executor.shutdown(wait=False, cancel_futures=True)
        if lost:
            log.warning("push: %d unsent push(es) dropped at shutdown", lost)

    # -- workers ----------------------------------------------------------------------------

    async def _work(self, route: _Route) -> None:
        while True:
            item = await route.get()
            try:
                await self._deliver(route, item)
            except Exception:  # a bug must cost one push, not the gateway's TaskGroup
                route.failed += 1
                route.last_error = "InternalError"
                log.exception("push[%s] delivery crashed", route.label)

    async def _deliver(self, route: _Route, item: _Item) -> None:
        a = item.transition.alert
        now = self._clock()
        if now >= item.deadline:
            route.failed += 1
            if route.log_due("expired", now):
                log.error(
                    "push[%s] gave up on %s %s %s/%s: queued longer than %.0f s (%d failed so far)",
                    route.label, a.severity.label, a.kind.value, a.team, a.cuff,
                    self._give_up_after_s, route.failed,
                )
            return
        mark = route.mark(a.id)
        if not item.critical:
            if mark is not None and mark.delivered_ms > a.updated_at_ms:
                route.superseded += 1
                return
            if not route.bucket.take(now, keep=route.keep):
                route.dropped_rate += 1
                route.suppressed += 1
                if route.log_due("rate", now):
                    log.warning(
                        "push[%s] rate limit (%d/min): left out %s %s %s/%s (%d so far)",
                        route.label, route.spec.max_per_minute, a.severity.label, a.kind.value,
                        a.team, a.cuff, route.dropped_rate,
                    )
                return
        else:
            while not route.bucket.take(now):
                await asyncio.sleep(route.bucket.wait_s(now))
                now = self._clock()
        await self._send_with_retries(route, item)

    async def _send_with_retries(self, route: _Route, item: _Item) -> None:
        a = item.transition.alert
        obj = route.critical_apprise if item.critical else route.apprise
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                route.retried += 1
            suppressed = route.suppressed
            message = render(item.transition, suppressed=suppressed)
            error = await self._attempt(route, obj, message)
            if error is None:
                route.sent += 1
                route.suppressed -= suppressed
                if route.failing:
                    log.info("push[%s] delivering again", route.label)
                route.consecutive_failures = 0
                if (mark := route.mark(a.id)) is not None:
                    mark.delivered_ms = max(mark.delivered_ms, a.updated_at_ms)
                log.debug(
                    "push[%s] sent %s %s %s/%s (%s)",
                    route.label, a.severity.label, a.kind.value, a.team, a.cuff,
                    item.transition.change.value,
                )
                return
            route.last_error = error
            route.consecutive_failures += 1
            if route.consecutive_failures == FAILING_AFTER_FAILURES:
                log.error("push[%s] failing: %d attempts in a row failed (%s)",
                          route.label, route.consecutive_failures, error)
            delay = self._backoff(attempt)
            if attempt >= self._max_attempts or self._clock() + delay > item.deadline:
                route.failed += 1
                log.error(
                    "push[%s] gave up on %s %s %s/%s after %d attempt(s): %s",
                    route.label, a.severity.label, a.kind.value, a.team, a.cuff, attempt, error,
                )
                return
            log.warning(
                "push[%s] attempt %d failed (%s); retrying in %.1f s",
                route.label, attempt, error, delay,
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self, route: _Route, obj: apprise.Apprise, message: PushMessage
    ) -> str | None:
        """One send in the route's thread; None on success, else the error's class name."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._attempt_timeout_s):
                await loop.run_in_executor(route.executor, _send_blocking, obj, message)
        except TimeoutError:
            return PushTimeoutError.__name__
        except PushError as exc:
            return type(exc).__name__
        # Apprise or a plugin raised: a failed attempt like any other, named by its class only
        # (a message or traceback could quote the URL).
        except Exception as exc:  # noqa: BLE001
            log.debug("push[%s] send raised %s", route.label, type(exc).__name__)
            return type(exc).__name__
        return None

    def _backoff(self, attempt: int) -> float:
        nominal = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** (attempt - 1))
        return nominal * random.uniform(1.0 - BACKOFF_JITTER, 1.0)
