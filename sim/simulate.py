"""`cuffwatch simulate` (SPEC §8): a virtual squad of cuffs running realistic sessions.

Pure core: `SquadSimulator` holds one `VirtualCuff` per cuff. Each cuff follows a seeded
session script (BFR: 3 exercises of 30-15-15-15 reps with the cuff inflated through the
set rests, 1.5–3 min reperfusion between them, then an hour off; IPC: 4 × ~5 min full
occlusion with 5 min reperfusion, then an hour off), swings with every rep around its
target, and can be given faults. Time is injected: `reading(cuff, t)` samples the cuff at
`t` seconds after the start; there is no I/O and no clock in the core.

Async shell: `run_simulation(options)` publishes the readings over MQTT with QoS 1, one
connection per cuff (its own client id, retained `online` status and `offline` last will)
up to `PER_CUFF_CLIENTS_MAX` cuffs, a few shared connections beyond that (load tests; no
per-cuff last will then). A clean stop publishes `offline` for every cuff.

Time compression (`--speed X`). The gateway trusts device timestamps only within 300 s of
its own clock, so readings are always stamped with the real wall clock. What speeds up is
what the device reports as a duration: while the cuff is inflated, the script (sets, set
rests, `elapsed_s`, battery drain) runs X times faster, so a 6 min bout lasts 36 s at 10×
and a forgotten arm cuff reaches `max_bout_s` (900 s) in 90 s. Everything the gateway times
by timestamps or by its own clock stays real: the rep swing keeps its real ~0.5 Hz (rolling
means see the true signal), and deflated phases — reperfusion, the break between sessions —
run at 1×, so a compressed run never fakes `short_reperfusion`, a 5th IPC bout within the
hour or a stale cuff.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import heapq
import json
import logging
import math
import os
import random
import re
import ssl
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import gmqtt
from gmqtt import MQTTConnectError
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from core.config import ID_PATTERN, BrokerSettings, Settings
from core.model import Limb, Protocol
from core.topics import Topics
from gateway.mqtt import backoff_delays, make_ssl_context

__all__ = [
    "CuffSpec",
    "FaultKind",
    "FaultSpec",
    "SimOptions",
    "SimReading",
    "SimStats",
    "SimulationError",
    "SquadSimulator",
    "Stage",
    "VirtualCuff",
    "add_arguments",
    "encode_readings",
    "generated_roster",
    "generated_squad",
    "options_from_args",
    "parse_duration",
    "roster_from_squad",
    "run_simulation",
    "squad_from_settings",
]

log = logging.getLogger("cuffwatch.simulate")

# -- the squad (SPEC §1 typical practice) -------------------------------------------------------

ARM_LOP_MMHG = (140, 180)  # limb occlusion pressure, upper arm
LEG_LOP_MMHG = (180, 240)  # limb occlusion pressure, thigh
LOP_SIDE_SPREAD_MMHG = 6  # left and right limbs of one athlete differ by a few mmHg
ARM_PCT_LOP = (40, 50)  # working pressure on arms, % of LOP
LEG_PCT_LOP = (60, 80)  # working pressure on legs, % of LOP
IPC_TARGET_MMHG = (200, 220)  # full occlusion for ischaemic pre-conditioning
IPC_SHARE = 0.25  # a quarter of a generated squad is on a recovery (IPC) protocol
LEG_SHARE = 0.6  # most BFR work in team sports is on the legs
# Used when a roster cuff's athlete has no prescription: the middle of the typical ranges.
DEFAULT_LOP_MMHG = {"arm": 160.0, "leg": 210.0}
DEFAULT_PCT_LOP = {"arm": 45.0, "leg": 70.0}
DEFAULT_IPC_TARGET_MMHG = 210.0

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
SEQ_MODULUS = 2**32  # SPEC §2: seq may wrap at 2^32

# -- faults -------------------------------------------------------------------------------------

OVER_PRESSURE_MMHG = 320.0  # above every hard ceiling (arm 250, leg and ipc 300)
LEAK_MMHG = 40.0  # far outside tolerance_mmhg (15): under_pressure after 7 s
LOW_BATTERY_PCT = 10.0  # under battery_low's 15 %
SENSOR_FAULT_MMHG = -50.0  # below the plausible −20 mmHg: sensor_fault, never over_pressure
CLOCK_AHEAD_S = 3600.0  # far past max_clock_skew_s (300)

# -- the MQTT shell -----------------------------------------------------------------------------

DEFAULT_CUFF_HZ = 1.0  # one reading per second per cuff, as real cuffs report
DEFAULT_CUFFS = 6  # a generated squad when neither --cuffs nor a roster says otherwise
MAX_BATCH = 256  # SPEC §2: a telemetry message holds at most 256 readings
# Up to this many cuffs, one MQTT connection per cuff: own client id, own last will, as
# real devices. Beyond it the run is a load test; a few shared connections carry it,
# because hundreds of sockets cost a 2-core box more than they show.
PER_CUFF_CLIENTS_MAX = 50
POOL_CLIENTS = 4  # shared connections in a load test: spreads per-connection in-flight windows
KEEPALIVE_S = 15  # the broker publishes a vanished cuff's last will ~22 s after its last packet
CONNECT_TIMEOUT_S = 10.0  # no CONNACK by then: e.g. an MQTT 3.1.1-only broker ignoring MQTT 5
MAX_LAG_S = 1.0  # a ticker further behind than this skips ticks instead of bursting them
# Messages queued per connection while disconnected (or slower than the offered rate); beyond
# it the oldest are dropped and counted: a sim must not grow without bound in a long outage.
OUTBOX_MAX_MESSAGES = 1000
SHUTDOWN_TIMEOUT_S = 5.0  # clean stop: last readings and `offline` statuses get this long
SETTLE_TIMEOUT_S = 1.0  # gmqtt's own tasks end within a loop iteration or two of a disconnect
STATS_INTERVAL_S = 10.0  # progress line in the log
ONLINE: Final = "online"
OFFLINE: Final = "offline"

_EPS = 1e-9  # float slack when a step lands on a segment boundary
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ID_RE = re.compile(ID_PATTERN)
_ROOT_RE = re.compile(r"^[A-Za-z0-9_/-]{1,64}$")


class SimulationError(Exception):
    """The simulation cannot run: the broker refused us."""


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `1.5m`, `1h` or `250ms`; ValueError otherwise."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 30s, 2m, 1h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


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


class FaultKind(enum.StrEnum):
    """Injectable faults; each leaves its own signature in the readings."""

    OVER_PRESSURE = "over_pressure"  # pressure jumps to 320 mmHg
    FORGOTTEN = "forgotten"  # the cuff is never deflated: elapsed_s passes max_bout_s
    LEAK = "leak"  # pressure sags 40 mmHg below target and stays
    DROPOUT = "dropout"  # no readings while inflated (status stays online)
    OFFLINE = "offline"  # a dropout that also publishes status `offline`
    LOW_BATTERY = "low_battery"  # battery reads 10 %
    SENSOR = "sensor"  # implausible pressure (−50 mmHg)
    CLOCK = "clock"  # device clock 1 h ahead

    @property
    def needs_inflation(self) -> bool:
        """A deflated cuff starts its next bout when this fault begins (it acts on a bout)."""
        return self in _INFLATING_FAULTS

    @property
    def default_duration_s(self) -> float:
        """How long the fault lasts when the spec gives no `+FOR`."""
        return _FAULT_DEFAULT_S.get(self, math.inf)


_INFLATING_FAULTS = frozenset(
    {FaultKind.OVER_PRESSURE, FaultKind.FORGOTTEN, FaultKind.LEAK, FaultKind.DROPOUT,
     FaultKind.OFFLINE}
)
# Transient faults end by themselves; the others last until the simulation stops.
_FAULT_DEFAULT_S = {FaultKind.OVER_PRESSURE: 10.0, FaultKind.SENSOR: 3.0}
_FAULT_RE = re.compile(
    r"^(?P<kind>[a-z_]+):(?P<cuff>[^@+\s]+)(?:@(?P<at>[^+]+))?(?:\+(?P<for>.+))?$"
)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault on one cuff from `at_s` (seconds after the start) for `duration_s`."""

    kind: FaultKind
    cuff: str
    at_s: float = 0.0
    duration_s: float | None = None  # None: the kind's default (see FaultKind)

    def __post_init__(self) -> None:
        """Reject a negative start or a duration ≤ 0."""
        if self.at_s < 0 or not math.isfinite(self.at_s):
            raise ValueError(f"fault {self}: the start must be ≥ 0 s")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"fault {self}: the duration must be > 0 s")

    @property
    def end_s(self) -> float:
        """When the fault ends (math.inf: never)."""
        duration = self.kind.default_duration_s if self.duration_s is None else self.duration_s
        return self.at_s + duration

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """`KIND:CUFF[@AT][+FOR]`, e.g. `over_pressure:c3@30s`, `dropout:c002@1m+20s`."""
        match = _FAULT_RE.match(text.strip())
        if match is None:
            raise ValueError(f"not a fault: {text!r} (KIND:CUFF[@AT][+FOR], e.g. leak:c3@30s)")
        try:
            kind = FaultKind(match["kind"])
        except ValueError:
            kinds = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault {match['kind']!r} (one of {kinds})") from None
        at = parse_duration(match["at"]) if match["at"] else 0.0
        duration = parse_duration(match["for"]) if match["for"] else None
        return cls(kind, match["cuff"], at, duration)

    def __str__(self) -> str:
        """The spec in the `--fault` syntax."""
        text = f"{self.kind.value}:{self.cuff}@{self.at_s:g}s"
        return text if self.duration_s is None else f"{text}+{self.duration_s:g}s"


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
        self._seq = (self._seq + 1) % SEQ_MODULUS
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

    def over_pressure(self, cuff: str, at: float, duration: float | None = None) -> None:
        """Pressure jumps to 320 mmHg (default for 10 s); a deflated cuff inflates."""
        self.inject(FaultSpec(FaultKind.OVER_PRESSURE, cuff, at, duration))

    def forgotten(self, cuff: str, at: float, duration: float | None = None) -> None:
        """The cuff's bout never ends (default: never), so elapsed_s passes max_bout_s."""
        self.inject(FaultSpec(FaultKind.FORGOTTEN, cuff, at, duration))

    def leak(self, cuff: str, at: float, duration: float | None = None) -> None:
        """Pressure sits 40 mmHg below target while inflated (default: from then on)."""
        self.inject(FaultSpec(FaultKind.LEAK, cuff, at, duration))

    def dropout(
        self, cuff: str, at: float, duration: float | None = None, *, announce: bool = False
    ) -> None:
        """No readings while inflated (default: never back); `announce` publishes `offline`."""
        kind = FaultKind.OFFLINE if announce else FaultKind.DROPOUT
        self.inject(FaultSpec(kind, cuff, at, duration))

    def low_battery(self, cuff: str, at: float, duration: float | None = None) -> None:
        """Battery reads 10 % (default: from then on)."""
        self.inject(FaultSpec(FaultKind.LOW_BATTERY, cuff, at, duration))

    def sensor(self, cuff: str, at: float, duration: float | None = None) -> None:
        """Implausible pressure, −50 mmHg (default for 3 s)."""
        self.inject(FaultSpec(FaultKind.SENSOR, cuff, at, duration))

    def clock(self, cuff: str, at: float, duration: float | None = None) -> None:
        """Device clock 1 h ahead (default: from then on)."""
        self.inject(FaultSpec(FaultKind.CLOCK, cuff, at, duration))


# -- squads ------------------------------------------------------------------------------------


def _default_target(limb: Limb, protocol: Protocol) -> float:
    """A typical target when the roster prescribes none."""
    if protocol is Protocol.IPC:
        return DEFAULT_IPC_TARGET_MMHG
    return round(DEFAULT_LOP_MMHG[limb.kind] * DEFAULT_PCT_LOP[limb.kind] / 100.0, 1)


def squad_from_settings(settings: Settings) -> list[CuffSpec]:
    """Every roster cuff as a virtual cuff: its athlete, limb and prescribed target."""
    squad = []
    for team_id, team in settings.teams.items():
        for cuff_id, roster in team.cuffs.items():
            athlete = roster.athlete or cuff_id  # an unassigned cuff still reports
            limb = roster.limb
            params = settings.rule_params(team_id, athlete, limb)
            athlete_cfg = team.athletes.get(athlete)
            rx = athlete_cfg.prescriptions.get(limb) if athlete_cfg else None
            squad.append(
                CuffSpec(
                    team=team_id,
                    cuff=cuff_id,
                    athlete=athlete,
                    limb=limb,
                    protocol=params.protocol,
                    target_mmhg=params.target_mmhg or _default_target(limb, params.protocol),
                    lop_mmhg=params.lop_mmhg,
                    target_pct_lop=rx.target_pct_lop if rx else None,
                )
            )
    return squad


def generated_squad(n_cuffs: int, teams: int = 1, seed: int = 0) -> list[CuffSpec]:
    """A squad of `n_cuffs` over teams `t1`…: athletes wear a pair (both arms or both legs)."""
    if n_cuffs < 1 or not 1 <= teams <= n_cuffs:
        raise ValueError(f"need ≥ 1 cuff and 1…{n_cuffs} teams, not {teams}")
    rng = random.Random(f"squad:{seed}")
    by_team: dict[str, list[str]] = {f"t{k + 1}": [] for k in range(teams)}
    for i in range(n_cuffs):
        by_team[f"t{i * teams // n_cuffs + 1}"].append(f"c{i + 1:03d}")
    squad: list[CuffSpec] = []
    athletes = 0
    for team, cuffs in by_team.items():
        for pair in range(0, len(cuffs), 2):
            athletes += 1
            athlete = f"a-{athletes:03d}"
            protocol = Protocol.IPC if rng.random() < IPC_SHARE else Protocol.BFR
            legs = rng.random() < LEG_SHARE
            sides = (Limb.LEFT_LEG, Limb.RIGHT_LEG) if legs else (Limb.LEFT_ARM, Limb.RIGHT_ARM)
            lop_base = rng.randint(*(LEG_LOP_MMHG if legs else ARM_LOP_MMHG))
            pct = float(rng.randint(*(LEG_PCT_LOP if legs else ARM_PCT_LOP)))
            ipc_target = float(rng.randint(*IPC_TARGET_MMHG))
            for cuff, limb in zip(cuffs[pair : pair + 2], sides, strict=False):
                spread = rng.randint(-LOP_SIDE_SPREAD_MMHG // 2, LOP_SIDE_SPREAD_MMHG // 2)
                if protocol is Protocol.IPC:
                    spec = CuffSpec(team=team, cuff=cuff, athlete=athlete, limb=limb,
                                    protocol=protocol, target_mmhg=ipc_target)
                else:
                    lop = float(lop_base + spread)
                    spec = CuffSpec(team=team, cuff=cuff, athlete=athlete, limb=limb,
                                    protocol=protocol, target_mmhg=round(lop * pct / 100.0, 1),
                                    lop_mmhg=lop, target_pct_lop=pct)
                squad.append(spec)
    return squad


def roster_from_squad(squad: Sequence[CuffSpec]) -> dict[str, Any]:
    """The SPEC §7 `teams` table for a squad: athletes with prescriptions, cuffs with owners."""
    teams: dict[str, Any] = {}
    for spec in squad:
        team = teams.setdefault(
            spec.team, {"name": f"Team {spec.team}", "athletes": {}, "cuffs": {}}
        )
        athlete = team["athletes"].setdefault(
            spec.athlete, {"name": f"Athlete {spec.athlete}", "prescriptions": {}}
        )
        rx: dict[str, Any] = {"protocol": spec.protocol.value}
        if spec.lop_mmhg is not None:
            rx["lop_mmhg"] = spec.lop_mmhg
        if spec.target_pct_lop is not None:
            rx["target_pct_lop"] = spec.target_pct_lop
        else:
            rx["target_mmhg"] = spec.target_mmhg
        athlete["prescriptions"][spec.limb.value] = rx
        team["cuffs"][spec.cuff] = {"athlete": spec.athlete, "limb": spec.limb.value}
    return teams


def generated_roster(n_cuffs: int, teams: int = 1, seed: int = 0) -> dict[str, Any]:
    """`roster_from_squad(generated_squad(...))`: configure gateway and simulator alike."""
    return roster_from_squad(generated_squad(n_cuffs, teams, seed))


# -- options -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    """Everything `run_simulation` needs; checked on construction (ValueError)."""

    squad: tuple[CuffSpec, ...]
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    protocol: Literal[5, 3] = 5  # amqtt (the demo's embedded broker) speaks only 3.1.1
    topic_root: str = "bfr"
    rate: float | None = None  # readings/s over the whole squad; None: 1 Hz per cuff
    batch: int = 1  # readings per message (a JSON array when > 1)
    speed: float = 1.0  # script compression while inflated (module docstring)
    duration_s: float | None = None  # None: until cancelled
    seed: int = 0
    faults: tuple[FaultSpec, ...] = ()
    pool: bool | None = None  # shared connections; None: only above PER_CUFF_CLIENTS_MAX cuffs

    def __post_init__(self) -> None:
        """Check every field; ValueError lists every problem."""
        problems = []
        if not self.squad:
            problems.append("the squad is empty")
        ids = [spec.cuff for spec in self.squad]
        if len(set(ids)) != len(ids):
            problems.append("a cuff id appears twice in the squad")
        bad = [i for spec in self.squad for i in (spec.team, spec.cuff) if not _ID_RE.match(i)]
        if bad:
            problems.append(f"team/cuff ids must be 1–64 of [A-Za-z0-9_-]: {bad[0]!r}")
        if not _ROOT_RE.match(self.topic_root):
            problems.append(f"bad topic root {self.topic_root!r}")
        if self.protocol not in (3, 5):
            problems.append("protocol must be 5 or 3")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            problems.append("rate must be > 0 readings/s")
        if not 1 <= self.batch <= MAX_BATCH:
            problems.append(f"batch must be 1…{MAX_BATCH} readings")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            problems.append("speed must be > 0")
        if self.duration_s is not None and not self.duration_s > 0:
            problems.append("duration must be > 0 s")
        known = set(ids)
        problems += [f"fault {f}: no cuff {f.cuff!r} in the squad"
                     for f in self.faults if f.cuff not in known]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def cuff_hz(self) -> float:
        """Readings per second of each cuff."""
        return DEFAULT_CUFF_HZ if self.rate is None else self.rate / len(self.squad)

    @property
    def pooled(self) -> bool:
        """Whether cuffs share a few connections instead of one each."""
        return len(self.squad) > PER_CUFF_CLIENTS_MAX if self.pool is None else self.pool


def _positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _duration_arg(text: str) -> float:
    """An argparse type: a duration > 0 in seconds."""
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _fault_arg(text: str) -> FaultSpec:
    """An argparse type: a fault spec."""
    try:
        return FaultSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _batch_arg(text: str) -> int:
    """An argparse type: readings per message."""
    value = _positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH} readings per message (SPEC §2)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` flags (the caller adds `-c/--config`)."""
    kinds = ", ".join(k.value for k in FaultKind)
    parser.add_argument("--broker", metavar="URL",
                        help="mqtt://host:1883 or mqtts://host:8883 (default: the config's "
                        "broker.url; its username and password are used either way)")
    parser.add_argument("--cuffs", type=_positive_int, metavar="N",
                        help="simulate N generated cuffs (c001…) instead of the config's roster "
                        f"(default: the roster, or {DEFAULT_CUFFS} without one)")
    parser.add_argument("--teams", type=_positive_int, default=1, metavar="N",
                        help="spread generated cuffs over teams t1…tN (default 1)")
    parser.add_argument("--rate", type=_positive_float, metavar="R",
                        help="readings per second over the whole squad, for load tests "
                        "(default: 1 per cuff)")
    parser.add_argument("--batch", type=_batch_arg, default=1, metavar="K",
                        help=f"readings per message, as a JSON array (1…{MAX_BATCH}, default 1)")
    parser.add_argument("--speed", type=_positive_float, default=1.0, metavar="X",
                        help="run inflated phases X times faster (elapsed_s too); timestamps, "
                        "reperfusion and rep swings stay real time (default 1)")
    parser.add_argument("--duration", type=_duration_arg, metavar="S",
                        help="stop after S (90, 90s, 2m, 1h; default: until Ctrl-C)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--fault", type=_fault_arg, action="append", default=[], metavar="SPEC",
                        help=f"inject KIND:CUFF[@AT][+FOR], e.g. over_pressure:c003@30s or "
                        f"dropout:c002@1m+20s; repeatable. KIND: {kinds}")
    parser.add_argument("--protocol", type=int, choices=(5, 3), default=None,
                        help="MQTT 5 or 3 (3.1.1) (default: the config's broker.protocol)")
    parser.add_argument("--pool", action=argparse.BooleanOptionalAction, default=None,
                        help=f"share {POOL_CLIENTS} connections instead of one per cuff "
                        f"(default: only above {PER_CUFF_CLIENTS_MAX} cuffs)")


def options_from_args(args: argparse.Namespace, settings: Settings) -> SimOptions:
    """SimOptions from parsed `simulate` flags over the loaded config (ValueError if bad)."""
    if args.cuffs is not None:
        squad = generated_squad(args.cuffs, args.teams, args.seed)
    elif any(team.cuffs for team in settings.teams.values()):
        squad = squad_from_settings(settings)
    else:
        squad = generated_squad(DEFAULT_CUFFS, min(args.teams, DEFAULT_CUFFS), args.seed)
    broker = settings.broker
    endpoint = broker
    if args.broker is not None:
        try:
            endpoint = BrokerSettings(url=args.broker)
        except ValueError as exc:
            raise ValueError(f"--broker {args.broker}: must look like mqtt://host:1883") from exc
    return SimOptions(
        squad=tuple(squad),
        host=endpoint.host,
        port=endpoint.port,
        tls=endpoint.tls,
        ca_file=broker.ca_file,
        cert_file=broker.cert_file,
        key_file=broker.key_file,
        username=broker.username,
        password=broker.secret_password(),
        protocol=args.protocol or broker.protocol,
        topic_root=settings.topic_root,
        rate=args.rate,
        batch=args.batch,
        speed=args.speed,
        duration_s=args.duration,
        seed=args.seed,
        faults=tuple(args.fault),
        pool=args.pool,
    )


# -- the async shell ---------------------------------------------------------------------------


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


# gmqtt reconnects from tasks nobody owns and checks whether to go on only before its delay,
# so a client stopped during that delay connects again afterwards. A lane reconnects itself,
# inside its own task, with a fresh client per connection (fresh packet ids, nothing behind).
class _Client(gmqtt.Client):  # type: ignore[misc]  # gmqtt is untyped
    """gmqtt's client without its own reconnects."""

    async def reconnect(self, delay: bool = False) -> None:
        """Do nothing: the lane's connection loop reconnects."""


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# Two tasks per lane: the tick loop samples and queues readings whether or not the broker is
# reachable (the outbox is bounded: the oldest messages go first); the connection loop
# (re)connects with jittered backoff. Readings in flight when a connection drops are lost, as
# with a real cuff; those queued meanwhile follow the reconnect.
class _Lane:
    """One MQTT connection and the cuffs it carries, sampled round-robin on a fixed grid."""

    def __init__(
        self,
        *,
        name: str,
        client_id: str,
        cuffs: Sequence[CuffSpec],
        options: SimOptions,
        sim: SquadSimulator,
        stats: SimStats,
        t0: float,
        phase: float,
        own_will: bool,
    ) -> None:
        """A lane; nothing connects before `run()`."""
        self.name = name
        self._client_id = client_id
        self._cuffs = list(cuffs)
        self._by_id = {c.cuff: c for c in self._cuffs}
        self._options = options
        self._sim = sim
        self._stats = stats
        self._t0 = t0
        self._interval_s = 1.0 / (options.cuff_hz * len(self._cuffs))
        self._offset_s = phase * self._interval_s  # lanes tick evenly spread, not all at once
        self._topics = Topics(options.topic_root)
        self._pending: dict[str, list[SimReading]] = {c.cuff: [] for c in self._cuffs}
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._status: dict[str, str] = {c.cuff: ONLINE for c in self._cuffs}
        self._to_announce: dict[str, None] = {}  # cuffs whose status is not yet published
        self._will: gmqtt.Message | None = None
        if own_will:
            only = self._cuffs[0]
            topic = self._topics.status(only.team, only.cuff)
            self._will = gmqtt.Message(topic, OFFLINE, qos=1, retain=True)
        self._tls: ssl.SSLContext | bool = (
            make_ssl_context(options.ca_file, options.cert_file, options.key_file)
            if options.tls else False
        )
        self._version = MQTTv50 if options.protocol == 5 else MQTTv311
        self._client: _Client | None = None
        self._socket_open = False  # a transport of ours may be open: disconnect on stop
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._connections = 0

    async def run(self) -> None:
        """Tick until the duration is over (or cancelled), then stop cleanly."""
        try:
            async with asyncio.TaskGroup() as tg:
                connector = tg.create_task(
                    self._connection_loop(), name=f"cuffwatch-sim[{self.name}].connection_loop"
                )
                await self._tick_loop()
                connector.cancel()
        finally:
            await self._close()

    # -- connection --------------------------------------------------------------------------

    def _new_client(self) -> _Client:
        """A fresh gmqtt client with our id, credentials, last will and callbacks."""
        client = _Client(self._client_id, clean_session=True, will_message=self._will,
                         logger=logging.getLogger("gmqtt"))
        if self._options.username:
            client.set_auth_credentials(self._options.username, self._options.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    async def _connection_loop(self) -> None:
        """Connect, wait for the loss, reconnect after a jittered backoff; forever."""
        host, port = self._options.host, self._options.port
        delays = backoff_delays()
        while True:
            self._lost.clear()
            client = self._client = self._new_client()
            self._socket_open = True
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await client.connect(host, port, ssl=self._tls, keepalive=KEEPALIVE_S,
                                         version=self._version)
            except MQTTConnectError as exc:
                raise SimulationError(f"{host}:{port} refused {self._client_id}: {exc}") from None
            except ssl.SSLError as exc:
                raise SimulationError(f"TLS with {host}:{port} failed: {exc}") from None
            except (OSError, TimeoutError) as exc:
                await self._disconnect(client)
                delay = next(delays)
                log.warning("%s: broker %s:%d unreachable (%s); retrying in %.1f s",
                            self.name, host, port, exc or "no CONNACK", delay)
                await asyncio.sleep(delay)
                continue
            delays = backoff_delays()
            await self._lost.wait()
            log.warning("%s: lost the connection to %s:%d; reconnecting", self.name, host, port)

    def _on_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        """gmqtt callback: announce every cuff's status, let telemetry flow."""
        if client is not self._client:
            return
        self._connections += 1
        if self._connections > 1:
            self._stats.reconnects += 1
        log.debug("%s: connected (session %s)", self.name, "resumed" if flags else "new")
        self._to_announce = dict.fromkeys(self._status)
        self._connected.set()

    def _on_disconnect(self, client: Any, packet: Any, exc: BaseException | None = None) -> None:
        """gmqtt callback: hold telemetry and wake the connection loop."""
        if client is not self._client:
            return
        self._socket_open = False
        self._connected.clear()
        self._lost.set()

    async def _disconnect(self, client: _Client) -> None:
        """Close the client's transport if it may be open (no last will)."""
        if self._socket_open:
            self._socket_open = False
            await client.disconnect()

    # -- ticking -----------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Sample on absolute deadlines `offset + i × interval`, so the rate never drifts."""
        loop = asyncio.get_running_loop()
        end = self._options.duration_s
        i = max(0, math.ceil((loop.time() - self._t0 - self._offset_s) / self._interval_s))
        while True:
            now = loop.time() - self._t0
            if now - (self._offset_s + i * self._interval_s) > MAX_LAG_S:
                skip_to = math.ceil((now - self._offset_s) / self._interval_s)
                self._stats.skipped_ticks += skip_to - i
                i = skip_to
            while (due := self._offset_s + i * self._interval_s) <= now:
                if end is not None and due >= end:
                    break
                self._tick(i, due)
                i += 1
            self._flush()
            if end is not None and due >= end:
                return
            await asyncio.sleep(due - (loop.time() - self._t0))

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
        if len(pending) >= self._options.batch:
            self._enqueue(spec, pending)
            self._pending[spec.cuff] = []

    def _enqueue(self, spec: CuffSpec, readings: Sequence[SimReading]) -> None:
        """Queue one telemetry message, dropping the oldest when the outbox is full."""
        if len(self._outbox) >= OUTBOX_MAX_MESSAGES:
            self._outbox.popleft()
            self._stats.dropped += 1
        topic = self._topics.telemetry(spec.team, spec.cuff)
        self._outbox.append((topic, encode_readings(readings, array=self._options.batch > 1)))

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish with QoS 1; False when the broker's in-flight window is full."""
        assert self._client is not None  # only called while connected
        try:
            self._client.publish(topic, payload, qos=1, retain=retain)
        except OverflowError:  # gmqtt: every packet id allowed in flight is taken
            self._stats.throttled += 1
            return False
        return True

    def _flush(self) -> bool:
        """Publish statuses, then queued telemetry, while connected; True when all is out."""
        if not self._connected.is_set():
            return False
        while self._to_announce:
            cuff = next(iter(self._to_announce))
            spec = self._by_id[cuff]
            topic = self._topics.status(spec.team, cuff)
            if not self._publish(topic, self._status[cuff].encode(), retain=True):
                return False
            del self._to_announce[cuff]
            self._stats.statuses += 1
        while self._outbox:
            topic, payload = self._outbox[0]
            if not self._publish(topic, payload):
                return False
            self._outbox.popleft()
            self._stats.messages += 1
        return True

    # -- stopping ----------------------------------------------------------------------------

    async def _until_acked(self, client: _Client) -> None:
        """Wait until the broker has acknowledged every QoS 1 message sent, or the link drops."""
        # gmqtt 0.8.0 (pinned) has no public PUBACK signal; its resend store empties on the
        # last PUBACK. Closing the socket before then can make the broker drop our DISCONNECT
        # (the PUBACKs it writes meet a closed socket) and publish the last will.
        acked = asyncio.ensure_future(client._persistent_storage.wait_empty())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({acked, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (acked, lost):
                waiter.cancel()
            await asyncio.gather(acked, lost, return_exceptions=True)

    async def _drain(self, client: _Client) -> None:
        """Flush everything and wait for its PUBACKs (the in-flight window limits a flush)."""
        while self._connected.is_set():
            done = self._flush()
            await self._until_acked(client)
            if done:
                return

    async def _close(self) -> None:
        """Send what is left and `offline` for every cuff, then disconnect (no last will)."""
        for spec in self._cuffs:
            if self._pending[spec.cuff]:
                self._enqueue(spec, self._pending[spec.cuff])
                self._pending[spec.cuff] = []
        try:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                client = self._client
                if client is not None and self._connected.is_set():
                    await self._drain(client)
                    self._status = dict.fromkeys(self._status, OFFLINE)
                    self._to_announce = dict.fromkeys(self._status)
                    await self._drain(client)
                if client is not None:
                    await self._disconnect(client)
        except TimeoutError:
            log.warning("%s: stopped with %d message(s) unsent", self.name, len(self._outbox))
        self._connected.clear()
        self._stats.dropped += len(self._outbox)
        self._outbox.clear()


def _lanes(options: SimOptions, sim: SquadSimulator, stats: SimStats, t0: float) -> list[_Lane]:
    """One lane per cuff, or POOL_CLIENTS lanes sharing the squad round-robin."""
    squad = list(options.squad)
    if options.pooled:
        count = min(POOL_CLIENTS, len(squad))
        groups = [(f"pool{k}", f"cuffwatch-sim-{os.getpid()}-{k}", squad[k::count])
                  for k in range(count)]
    else:
        groups = [(spec.cuff, spec.cuff, [spec]) for spec in squad]
    return [
        _Lane(name=name, client_id=client_id, cuffs=cuffs, options=options, sim=sim,
              stats=stats, t0=t0, phase=k / len(groups), own_will=not options.pooled)
        for k, (name, client_id, cuffs) in enumerate(groups)
    ]


def _mqtt_tasks() -> set[asyncio.Task[Any]]:
    """Tasks running gmqtt's coroutines or our clients' no-op reconnects."""
    found = set()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None)
        if code is None:
            continue
        if f"{os.sep}gmqtt{os.sep}" in code.co_filename or code is _Client.reconnect.__code__:
            found.add(task)
    return found


async def _settle(before: set[asyncio.Task[Any]]) -> None:
    """Let the gmqtt tasks our disconnects started or cancelled finish (a loop turn or two)."""
    ending = {t for t in _mqtt_tasks() if t not in before or t.cancelling()}
    if ending:
        await asyncio.wait(ending, timeout=SETTLE_TIMEOUT_S)


async def _report_loop(stats: SimStats) -> None:
    """Log progress every STATS_INTERVAL_S."""
    readings = messages = 0
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        log.info(
            "simulated %d readings (%.0f/s) in %d messages (%.0f/s); dropped %d, throttled %d, "
            "skipped %d, reconnects %d", stats.readings,
            (stats.readings - readings) / STATS_INTERVAL_S, stats.messages,
            (stats.messages - messages) / STATS_INTERVAL_S, stats.dropped, stats.throttled,
            stats.skipped_ticks, stats.reconnects,
        )
        readings, messages = stats.readings, stats.messages


async def run_simulation(options: SimOptions, *, stats: SimStats | None = None) -> None:
    """Publish until `duration_s` or cancelled, then `offline` per cuff; SimulationError if refused.

    An unreachable broker is retried with backoff, forever; a refusal (credentials, TLS) raises.
    """
    stats = stats if stats is not None else SimStats()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sim = SquadSimulator(options.squad, seed=options.seed, speed=options.speed, epoch_s=time.time())
    for fault in options.faults:
        sim.inject(fault)
    lanes = _lanes(options, sim, stats, t0)
    log.info(
        "simulating %d cuff(s) over %d connection(s) to %s:%d (MQTT %s), %.3g readings/s per "
        "cuff, speed %gx, %s", len(options.squad), len(lanes), options.host, options.port,
        "5" if options.protocol == 5 else "3.1.1", options.cuff_hz, options.speed,
        f"for {options.duration_s:g} s" if options.duration_s else "until stopped",
    )
    before = _mqtt_tasks()
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(lane.run(), name=f"cuffwatch-sim[{lane.name}].lane")
                     for lane in lanes]
            reporter = tg.create_task(_report_loop(stats), name="cuffwatch-sim.report_loop")
            await asyncio.wait(tasks)
            reporter.cancel()
    except* SimulationError as group:
        raise _first_leaf(group) from None
    finally:
        await _settle(before)
        log.info(
            "simulation stopped: %d readings in %d messages, %d dropped, %d reconnects",
            stats.readings, stats.messages, stats.dropped, stats.reconnects,
        )
