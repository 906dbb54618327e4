"""One cuff's clock as the rules see it: rule time that never jumps, and how old a reading is.

Device clocks reset, jump and lag (a cuff restarts and counts from 0, SNTP steps it, a
glitch stamps one reading +200 s). The rolling windows need a time base that follows the
device's own spacing of its readings (arrays and backlogs arrive all at once) and survives
any jump. `DeviceClock.observe` gives each reading a *rule time*:

- it follows the device clock while the device's step since the last reading is plausible:
  not backwards by more than `BACK_TOLERANCE_MS`, and not further ahead than the gateway's
  own clock moved plus a slack (a cuff cannot sample faster than time passes; the slack
  covers readings that arrive together in one array, spaced by the cuff's cadence, and a
  backlog catching up to the present);
- on any other step (a reset, a jump either way, a glitch) it re-anchors: rule time moves by
  what the gateway clock moved (or, within one message, by the cuff's learned cadence) and
  the device clock is followed from there with a new offset. One bad timestamp costs one
  re-anchor, never a stalled window.

`age_ms` says how far behind now a reading is, for the push rule (SPEC §3: backlog is not
pushed). It is the reading's lag behind the gateway clock in rule time, less the cuff's
*live lag*: the lag learned whenever the cuff's readings were seen arriving at the pace its
rule time advances (a live cuff, whatever its clock's offset). A backlog arrives faster than
its time advances, so it never teaches the live lag and stays old; a cuff whose clock lags
by minutes is live as soon as one pace check has passed.
"""

from __future__ import annotations

from typing import Final

# A device step back this small is jitter or a reading reordered within its array: rule time
# holds still. Anything further back is a clock reset or step, and re-anchors.
BACK_TOLERANCE_MS: Final = 250
# A step ahead of the gateway clock's own by more than this (or twice the cadence, if
# larger) is a jump: one reading in an array may sit a cadence after the one before it.
STEP_SLACK_MS: Final = 1000
# Cadences run from 20 Hz to one reading in 5 s (SPEC §2 devices); a longer step (a silence)
# counts as this much, so a gap cannot teach an absurd cadence.
MAX_CADENCE_MS: Final = 5000
# The cadence is an exponential average of accepted steps, 1/8 of each new step: a few
# readings adapt it to a new rate, one odd step barely moves it.
CADENCE_SMOOTHING: Final = 8
# Pace checks compare how far rule time and the gateway clock moved over at least this long:
# long enough for network jitter to be small beside it, short enough that a cuff with a
# lagging clock is known live within about a second after the gateway starts.
PACE_BASELINE_MS: Final = 1000
# Rule time and gateway clock agree if they moved alike within this (+ PACE_RELATIVE of the
# baseline): a backlog drained at even 1.35x real time fails the check.
PACE_TOLERANCE_MS: Final = 250
PACE_RELATIVE: Final = 0.1


class DeviceClock:
    """Rule time and reading age for one cuff; `observe` each reading in arrival order."""

    __slots__ = (
        "_last_received", "_last_rule", "_last_step", "_last_ts", "_live_lag", "_offset",
        "_ref_received", "_ref_rule", "age_ms", "cadence_ms", "hold_ms",
    )

    def __init__(self) -> None:
        self._last_ts: int | None = None  # device time of the last reading
        self._last_rule = 0  # its rule time
        self._last_received = 0  # its gateway receive time
        self._offset = 0  # rule time = device time + offset, until the next re-anchor
        self.cadence_ms: float | None = None  # learned spacing of the cuff's readings
        self._last_step = 0  # the last accepted step forward
        # the longest silence before this reading that still leaves the cuff's readings
        # describing the time between them: twice its cadence or its last step, if longer
        self.hold_ms = 0.0
        self._live_lag = 0  # lag (received - rule) of a reading known live; 0: trust the clock
        self._ref_received = 0  # the pace check's reference reading
        self._ref_rule = 0
        self.age_ms = 0  # how far behind now the last observed reading is

    def observe(self, ts_ms: int, received_ms: int) -> int:
        """Fold in one reading (device time, gateway receive time); return its rule time."""
        last_ts = self._last_ts
        if last_ts is None:
            rule = ts_ms
            self._offset = 0
            self._ref_received, self._ref_rule = received_ms, rule
        else:
            # hot path: once per reading, so comparisons rather than min()/max() calls
            step = ts_ms - last_ts
            last_received = self._last_received
            waited = received_ms - last_received
            if waited < 0:  # noqa: PLR1730
                waited = 0
            cadence = self.cadence_ms
            last_rule = self._last_rule
            if cadence is None:  # the second reading: its step is all we know of the cadence
                first = step if step < MAX_CADENCE_MS else MAX_CADENCE_MS
                self.hold_ms = 2.0 * first if first > 0 else 0.0
                slack = float(MAX_CADENCE_MS)  # any spacing a cuff may have counts as one
            else:
                last_step = self._last_step
                self.hold_ms = 2.0 * (cadence if cadence > last_step else last_step)
                slack = 2.0 * cadence
                if slack < STEP_SLACK_MS:  # noqa: PLR1730
                    slack = STEP_SLACK_MS
            # a cuff whose last reading was behind its live lag (backlog) may catch up by that
            # much; one that was live may not run ahead of the gateway's clock
            behind = last_received - last_rule - self._live_lag
            if behind > 0:
                slack += behind
            if -BACK_TOLERANCE_MS <= step <= waited + slack:
                rule = ts_ms + self._offset
                if rule < last_rule:
                    rule = last_rule
                elif step > 0:
                    s = step if step < MAX_CADENCE_MS else MAX_CADENCE_MS
                    self._last_step = s
                    self.cadence_ms = (
                        s if cadence is None else cadence + (s - cadence) / CADENCE_SMOOTHING
                    )
            else:  # the device clock jumped: move as the gateway's clock did, or by a cadence
                moved = waited if waited > 0 else (cadence or 0.0)
                rule = last_rule + round(moved)
                self._offset = rule - ts_ms
            if received_ms - self._ref_received >= PACE_BASELINE_MS:
                self._check_pace(rule, received_ms)
        self._last_ts = ts_ms
        self._last_rule = rule
        self._last_received = received_ms
        lag = received_ms - rule
        # fresher than anything seen live: the clock moved ahead (min() is a call per reading)
        if lag < self._live_lag:  # noqa: PLR1730
            self._live_lag = lag
        self.age_ms = lag - self._live_lag
        return rule

    def _check_pace(self, rule: int, received_ms: int) -> None:
        """Rule time kept pace with the gateway clock since the reference: learn the live lag."""
        waited = received_ms - self._ref_received
        moved = rule - self._ref_rule
        if abs(moved - waited) <= PACE_TOLERANCE_MS + PACE_RELATIVE * waited:
            self._live_lag = received_ms - rule
        self._ref_received, self._ref_rule = received_ms, rule
