"""The SPEC §3 rules: per-cuff evidence (windows, bouts, faults) and one verdict per alert kind.

`CuffEvidence.observe` folds a reading into the cuff's evidence; the `judge_*` functions
read that evidence and say, for one alert kind, whether a row of the table holds (a
`Verdict`), none does (`CLEAR`), or the evidence cannot tell yet (`UNKNOWN`: a rolling mean
that does not span its window, a battery between the two hysteresis levels). No lifecycle
here: the engine turns verdicts into alert transitions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, NamedTuple

from alerts.clock import DeviceClock
from alerts.model import AlertKind, BoutSummary
from alerts.window import OcclusionWindow, PairedMeans
from core.model import PLAUSIBLE_MAX_MMHG, PLAUSIBLE_MIN_MMHG, Protocol, Reading, Severity
from core.params import (
    BATTERY_LOW_PCT,
    BATTERY_OK_PCT,
    HARD_WINDOW_S,
    LOP_MEAN_WINDOW_S,
    MEAN_WINDOW_S,
    SENSOR_FAULT_CLEAR_S,
    SESSION_WINDOW_S,
    UNDER_PRESSURE_AFTER_S,
    RuleParams,
)
from core.seq import seq_went_back

# elapsed_s restarting inside a bout means a new bout (we missed the deflation) when the new
# start lies after our last reading; this much slack absorbs device clock jitter and
# whole-second elapsed counters. A restart reaching further back is a sensor fault.
NEW_BOUT_SLACK_MS: Final = 1000
HARD_WINDOW_MS: Final = round(HARD_WINDOW_S * 1000)
# No cuff occludes a limb for a day; a larger elapsed_s (1e306 is well-formed JSON) is held to
# this for the bout's arithmetic, so that its start stays a number (the stored reading keeps
# what the cuff said, and over_time judges it as a very long bout).
MAX_ELAPSED_S: Final = 86_400.0
_IPC: Final = Protocol.IPC  # an enum member looked up once, not per reading (~150 ns each)
UNDER_PRESSURE_AFTER_MS: Final = round(UNDER_PRESSURE_AFTER_S * 1000)
# A cuff's own target this far from the prescription is "set to another pressure" (SPEC §3);
# closer is the rounding of a target in % of LOP.
TARGET_DIFFERS_MMHG: Final = 1.0


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the SPEC §3 table: its kind, severity and the unit of its value."""

    key: str
    kind: AlertKind
    severity: Severity
    unit: str | None


# The table, in its order: where several rows of a kind hold, the worst sets the severity and
# gives the alert's value and threshold (among rows of one severity, the first listed).
HARD_CEILING: Final = Row("hard_ceiling", AlertKind.OVER_PRESSURE, Severity.CRITICAL, "mmHg")
LOP_MEAN: Final = Row("lop_mean", AlertKind.OVER_PRESSURE, Severity.CRITICAL, "mmHg")
ABOVE_BAND: Final = Row("above_band", AlertKind.OVER_PRESSURE, Severity.WARNING, "mmHg")
BELOW_BAND: Final = Row("below_band", AlertKind.UNDER_PRESSURE, Severity.WARNING, "mmHg")
BOUT_WARN: Final = Row("bout_warn", AlertKind.OVER_TIME, Severity.WARNING, "s")
BOUT_MAX: Final = Row("bout_max", AlertKind.OVER_TIME, Severity.CRITICAL, "s")
SHORT_REST: Final = Row("short_rest", AlertKind.SHORT_REPERFUSION, Severity.WARNING, "s")
SESSION_OCCLUSION: Final = Row(
    "session_occlusion", AlertKind.SESSION_OVER_TIME, Severity.WARNING, "s"
)
SESSION_BOUTS: Final = Row("session_bouts", AlertKind.SESSION_OVER_TIME, Severity.WARNING, "bouts")
OFFLINE: Final = Row("offline", AlertKind.CUFF_OFFLINE, Severity.CRITICAL, "s")
IMPLAUSIBLE: Final = Row("implausible", AlertKind.SENSOR_FAULT, Severity.WARNING, "mmHg")
ELAPSED_BACK: Final = Row("elapsed_backwards", AlertKind.SENSOR_FAULT, Severity.WARNING, "s")
SEQ_BACK: Final = Row("seq_backwards", AlertKind.SENSOR_FAULT, Severity.WARNING, None)
BATTERY: Final = Row("battery_low", AlertKind.BATTERY_LOW, Severity.INFO, "%")

ROWS: Final = (
    HARD_CEILING, LOP_MEAN, ABOVE_BAND, BELOW_BAND, BOUT_WARN, BOUT_MAX, SHORT_REST,
    SESSION_OCCLUSION, SESSION_BOUTS, OFFLINE, IMPLAUSIBLE, ELAPSED_BACK, SEQ_BACK, BATTERY,
)
FAULT_ROWS: Final = (IMPLAUSIBLE, ELAPSED_BACK, SEQ_BACK)  # sensor_fault rows, in table order
_IMPLAUSIBLE_I: Final = FAULT_ROWS.index(IMPLAUSIBLE)
_ELAPSED_BACK_I: Final = FAULT_ROWS.index(ELAPSED_BACK)
_SEQ_BACK_I: Final = FAULT_ROWS.index(SEQ_BACK)


class Verdict(NamedTuple):
    """A kind's condition holds: the row that sets its severity, with that row's numbers.

    `note` adds what staff need beside the numbers (a cuff set to another pressure than
    prescribed names both).
    """

    severity: Severity
    row: Row
    value: float | None
    threshold: float | None
    note: str | None = None


class Evidence(enum.Enum):
    """A kind's condition does not hold (CLEAR), or cannot be judged yet (UNKNOWN)."""

    CLEAR = "clear"
    UNKNOWN = "unknown"


CLEAR: Final = Evidence.CLEAR
UNKNOWN: Final = Evidence.UNKNOWN
Judgement = Verdict | Evidence


class Bout:
    """The open occlusion bout of one cuff, with running statistics for its summary."""

    __slots__ = (
        "alerts", "athlete", "hit_max", "in_band", "last_elapsed_s", "last_ts_ms", "limb",
        "max_p", "min_p", "min_rest_s", "n", "n_target", "rest_s", "start_ms", "sum_p", "target",
    )

    def __init__(self, *, start_ms: int, athlete: str, limb: str) -> None:
        self.start_ms = start_ms
        self.athlete = athlete
        self.limb = limb
        self.last_ts_ms = start_ms
        self.last_elapsed_s = 0.0
        self.hit_max = False
        self.rest_s: float | None = None  # None: the previous bout's end is unknown
        self.min_rest_s = 0.0
        self.n = 0
        self.sum_p = 0.0
        self.min_p = 0.0
        self.max_p = 0.0
        self.n_target = 0
        self.in_band = 0
        self.target: float | None = None
        self.alerts = 0  # alerts raised (or reopened) on the cuff during this bout

    def add(
        self, ts_ms: int, elapsed_s: float, x: float, *, plausible: bool,
        target: float | None, p: RuleParams,
    ) -> None:
        """Fold one inflated reading (pressure `x`) of this bout into the statistics."""
        self.last_ts_ms = ts_ms
        self.last_elapsed_s = elapsed_s
        if elapsed_s >= p.max_bout_s:
            self.hit_max = True
        if not plausible:
            return
        if self.n == 0:
            self.min_p = self.max_p = x
        elif x < self.min_p:
            self.min_p = x
        elif x > self.max_p:
            self.max_p = x
        self.n += 1
        self.sum_p += x
        if target is not None:
            self.target = target
            self.n_target += 1
            if abs(x - target) <= p.tolerance_mmhg:
                self.in_band += 1

    def summary(self, team: str, cuff: str, end_ms: int) -> BoutSummary:
        """The finished bout, as stored in `occlusion_bout`."""
        duration = self.last_elapsed_s
        if duration <= 0:
            duration = max(0, end_ms - self.start_ms) / 1000.0
        n = self.n
        return BoutSummary(
            team=team,
            cuff=cuff,
            athlete=self.athlete,
            limb=self.limb,
            start_ms=self.start_ms,
            duration_s=duration,
            mean_pressure_mmhg=self.sum_p / n if n else None,
            min_pressure_mmhg=self.min_p if n else None,
            max_pressure_mmhg=self.max_p if n else None,
            target_mmhg=self.target,
            time_in_band_pct=100.0 * self.in_band / self.n_target if self.n_target else None,
            alerts=self.alerts,
        )


class CuffEvidence:
    """What the rules know about one cuff: last reading, bout, windows, faults, battery."""

    __slots__ = (
        "_limb", "athlete", "band_mean", "below_since_ms", "bout", "clock", "cuff",
        "device_target", "fault_at", "fault_floor", "fault_now", "fault_threshold",
        "fault_value", "hard_mmhg", "hard_ms", "inflated", "last_end_ms", "last_hit_max",
        "last_seen", "last_seq", "last_ts_ms", "limb", "lop_mean", "means", "session", "target",
        "team",
    )

    def __init__(self, team: str, cuff: str, athlete: str, limb: str) -> None:
        self.team = team
        self.cuff = cuff
        self.athlete = athlete
        self.limb = limb
        self._limb: object = None  # the Limb `limb` was read from
        self.clock = DeviceClock()
        self.last_ts_ms: int | None = None  # rule time of the last reading (alerts.clock)
        self.last_seen = 0.0  # gateway clock at the last reading
        self.last_seq: int | None = None
        self.inflated = False
        self.target: float | None = None  # the prescription's, else the cuff's own
        self.device_target: float | None = None  # what the cuff said it regulates to
        self.bout: Bout | None = None
        self.last_end_ms: int | None = None  # device time the previous bout ended
        self.last_hit_max = False
        self.means = PairedMeans(LOP_MEAN_WINDOW_S, MEAN_WINDOW_S)  # (LOP 2 s, band 5 s)
        self.lop_mean: float | None = None  # the means after the last reading (None: not spanning)
        self.band_mean: float | None = None
        self.hard_ms: int | None = None  # last reading at or above the hard ceiling
        self.hard_mmhg = 0.0
        self.below_since_ms: int | None = None
        self.session = OcclusionWindow(SESSION_WINDOW_S)
        n = len(FAULT_ROWS)
        self.fault_at: list[float | None] = [None] * n  # gateway clock of each row's last fault
        self.fault_value: list[float | None] = [None] * n
        self.fault_threshold: list[float | None] = [None] * n
        self.fault_now = False  # the last reading was faulty
        self.fault_floor: float | None = None  # a restored sensor_fault holds until 30 s after

    @property
    def has_reading(self) -> bool:
        return self.last_ts_ms is not None

    def device_now_ms(self, now: float) -> int:
        """Rule time now, extrapolated from the last reading by the gateway clock."""
        last = self.last_ts_ms if self.last_ts_ms is not None else round(now * 1000)
        return last + max(0, round((now - self.last_seen) * 1000))

    def _fault(self, i: int, now: float, value: float | None, threshold: float | None) -> None:
        self.fault_now = True
        self.fault_at[i] = now
        self.fault_value[i] = value
        self.fault_threshold[i] = threshold

    def observe(self, r: Reading, p: RuleParams, now: float) -> BoutSummary | None:
        """Fold a reading in (clock `now`); return the bout it ended, if any.

        Every time here is rule time (`alerts.clock`): the device's spacing of its readings,
        continuous across clock resets, jumps and glitches. Once per reading: the reading is
        unpacked once and nothing is looked up twice.
        """
        _, _, athlete, limb, ts, seq, x, elapsed, inflated, own_target, _, skew, received = r
        clock = self.clock
        # the device's own time, also where it was too far off to be stored (its spacing of
        # readings still holds): the clock model makes rule time of it
        ts = clock.observe(ts if skew is None else received + round(skew * 1000.0), received)
        if elapsed > MAX_ELAPSED_S:  # noqa: PLR1730 - min() is a call per reading
            elapsed = MAX_ELAPSED_S
        self.athlete = athlete
        if limb is not self._limb:  # Limb.value is an enum descriptor: read it on change only
            self._limb = limb
            self.limb = limb.value
        self.fault_now = False
        last_seq = self.last_seq
        seq_back = last_seq is not None and seq_went_back(seq, last_seq)
        self.last_seq = seq
        plausible = PLAUSIBLE_MIN_MMHG <= x <= PLAUSIBLE_MAX_MMHG
        if not plausible:
            bound = PLAUSIBLE_MAX_MMHG if x > PLAUSIBLE_MAX_MMHG else PLAUSIBLE_MIN_MMHG
            self._fault(_IMPLAUSIBLE_I, now, x, bound)
        if x >= p.hard_max_mmhg:  # the hard ceiling counts any reading, plausible or not
            self.hard_ms = ts
            self.hard_mmhg = x
        # the staff's prescription first; the cuff's own report only where none is known
        target = p.target_mmhg if p.target_mmhg is not None else own_target
        self.target = target
        self.device_target = own_target

        ended: BoutSummary | None = None
        bout = self.bout
        if inflated:
            if bout is not None and elapsed < bout.last_elapsed_s:
                # a bout that began after our last reading: a restarted cuff (seq and elapsed
                # from 0) or a missed deflation; a new bout, no fault (SPEC §3)
                if ts - elapsed * 1000.0 >= bout.last_ts_ms - NEW_BOUT_SLACK_MS:
                    ended = self._end_bout(bout, bout.last_ts_ms)
                    bout = None
                else:
                    self._fault(_ELAPSED_BACK_I, now, elapsed, bout.last_elapsed_s)
            elif bout is not None and seq_back:  # seq went back while the bout's time goes on
                self._fault(_SEQ_BACK_I, now, None, None)
            if bout is None:
                bout = self._start_bout(ts, r, p)
            bout.add(ts, elapsed, x, plausible=plausible, target=target, p=p)
        elif bout is not None:
            ended = self._end_bout(bout, ts)

        if plausible:  # implausible readings stay out of every mean (SPEC §3)
            self.lop_mean, band_mean = self.means.add(ts, x, clock.hold_ms)
        else:
            self.lop_mean, band_mean = self.means.means()
        self.band_mean = band_mean
        if (
            not inflated
            or target is None
            or band_mean is None
            or band_mean >= target - p.tolerance_mmhg
        ):
            self.below_since_ms = None
        elif self.below_since_ms is None:
            self.below_since_ms = ts
        self.inflated = inflated
        self.last_ts_ms = ts
        self.last_seen = now
        return ended

    def _start_bout(self, ts: int, r: Reading, p: RuleParams) -> Bout:
        # the true start, even for a bout that began before a gateway restart
        start = round(ts - min(r.elapsed_s, MAX_ELAPSED_S) * 1000.0)
        bout = Bout(start_ms=start, athlete=r.athlete, limb=r.limb.value)
        if self.last_end_ms is not None:
            bout.rest_s = max(0, start - self.last_end_ms) / 1000.0
            bout.min_rest_s = p.min_rest_after_max_s if self.last_hit_max else p.min_rest_s
        self.bout = bout
        self.session.start(start)
        self.means.reset()  # a mean waits for its window at the start of a bout
        self.below_since_ms = None
        return bout

    def _end_bout(self, bout: Bout, end_ms: int) -> BoutSummary:
        self.bout = None
        self.session.end(end_ms)
        self.last_end_ms = end_ms
        self.last_hit_max = bout.hit_max
        return bout.summary(self.team, self.cuff, end_ms)


# -- verdicts, one per kind ------------------------------------------------------------------


def judge_over_pressure(ev: CuffEvidence, p: RuleParams) -> Judgement:
    """Hard ceiling in the last 5 s, 2 s mean ≥ LOP (not ipc), 5 s mean above the band."""
    ts = ev.last_ts_ms
    if (
        ev.hard_ms is not None
        and ts is not None
        and ts - ev.hard_ms < HARD_WINDOW_MS
        and ev.hard_mmhg >= p.hard_max_mmhg
    ):
        return Verdict(Severity.CRITICAL, HARD_CEILING, ev.hard_mmhg, p.hard_max_mmhg)
    # A mean that does not span its window cannot judge: an inflated cuff keeps what it had;
    # a deflated one has nothing left to judge (else an alert would outlive the cuff's silence).
    unknown = False
    lop = p.lop_mmhg
    if lop is not None and p.protocol is not _IPC:
        m = ev.lop_mean
        if m is None:
            if ev.inflated:  # the critical row cannot judge: nothing may lower the alert
                return UNKNOWN
        elif m >= lop:
            return Verdict(Severity.CRITICAL, LOP_MEAN, m, lop)
    target = ev.target
    limit = target + p.tolerance_mmhg if target is not None else p.default_max_mmhg
    m = ev.band_mean
    if m is None:
        unknown = unknown or ev.inflated
    elif m > limit:
        return Verdict(Severity.WARNING, ABOVE_BAND, m, limit, _set_apart(ev))
    return UNKNOWN if unknown else CLEAR


def _set_apart(ev: CuffEvidence) -> str | None:
    """'cuff set to 165, prescribed 120' where the cuff regulates to another target."""
    own, target = ev.device_target, ev.target
    if own is None or target is None or abs(own - target) < TARGET_DIFFERS_MMHG:
        return None
    return f"cuff set to {_num(own)}, prescribed {_num(target)}"


def judge_under_pressure(ev: CuffEvidence, p: RuleParams) -> Judgement:
    """Inflated, with the 5 s mean below target − tolerance for ≥ 7 s (needs a target)."""
    target = ev.target
    if not ev.inflated or target is None:
        return CLEAR
    m = ev.band_mean
    if m is None:
        return UNKNOWN
    limit = target - p.tolerance_mmhg
    if m >= limit:
        return CLEAR
    since, ts = ev.below_since_ms, ev.last_ts_ms
    if since is not None and ts is not None and ts - since >= UNDER_PRESSURE_AFTER_MS:
        return Verdict(Severity.WARNING, BELOW_BAND, m, limit, _set_apart(ev))
    return UNKNOWN  # below, but not for 7 s yet: an open alert stays, none is raised


def judge_over_time(ev: CuffEvidence, p: RuleParams) -> Judgement:
    """elapsed_s ≥ warn_bout_s (warning) or ≥ max_bout_s (critical) while inflated."""
    bout = ev.bout
    if bout is None or not ev.inflated:
        return CLEAR
    e = bout.last_elapsed_s
    warn, hard = e >= p.warn_bout_s, e >= p.max_bout_s
    if not (warn or hard):
        return CLEAR
    if hard:  # the row that sets the severity gives value and threshold (SPEC §3)
        return Verdict(Severity.CRITICAL, BOUT_MAX, e, p.max_bout_s)
    return Verdict(Severity.WARNING, BOUT_WARN, e, p.warn_bout_s)


def judge_short_reperfusion(ev: CuffEvidence) -> Judgement:
    """The open bout started less than its minimum rest after the previous one ended."""
    bout = ev.bout
    if bout is None:
        return CLEAR
    if bout.rest_s is None:
        return UNKNOWN  # first bout seen (e.g. after a restart): a restored alert stays
    if bout.rest_s < bout.min_rest_s:
        return Verdict(Severity.WARNING, SHORT_REST, bout.rest_s, bout.min_rest_s)
    return CLEAR


def judge_session(ev: CuffEvidence, p: RuleParams, now_ms: int, open_until_ms: int) -> Judgement:
    """Occlusion in the last 60 min ≥ the cap, or (ipc) more bouts in it than allowed."""
    per_hour = p.max_bouts_per_hour
    if per_hour is not None:
        n = ev.session.starts_within(now_ms)
        if n > per_hour:
            return Verdict(Severity.WARNING, SESSION_BOUTS, float(n), float(per_hour))
        return CLEAR
    cap_ms = p.max_session_occlusion_s * 1000.0
    if ev.session.surely_below(cap_ms, open_until_ms):  # the usual case, without pruning
        return CLEAR
    occluded_s = ev.session.occluded_ms(now_ms, open_until_ms) / 1000.0
    if occluded_s >= p.max_session_occlusion_s:
        return Verdict(Severity.WARNING, SESSION_OCCLUSION, occluded_s, p.max_session_occlusion_s)
    return CLEAR


def judge_sensor_fault(ev: CuffEvidence, now: float) -> Judgement:
    """A fault within the last 30 s (gateway clock); the first such row gives the numbers."""
    for i, row in enumerate(FAULT_ROWS):
        at = ev.fault_at[i]
        if at is not None and now - at < SENSOR_FAULT_CLEAR_S:
            return Verdict(Severity.WARNING, row, ev.fault_value[i], ev.fault_threshold[i])
    floor = ev.fault_floor
    if floor is not None and now - floor < SENSOR_FAULT_CLEAR_S:
        return UNKNOWN  # a restored alert whose faults we never saw
    return CLEAR


def judge_battery(battery_pct: float | None) -> Judgement:
    """Below 15 % raises; at or above 20 % clears; in between nothing changes (hysteresis)."""
    if battery_pct is None:
        return UNKNOWN
    if battery_pct < BATTERY_LOW_PCT:
        return Verdict(Severity.INFO, BATTERY, battery_pct, BATTERY_LOW_PCT)
    if battery_pct >= BATTERY_OK_PCT:
        return CLEAR
    return UNKNOWN


def offline_verdict(silent_s: float, stale_after_s: float | None) -> Verdict:
    """cuff_offline: silent this long; threshold is stale_after_s, or None for an offline status."""
    return Verdict(Severity.CRITICAL, OFFLINE, silent_s, stale_after_s)


# -- messages ----------------------------------------------------------------------------------


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    if abs(x) >= 1e9:  # an absurd value a device sent: short, not 300 digits
        return f"{x:.3g}"
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def describe(
    row: Row | None, who: str, value: float | None, threshold: float | None,
    note: str | None = None,
) -> str:
    """The human message for an alert at `row` (`who` = "athlete limb"), with `note` after."""
    text = _describe(row, who, value, threshold)
    return text if note is None else f"{text}; {note}"


def _describe(row: Row | None, who: str, value: float | None, threshold: float | None) -> str:
    v, t = _num(value), _num(threshold)
    if row is HARD_CEILING:
        return f"{who} cuff at {v} mmHg (limit {t})"
    if row is LOP_MEAN:
        return f"{who} cuff at {v} mmHg over 2 s, at or above LOP (limit {t})"
    if row is ABOVE_BAND:
        return f"{who} cuff at {v} mmHg over 5 s (limit {t})"
    if row is BELOW_BAND:
        return f"{who} cuff at {v} mmHg over 5 s, below its band: leak or slipped cuff (limit {t})"
    if row is BOUT_WARN or row is BOUT_MAX:
        return f"{who} cuff inflated for {v} s (limit {t} s)"
    if row is SHORT_REST:
        return f"{who} cuff re-inflated after {v} s of rest (minimum {t} s)"
    if row is SESSION_OCCLUSION:
        return f"{who} occluded for {v} s in the last 60 min (limit {t} s)"
    if row is SESSION_BOUTS:
        return f"{who} bout {v} within 60 min (limit {t})"
    if row is OFFLINE:
        if threshold is None:
            return f"{who} cuff went offline while inflated (last reading {v} s ago)"
        return f"{who} cuff silent for {v} s while inflated (limit {t} s)"
    if row is IMPLAUSIBLE:
        lo, hi = _num(PLAUSIBLE_MIN_MMHG), _num(PLAUSIBLE_MAX_MMHG)
        return f"{who} cuff sensor reads {v} mmHg, outside the plausible {lo} to {hi}"
    if row is ELAPSED_BACK:
        return f"{who} cuff elapsed time went back from {t} s to {v} s"
    if row is SEQ_BACK:
        return f"{who} cuff sequence number went backwards"
    if row is BATTERY:
        return f"{who} cuff battery at {v} % (limit {t} %)"
    return f"{who} cuff alert ({v}, limit {t})"
