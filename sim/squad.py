"""The pure squad model: virtual cuffs running seeded session scripts, with injectable faults.

`SquadSimulator` holds one `VirtualCuff` per cuff. Each cuff follows a seeded session script
(BFR: 3 exercises of 30-15-15-15 reps with the cuff inflated through the set rests, 1.5–3 min
reperfusion between them, then an hour off; IPC: 4 × ~5 min full occlusion with 5 min
reperfusion, then an hour off), swings with every rep around its target, and can be given
faults. Time is injected: `reading(cuff, t)` samples the cuff at `t` seconds after the start;
there is no I/O, no asyncio and no clock here (`epoch_s` is the wall clock at t = 0, given).

Time compression (`speed`). The gateway trusts device timestamps only within 300 s of its own
clock, so readings are always stamped with `epoch_s + t`. What speeds up is what the device
reports as a duration: while the cuff is inflated, the script (sets, set rests, `elapsed_s`,
battery drain) runs `speed` times faster, so a 6 min bout lasts 36 s at 10× and a forgotten
arm cuff reaches `max_bout_s` (900 s) in 90 s. Everything the gateway times by timestamps or
by its own clock stays real: the rep swing keeps its real ~0.5 Hz (rolling means see the true
signal), and deflated phases — reperfusion, the break between sessions — run at 1×, so a
compressed run never fakes `short_reperfusion`, a 5th IPC bout within the hour or a stale cuff.
"""

from __future__ import annotations

import enum
import heapq
import json
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partialmethod
from typing import Any, Final, Literal

from core.model import Limb, Protocol
from core.seq import SEQ_MODULUS, next_seq
from sim.faults import (
    CLOCK_AHEAD_S,
    LEAK_MMHG,
    LOW_BATTERY_PCT,
    OVER_PRESSURE_MMHG,
    SENSOR_FAULT_MMHG,
    FaultKind,
    FaultSpec,
)

__all__ = [
    "LOGGER",
    "OFFLINE",
    "ONLINE",
    "RAMP_S",
    "CuffSpec",
    "SimReading",
    "SquadSimulator",
    "Stage",
    "VirtualCuff",
    "encode_readings",
]

# One logger for the whole simulator (model, feed and publisher): users filter on this name.
LOGGER: Final = "cuffwatch.simulate"
log = logging.getLogger(LOGGER)

ONLINE: Final = "online"
OFFLINE: Final = "offline"

# -- the session script -------------------------------------------------------------------------

REPS_PER_SET = (30, 15, 15, 15)
# ~0.4–0.5 Hz tempo, kept off exactly 2 s: 1 Hz sampling of a 2 s swing sees only its zeros.
REP_PERIOD_S = (2.1, 2.6)
SET_REST_S = (30.0, 60.0)  # between sets, cuff kept inflated
SETUP_S = (20.0, 40.0)  # inflated, getting into position before the first set
COOLDOWN_S = (10.0, 30.0)  # inflated after the last set, until the physio deflates
# ≥ 1–3 min reperfusion; the floor leaves a margin over min_rest_s (60) at 1 Hz sampling.
REPERFUSION_S = (90.0, 180.0)
EXERCISES_PER_SESSION = 3  # 3 bouts of ≤ 7.5 min: under 30 min occlusion per hour
# The next session starts over an hour after the last one ended, so no 60 min window holds
# two sessions (max_session_occlusion_s, and IPC's "5th bout within 60 min").
SESSION_BREAK_S = (3600.0, 4500.0)
IPC_CYCLES = 4
IPC_BOUT_S = (285.0, 295.0)  # "5 min", deflated on the timer before ipc max_bout_s (300)
IPC_REPERFUSION_S = (310.0, 325.0)  # 5 min, over ipc min_rest_s (300) by more than a sample
START_OFFSET_S = (0.0, 30.0)  # cuffs of a squad do not all inflate in the same second
LONG_BOUT_S = 900.0  # arm max_bout_s, the shortest BFR limit: a bout this long needs...
REST_AFTER_LONG_BOUT_S = (200.0, 240.0)  # ...more than min_rest_after_max_s (180)

# -- the pressure signal ------------------------------------------------------------------------

RAMP_S = 2.0  # the pump reaches the target about 2 s after inflation starts
SWING_MMHG = (15.0, 25.0)  # non-regulating cuffs swing ±15–30 mmHg with each contraction
NOISE_SD_MMHG = 1.0  # sensor noise
NOISE_MAX_MMHG = 3.0  # clipped, so swing + noise stays within ±30 mmHg of the target
DEFLATED_RESIDUAL_MMHG = 2.0  # a deflated cuff still reads a mmHg or two
BATTERY_START_PCT = (60.0, 100.0)
BATTERY_DRAIN_PCT_PER_H = 3.0  # of session time: a day's training on one charge
BATTERY_RECHARGE_BELOW_PCT = 40.0  # charged between sessions when below this

_EPS = 1e-9  # float slack when a step lands on a segment boundary


# -- model types -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CuffSpec:
    """One cuff of the squad: where it is, who wears it and the prescription it runs."""

    team: str
    cuff: str
    athlete: str
    limb: Limb
    protocol: Protocol = Protocol.BFR
    target_mmhg: float
    lop_mmhg: float | None = None
    target_pct_lop: float | None = None


class Stage(enum.StrEnum):
    """A segment of the session script; every stage but `deflated` has the cuff inflated."""

    DEFLATED = "deflated"  # reperfusion, or the break between sessions
    SETUP = "setup"  # inflated, before the first set
    SET = "set"  # reps: the pressure swings with each contraction
    SET_REST = "set_rest"  # between sets, still inflated
    COOLDOWN = "cooldown"  # after the last set, still inflated
    OCCLUSION = "occlusion"  # IPC full occlusion, athlete at rest
    OVERTIME = "overtime"  # a forgotten cuff: never deflated

    @property
    def inflated(self) -> bool:
        """Whether the cuff is inflated during this stage."""
        return self is not Stage.DEFLATED


@dataclass(frozen=True, slots=True)
class _Segment:
    """One stage of the script and how long it lasts."""

    stage: Stage
    script_s: float  # length in script time (math.inf: until something ends it)
    rep_period_s: float = 0.0  # SET only
    session_end: bool = False  # the break after a session


@dataclass(frozen=True, slots=True)
class SimReading:
    """One simulated sample; `to_json()` is the SPEC §2 reading object."""

    team: str
    cuff: str
    ts_ms: int
    seq: int
    pressure_mmhg: float
    elapsed_s: float
    inflated: bool
    target_mmhg: float
    battery_pct: float

    def to_json(self) -> dict[str, Any]:
        """The reading object a cuff publishes (SPEC §2 field names)."""
        return {
            "ts": self.ts_ms,
            "seq": self.seq,
            "pressure_mmhg": self.pressure_mmhg,
            "elapsed_s": self.elapsed_s,
            "inflated": self.inflated,
            "target_mmhg": self.target_mmhg,
            "battery_pct": self.battery_pct,
        }


def encode_readings(readings: Sequence[SimReading], *, array: bool | None = None) -> bytes:
    """A telemetry payload: one reading object, or a JSON array (default: if several)."""
    if not readings:
        raise ValueError("no readings to encode")
    if array is None:
        array = len(readings) > 1
    if not array and len(readings) > 1:
        raise ValueError("several readings need a JSON array")
    body: Any = [r.to_json() for r in readings] if array else readings[0].to_json()
    return json.dumps(body, separators=(",", ":")).encode()


# -- the pure model ----------------------------------------------------------------------------


def _bfr_script(rng: random.Random) -> Iterator[_Segment]:
    """Sessions of 3 exercises (30-15-15-15 reps, inflated throughout), forever."""
    yield _Segment(Stage.DEFLATED, rng.uniform(*START_OFFSET_S))
    while True:
        for exercise in range(EXERCISES_PER_SESSION):
            period = rng.uniform(*REP_PERIOD_S)
            yield _Segment(Stage.SETUP, rng.uniform(*SETUP_S))
            for index, reps in enumerate(REPS_PER_SET):
                if index:
                    yield _Segment(Stage.SET_REST, rng.uniform(*SET_REST_S))
                yield _Segment(Stage.SET, reps * period, period)
            yield _Segment(Stage.COOLDOWN, rng.uniform(*COOLDOWN_S))
            last = exercise == EXERCISES_PER_SESSION - 1
            rest = SESSION_BREAK_S if last else REPERFUSION_S
            yield _Segment(Stage.DEFLATED, rng.uniform(*rest), session_end=last)


def _ipc_script(rng: random.Random) -> Iterator[_Segment]:
    """Sessions of 4 × 5 min full occlusion with 5 min reperfusion, forever."""
    yield _Segment(Stage.DEFLATED, rng.uniform(*START_OFFSET_S))
    while True:
        for cycle in range(IPC_CYCLES):
            yield _Segment(Stage.OCCLUSION, rng.uniform(*IPC_BOUT_S))
            last = cycle == IPC_CYCLES - 1
            rest = SESSION_BREAK_S if last else IPC_REPERFUSION_S
            yield _Segment(Stage.DEFLATED, rng.uniform(*rest), session_end=last)


class VirtualCuff:
    """One simulated cuff: session script, pressure signal and faults, clocked by the caller."""

    def __init__(
        self,
        spec: CuffSpec,
        *,
        seed: int = 0,
        speed: float = 1.0,
        epoch_s: float = 0.0,
        first_seq: int = 0,
    ) -> None:
        """A cuff at the start of its script; `epoch_s` is the wall clock at t = 0."""
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self.spec = spec
        self.speed = speed
        self._epoch_s = epoch_s
        key = f"{seed}:{spec.team}:{spec.cuff}"
        # Two streams: the script must not depend on how often the cuff is sampled.
        self._script_rng = random.Random(f"script:{key}")
        self._noise_rng = random.Random(f"noise:{key}")
        self._swing_mmhg = self._script_rng.uniform(*SWING_MMHG)
        self._battery_pct = self._script_rng.uniform(*BATTERY_START_PCT)
        script = _ipc_script if spec.protocol is Protocol.IPC else _bfr_script
        self._script = script(self._script_rng)
        self._seq = first_seq % SEQ_MODULUS
        self._faults: list[FaultSpec] = []
        self._events: list[tuple[float, int, FaultSpec, bool]] = []  # (time, n, fault, starts)
        self._deferred: _Segment | None = None  # the rest a forgotten cuff has not begun
        self._t = 0.0  # seconds since the start, wall time
        self._segment = next(self._script)
        self._left_s = self._segment.script_s  # script time left in the segment
        self._segment_t = 0.0  # wall time the segment began
        self._bout_s = 0.0  # script time since inflation (elapsed_s)
        self._bout_t = 0.0  # wall time of inflation

    # -- state ----------------------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        """The script stage the cuff is in."""
        return self._segment.stage

    @property
    def inflated(self) -> bool:
        """Whether the cuff is inflated now."""
        return self._segment.stage.inflated

    @property
    def t(self) -> float:
        """How far (seconds after the start) the cuff has been advanced."""
        return self._t

    def fault_active(self, kind: FaultKind, t: float | None = None) -> bool:
        """Whether a fault of `kind` holds at `t` (default: the cuff's current time)."""
        at = self._t if t is None else t
        return any(f.kind is kind and f.at_s <= at < f.end_s for f in self._faults)

    def status(self, t: float) -> Literal["online", "offline"]:
        """The retained status the cuff should show at `t`."""
        return OFFLINE if self.fault_active(FaultKind.OFFLINE, t) else ONLINE

    def inject(self, fault: FaultSpec) -> None:
        """Schedule a fault on this cuff."""
        if fault.cuff != self.spec.cuff:
            raise ValueError(f"fault {fault} is not for cuff {self.spec.cuff}")
        self._faults.append(fault)
        n = len(self._faults)
        if fault.kind.needs_inflation:
            heapq.heappush(self._events, (fault.at_s, 2 * n, fault, True))
        if fault.kind is FaultKind.FORGOTTEN and math.isfinite(fault.end_s):
            heapq.heappush(self._events, (fault.end_s, 2 * n + 1, fault, False))

    # -- sampling -------------------------------------------------------------------------------

    def reading(self, t: float) -> SimReading | None:
        """Advance to `t` (seconds after the start) and sample; None while dropped out."""
        self.advance(t)
        if self.fault_active(FaultKind.DROPOUT) or self.fault_active(FaultKind.OFFLINE):
            return None
        inflated = self.inflated
        skew_s = CLOCK_AHEAD_S if self.fault_active(FaultKind.CLOCK) else 0.0
        battery = LOW_BATTERY_PCT if self.fault_active(FaultKind.LOW_BATTERY) else self._battery_pct
        reading = SimReading(
            team=self.spec.team,
            cuff=self.spec.cuff,
            ts_ms=round((self._epoch_s + t + skew_s) * 1000),
            seq=self._seq,
            pressure_mmhg=round(self._pressure(t), 1),
            elapsed_s=round(self._bout_s, 3) if inflated else 0.0,
            inflated=inflated,
            target_mmhg=self.spec.target_mmhg,
            battery_pct=round(max(0.0, battery), 1),
        )
        self._seq = next_seq(self._seq)
        return reading

    def _pressure(self, t: float) -> float:
        """The pressure at `t`: target, rep swing, ramp, noise and faults."""
        noise = max(-NOISE_MAX_MMHG, min(NOISE_MAX_MMHG, self._noise_rng.gauss(0.0, NOISE_SD_MMHG)))
        if self.fault_active(FaultKind.SENSOR):
            return SENSOR_FAULT_MMHG
        if not self.inflated:
            return self._noise_rng.uniform(0.0, DEFLATED_RESIDUAL_MMHG)
        if self.fault_active(FaultKind.OVER_PRESSURE):
            return OVER_PRESSURE_MMHG + abs(noise)
        target = self.spec.target_mmhg
        if self.fault_active(FaultKind.LEAK):
            target -= LEAK_MMHG
        swing = 0.0
        if self._segment.stage is Stage.SET:
            # Real-time phase: the swing stays ~0.5 Hz whatever the speed (module docstring).
            phase = (t - self._segment_t) / self._segment.rep_period_s
            swing = self._swing_mmhg * math.sin(2 * math.pi * phase)
        ramp = min(1.0, (t - self._bout_t) / RAMP_S)
        return (target + swing) * ramp + noise

    # -- the script clock -----------------------------------------------------------------------

    def advance(self, t: float) -> None:
        """Run the script up to `t` seconds after the start (never backwards)."""
        if t < self._t:
            raise ValueError(f"cuff {self.spec.cuff}: time went back from {self._t} to {t}")
        while True:
            self._fire_events()
            if self._t >= t:
                return
            rate = self.speed if self.inflated else 1.0
            segment_end = self._t + self._left_s / rate
            step_to = min(t, segment_end, self._events[0][0] if self._events else math.inf)
            script_s = (step_to - self._t) * rate
            self._left_s -= script_s
            if self.inflated:
                self._bout_s += script_s
            self._battery_pct -= BATTERY_DRAIN_PCT_PER_H * script_s / 3600.0
            self._t = step_to
            if self._left_s <= _EPS:
                self._next_segment()

    def _fire_events(self) -> None:
        """Apply due fault starts (a bout begins) and ends (a forgotten cuff deflates)."""
        while self._events and self._events[0][0] <= self._t:
            _, _, fault, starts = heapq.heappop(self._events)
            if starts and not self.inflated:
                self._next_segment()  # the rest is cut short: the next bout starts now
            elif not starts and self._segment.stage is Stage.OVERTIME:
                self._next_segment()  # someone finally deflates the forgotten cuff
            log.debug("cuff %s: fault %s %s", self.spec.cuff, fault, "on" if starts else "off")

    def _next_segment(self) -> None:
        """Move to the next stage, holding a forgotten cuff inflated and resting long after."""
        was_inflated = self.inflated
        bout_s = self._bout_s
        if self._deferred is not None:
            segment, self._deferred = self._deferred, None
        else:
            segment = next(self._script)
        if was_inflated and not segment.stage.inflated and self.fault_active(FaultKind.FORGOTTEN):
            self._deferred, segment = segment, _Segment(Stage.OVERTIME, math.inf)
        if was_inflated and not segment.stage.inflated and bout_s >= LONG_BOUT_S:
            longer = self._script_rng.uniform(*REST_AFTER_LONG_BOUT_S)
            segment = replace(segment, script_s=max(segment.script_s, longer))
        if segment.stage.inflated and not was_inflated:
            self._bout_s = 0.0
            self._bout_t = self._t
        elif not segment.stage.inflated:
            self._bout_s = 0.0
            if segment.session_end and self._battery_pct < BATTERY_RECHARGE_BELOW_PCT:
                self._battery_pct = 100.0
        self._segment = segment
        self._left_s = segment.script_s
        self._segment_t = self._t


class SquadSimulator:
    """A squad of `VirtualCuff`s sharing one seed, speed and start; faults by method."""

    def __init__(
        self,
        squad: Sequence[CuffSpec],
        *,
        seed: int = 0,
        speed: float = 1.0,
        epoch_s: float = 0.0,
    ) -> None:
        """One virtual cuff per spec (ValueError on a duplicate cuff id)."""
        self.cuffs: dict[str, VirtualCuff] = {}
        for spec in squad:
            if spec.cuff in self.cuffs:
                raise ValueError(f"cuff {spec.cuff} appears twice in the squad")
            self.cuffs[spec.cuff] = VirtualCuff(spec, seed=seed, speed=speed, epoch_s=epoch_s)

    def cuff(self, cuff: str) -> VirtualCuff:
        """The virtual cuff with this id; ValueError if there is none."""
        try:
            return self.cuffs[cuff]
        except KeyError:
            raise ValueError(f"no cuff {cuff!r} in the squad") from None

    def reading(self, cuff: str, t: float) -> SimReading | None:
        """Sample one cuff at `t` seconds after the start; None while it is dropped out."""
        return self.cuff(cuff).reading(t)

    def status(self, cuff: str, t: float) -> Literal["online", "offline"]:
        """The retained status one cuff should show at `t`."""
        return self.cuff(cuff).status(t)

    def inject(self, fault: FaultSpec) -> None:
        """Schedule a fault (ValueError if its cuff is not in the squad)."""
        self.cuff(fault.cuff).inject(fault)

    def fault(self, kind: FaultKind, cuff: str, at: float, duration: float | None = None) -> None:
        """Schedule a fault of `kind` at `at` s for `duration` s (None: the kind's default)."""
        self.inject(FaultSpec(kind, cuff, at, duration))

    # `sim.leak(cuff, at, duration=None)` and so on: `fault` of one kind (sim.faults.FaultKind
    # says what each does and how long it lasts by default)
    over_pressure = partialmethod(fault, FaultKind.OVER_PRESSURE)
    forgotten = partialmethod(fault, FaultKind.FORGOTTEN)
    leak = partialmethod(fault, FaultKind.LEAK)
    low_battery = partialmethod(fault, FaultKind.LOW_BATTERY)
    sensor = partialmethod(fault, FaultKind.SENSOR)
    clock = partialmethod(fault, FaultKind.CLOCK)

    def dropout(
        self, cuff: str, at: float, duration: float | None = None, *, announce: bool = False
    ) -> None:
        """No readings while inflated (default: never back); `announce` publishes `offline`."""
        self.fault(FaultKind.OFFLINE if announce else FaultKind.DROPOUT, cuff, at, duration)

