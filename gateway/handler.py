"""The gateway's decision core: one MQTT message in, what to do about it out; no I/O.

`MessageHandler.handle(topic, payload, retain, now_s)` validates the message, updates the
cuff's state, runs the alert engine and answers with `Actions`: the alert transitions to
publish at once, a rejection to publish, and how the message is to be stored and
acknowledged. It never awaits, never touches a socket or the disk and never raises, so
tests drive it directly with a clock of their own; `gateway/app.py` is the edge that
carries the actions out (publish, spool, PUBACK after fsync).

Telemetry readings are not formatted per message: they are staged, and the edge takes
the stage (`take_staged`) once the socket read that brought them is parsed, after that
read's alerts are out, so that a read's worth of messages becomes one spool record.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from alerts.engine import NOTHING, AlertEngine, Outcome
from alerts.model import Alert, AlertKind, AlertState, Transition
from core.config import Assignment, Settings
from core.model import CuffPhase, Limb, Protocol, Reading
from core.topics import BadTopic, ParsedTopic, TopicKind, Topics
from gateway.decode import Rejected, Rejection, RejectReason, decode_readings, decode_status
from gateway.metrics import Counters, RejectLog
from gateway.state import CuffState, Fleet
from ingest import lineproto

log = logging.getLogger("cuffwatch.gateway")
# enum members as module globals: the per-message path reads them without the class lookup
_INFLATED = CuffPhase.INFLATED
_DEFLATED = CuffPhase.DEFLATED
_KIND_WORDS = frozenset(k.value for k in AlertKind)
ACK_BY_MAX_CHARS = 64  # an ack's "by" is a name on a staff screen, not a payload
RETAINED_ACK = "an ack must not be retained (SPEC §2): a retained ack is not someone acting now"
RETAINED_TELEMETRY = (
    "telemetry must not be retained (SPEC §2): a retained reading is not live; clear it with "
    "an empty retained message on this topic"
)


class Store(enum.Enum):
    """How a message is stored, which decides when it may be acknowledged."""

    NOTHING = "nothing"  # nothing to keep (rejected, ignored, state only): acknowledge now
    STAGED = "staged"  # with its socket read's record (`take_staged`): acknowledge once synced
    LINES = "lines"  # `Actions.lines` as a record of its own: acknowledge once synced


@dataclass(frozen=True, slots=True)
class Answer:
    """What an ack or an assignment did, for a sender that asked (an MQTT 5 request).

    A rejected message answers with its `Rejection` instead (`Gateway.on_request`)."""

    team: str
    ok: bool
    reason: str = ""  # why not: a RejectReason value, or `no_open_alert`
    detail: str = ""
    alert: Alert | None = None  # the alert an ack acknowledged

    @classmethod
    def refused(cls, rejection: Rejection) -> Answer:
        """The answer to a request that was rejected: its code and why."""
        return cls(rejection.team, False, rejection.reason.value, rejection.detail)

    def to_json(self) -> bytes:
        body: dict[str, object] = {"ok": self.ok}
        if self.reason:
            body["reason"] = self.reason
        if self.detail:
            body["detail"] = self.detail
        if self.alert is not None:
            body["alert"] = self.alert.to_dict()
        return json.dumps(body).encode()


NO_OPEN_ALERT = "no_open_alert"


@dataclass(frozen=True, slots=True)
class Actions:
    """What one message asks of the edge, in this order: publish alerts, reject, store."""

    alerts: tuple[Transition, ...] = ()  # publish and notify now, before anything is stored
    store: Store = Store.NOTHING
    lines: tuple[str, ...] = ()  # Store.LINES: the record to make durable before the PUBACK
    rejection: Rejection | None = None  # publish on the cuff's `rejected` topic
    answer: Answer | None = None  # an ack's or assignment's outcome, for a request's sender


NOTHING_TO_DO = Actions()
STAGED_QUIETLY = Actions(store=Store.STAGED)  # the common case: readings staged, no alert


@dataclass(frozen=True, slots=True)
class StagedRecord:
    """The lines of the messages staged since the last take, and whether any repeated one."""

    lines: list[str]
    duplicates: bool  # a redelivery: acknowledge only once the spool's current end is durable


def _alert_kind(text: str) -> AlertKind:
    try:
        return AlertKind(text)
    except ValueError:
        raise Rejected(RejectReason.INVALID_STATUS, f"no alert kind {text[:64]}") from None


def _ack_by(payload: bytes) -> str | None:
    """The `by` of an ack message (`{"by": "Sam"}`, or empty); Rejected if not JSON."""
    if not payload.strip():
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise Rejected(RejectReason.INVALID_STATUS, "ack is not valid JSON") from None
    if isinstance(obj, dict) and isinstance(obj.get("by"), str):
        return str(obj["by"])
    return None


class MessageHandler:
    """Validates messages, keeps per-cuff state, runs the rules; returns `Actions`."""

    def __init__(
        self,
        settings: Settings,
        *,
        fleet: Fleet,
        engine: AlertEngine,
        counters: Counters,
        rejects: RejectLog,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_root)
        self.fleet = fleet
        self.engine = engine
        self.counters = counters
        self.rejects = rejects
        # accepted readings (and the targets the rules judged by) and the alert and bout
        # lines of the messages staged since the last `take_staged`
        self._readings: list[Reading] = []
        self._targets: list[float | None] = []
        self._lines: list[str] = []
        self._duplicates = False

    # -- messages ------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, retain: bool, now_s: float) -> Actions:
        """Decide what one message asks for. Never raises: a bug is counted and logged, and
        what was staged before it is still stored (the message acknowledged after it)."""
        self.counters.received += 1
        try:
            return self._handle(topic, payload, retain, now_s)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("internal error handling a message on %s", topic[:200])
            return STAGED_QUIETLY if self._readings or self._lines else NOTHING_TO_DO

    def _handle(self, topic: str, payload: bytes, retain: bool, now_s: float) -> Actions:
        try:
            parsed = self.topics.parse(topic)
        except BadTopic as exc:
            return self._bad_topic(exc, payload, now_s)
        if parsed is None:
            return NOTHING_TO_DO  # ours to ignore: our own alerts, rejections, statuses
        team, cuff = parsed.team, parsed.cuff
        try:
            if parsed.kind is TopicKind.TELEMETRY:
                if retain:
                    # a retained reading outlives its moment: the broker hands it to every
                    # new subscription, hours later. Its data came live when it was published.
                    raise Rejected(RejectReason.RETAINED, RETAINED_TELEMETRY)  # noqa: TRY301
                return self._telemetry(team, cuff, payload, now_s)
            return self._control(parsed, payload, retain)
        except Rejected as rej:
            rejection = Rejection(team, cuff, rej.reason, rej.detail, payload)
            self.rejects.count(rej.reason, team, cuff, rej.detail, now_s)
            return Actions(rejection=rejection)  # nothing of it staged: acknowledge now

    def _bad_topic(self, exc: BadTopic, payload: bytes, now_s: float) -> Actions:
        """A topic with an invalid team or cuff id: counted, logged, and published on the
        cuff's `rejected` topic when one can be named without the invalid id: a valid cuff
        id of the roster, under its roster team (a team id alone names no cuff topic)."""
        team, cuff = exc.team, exc.cuff
        if cuff is not None and team is None:
            state = self.fleet.cuffs.get(cuff)
            team = state.team if state is not None else None
        detail = str(exc)
        self.rejects.count(RejectReason.BAD_TOPIC, team or "", cuff or "", detail, now_s)
        if team is None or cuff is None:
            return NOTHING_TO_DO
        return Actions(rejection=Rejection(team, cuff, RejectReason.BAD_TOPIC, detail, payload))

    def _control(self, parsed: ParsedTopic, payload: bytes, retain: bool) -> Actions:
        """Status, assignment, ack and retained-alert messages."""
        team, cuff = parsed.team, parsed.cuff
        kind = parsed.kind
        if kind is TopicKind.STATUS:
            return self._stored(self._status(team, cuff, payload))
        if kind is TopicKind.ASSIGNMENT:
            done = self._assignment(team, cuff, payload)
            return Actions(answer=Answer(team, True, detail=done))
        if kind is TopicKind.ACK:
            if retain:  # replayed to every new subscription: it would silence forever
                raise Rejected(RejectReason.RETAINED, RETAINED_ACK)
            # an unknown cuff, then a bad kind, before the payload
            state = self.fleet.lookup(team, cuff)
            alert_kind = _alert_kind(parsed.alert_kind or "")
            return self._acknowledge(state, alert_kind, _ack_by(payload))
        if kind is TopicKind.ALERT and retain and payload:
            self._restore_alert(team, cuff, payload)
        return NOTHING_TO_DO

    @staticmethod
    def _stored(transitions: Sequence[Transition]) -> Actions:
        if not transitions:
            return NOTHING_TO_DO
        lines = tuple(lineproto.alert_line(t) for t in transitions)
        return Actions(alerts=tuple(transitions), store=Store.LINES, lines=lines)

    def _telemetry(self, team: str, cuff: str, payload: bytes, now_s: float) -> Actions:
        """Validate, dedup, run the rules; stage what to store.

        Once per reading: everything loop-invariant is hoisted, and the cuff's summary
        (phase, last values, counters) is set once per message from its last reading.
        """
        state = self.fleet.lookup(team, cuff)
        raws = decode_readings(payload)
        # an `athlete` override must name an athlete the team knows, else the whole message
        # is rejected before any of it reaches the rules (the common reading has none)
        roster = state.known_athletes
        for raw in raws:
            athlete = raw.athlete
            if athlete is not None and athlete not in roster:
                state.check_athlete(athlete)  # Rejected
        received_ms = int(now_s * 1000)
        counters = self.counters
        counters.readings_received += len(raws)
        stage_reading = self._readings.append
        stage_target = self._targets.append
        outcomes: list[Outcome] | None = None  # the rare readings that changed an alert or a bout
        is_duplicate = state.is_duplicate
        to_reading = self.fleet.to_reading
        rule_params = state.params
        settings = self.settings
        on_reading = self.engine.on_reading
        oldest_ts: int | None = None
        reading: Reading | None = None
        accepted = 0
        for raw in raws:
            device_ts = raw.ts_ms()
            if is_duplicate(raw.seq, device_ts, raw.pressure_mmhg, raw.elapsed_s):
                counters.duplicates += 1
                self._duplicates = True
                continue
            reading = to_reading(state, raw, received_ms, device_ts)
            params = rule_params(settings, reading.athlete, reading.limb)
            outcome = on_reading(reading, params)
            if oldest_ts is None or device_ts < oldest_ts:
                oldest_ts = device_ts
            accepted += 1
            if reading.battery_pct is not None:
                state.battery_pct = reading.battery_pct
            stage_reading(reading)
            # the target the rules judged by: the prescription, else the cuff's own (SPEC §3)
            rx = params.target_mmhg
            stage_target(rx if rx is not None else reading.target_mmhg)
            if outcome is not NOTHING:
                if outcomes is None:
                    outcomes = []
                outcomes.append(outcome)
        if reading is not None and oldest_ts is not None:
            lag = received_ms - oldest_ts
            if lag > counters.lag_ms_max:  # noqa: PLR1730 - max() is a call per message
                counters.lag_ms_max = lag
            counters.accepted += accepted
            state.accepted += accepted
            state.last_seen_s = now_s
            state.phase = _INFLATED if reading.inflated else _DEFLATED
            state.last_pressure = reading.pressure_mmhg
            state.last_elapsed_s = reading.elapsed_s
        if outcomes is None:
            return STAGED_QUIETLY
        return Actions(alerts=self._stage_outcomes(outcomes), store=Store.STAGED)

    def _stage_outcomes(self, outcomes: list[Outcome]) -> tuple[Transition, ...]:
        transitions = tuple(t for o in outcomes for t in o.transitions)
        self._lines.extend(lineproto.alert_line(t) for t in transitions)
        self._lines.extend(lineproto.bout_line(o.bout) for o in outcomes if o.bout is not None)
        return transitions

    def _status(self, team: str, cuff: str, payload: bytes) -> Sequence[Transition]:
        state = self.fleet.lookup(team, cuff)
        online = decode_status(payload)
        state.online = online
        if not online:
            state.phase = CuffPhase.OFFLINE
        return self.engine.on_status(team, cuff, online, athlete=state.athlete,
                                     limb=state.limb.value)

    def _assignment(self, team: str, cuff: str, payload: bytes) -> str:
        """Apply an assignment (or clear it); what was done, in words."""
        state = self.fleet.lookup(team, cuff)
        if not payload.strip():
            state.set_assignment(None)
            log.info("%s/%s: assignment cleared", team, cuff)
            return f"{team}/{cuff}: assignment cleared (back to the roster's)"
        try:
            assignment = Assignment.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "assignment"
            raise Rejected(RejectReason.INVALID_ASSIGNMENT, f"{where}: {first['msg']}") from None
        # it would be pushed to staff and stored as a tag: only the roster's athletes
        state.check_athlete(assignment.athlete)
        self._check_target(state.team, assignment, assignment.limb or state.limb)
        state.set_assignment(assignment)
        log.info("%s/%s: assigned to %s %s", team, cuff, assignment.athlete, state.limb.value)
        return f"{team}/{cuff}: assigned to {assignment.athlete} {state.limb.value}"

    def _check_target(self, team: str, assignment: Assignment, limb: Limb) -> None:
        """Rejected when the prescription would make every bout at it a critical alert: a
        target not below the hard ceiling, or (bfr) not below LOP (as core.roster_checks
        refuses in the configuration)."""
        p = self.settings.rule_params(team, assignment.athlete, limb, assignment)
        target = p.target_mmhg
        if target is None:
            return
        if target >= p.hard_max_mmhg:
            raise Rejected(
                RejectReason.INVALID_ASSIGNMENT,
                f"target {target:g} mmHg is not below the {limb.value} hard ceiling of "
                f"{p.hard_max_mmhg:g} mmHg: every bout at it would be a critical over_pressure",
            )
        if p.protocol is Protocol.BFR and p.lop_mmhg is not None and target >= p.lop_mmhg:
            raise Rejected(
                RejectReason.INVALID_ASSIGNMENT,
                f"target {target:g} mmHg is not below LOP {p.lop_mmhg:g} mmHg: full occlusion, "
                'which bfr never prescribes (for full occlusion, protocol "ipc")',
            )

    def ack(self, team: str, cuff: str, kind_text: str, by: str | None) -> Actions:
        """Acknowledge the open alert of that kind on that cuff: an `…/ack` message, or a tap
        on a push's link (the ack endpoint). Either way the same transition is published and
        stored, and the same answer says what became of it.

        Raises Rejected for a cuff not in the roster or a word that is no alert kind.
        """
        return self._acknowledge(self.fleet.lookup(team, cuff), _alert_kind(kind_text), by)

    def _acknowledge(self, state: CuffState, kind: AlertKind, by: str | None) -> Actions:
        team, cuff = state.team, state.cuff
        if by is not None:
            by = by[:ACK_BY_MAX_CHARS]
        acked = self.engine.on_ack(team, cuff, kind, by)
        if not acked:
            return Actions(answer=Answer(
                team, False, NO_OPEN_ALERT, f"no open {kind.value} alert on {team}/{cuff}"
            ))
        stored = self._stored(acked)
        return Actions(alerts=stored.alerts, store=stored.store, lines=stored.lines,
                       answer=Answer(team, True, alert=acked[0].alert))

    def knows(self, team: str, cuff: str, kind_text: str) -> bool:
        """Whether (team, cuff, kind) names a roster cuff of a team this gateway serves and
        an alert kind: what an ack link must name before anything else is looked at."""
        state = self.fleet.cuffs.get(cuff)
        served = self.settings.broker.teams
        return (state is not None and state.team == team and kind_text in _KIND_WORDS
                and (not served or team in served))

    def open_alert(self, team: str, cuff: str, kind_text: str) -> Alert | None:
        """The open alert of that kind on that cuff, as published now; None if none."""
        if not self.knows(team, cuff, kind_text):
            return None
        return self.engine.open_alert(team, cuff, AlertKind(kind_text))

    def _restore_alert(self, team: str, cuff: str, payload: bytes) -> None:
        try:
            alert = Alert.from_dict(json.loads(payload))
        except (ValueError, TypeError, RecursionError):
            log.warning("%s/%s: ignoring an unreadable retained alert", team, cuff)
            return
        self.fleet.lookup(team, cuff)  # only the roster's cuffs: Rejected otherwise
        if alert.team == team and alert.cuff == cuff and alert.state is not AlertState.RESOLVED:
            self.engine.restore(alert)

    # -- the stage -----------------------------------------------------------------------

    def take_staged(self) -> StagedRecord | None:
        """The staged messages' lines, formatted now (after their alerts are out); None if
        nothing was staged since the last take. Never raises: a reading that cannot be
        formatted (a bug) costs that reading, not the others."""
        readings, targets, extra = self._readings, self._targets, self._lines
        duplicates, self._duplicates = self._duplicates, False
        if not readings and not extra:
            return StagedRecord([], duplicates) if duplicates else None
        self._readings, self._targets, self._lines = [], [], []
        try:
            lines = list(map(lineproto.telemetry_line, readings, targets))
        except Exception:  # noqa: BLE001 - a formatting bug costs its reading, not the read
            lines = self._format_each(readings, targets)
        lines += extra
        return StagedRecord(lines, duplicates)

    def _format_each(self, readings: list[Reading], targets: list[float | None]) -> list[str]:
        lines: list[str] = []
        for reading, target in zip(readings, targets, strict=True):
            try:
                lines.append(lineproto.telemetry_line(reading, target))
            except Exception:
                self.counters.internal_errors += 1
                log.exception("cannot format a reading of %s/%s", reading.team, reading.cuff)
        return lines

    # -- time ------------------------------------------------------------------------------

    def tick(self) -> Sequence[Transition]:
        """Timer-driven changes (escalations, silences, offline cuffs); marks stale cuffs."""
        transitions = self.engine.tick()
        cuffs = self.fleet.cuffs
        for _team, cuff in self.engine.stale:  # the engine's stale watch: one rule, one place
            state = cuffs.get(cuff)
            if state is not None and state.phase is _INFLATED:
                state.phase = CuffPhase.STALE
        return transitions
