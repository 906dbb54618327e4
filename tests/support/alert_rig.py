"""Helpers for the alert-engine tests: a fake clock and a one-cuff rig (team t1, cuff c1).

No tests here; `test_alert_rules.py` and `test_alert_properties.py` import it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from alerts.engine import AlertEngine, Outcome
from alerts.model import AlertKind, BoutSummary, Change, Transition
from core.model import Limb, Protocol, Reading
from core.params import RuleParams

T0 = 1_900_000_000.0  # the fake clock's start, epoch seconds (2030): far from any real now


class FakeClock:
    """The injected gateway clock; moves only when told to."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def leg_params(**overrides: Any) -> RuleParams:
    """A left-leg BFR prescription: LOP 220, target 132 (60 %), SPEC §7 leg defaults."""
    base = RuleParams(
        limb=Limb.LEFT_LEG, hard_max_mmhg=300.0, default_max_mmhg=240.0, max_bout_s=1200.0,
        lop_mmhg=220.0, target_mmhg=132.0,
    )
    return replace(base, **overrides)


def arm_params(**overrides: Any) -> RuleParams:
    """A left-arm BFR prescription: LOP 160, target 72 (45 %), SPEC §7 arm defaults."""
    base = RuleParams(
        limb=Limb.LEFT_ARM, hard_max_mmhg=250.0, default_max_mmhg=180.0, max_bout_s=900.0,
        lop_mmhg=160.0, target_mmhg=72.0,
    )
    return replace(base, **overrides)


def ipc_params(**overrides: Any) -> RuleParams:
    """The SPEC §7 `[alerts.ipc]` profile on a leg: full occlusion at 220 mmHg."""
    base = RuleParams(
        limb=Limb.LEFT_LEG, protocol=Protocol.IPC, hard_max_mmhg=300.0, default_max_mmhg=240.0,
        lop_mmhg=200.0, target_mmhg=220.0, warn_bout_s=240.0, max_bout_s=300.0,
        min_rest_s=300.0, min_rest_after_max_s=300.0, max_bouts_per_hour=4,
    )
    return replace(base, **overrides)


class Rig:
    """An engine, a fake clock and one cuff whose device time runs with the clock.

    `read()` advances both clocks by `dt`, counts `seq` and `elapsed_s` as a cuff would, and
    records every transition in `log` and every finished bout in `bouts`. `away()` moves only
    the gateway clock (the cuff's readings wait in the broker); readings fed with a small
    `arrive_dt` then arrive as that backlog does, faster than their device time advances.
    """

    def __init__(
        self, params: RuleParams | None = None, *, athlete: str = "a-17", cuff: str = "c1"
    ) -> None:
        self.clock = FakeClock()
        self.engine = AlertEngine(clock=self.clock)
        self.params = params if params is not None else leg_params()
        self.team = "t1"
        self.cuff = cuff
        self.athlete = athlete
        self.seq = 0
        self.elapsed = 0.0
        self.inflated = False
        self.last_ts_ms = 0  # device time of the last reading fed
        self.device_t = self.clock.t  # the true time the cuff's next reading is taken after
        self.log: list[Transition] = []
        self.bouts: list[BoutSummary] = []

    def read(
        self,
        pressure: float,
        *,
        dt: float = 1.0,
        inflated: bool = True,
        elapsed: float | None = None,
        target: float | None = None,
        battery: float | None = None,
        seq: int | None = None,
        lag_s: float = 0.0,
        params: RuleParams | None = None,
        arrive_dt: float | None = None,
    ) -> Outcome:
        """Feed the next reading, taken `dt` seconds after the last and arriving `arrive_dt`
        (default `dt`) after it; `lag_s` is how far the cuff's clock lags true time."""
        self.clock.advance(dt if arrive_dt is None else arrive_dt)
        self.device_t += dt
        if elapsed is None:
            elapsed = (self.elapsed + dt if self.inflated else 0.0) if inflated else 0.0
        self.elapsed, self.inflated = elapsed, inflated
        self.seq = (self.seq + 1) % (1 << 32) if seq is None else seq
        ts_ms = self.last_ts_ms = round((self.device_t - lag_s) * 1000)
        reading = Reading(
            team=self.team, cuff=self.cuff, athlete=self.athlete, limb=self.params.limb,
            ts_ms=ts_ms, seq=self.seq, pressure_mmhg=pressure, elapsed_s=elapsed,
            inflated=inflated, target_mmhg=target, battery_pct=battery, clock_skew_s=None,
            received_ms=round(self.clock.t * 1000),
        )
        outcome = self.engine.on_reading(reading, params or self.params)
        self.log.extend(outcome.transitions)
        if outcome.bout is not None:
            self.bouts.append(outcome.bout)
        return outcome

    def hold(
        self, pressure: float, seconds: float, *, hz: float = 1.0, tick: bool = False, **kw: Any
    ) -> list[Transition]:
        """Feed `pressure` for `seconds` at `hz` (ticking after each if `tick`); return changes."""
        out: list[Transition] = []
        for _ in range(round(seconds * hz)):
            out.extend(self.read(pressure, dt=1.0 / hz, **kw).transitions)
            if tick:
                out.extend(self.tick())
        return out

    def away(self, seconds: float) -> None:
        """The gateway is away this long: its clock moves, the cuff's readings queue."""
        self.clock.advance(seconds)

    def catch_up(self, pressure: float, *, arrive_dt: float = 0.01, **kw: Any) -> list[Transition]:
        """Deliver the queued 1 Hz readings (at `pressure`) as a backlog burst until live."""
        out: list[Transition] = []
        while self.device_t + 1.0 <= self.clock.t:
            out.extend(self.read(pressure, arrive_dt=arrive_dt, **kw).transitions)
        return out

    def deflate(self, seconds: float = 1.0) -> list[Transition]:
        """Deflated readings (0 mmHg) for `seconds` at 1 Hz, the first one ending the bout."""
        return self.hold(0.0, seconds, inflated=False)

    def tick(self, advance: float = 0.0) -> tuple[Transition, ...]:
        """Let `advance` seconds pass (the cuff silent meanwhile) and tick the engine."""
        self.clock.advance(advance)
        self.device_t += advance
        out = self.engine.tick()
        self.log.extend(out)
        return out

    def status(self, online: bool) -> tuple[Transition, ...]:
        out = self.engine.on_status(
            self.team, self.cuff, online, athlete=self.athlete, limb=self.params.limb.value
        )
        self.log.extend(out)
        return out

    def ack(self, kind: AlertKind, by: str | None = "jo") -> tuple[Transition, ...]:
        out = self.engine.on_ack(self.team, self.cuff, kind, by)
        self.log.extend(out)
        return out

    def of(self, kind: AlertKind) -> list[Transition]:
        """The logged transitions of one kind."""
        return [t for t in self.log if t.alert.kind is kind]

    def changes(self, kind: AlertKind) -> list[Change]:
        return [t.change for t in self.of(kind)]
