"""Injectable cuff faults: their kinds, their signatures in the readings, the `--fault` syntax."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

__all__ = [
    "CLOCK_AHEAD_S",
    "LEAK_MMHG",
    "LOW_BATTERY_PCT",
    "OVER_PRESSURE_MMHG",
    "SENSOR_FAULT_MMHG",
    "FaultKind",
    "FaultSpec",
    "parse_duration",
]

OVER_PRESSURE_MMHG = 320.0  # above every hard ceiling (arm 250, leg and ipc 300)
LEAK_MMHG = 40.0  # far outside tolerance_mmhg (15): under_pressure after 7 s
LOW_BATTERY_PCT = 10.0  # under battery_low's 15 %
SENSOR_FAULT_MMHG = -50.0  # below the plausible −20 mmHg: sensor_fault, never over_pressure
CLOCK_AHEAD_S = 3600.0  # far past max_clock_skew_s (300)

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_FAULT_RE = re.compile(
    r"^(?P<kind>[a-z_]+):(?P<cuff>[^@+\s]+)(?:@(?P<at>[^+]+))?(?:\+(?P<for>.+))?$"
)


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `1.5m`, `1h` or `250ms`; ValueError otherwise."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 30s, 2m, 1h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


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
