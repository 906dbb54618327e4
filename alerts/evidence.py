"""Per-cuff evidence for the SPEC §3 rules: the last reading, the open bout, the rolling
means, the 60-min occlusion window, sensor faults and the battery, all in rule time.

`CuffEvidence.observe` folds one reading in; alerts/rules.py judges the result, one verdict
per alert kind. Nothing here decides an alert.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from alerts.clock import DeviceClock
from alerts.window import OcclusionWindow, PairedMeans
from core.model import PLAUSIBLE_MAX_MMHG, PLAUSIBLE_MIN_MMHG, Reading
from core.params import LOP_MEAN_WINDOW_S, MEAN_WINDOW_S, SESSION_WINDOW_S, RuleParams
from core.seq import seq_went_back

# elapsed_s restarting inside a bout means a new bout (we missed the deflation) when the new
# start lies after our last reading; this much slack absorbs device clock jitter and
# whole-second elapsed counters. A restart reaching further back is a sensor fault.
NEW_BOUT_SLACK_MS: Final = 1000
# No cuff occludes a limb for a day; a larger elapsed_s (1e306 is well-formed JSON) is held to
# this for the bout's arithmetic, so that its start stays a number (the stored reading keeps
# what the cuff said, and over_time judges it as a very long bout).
MAX_ELAPSED_S: Final = 86_400.0


class Fault(enum.IntEnum):
    """The sensor faults a reading can show, in the order of their rows in the table."""

    IMPLAUSIBLE = 0  # pressure outside the sensor's plausible range
    ELAPSED_BACK = 1  # elapsed_s went back inside a bout
    SEQ_BACK = 2  # seq went back while the bout's elapsed time goes on


@dataclass(frozen=True, slots=True, kw_only=True)
class BoutSummary:
    """A finished occlusion bout (SPEC §4 `occlusion_bout`; time = bout start)."""

    team: str
    cuff: str
    athlete: str
    limb: str
    start_ms: int
    duration_s: float
    mean_pressure_mmhg: float | None
    min_pressure_mmhg: float | None
    max_pressure_mmhg: float | None
    target_mmhg: float | None
    time_in_band_pct: float | None
    alerts: int


@dataclass(slots=True, eq=False, kw_only=True)
class Bout:
    """The open occlusion bout of one cuff, with running statistics for its summary."""

    start_ms: int
    athlete: str
    limb: str
    last_ts_ms: int = field(init=False)  # rule time of the bout's last reading
    last_elapsed_s: float = 0.0
    hit_max: bool = False
    rest_s: float | None = None  # None: the previous bout's end is unknown
    min_rest_s: float = 0.0
    n: int = 0
    sum_p: float = 0.0
    min_p: float = 0.0
    max_p: float = 0.0
    n_target: int = 0
    in_band: int = 0
    target: float | None = None
    alerts: int = 0  # alerts raised (or reopened) on the cuff during this bout

    def __post_init__(self) -> None:
        self.last_ts_ms = self.start_ms

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
        "_limb", "athlete", "band_mean", "battery_pct", "below_since_ms", "bout", "clock", "cuff",
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
        n = len(Fault)
        self.fault_at: list[float | None] = [None] * n  # gateway clock of each row's last fault
        self.fault_value: list[float | None] = [None] * n
        self.fault_threshold: list[float | None] = [None] * n
        self.fault_now = False  # the last reading was faulty
        self.fault_floor: float | None = None  # a restored sensor_fault holds until 30 s after
        self.battery_pct: float | None = None  # the last reading's, if it said

    @property
    def has_reading(self) -> bool:
        return self.last_ts_ms is not None

    def device_now_ms(self, now: float) -> int:
        """Rule time now, extrapolated from the last reading by the gateway clock."""
        last = self.last_ts_ms
        if last is None:
            return round(now * 1000)
        since = now - self.last_seen
        # right after a reading (every judge on the hot path) no time has passed
        return last if since <= 0.0 else last + round(since * 1000)

    def _fault(self, i: Fault, now: float, value: float | None, threshold: float | None) -> None:
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
        # One function, over our ~60-line norm, on purpose: the per-reading hot path (one call
        # per reading, tens of thousands a second). The reading is unpacked once into locals
        # that every step uses; helpers would each cost a call and pass or re-read the fields.
        # Measured: unpacking once was part of 56.4k -> 44.3k instructions per reading
        # (bench/proposals.md).
        _, _, athlete, limb, ts, seq, x, elapsed, inflated, own_target, battery, skew, received = r
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
        self.battery_pct = battery
        last_seq = self.last_seq
        seq_back = last_seq is not None and seq_went_back(seq, last_seq)
        self.last_seq = seq
        plausible = PLAUSIBLE_MIN_MMHG <= x <= PLAUSIBLE_MAX_MMHG
        if not plausible:
            bound = PLAUSIBLE_MAX_MMHG if x > PLAUSIBLE_MAX_MMHG else PLAUSIBLE_MIN_MMHG
            self._fault(Fault.IMPLAUSIBLE, now, x, bound)
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
                    self._fault(Fault.ELAPSED_BACK, now, elapsed, bout.last_elapsed_s)
            elif bout is not None and seq_back:  # seq went back while the bout's time goes on
                self._fault(Fault.SEQ_BACK, now, None, None)
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
