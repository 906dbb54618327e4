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
- one-tap acknowledgement (`ack`, alerts.ackpush): each attempt at a push about a firing
  alert signs a link of its own, for the route's `person`; the route's service carries it
  (an ntfy button, Pushover's receipt callback or supplementary URL, a JSON field, a line of
  text). Emergency-priority Pushover pushes with a callback are sent by alerts.pushover in
  the event loop (aiohttp), everything else by Apprise in the route's thread; retries,
  timeouts and the rate limit are the same for both.

Pushes are best effort: pending ones are not persisted and `aclose()` drops them. MQTT
(retained alert topics) and InfluxDB carry every alert durably.

Route URLs carry tokens and passwords: they appear in no log, stat or repr; routes are
named by their label (`t1/0-ntfy`). Apprise's own DEBUG log prints request headers
(an ntfy token among them), so the `apprise` logger must stay at INFO or above.

Where things are: `alerts.routes` (RouteSpec, labels, routes from the configuration, the
critical priority of a URL), `alerts.render` (what a push says), `alerts.route_queue` (one
route's selection, queue, rate limit and counters), `alerts.ackpush` (ack links and how each
service carries one), `alerts.pushover` (the emergency sends Apprise cannot make),
`alerts.errors`, and here the dispatcher and its workers (retries, backoff, the per-attempt
timeout).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import apprise

from alerts import pushover
from alerts.ackpush import AckLinks, AckPlan, wants_ack
from alerts.errors import PushConfigError, PushError, PushFailedError, PushTimeoutError
from alerts.model import Transition
from alerts.notify import RouteStats
from alerts.render import Directory, PushMessage, render
from alerts.route_queue import FAILING_AFTER_FAILURES, QueuedPush, RouteQueue, about, is_critical
from alerts.routes import RouteSpec, load_apprise, routes_from_settings
from core.backoff import backoff_delays

if TYPE_CHECKING:  # alerts/ imports core.model only at run time (docs/architecture.md)
    from core.config import Settings

__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "BACKOFF_INITIAL_S",
    "BACKOFF_JITTER",
    "BACKOFF_MAX_S",
    "GIVE_UP_AFTER_S",
    "MAX_ATTEMPTS",
    "QUEUE_SIZE",
    "RATE_WINDOW_S",
    "PushConfigError",
    "PushDispatcher",
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


def _open_routes(
    routes: Mapping[str, Sequence[RouteSpec]], *, queue_size: int, window_s: float, now: float
) -> dict[str, list[RouteQueue]]:
    """Every team's route queues; PushConfigError naming each route that cannot be used."""
    by_team: dict[str, list[RouteQueue]] = {}
    problems: list[str] = []
    labels: set[str] = set()
    for team, specs in routes.items():
        for spec in specs:
            if spec.label in labels:
                problems.append(f"{spec.label}: duplicate route label")
                continue
            labels.add(spec.label)
            if spec.max_per_minute < 1:
                problems.append(f"{spec.label}: max_per_minute must be ≥ 1")
                continue
            route = RouteQueue(spec, queue_size=queue_size, window_s=window_s, now=now)
            if route.problem is not None:
                route.executor.shutdown(wait=False)
                problems.append(f"{spec.label}: {route.problem}")
                continue
            by_team.setdefault(team, []).append(route)
    if problems:
        for team_routes in by_team.values():
            for route in team_routes:
                route.executor.shutdown(wait=False)
        raise PushConfigError(problems)
    return by_team


_NO_ACK = AckPlan()


def _send_blocking(service: apprise.Apprise | dict[str, Any], message: PushMessage) -> None:
    """One delivery attempt, run in the route's thread; raises PushFailedError if not delivered.

    `service`: the route's Apprise object, or its service fields with a push's ack link built in.
    """
    if isinstance(service, dict):
        obj, problem = load_apprise(service)
        if problem is not None:  # checked with a stand-in link when the route was loaded
            raise PushFailedError("the service refused the ack link")
    else:
        obj = service
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
    """Pushes alert transitions to each team's Apprise routes; `submit()` never blocks.

    A `Notifier` (alerts.notify): `run()` in the gateway's TaskGroup, `aclose()` at shutdown.
    """

    def __init__(
        self,
        routes: Mapping[str, Sequence[RouteSpec]],
        *,
        directory: Directory | None = None,
        clock: Callable[[], float] = time.monotonic,
        queue_size: int = QUEUE_SIZE,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        max_attempts: int = MAX_ATTEMPTS,
        give_up_after_s: float = GIVE_UP_AFTER_S,
        rate_window_s: float = RATE_WINDOW_S,
        ack: AckLinks | None = None,
        pushover_api_url: str = pushover.API_URL,
    ) -> None:
        """Load every route's URL; raise PushConfigError naming the routes Apprise rejects.

        `directory`: the names and time zones pushes are written in; without one they show
        ids and UTC (`from_settings` passes the configuration's). `ack`: signs the one-tap
        ack link of each push about a firing alert; None: pushes carry none.
        `pushover_api_url`: Pushover's message API (tests point it at a local stand-in).
        """
        if queue_size < 1 or max_attempts < 1 or attempt_timeout_s <= 0 or rate_window_s <= 0:
            raise ValueError(
                "queue_size, max_attempts, attempt_timeout_s and rate_window_s must be > 0"
            )
        self._clock = clock
        self._directory = directory if directory is not None else Directory()
        self._attempt_timeout_s = attempt_timeout_s
        # The waits between one push's attempts: the nominal delay is capped from the first.
        self._retry_delays = functools.partial(
            backoff_delays, min(backoff_initial_s, backoff_max_s), backoff_max_s,
            jitter=BACKOFF_JITTER,
        )
        self._max_attempts = max_attempts
        self._give_up_after_s = give_up_after_s
        self._ack = ack
        self._pushover_api_url = pushover_api_url
        self._session: aiohttp.ClientSession | None = None  # alerts.pushover's, made on first use
        self._by_team = _open_routes(
            routes, queue_size=queue_size, window_s=rate_window_s, now=clock()
        )
        self._routes = [route for team_routes in self._by_team.values() for route in team_routes]
        self._closed = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> PushDispatcher:
        """The configuration's routes, written in its team and athlete names and time zones,
        with one-tap ack links when `[ack]` is on.

        Raises PushConfigError naming every route that cannot be used.
        """
        if "ack" not in kwargs:
            kwargs["ack"] = AckLinks.from_settings(settings)
        return cls(
            routes_from_settings(settings), directory=Directory.from_settings(settings), **kwargs
        )

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
            critical = is_critical(transition)
            for route in routes:
                if route.wants(transition):
                    route.put(QueuedPush(transition, critical, now + self._give_up_after_s), now)
        except Exception:  # a bug here must not break the alert path (the MQTT publish)
            log.exception("push: could not queue a transition")

    # -- metrics ----------------------------------------------------------------------------

    def stats(self) -> dict[str, RouteStats]:
        """Counters per route label (`last_error` is an exception class name, never a URL)."""
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
        try:
            async with asyncio.TaskGroup() as tg:
                workers = [
                    tg.create_task(self._work(route), name=f"push[{route.label}]")
                    for route in self._routes
                ]
                await self._closed.wait()
                for worker in workers:
                    worker.cancel()
        finally:
            if self._session is not None:
                await self._session.close()

    async def aclose(self) -> None:
        """Stop the workers and drop pending pushes (not persisted: MQTT and InfluxDB are)."""
        if self._closed.is_set():
            return
        self._closed.set()
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.wait([task])
        lost = sum(route.clear() for route in self._routes)
        if lost:
            log.warning("push: %d unsent push(es) dropped at shutdown", lost)

    # -- workers ----------------------------------------------------------------------------

    async def _work(self, route: RouteQueue) -> None:
        while True:
            item = await route.get()
            try:
                await self._deliver(route, item)
            except Exception:  # a bug must cost one push, not the gateway's TaskGroup
                route.failed += 1
                route.last_error = "InternalError"
                log.exception("push[%s] delivery crashed", route.label)

    async def _deliver(self, route: RouteQueue, item: QueuedPush) -> None:
        a = item.transition.alert
        now = self._clock()
        if now >= item.deadline:
            route.failed += 1
            if route.log_due("expired", now):
                log.error(
                    "push[%s] gave up on %s: queued longer than %.0f s (%d failed so far)",
                    route.label, about(a), self._give_up_after_s, route.failed,
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
                        "push[%s] rate limit (%d/min): left out %s (%d so far)",
                        route.label, route.spec.max_per_minute, about(a), route.dropped_rate,
                    )
                return
        else:
            while not route.bucket.take(now):
                await asyncio.sleep(route.bucket.wait_s(now))
                now = self._clock()
        await self._send_with_retries(route, item)

    async def _send_with_retries(self, route: RouteQueue, item: QueuedPush) -> None:
        a = item.transition.alert
        carrier = route.critical if item.critical else route.plain
        ack = self._ack if wants_ack(item.transition) else None
        done: set[str] = set()  # Pushover recipients that have this push (alerts.pushover)
        delays = self._retry_delays()
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                route.retried += 1
            suppressed = route.suppressed
            # a link per attempt: it expires link_ttl_s after the push goes out
            plan = carrier.plan(ack.make(a, route.spec.person)) if ack is not None else _NO_ACK
            message = render(item.transition, self._directory, suppressed=suppressed,
                             ack_url=plan.text_link)
            if plan.callback is not None and carrier.pushover is not None and ack is not None:
                # the token's life, less the longest an attempt takes to reach Pushover
                expire_s = max(1, min(carrier.pushover.expire_s,
                                      int(ack.ttl_s - self._attempt_timeout_s)))
                error = await self._attempt(route, functools.partial(
                    pushover.send_emergency, self._http(), self._pushover_api_url,
                    carrier.pushover, message, callback=plan.callback, expire_s=expire_s,
                    done=done,
                ))
            else:
                error = await self._attempt(route, functools.partial(
                    asyncio.get_running_loop().run_in_executor, route.executor, _send_blocking,
                    plan.service or carrier.apprise, message,
                ))
            if error is None:
                route.suppressed -= suppressed
                self._delivered(route, item)
                return
            route.last_error = error
            route.consecutive_failures += 1
            if route.consecutive_failures == FAILING_AFTER_FAILURES:
                log.error("push[%s] failing: %d attempts in a row failed (%s)",
                          route.label, route.consecutive_failures, error)
            delay = next(delays)
            if attempt >= self._max_attempts or self._clock() + delay > item.deadline:
                route.failed += 1
                log.error("push[%s] gave up on %s after %d attempt(s): %s",
                          route.label, about(a), attempt, error)
                return
            log.warning("push[%s] attempt %d failed (%s); retrying in %.1f s",
                        route.label, attempt, error, delay)
            await asyncio.sleep(delay)

    def _delivered(self, route: RouteQueue, item: QueuedPush) -> None:
        """Count a push that went out; the route is healthy again."""
        a = item.transition.alert
        route.sent += 1
        if route.failing:
            log.info("push[%s] delivering again", route.label)
        route.consecutive_failures = 0
        if (mark := route.mark(a.id)) is not None:
            mark.delivered_ms = max(mark.delivered_ms, a.updated_at_ms)
        log.debug("push[%s] sent %s (%s)", route.label, about(a), item.transition.change.value)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = pushover.new_session()
        return self._session

    async def _attempt(
        self, route: RouteQueue, send: Callable[[], Awaitable[None]]
    ) -> str | None:
        """One send (in the route's thread, or ours in the loop) within the per-attempt
        timeout; None on success, else the error's class name."""
        try:
            async with asyncio.timeout(self._attempt_timeout_s):
                await send()
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
