"""What each broker connection of a run publishes, and when: pure, clocked by the caller.

A run splits the squad into lanes (`plan_lanes`): one per cuff as real devices, or a few
shared ones for a load test. A `LaneFeed` samples its lane's cuffs round-robin on a fixed
grid of times, batches the readings into telemetry messages, tracks each cuff's retained
status, and queues it all as `Message`s (topic, payload bytes, retain) for a publisher to
take in order. Time is injected (`advance(now)`, seconds after the start); there is no
asyncio, socket or clock here: a run's messages follow from its options, the wall clock at
t = 0 (`epoch_s`, given) and the times its feeds are advanced to.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from core.topics import Topics
from sim.options import POOL_CLIENTS, SimOptions
from sim.squad import LOGGER, OFFLINE, ONLINE, CuffSpec, SimReading, SquadSimulator, encode_readings

__all__ = [
    "MAX_LAG_S",
    "OUTBOX_MAX_MESSAGES",
    "LaneFeed",
    "LanePlan",
    "Message",
    "SimStats",
    "feeds_for_run",
    "plan_lanes",
]

log = logging.getLogger(LOGGER)

MAX_LAG_S = 1.0  # a ticker further behind than this skips ticks instead of bursting them
# Messages queued per connection while disconnected (or slower than the offered rate); beyond
# it the oldest are dropped and counted: a sim must not grow without bound in a long outage.
OUTBOX_MAX_MESSAGES = 1000


@dataclass(slots=True)
class SimStats:
    """Running totals of a simulation (the demo may show them)."""

    readings: int = 0  # sampled (not dropped out)
    messages: int = 0  # telemetry messages handed to a broker connection
    statuses: int = 0  # status messages published
    dropped: int = 0  # telemetry messages lost: outbox full while disconnected, or unsent at stop
    throttled: int = 0  # publishes deferred because the in-flight window was full
    skipped_ticks: int = 0  # samples skipped because a ticker fell > MAX_LAG_S behind
    reconnects: int = 0  # connections re-established after a loss
    denied: int = 0  # publishes the broker refused (MQTT 5 PUBACK reason >= 0x80: e.g. its ACL)


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish, always QoS 1; statuses (and the last will) are retained."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class LanePlan:
    """One broker connection of a run: its log name, MQTT client id, cuffs and tick phase."""

    name: str
    client_id: str
    cuffs: tuple[CuffSpec, ...]
    phase: float  # share of a tick interval: lanes tick evenly spread, not all at once
    own_will: bool  # one cuff on the connection: its `offline` status is the last will


def plan_lanes(options: SimOptions, run_id: int) -> list[LanePlan]:
    """One lane per cuff, or POOL_CLIENTS lanes sharing the squad round-robin (ids by run_id)."""
    squad = list(options.squad)
    if options.pooled:
        count = min(POOL_CLIENTS, len(squad))
        groups = [(f"pool{k}", f"cuffwatch-sim-{run_id}-{k}", tuple(squad[k::count]))
                  for k in range(count)]
    else:
        groups = [(spec.cuff, spec.cuff, (spec,)) for spec in squad]
    return [
        LanePlan(name=name, client_id=client_id, cuffs=cuffs, phase=k / len(groups),
                 own_will=not options.pooled)
        for k, (name, client_id, cuffs) in enumerate(groups)
    ]


def feeds_for_run(
    options: SimOptions, stats: SimStats, *, epoch_s: float, run_id: int
) -> list[LaneFeed]:
    """A run's feeds over one squad simulator with the options' faults; t = 0 is `epoch_s`."""
    sim = SquadSimulator(options.squad, seed=options.seed, speed=options.speed, epoch_s=epoch_s)
    for fault in options.faults:
        sim.inject(fault)
    return [LaneFeed(plan, options=options, sim=sim, stats=stats)
            for plan in plan_lanes(options, run_id)]


class LaneFeed:
    """One lane's messages: its cuffs sampled round-robin at `offset + i × interval` seconds."""

    def __init__(
        self, plan: LanePlan, *, options: SimOptions, sim: SquadSimulator, stats: SimStats
    ) -> None:
        """A feed at the start of the run; nothing is sampled before `advance()`."""
        self.plan = plan
        self._cuffs = plan.cuffs
        self._by_id = {c.cuff: c for c in self._cuffs}
        self._sim = sim
        self._stats = stats
        self._batch = options.batch
        self._end_s = options.duration_s
        self._interval_s = 1.0 / (options.cuff_hz * len(self._cuffs))
        self._offset_s = plan.phase * self._interval_s
        self._topics = Topics(options.topic_root)
        self._next_tick: int | None = None  # None: the first advance() picks the first tick
        self._pending: dict[str, list[SimReading]] = {c.cuff: [] for c in self._cuffs}
        self._outbox: deque[Message] = deque()
        self._status: dict[str, str] = {c.cuff: ONLINE for c in self._cuffs}
        self._to_announce: dict[str, None] = {}  # cuffs whose status is not yet published
        self.will: Message | None = None  # the connection's last will, if it has one
        if plan.own_will:
            only = self._cuffs[0]
            self.will = Message(self._topics.status(only.team, only.cuff), OFFLINE.encode(),
                                retain=True)

    # -- the clock ------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Sample every tick due by `now` (seconds after the start) and before the end.

        A feed more than MAX_LAG_S behind skips the late ticks (counted) instead of bursting
        them, so the offered rate never exceeds the configured one.
        """
        i = self._next_tick
        if i is None:
            i = max(0, math.ceil((now - self._offset_s) / self._interval_s))
        elif now - self._due_s(i) > MAX_LAG_S:
            skip_to = math.ceil((now - self._offset_s) / self._interval_s)
            self._stats.skipped_ticks += skip_to - i
            i = skip_to
        while (due := self._due_s(i)) <= now and not self._past_end(due):
            self._tick(i, due)
            i += 1
        self._next_tick = i

    @property
    def next_due_s(self) -> float:
        """When the next tick is due, in seconds after the start."""
        return self._due_s(self._next_tick or 0)

    @property
    def finished(self) -> bool:
        """Whether every tick before the end is sampled (never, for a run without an end)."""
        return self._past_end(self.next_due_s)

    def _due_s(self, i: int) -> float:
        """When tick i is due: absolute deadlines, so the rate never drifts."""
        return self._offset_s + i * self._interval_s

    def _past_end(self, t: float) -> bool:
        """Whether `t` is at or past the run's duration."""
        return self._end_s is not None and t >= self._end_s

    def _tick(self, i: int, t: float) -> None:
        """Sample tick i's cuff at t; queue a message when its batch is full."""
        spec = self._cuffs[i % len(self._cuffs)]
        status = self._sim.status(spec.cuff, t)
        if status != self._status[spec.cuff]:
            self._status[spec.cuff] = status
            self._to_announce[spec.cuff] = None
            log.info("cuff %s (team %s): status %s", spec.cuff, spec.team, status)
        reading = self._sim.reading(spec.cuff, t)
        if reading is None:
            return
        self._stats.readings += 1
        pending = self._pending[spec.cuff]
        pending.append(reading)
        if len(pending) >= self._batch:
            self._enqueue(spec, pending)
            self._pending[spec.cuff] = []

    def _enqueue(self, spec: CuffSpec, readings: Sequence[SimReading]) -> None:
        """Queue one telemetry message, dropping the oldest when the outbox is full."""
        if len(self._outbox) >= OUTBOX_MAX_MESSAGES:
            self._outbox.popleft()
            self._stats.dropped += 1
        topic = self._topics.telemetry(spec.team, spec.cuff)
        self._outbox.append(Message(topic, encode_readings(readings, array=self._batch > 1)))

    # -- the queue ------------------------------------------------------------------------------

    def next_message(self) -> Message | None:
        """The next message to publish (statuses first, then telemetry); None when all is out."""
        if self._to_announce:
            cuff = next(iter(self._to_announce))
            spec = self._by_id[cuff]
            topic = self._topics.status(spec.team, cuff)
            return Message(topic, self._status[cuff].encode(), retain=True)
        return self._outbox[0] if self._outbox else None

    def sent(self) -> None:
        """The message `next_message()` returned is with the broker connection: drop it."""
        if self._to_announce:
            del self._to_announce[next(iter(self._to_announce))]
            self._stats.statuses += 1
        else:
            self._outbox.popleft()
            self._stats.messages += 1

    def announce_all(self) -> None:
        """Queue every cuff's status again (a new connection: the broker may hold our wills)."""
        self._to_announce = dict.fromkeys(self._status)

    def close_batches(self) -> None:
        """Queue every partly filled batch (a stop: nothing more will fill them)."""
        for spec in self._cuffs:
            if self._pending[spec.cuff]:
                self._enqueue(spec, self._pending[spec.cuff])
                self._pending[spec.cuff] = []

    def go_offline(self) -> None:
        """Queue `offline` for every cuff (a clean stop, after the last telemetry is out)."""
        self._status = dict.fromkeys(self._status, OFFLINE)
        self._to_announce = dict.fromkeys(self._status)

    @property
    def unsent(self) -> int:
        """Telemetry messages still queued."""
        return len(self._outbox)

    def drop_unsent(self) -> None:
        """Count every queued telemetry message as dropped and forget it (the run is over)."""
        self._stats.dropped += len(self._outbox)
        self._outbox.clear()
