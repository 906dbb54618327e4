"""What `cuffwatch conform` saw of one device, read once for every rule to look at.

`Stream(watch)` decodes each telemetry message with the gateway's own decoder (an array that
is too long or too large is still read reading by reading, so that its one fault is reported
once, by its size rule, not again as gaps), drops exact repeats (QoS 1 redeliveries, as the
gateway does), splits the readings into runs where `seq` starts again from 0 (a restart,
SPEC §4), and learns the device's cadence, the steps where its clock went back or jumped, and
its clock's offset from the watcher's. Pure: no broker, no clock.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from alerts.clock import BACK_TOLERANCE_MS, STEP_SLACK_MS
from core.seq import SEQ_MODULUS
from gateway.decode import RawReading, Rejected, RejectReason, decode_readings, decode_status
from ops.conform_model import Channel, Watch

__all__ = ["Problems", "Sample", "Stream", "decode", "fmt_s", "kib"]

_SEQ_MAX: Final = SEQ_MODULUS - 1
SALVAGED: Final = (RejectReason.TOO_LARGE, RejectReason.TOO_MANY_READINGS)
# How many problems of one rule are worded; the rest are counted.
WORDED_PROBLEMS: Final = 3


@dataclass(frozen=True, slots=True)
class Sample:
    """One decoded reading, where and when it arrived."""

    message: int  # index of its message in Watch.messages
    seq: int
    ts_ms: int
    pressure: float
    elapsed: float
    inflated_field: bool | None
    inflated: bool
    battery: float | None
    mono_s: float
    wall_ms: int

    @property
    def values(self) -> tuple[object, ...]:
        """What a QoS 1 redelivery repeats exactly (SPEC §4 duplicates)."""
        return (self.seq, self.ts_ms, self.pressure, self.elapsed, self.inflated_field,
                self.battery)


@dataclass(slots=True)
class Problems:
    """A rule's problems: the first few in words, and how many in all."""

    lines: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, text: str, n: int = 1) -> None:
        if len(self.lines) < WORDED_PROBLEMS:
            self.lines.append(text)
        self.count += n

    def __bool__(self) -> bool:
        return self.count > 0

    def words(self, advice: str) -> str:
        more = self.count - len(self.lines)
        listed = "; ".join(self.lines) + (f"; and {more} more" if more > 0 else "")
        return f"{listed}. {advice}"


def decode(payload: bytes) -> tuple[list[RawReading] | None, Rejected | None]:
    """The readings the gateway would take, or its rejection and whatever readings lie inside.

    An array that is too long or too large is refused whole by the gateway; its readings are
    still decoded one by one (each with the gateway's decoder), so that the array's one fault
    is reported once, by `array_size` or `message_size`, not again as gaps in `seq`.
    """
    try:
        return decode_readings(payload), None
    except Rejected as exc:
        rejection = exc
    if rejection.reason not in SALVAGED:
        return None, rejection
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None, rejection
    items = body if isinstance(body, list) else [body]
    readings: list[RawReading] = []
    for item in items:
        try:
            readings.extend(decode_readings(json.dumps(item).encode()))
        except (Rejected, TypeError, ValueError, RecursionError):
            return None, rejection
    return readings, rejection


def fmt_s(seconds: float) -> str:
    """Seconds in words: `1.5 s`, `90.1 s`, `3600 s`."""
    return f"{seconds:.1f} s" if abs(seconds) < 100 else f"{seconds:.0f} s"


def kib(n: int) -> str:
    """A size in KiB, to 0.1."""
    return f"{n / 1024:.1f} KiB"


class Stream:
    """A watch read once: decoded, deduplicated, split into runs, with its cadence and clock."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.messages = watch.messages
        self.telemetry = [i for i, m in enumerate(self.messages)
                          if m.channel is Channel.TELEMETRY]
        self.statuses: list[tuple[int, bool | None]] = []  # (message index, online; None: bad)
        self.bad_status = Problems()
        self.rejected: list[tuple[int, Rejected]] = []
        self.holes: set[int] = set()  # message indices whose readings are unknown
        self.samples: list[Sample] = []
        self.duplicates = 0
        self.largest_message = 0
        self.largest_array = 0
        self._read_all()
        self.runs = self._split_runs()
        self.cadence_ms = self._cadence_ms()
        # pairs (by their later sample's message index and seq) with device-time trouble
        self.troubled: set[tuple[int, int]] = set()
        self.time_problems = self._device_time()
        # the device clock's offset from the watcher's: the most live reading bounds it, as
        # transit only ever adds lag
        self.offset_ms = max((s.ts_ms - s.wall_ms for s in self.samples), default=0)

    # -- reading ---------------------------------------------------------------------------

    def at(self, mono_s: float) -> str:
        """A receive time as words: seconds into the window."""
        return f"at {mono_s - self.watch.start_mono_s:.1f} s"

    def _read_all(self) -> None:
        seen: set[tuple[object, ...]] = set()
        for i, m in enumerate(self.messages):
            if m.channel is Channel.STATUS:
                try:
                    self.statuses.append((i, decode_status(m.payload)))
                except Rejected as exc:
                    self.statuses.append((i, None))
                    self.bad_status.add(f"{m.payload[:40]!r} {self.at(m.mono_s)} ({exc.detail})")
                continue
            self.largest_message = max(self.largest_message, len(m.payload))
            readings, rejection = decode(m.payload)
            if rejection is not None:
                self.rejected.append((i, rejection))
            if readings is None:
                self.holes.add(i)
                continue
            if m.payload.lstrip()[:1] == b"[":
                self.largest_array = max(self.largest_array, len(readings))
            for r in readings:
                sample = Sample(
                    message=i, seq=r.seq, ts_ms=r.ts_ms(), pressure=r.pressure_mmhg,
                    elapsed=r.elapsed_s, inflated_field=r.inflated, inflated=r.is_inflated(),
                    battery=r.battery_pct, mono_s=m.mono_s, wall_ms=m.wall_ms,
                )
                if sample.values in seen:
                    self.duplicates += 1  # a QoS 1 redelivery: the gateway drops it too
                    continue
                seen.add(sample.values)
                self.samples.append(sample)

    def _split_runs(self) -> list[list[Sample]]:
        """The samples split where `seq` starts again from 0: a restarted device (SPEC §4)."""
        runs: list[list[Sample]] = []
        for s in self.samples:
            last = runs[-1][-1] if runs else None
            if last is None or (s.seq == 0 and last.seq not in (0, _SEQ_MAX)):
                runs.append([s])
            else:
                runs[-1].append(s)
        return runs

    def pairs(self) -> Iterator[tuple[Sample, Sample]]:
        """Consecutive samples within each run."""
        for run in self.runs:
            yield from itertools.pairwise(run)

    def _cadence_ms(self) -> float | None:
        steps = [b.ts_ms - a.ts_ms for a, b in self.pairs() if b.ts_ms > a.ts_ms]
        return statistics.median(steps) if steps else None

    def holes_between(self, a: Sample, b: Sample) -> bool:
        return any(a.message < h < b.message for h in self.holes)

    def _device_time(self) -> Problems:
        problems = Problems()
        slack = max(STEP_SLACK_MS, 2 * (self.cadence_ms or 0))
        for a, b in self.pairs():
            step = b.ts_ms - a.ts_ms
            moved = (b.mono_s - a.mono_s) * 1000
            if step < -BACK_TOLERANCE_MS:
                problems.add(f"went back {fmt_s(-step / 1000)} {self.at(b.mono_s)} "
                             f"(seq {a.seq} → {b.seq})")
            elif step > moved + slack:
                problems.add(f"jumped {fmt_s(step / 1000)} ahead {self.at(b.mono_s)} "
                             f"(seq {a.seq} → {b.seq}) while {fmt_s(moved / 1000)} passed")
            else:
                continue
            self.troubled.add((b.message, b.seq))
        return problems

    def lag_ms(self, s: Sample) -> float:
        """How long after it was taken a reading arrived, beyond the live transit."""
        return s.wall_ms - s.ts_ms + self.offset_ms

    def silences(self) -> list[tuple[float, bool, float]]:
        """Gaps between telemetry messages not bridged by an `offline`: (s, inflated, at)."""
        out: list[tuple[float, bool, float]] = []
        last_inflated: dict[int, bool] = {}
        for s in self.samples:
            last_inflated[s.message] = s.inflated
        offline_at = [self.messages[i].mono_s for i, online in self.statuses if online is False]
        for a, b in itertools.pairwise(self.telemetry):
            ta, tb = self.messages[a].mono_s, self.messages[b].mono_s
            if any(ta <= t <= tb for t in offline_at):
                continue
            out.append((tb - ta, last_inflated.get(a, False), ta))
        return out

    def will_events(self) -> list[int]:
        """Message indices of each `offline` that followed an `online`."""
        events: list[int] = []
        online = False
        for i, state in self.statuses:
            if state is True:
                online = True
            elif state is False and online:
                events.append(i)
                online = False
        return events
