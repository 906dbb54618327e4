"""The SPEC §3 rules: the alert kinds, the table's rows, and one judge per kind.

A judge reads a cuff's evidence (alerts/evidence.py) and says, for its kind, whether a row
of the table holds (a `Verdict`), none does (`CLEAR`), or the evidence cannot tell yet
(`UNKNOWN`: a rolling mean that does not span its window, a battery between the two
hysteresis levels). `ON_READING` lists the judges run after every reading, `ON_TICK` those
run on the timer for an alert that is open. No lifecycle here: the engine turns verdicts
into alert transitions.

Adding a kind touches this module only (and its tests, and docs/contract.md): a member of
`AlertKind`, its rows, a judge, its entry in `ON_READING` (and `ON_TICK` if time alone can
change it), its message in `MESSAGES` and its push words in `PUSH_WORDS`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from alerts.evidence import CuffEvidence, Fault
from core.model import PLAUSIBLE_MAX_MMHG, PLAUSIBLE_MIN_MMHG, Protocol, Severity
from core.params import (
    BATTERY_LOW_PCT,
    BATTERY_OK_PCT,
    HARD_WINDOW_S,
    LOP_MEAN_WINDOW_S,
    MEAN_WINDOW_S,
    SENSOR_FAULT_CLEAR_S,
    UNDER_PRESSURE_AFTER_S,
    RuleParams,
)

HARD_WINDOW_MS: Final = round(HARD_WINDOW_S * 1000)
_IPC: Final = Protocol.IPC  # an enum member looked up once, not per reading (~150 ns each)
UNDER_PRESSURE_AFTER_MS: Final = round(UNDER_PRESSURE_AFTER_S * 1000)
# A cuff's own target this far from the prescription is "set to another pressure" (SPEC §3);
# closer is the rounding of a target in % of LOP.
TARGET_DIFFERS_MMHG: Final = 1.0


class AlertKind(enum.StrEnum):
    """The alert kinds (SPEC §3); each has its rows in the table below and one judge."""

    OVER_PRESSURE = "over_pressure"
    UNDER_PRESSURE = "under_pressure"
    OVER_TIME = "over_time"
    SHORT_REPERFUSION = "short_reperfusion"
    SESSION_OVER_TIME = "session_over_time"
    CUFF_OFFLINE = "cuff_offline"
    SENSOR_FAULT = "sensor_fault"
    BATTERY_LOW = "battery_low"


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
# sensor_fault rows by evidence.Fault (in table order: the first fault found gives the numbers)
FAULT_ROWS: Final = {
    Fault.IMPLAUSIBLE: IMPLAUSIBLE, Fault.ELAPSED_BACK: ELAPSED_BACK, Fault.SEQ_BACK: SEQ_BACK,
}


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


# -- verdicts, one per kind ------------------------------------------------------------------


def judge_over_pressure(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
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
    return f"cuff set to {number(own)}, prescribed {number(target)}"


def judge_under_pressure(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
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


def judge_over_time(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
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


def judge_short_reperfusion(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
    """The open bout started less than its minimum rest after the previous one ended."""
    bout = ev.bout
    if bout is None:
        return CLEAR
    if bout.rest_s is None:
        return UNKNOWN  # first bout seen (e.g. after a restart): a restored alert stays
    if bout.rest_s < bout.min_rest_s:
        return Verdict(Severity.WARNING, SHORT_REST, bout.rest_s, bout.min_rest_s)
    return CLEAR


def judge_session(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
    """Occlusion in the last 60 min ≥ the cap, or (ipc) more bouts in it than allowed."""
    last = ev.last_ts_ms
    if last is None:
        return UNKNOWN
    now_ms = ev.device_now_ms(now)  # rule time, run on from the last reading
    # an open bout counts until now; a finished one until its last reading
    open_until_ms = now_ms if ev.inflated else (last or now_ms)
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


def judge_sensor_fault(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
    """A fault within the last 30 s (gateway clock); the first such row gives the numbers."""
    for fault, row in FAULT_ROWS.items():
        at = ev.fault_at[fault]
        if at is not None and now - at < SENSOR_FAULT_CLEAR_S:
            return Verdict(Severity.WARNING, row, ev.fault_value[fault], ev.fault_threshold[fault])
    floor = ev.fault_floor
    if floor is not None and now - floor < SENSOR_FAULT_CLEAR_S:
        return UNKNOWN  # a restored alert whose faults we never saw
    return CLEAR


def judge_battery(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
    """Below 15 % raises; at or above 20 % clears; in between nothing changes (hysteresis)."""
    battery_pct = ev.battery_pct
    if battery_pct is None:
        return UNKNOWN
    if battery_pct < BATTERY_LOW_PCT:
        return Verdict(Severity.INFO, BATTERY, battery_pct, BATTERY_LOW_PCT)
    if battery_pct >= BATTERY_OK_PCT:
        return CLEAR
    return UNKNOWN


def judge_sensor_fault_now(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
    """After a reading: judged only when that reading was faulty (the timer clears faults)."""
    return judge_sensor_fault(ev, p, now) if ev.fault_now else UNKNOWN


def silent_and_deflated(ev: CuffEvidence, p: RuleParams, now: float) -> Judgement:
    """over_pressure on the timer: a deflated cuff silent for stale_after_s has nothing left
    to judge (else its alert would outlive the cuff's silence)."""
    if ev.has_reading and not ev.inflated and now - ev.last_seen >= p.stale_after_s:
        return CLEAR
    return UNKNOWN


def offline_verdict(silent_s: float, stale_after_s: float | None) -> Verdict:
    """cuff_offline: silent this long; threshold is stale_after_s, or None for an offline status."""
    return Verdict(Severity.CRITICAL, OFFLINE, silent_s, stale_after_s)

# -- which judge runs when ------------------------------------------------------------------

Judge = Callable[[CuffEvidence, RuleParams, float], Judgement]  # (evidence, limits, clock)

# After every reading, in this order (the order of the transitions a reading can cause).
ON_READING: Final[tuple[tuple[AlertKind, Judge], ...]] = (
    (AlertKind.OVER_PRESSURE, judge_over_pressure),
    (AlertKind.UNDER_PRESSURE, judge_under_pressure),
    (AlertKind.OVER_TIME, judge_over_time),
    (AlertKind.SHORT_REPERFUSION, judge_short_reperfusion),
    (AlertKind.SESSION_OVER_TIME, judge_session),
    (AlertKind.SENSOR_FAULT, judge_sensor_fault_now),
    (AlertKind.BATTERY_LOW, judge_battery),
)
# On the timer, for an open alert of the kind: what time alone can change. (cuff_offline is
# the engine's own: its stale watch and an `offline` status raise it, a reading clears it.)
ON_TICK: Final[Mapping[AlertKind, Judge]] = {
    AlertKind.OVER_PRESSURE: silent_and_deflated,
    AlertKind.SESSION_OVER_TIME: judge_session,
    AlertKind.SENSOR_FAULT: judge_sensor_fault,
}


# -- messages ----------------------------------------------------------------------------------


def number(x: float | None) -> str:
    """A value as staff read it: 0.1 resolution, no trailing .0, absurd ones short."""
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


# Each row's message: {who} is "athlete limb", {v} the value, {t} the threshold.
MESSAGES: Final[Mapping[str, str]] = {
    "hard_ceiling": "{who} cuff at {v} mmHg (limit {t})",
    "lop_mean": "{who} cuff at {v} mmHg over 2 s, at or above LOP (limit {t})",
    "above_band": "{who} cuff at {v} mmHg over 5 s (limit {t})",
    "below_band": "{who} cuff at {v} mmHg over 5 s, below its band: leak or slipped cuff "
                  "(limit {t})",
    "bout_warn": "{who} cuff inflated for {v} s (limit {t} s)",
    "bout_max": "{who} cuff inflated for {v} s (limit {t} s)",
    "short_rest": "{who} cuff re-inflated after {v} s of rest (minimum {t} s)",
    "session_occlusion": "{who} occluded for {v} s in the last 60 min (limit {t} s)",
    "session_bouts": "{who} bout {v} within 60 min (limit {t})",
    "offline": "{who} cuff silent for {v} s while inflated (limit {t} s)",
    "implausible": f"{{who}} cuff sensor reads {{v}} mmHg, outside the plausible "
                   f"{number(PLAUSIBLE_MIN_MMHG)} to {number(PLAUSIBLE_MAX_MMHG)}",
    "elapsed_backwards": "{who} cuff elapsed time went back from {t} s to {v} s",
    "seq_backwards": "{who} cuff sequence number went backwards",
    "battery_low": "{who} cuff battery at {v} % (limit {t} %)",
}
# cuff_offline from the cuff's own "offline" status: no threshold, the silence so far
OFFLINE_STATUS_MESSAGE: Final = "{who} cuff went offline while inflated (last reading {v} s ago)"
UNKNOWN_ROW_MESSAGE: Final = "{who} cuff alert ({v}, limit {t})"  # restored, row not known


def _describe(row: Row | None, who: str, value: float | None, threshold: float | None) -> str:
    if row is None:
        template = UNKNOWN_ROW_MESSAGE
    elif row is OFFLINE and threshold is None:
        template = OFFLINE_STATUS_MESSAGE
    else:
        template = MESSAGES[row.key]
    return template.format(who=who, v=number(value), t=number(threshold))


# -- push words ------------------------------------------------------------------------------
# What a push to a phone says about each row (SPEC §3: "written for a lock screen"); the
# alert's `message` above is the MQTT contract and stays as it is. alerts/render.py fills
# the templates: {cuff} is "Left leg cuff" (or "Cuff"), {v} the value and {t} the threshold,
# each written in the row's unit ("320.5 mmHg", "20 min", "12 %").


class PushWords(NamedTuple):
    """One row in a physio's words: what it is, the numbers, what to do, what ends it."""

    what: str  # the kind in plain words: a push's title ("Pressure too high")
    fact: str  # the value against its limit
    action: str  # what to do now
    ended: str  # what ended it, for the resolution's push ("cuff deflated")


_BACK_WITHIN: Final = "pressure back within limits"
_DEFLATED: Final = "cuff deflated"
_NO_FAULT: Final = f"no fault for {number(SENSOR_FAULT_CLEAR_S)} s"
_CHECK_CUFF: Final = "Check the cuff; restart it if this goes on"
PUSH_WORDS: Final[Mapping[str, PushWords]] = {
    "hard_ceiling": PushWords(
        "Pressure too high", "{cuff} at {v}, limit {t}", "Deflate the cuff now", _BACK_WITHIN),
    "lop_mean": PushWords(
        "Pressure at or above LOP",
        f"{{cuff}} at {{v}} for {number(LOP_MEAN_WINDOW_S)} s, LOP {{t}}",
        "Deflate the cuff now", _BACK_WITHIN),
    "above_band": PushWords(
        "Pressure above target", f"{{cuff}} at {{v}} for {number(MEAN_WINDOW_S)} s, limit {{t}}",
        "Lower the cuff to its prescribed pressure", _BACK_WITHIN),
    "below_band": PushWords(
        "Pressure below target", f"{{cuff}} at {{v}} for {number(MEAN_WINDOW_S)} s, minimum {{t}}",
        "Check the cuff and its fit: leak or slipped cuff",
        "pressure back in range, or cuff deflated"),
    "bout_warn": PushWords(
        "Bout running long", "{cuff} inflated for {v}, warning at {t}",
        "Deflate at the end of this set", _DEFLATED),
    "bout_max": PushWords(
        "Cuff inflated too long", "{cuff} inflated for {v}, limit {t}", "Deflate the cuff now",
        _DEFLATED),
    "short_rest": PushWords(
        "Rest too short", "{cuff} re-inflated after {v} of rest, minimum {t}",
        "Deflate and let the limb rest", _DEFLATED),
    "session_occlusion": PushWords(
        "Too much occlusion this hour", "{cuff} occluded {v} in the last 60 min, limit {t}",
        "Deflate; no more bouts on this limb for now", "under {t} of occlusion in the last 60 min"),
    "session_bouts": PushWords(
        "Too many bouts this hour", "{cuff}: bout {v} within 60 min, limit {t}",
        "Deflate; no more bouts on this limb for now", "{t} bouts or fewer in the last 60 min"),
    "offline": PushWords(
        "Cuff offline while inflated", "{cuff} silent for {v}, limit {t}; it may still be inflated",
        "Check the cuff now; deflate it by hand if needed", "a reading arrived"),
    "implausible": PushWords(
        "Cuff sensor fault",
        f"{{cuff}} sensor reads {{v}}, outside {number(PLAUSIBLE_MIN_MMHG)} to "
        f"{number(PLAUSIBLE_MAX_MMHG)} mmHg",
        "Check the cuff; swap it if this goes on", _NO_FAULT),
    "elapsed_backwards": PushWords(
        "Cuff timer fault", "{cuff} bout timer went back from {t} to {v}", _CHECK_CUFF, _NO_FAULT),
    "seq_backwards": PushWords(
        "Cuff data fault", "{cuff} reading counter went backwards", _CHECK_CUFF, _NO_FAULT),
    "battery_low": PushWords(
        "Cuff battery low", "{cuff} battery at {v}, limit {t}", "Swap or charge the battery",
        f"battery back at {number(BATTERY_OK_PCT)} % or more"),
}
# cuff_offline from the cuff's own "offline" status: no threshold, the silence so far
OFFLINE_STATUS_PUSH: Final = PUSH_WORDS["offline"]._replace(
    fact="{cuff} went offline, last reading {v} before; it may still be inflated")
