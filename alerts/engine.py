"""The alert engine (SPEC §3): pure and synchronous, with an injected clock.

The gateway feeds it readings, status changes, acks and a periodic `tick()`; it answers with
alert transitions to publish, store and (where `push`) send to phones. No I/O here.

Lifecycle, per (team, cuff, kind) — one open alert at a time:
- RAISED when a row of the kind first holds (pushed);
- UPDATED in place (same id) when the severity or the row that sets it changes; pushed only
  when the severity rises while firing. A value that merely moves emits nothing (it is carried
  by the next transition), so a sustained excess is one alert, not one per reading;
- ACKNOWLEDGED on an ack (pushed, so the team sees who took it); pushes are silenced for
  `ack_silence_s`, then REFIRED (state firing, pushed) if the alert is still open;
- ESCALATED once per firing episode: critical, unacknowledged for `escalate_after_s`, and
  backed by live (not backlog) evidence; `escalation=True`;
- RESOLVED when no row holds (pushed); within `reraise_after_s` the same alert REOPENS
  (same id; pushed; back to acknowledged, unpushed, if its ack silence is still running).
Transitions caused by a reading older than `alert_max_age_s` (backlog, as the cuff's
`alerts.clock.DeviceClock` judges age: a lagging clock is not backlog) are emitted with
`push=False`; an alert raised from backlog whose condition still holds on a live reading is
pushed then (UPDATED). An alert restored from a retained message is only a name for the
alert until live evidence arrives: a retained message can neither raise nor silence
anything, and the first verdict on live readings publishes the alert as it stands, firing.
Rolling means use rule time (device time made continuous, `alerts.clock`); every timer
uses the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ulid import LaxMonotonicPolicy, ULIDGenerator

from alerts import rules
from alerts.evidence import CuffEvidence
from alerts.model import Alert, AlertKind, AlertState, BoutSummary, Change, Transition
from alerts.rules import CLEAR, Evidence, Judgement, Row, Verdict
from core.model import Limb, Reading, Severity
from core.params import RuleParams

__all__ = ["NOTHING", "AlertEngine", "Outcome", "ulid_factory"]

# Timers for a cuff known only from a restored alert (no reading, so no params yet).
_TIMER_DEFAULTS: Final = RuleParams(limb=Limb.LEFT_ARM)

_FIRING: Final = AlertState.FIRING
_ACKED: Final = AlertState.ACKNOWLEDGED
_RESOLVED: Final = AlertState.RESOLVED
_CUFF_OFFLINE: Final = AlertKind.CUFF_OFFLINE


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reading caused: alert transitions, and the bout it ended (if any)."""

    transitions: tuple[Transition, ...] = ()
    bout: BoutSummary | None = None


NOTHING: Final = Outcome()  # the common case, shared: no allocation per quiet reading


def ulid_factory() -> Callable[[int], str]:
    """A new_id(ms) giving ULIDs, monotonic within a millisecond (python-ulid, lax policy)."""
    gen = ULIDGenerator(policy=LaxMonotonicPolicy())

    def new_id(ms: int) -> str:
        return str(gen.generate(max(0, int(ms))))

    return new_id


@dataclass(slots=True, eq=False, kw_only=True)
class _Tracked:
    """One alert's live record; `snapshot()` freezes it into the published `Alert`."""

    id: str
    team: str
    cuff: str
    athlete: str
    limb: str
    kind: AlertKind
    severity: Severity
    row: Row | None  # None: restored, row not yet known
    value: float | None
    threshold: float | None
    unit: str | None
    started_at_ms: int
    updated_at_ms: int
    critical_since: float  # escalation timer start
    state: AlertState = _FIRING
    message: str = ""  # only for a restored alert, until its row is known
    acknowledged_by: str | None = None
    escalated: bool = False
    ack_at: float | None = None  # clock of the last ack
    resolved_at: float = 0.0
    fresh: bool = True  # the evidence is live, not backlog: may escalate
    pushed: bool = True  # the firing state went to phones (False: raised from backlog)
    note: str | None = None

    def touch(self, at_ms: int) -> None:
        # strictly after the previous change: every state change is its own `alert` point
        # (SPEC §4), and one at the same ms would overwrite the one before it in InfluxDB
        self.updated_at_ms = max(self.updated_at_ms + 1, at_ms)

    def snapshot(self) -> Alert:
        who = f"{self.athlete or self.cuff} {self.limb}".strip()
        if self.row is None:
            message = self.message
        else:
            message = rules.describe(self.row, who, self.value, self.threshold, self.note)
        return Alert(
            id=self.id,
            team=self.team,
            cuff=self.cuff,
            athlete=self.athlete,
            limb=self.limb,
            kind=self.kind,
            severity=self.severity,
            state=self.state,
            value=self.value,
            threshold=self.threshold,
            unit=self.unit,
            message=message,
            started_at_ms=self.started_at_ms,
            updated_at_ms=self.updated_at_ms,
            acknowledged_by=self.acknowledged_by,
            escalated=self.escalated,
        )


class _Cuff:
    """A cuff's evidence, its alerts by kind, and the limits of its last reading."""

    __slots__ = ("alerts", "ev", "params")

    def __init__(self, ev: CuffEvidence) -> None:
        self.ev = ev
        self.alerts: dict[AlertKind, _Tracked] = {}  # open, or resolved within reraise_after_s
        self.params: RuleParams | None = None

    @property
    def timers(self) -> RuleParams:
        return self.params if self.params is not None else _TIMER_DEFAULTS


class AlertEngine:
    """Per-cuff rules and alert lifecycle; every method returns the transitions it caused."""

    def __init__(
        self, *, clock: Callable[[], float], new_id: Callable[[int], str] | None = None
    ) -> None:
        self._clock = clock  # gateway wall clock, epoch seconds
        self._new_id = new_id if new_id is not None else ulid_factory()
        self._cuffs: dict[tuple[str, str], _Cuff] = {}
        self._inflated: dict[tuple[str, str], _Cuff] = {}  # last reading inflated: stale watch
        # (team, cuff) of the inflated cuffs silent for stale_after_s at the last tick()
        self.stale: list[tuple[str, str]] = []
        self._tracked: dict[str, _Tracked] = {}  # by id: open, or resolved within the flap guard
        self._out: list[Transition] = []  # reused per call (the engine is not re-entrant)
        # the event being judged: clock, event time (device ms, or clock ms) and push
        self._now = 0.0
        self._at_ms = 0
        self._push = True

    # -- inputs ---------------------------------------------------------------------------------

    def on_reading(self, reading: Reading, params: RuleParams) -> Outcome:
        """Judge one validated, deduplicated reading; amortised O(1)."""
        now = self._clock()
        team, cuff_id = reading.team, reading.cuff
        key = (team, cuff_id)
        cuff = self._cuffs.get(key)
        if cuff is None:
            ev = CuffEvidence(team, cuff_id, reading.athlete, reading.limb.value)
            cuff = self._cuffs[key] = _Cuff(ev)
        ev = cuff.ev
        cuff.params = params
        was_inflated = ev.inflated
        ended = ev.observe(reading, params, now)
        inflated = ev.inflated
        if inflated is not was_inflated:  # only forget() drops a cuff from _inflated otherwise
            if inflated:
                self._inflated[key] = cuff
            else:
                self._inflated.pop(key, None)
        at = reading.ts_ms
        self._now = now
        self._at_ms = at
        self._push = ev.clock.age_ms <= params.alert_max_age_s * 1000.0  # backlog: no push
        judge = self._judge
        # CLEAR and UNKNOWN change nothing on a kind with no alert: a judgement goes through
        # the lifecycle only when a row holds or an alert of its kind is tracked (the common
        # quiet reading skips _judge entirely; same transitions either way). `alerts and`
        # first: an enum member hashes in Python, and most cuffs have no alert to look up.
        alerts = cuff.alerts
        for kind, judge_kind in rules.ON_READING:
            j = judge_kind(ev, params, now)
            if j.__class__ is Verdict or (alerts and kind in alerts):
                judge(cuff, kind, j)
        if alerts and _CUFF_OFFLINE in alerts:
            judge(cuff, _CUFF_OFFLINE, CLEAR)  # a reading arrived: the cuff is back
        out = self._out
        if not out:
            return NOTHING if ended is None else Outcome((), ended)
        result = Outcome(tuple(out), ended)
        out.clear()
        return result

    def on_status(
        self, team: str, cuff: str, online: bool, *, athlete: str, limb: str
    ) -> tuple[Transition, ...]:
        """A status message: `offline` while the last reading was inflated raises cuff_offline."""
        c = self._cuffs.get((team, cuff))
        if c is None:
            return ()  # never saw a reading: no way to know it was inflated
        ev = c.ev
        ev.athlete, ev.limb = athlete, limb
        if online or not ev.has_reading or not ev.inflated:
            return ()
        now = self._at_clock()
        verdict = rules.offline_verdict(round(max(0.0, now - ev.last_seen), 1), None)
        self._judge(c, AlertKind.CUFF_OFFLINE, verdict)
        return self._drain()

    def on_ack(
        self, team: str, cuff: str, kind: AlertKind, by: str | None
    ) -> tuple[Transition, ...]:
        """Acknowledge the open alert of that kind (silencing it); nothing if none is open."""
        c = self._cuffs.get((team, cuff))
        t = c.alerts.get(kind) if c is not None else None
        if t is None or t.state is _RESOLVED:
            return ()
        now = self._clock()
        t.state = _ACKED
        t.acknowledged_by = by
        t.ack_at = now
        t.touch(round(now * 1000))
        return (Transition(t.snapshot(), Change.ACKNOWLEDGED, True),)

    def tick(self) -> tuple[Transition, ...]:
        """Run the clock-driven rules (stale, fault expiry, session decay, silence, escalation)."""
        now = self._at_clock()
        now_ms = self._at_ms
        judge = self._judge
        stale = self.stale
        stale.clear()
        for key, c in self._inflated.items():
            silent = now - c.ev.last_seen
            stale_after = c.timers.stale_after_s
            if silent >= stale_after:
                stale.append(key)
                verdict = rules.offline_verdict(round(silent, 1), stale_after)
                judge(c, AlertKind.CUFF_OFFLINE, verdict)
        for t in list(self._tracked.values()):
            c = self._cuffs[(t.team, t.cuff)]
            p = c.timers
            if t.state is _RESOLVED:
                if now - t.resolved_at > p.reraise_after_s:
                    self._drop(c, t)
                continue
            on_tick = rules.ON_TICK.get(t.kind)
            if on_tick is not None:
                judge(c, t.kind, on_tick(c.ev, p, now))
            if t.state is _ACKED and t.ack_at is not None and now - t.ack_at >= p.ack_silence_s:
                t.state = _FIRING
                t.critical_since = now
                t.touch(now_ms)
                self._out.append(Transition(t.snapshot(), Change.REFIRED, True))
            if (
                t.state is _FIRING
                and t.severity is Severity.CRITICAL
                and not t.escalated
                and t.fresh
                and now - t.critical_since >= p.escalate_after_s
            ):
                t.escalated = True
                t.touch(now_ms)
                self._out.append(Transition(t.snapshot(), Change.ESCALATED, True, escalation=True))
        return self._drain()

    def restore(self, alert: Alert) -> None:
        """Re-adopt an open alert found retained at start-up (same id), so it can resolve.

        Ignored if resolved, or if the engine already tracks an alert of that kind on that cuff.
        """
        if alert.state is _RESOLVED or alert.id in self._tracked:
            return
        key = (alert.team, alert.cuff)
        c = self._cuffs.get(key)
        if c is None:
            c = self._cuffs[key] = _Cuff(CuffEvidence(*key, alert.athlete, alert.limb))
        if alert.kind in c.alerts:
            return
        now = self._clock()
        # a retained message's times are not trusted either: one in the year 9999 would stamp
        # every later change of this alert there (touch() only moves forward)
        now_ms = round(now * 1000)
        # only live evidence escalates (fresh); cuff_offline is about now, the others await a
        # reading. A retained message proves nothing (a stale copy, or a forgery where the
        # broker's ACLs are loose): the first live verdict of its kind publishes the alert as
        # it then stands, firing and pushed, whatever state the message claimed (see _judge).
        offline = alert.kind is AlertKind.CUFF_OFFLINE
        t = _Tracked(
            id=alert.id, team=alert.team, cuff=alert.cuff, athlete=alert.athlete,
            limb=alert.limb, kind=alert.kind, severity=alert.severity, row=None,
            value=alert.value, threshold=alert.threshold, unit=alert.unit,
            started_at_ms=min(alert.started_at_ms, now_ms),
            updated_at_ms=min(alert.updated_at_ms, now_ms), critical_since=now,
            state=alert.state, message=alert.message, acknowledged_by=alert.acknowledged_by,
            escalated=alert.escalated, fresh=offline, pushed=offline,
        )
        if alert.kind is AlertKind.SENSOR_FAULT:
            c.ev.fault_floor = now
        c.alerts[alert.kind] = t
        self._tracked[t.id] = t

    def forget(self, team: str, cuff: str) -> None:
        """Drop a cuff and its alerts silently (it left the roster)."""
        c = self._cuffs.pop((team, cuff), None)
        self._inflated.pop((team, cuff), None)
        if c is not None:
            for t in c.alerts.values():
                self._tracked.pop(t.id, None)

    # -- queries --------------------------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        """Every open (firing or acknowledged) alert, as it would be published now."""
        return [t.snapshot() for t in self._tracked.values() if t.state is not _RESOLVED]

    def open_alert(self, team: str, cuff: str, kind: AlertKind) -> Alert | None:
        """The open alert of that kind on that cuff, if any."""
        c = self._cuffs.get((team, cuff))
        t = c.alerts.get(kind) if c is not None else None
        return None if t is None or t.state is _RESOLVED else t.snapshot()

    # -- lifecycle ------------------------------------------------------------------------------

    def _at_clock(self) -> float:
        """Set the event to judge to the clock's now (pushed); return now."""
        now = self._clock()
        self._now = now
        self._at_ms = round(now * 1000)
        self._push = True
        return now

    def _drain(self) -> tuple[Transition, ...]:
        out = self._out
        if not out:
            return ()
        result = tuple(out)
        out.clear()
        return result

    def _drop(self, c: _Cuff, t: _Tracked) -> None:
        self._tracked.pop(t.id, None)
        if c.alerts.get(t.kind) is t:
            del c.alerts[t.kind]

    def _judge(self, c: _Cuff, kind: AlertKind, j: Judgement) -> None:
        """Apply one kind's judgement (at the current event) to its alert; transitions to `_out`."""
        t = c.alerts.get(kind)
        now, at_ms, push = self._now, self._at_ms, self._push
        if j is Evidence.CLEAR:
            if t is not None and t.state is not _RESOLVED:
                t.state = _RESOLVED
                t.resolved_at = now
                t.touch(at_ms)
                self._out.append(Transition(t.snapshot(), Change.RESOLVED, push))
            return
        if j is Evidence.UNKNOWN:
            return
        severity, row = j.severity, j.row
        if t is None or t.state is _RESOLVED:
            p = c.timers
            if t is not None and now - t.resolved_at <= p.reraise_after_s:
                self._reopen(c, t, j)
                return
            if t is not None:
                self._drop(c, t)
            ev = c.ev
            t = _Tracked(
                id=self._new_id(at_ms), team=ev.team, cuff=ev.cuff, athlete=ev.athlete,
                limb=ev.limb, kind=kind, severity=severity, row=row, value=j.value,
                threshold=j.threshold, unit=row.unit, started_at_ms=at_ms, updated_at_ms=at_ms,
                critical_since=now, fresh=push, pushed=push, note=j.note,
            )
            c.alerts[kind] = t
            self._tracked[t.id] = t
            if ev.bout is not None:
                ev.bout.alerts += 1
            self._out.append(Transition(t.snapshot(), Change.RAISED, push))
            return
        t.value = j.value
        t.threshold = j.threshold
        t.note = j.note
        t.fresh = push
        if push and not t.pushed:  # raised from backlog or restored: now it is live
            self._confirm(t, j)
            return
        if severity is t.severity and row is t.row:
            return
        rose = severity > t.severity
        if rose and severity is Severity.CRITICAL:
            t.critical_since = now
        t.severity = severity
        t.row = row
        t.unit = row.unit
        t.touch(at_ms)
        pushed = push and rose and t.state is _FIRING
        if rose and not push:
            t.pushed = False  # phones hear of the worse state once a live reading confirms it
        self._out.append(Transition(t.snapshot(), Change.UPDATED, pushed))

    def _confirm(self, t: _Tracked, j: Verdict) -> None:
        """Live evidence for an alert not yet pushed as it stands: publish it firing, push it."""
        t.critical_since = self._now  # the escalation timer runs from the live evidence
        t.state = _FIRING
        t.ack_at = None
        t.acknowledged_by = None
        t.escalated = False
        t.severity = j.severity
        t.row = j.row
        t.unit = j.row.unit
        t.pushed = True
        t.touch(self._at_ms)
        self._out.append(Transition(t.snapshot(), Change.UPDATED, True))

    def _reopen(self, c: _Cuff, t: _Tracked, j: Verdict) -> None:
        now, at_ms, push = self._now, self._at_ms, self._push
        silenced = t.ack_at is not None and now - t.ack_at < c.timers.ack_silence_s
        t.state = _ACKED if silenced else _FIRING
        t.severity = j.severity
        t.row = j.row
        t.unit = j.row.unit
        t.value = j.value
        t.threshold = j.threshold
        t.escalated = False  # a new firing episode may escalate again
        t.critical_since = now
        t.fresh = push
        t.pushed = push or silenced
        t.note = j.note
        t.touch(at_ms)
        if c.ev.bout is not None:
            c.ev.bout.alerts += 1
        self._out.append(Transition(t.snapshot(), Change.REOPENED, push and not silenced))
