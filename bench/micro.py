"""In-process measurements of hot-path functions: the cost now against an alternative.

Each pair times the gateway's own code against the proposed replacement on the same
input (best of a few rounds of `timeit`, µs per call), or, for the dedup window, the
heap it holds per cuff (tracemalloc).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import timeit
import tracemalloc
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROUNDS = 5  # best of: the 2-core box is shared, the minimum is the code's own cost
TARGET_ROUND_S = 0.2  # long enough to average out timer resolution, short enough for 5 rounds


def best_us(fn: Callable[[], object]) -> float:
    """Best-of-ROUNDS µs per call, each round about TARGET_ROUND_S long."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * TARGET_ROUND_S / 0.2))
    return min(timer.repeat(ROUNDS, number)) / number * 1e6


def _payloads() -> tuple[bytes, bytes]:
    from bench.mqttpub import reading_json

    ts = int(time.time() * 1000)
    one = reading_json(7, ts, 180.0).encode()
    ten = ("[" + ",".join(reading_json(i, ts + i * 1000, 180.0) for i in range(10)) + "]").encode()
    return one, ten


def decode() -> dict[str, Any]:
    """The gateway's decoder (msgspec first) vs pydantic alone, the contract it agrees with."""
    from gateway.decode import FastReadingIn, decode_readings, decode_readings_strict

    one, ten = _payloads()
    assert all(isinstance(r, FastReadingIn) for r in decode_readings(ten))  # the fast path
    return {
        "pydantic_single_us": round(best_us(lambda: decode_readings_strict(one)), 2),
        "pydantic_array10_us": round(best_us(lambda: decode_readings_strict(ten)), 2),
        "msgspec_single_us": round(best_us(lambda: decode_readings(one)), 2),
        "msgspec_array10_us": round(best_us(lambda: decode_readings(ten)), 2),
    }


def reading() -> dict[str, Any]:
    """Building a frozen slotted `Reading` vs a NamedTuple or a plain slotted dataclass."""
    from typing import NamedTuple

    from gateway.model import Limb, Reading

    class ReadingTuple(NamedTuple):
        team: str
        cuff: str
        athlete: str
        limb: Limb
        ts_ms: int
        seq: int
        pressure_mmhg: float
        elapsed_s: float
        inflated: bool
        target_mmhg: float | None
        battery_pct: float | None
        clock_skew_s: float | None
        received_ms: int

    @dataclass(slots=True)
    class ReadingPlain:
        team: str
        cuff: str
        athlete: str
        limb: Limb
        ts_ms: int
        seq: int
        pressure_mmhg: float
        elapsed_s: float
        inflated: bool
        target_mmhg: float | None
        battery_pct: float | None
        clock_skew_s: float | None
        received_ms: int

    args = ("t1", "c001", "a-001", Limb.LEFT_LEG, 1, 2, 180.0, 3.0, True, 180.0, 90.0, None, 4)
    return {
        "frozen_dataclass_us": round(best_us(lambda: Reading(*args)), 2),
        "namedtuple_us": round(best_us(lambda: ReadingTuple(*args)), 2),
        "plain_slots_dataclass_us": round(best_us(lambda: ReadingPlain(*args)), 2),
    }


def _heap_bytes(fill: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fill()
        after = tracemalloc.get_traced_memory()[0]
        del keep
    finally:
        tracemalloc.stop()
    return after - before


def dedup() -> dict[str, Any]:
    """Heap per cuff of a full dedup window: now, and packed int keys in a smaller window."""
    from gateway.model import Limb
    from gateway.state import DEDUP_WINDOW, CuffState

    base = int(time.time() * 1000)
    proposed_window = 256

    def now() -> object:
        s = CuffState("t1", "c001", "a-001", Limb.LEFT_LEG)
        for i in range(DEDUP_WINDOW):
            s.is_duplicate(100_000 + i, base + i * 1000)
        return s

    def packed() -> object:
        seen: set[int] = set()
        order: deque[int] = deque()
        for i in range(proposed_window):
            key = (base + i * 1000) << 32 | (100_000 + i)
            seen.add(key)
            order.append(key)
        return seen, order

    current = _heap_bytes(now)
    proposed = _heap_bytes(packed)
    return {
        "window_now": DEDUP_WINDOW,
        "kib_per_cuff_now": round(current / 1024, 1),
        "window_proposed": proposed_window,
        "kib_per_cuff_proposed": round(proposed / 1024, 1),
        "mb_per_1000_cuffs_now": round(current * 1000 / (1 << 20), 1),
        "mb_per_1000_cuffs_proposed": round(proposed * 1000 / (1 << 20), 1),
    }


def spool_append() -> dict[str, Any]:
    """One os.write per message (Spool.append) vs appending to a buffer written at sync time."""
    from ingest.spool import Spool

    line = b"x" * 180 + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(tmp, max_bytes=1 << 30)
        try:
            per_message = best_us(lambda: spool.append(line))
        finally:
            spool.close()
    buf = bytearray()

    def buffered() -> None:
        buf.extend(line)
        if len(buf) > 1 << 20:
            buf.clear()

    return {"write_per_message_us": round(per_message, 2),
            "buffer_until_sync_us": round(best_us(buffered), 2)}


class FanOutCommitter:
    """The proposed GroupCommitter: one plain future per waiter, resolved by the sync's callback."""

    def __init__(self, spool: Any) -> None:
        self.spool = spool
        self._sync: asyncio.Future[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def append(self, payload: bytes) -> None:
        """Append, then wait until an fsync covers it."""
        position = self.spool.append(payload)
        if self.spool.synced_position >= position:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((position, fut))
        if self._sync is None:
            self._start()
        await fut

    def _start(self) -> None:
        self._sync = asyncio.get_running_loop().run_in_executor(None, self.spool.sync)
        self._sync.add_done_callback(self._done)

    def _done(self, sync: asyncio.Future[None]) -> None:
        self._sync = None
        exc = None if sync.cancelled() else sync.exception()
        synced, waiting = self.spool.synced_position, []
        for position, fut in self._waiters:
            if fut.done():  # its waiter was cancelled: nothing to tell
                continue
            if exc is not None:
                fut.set_exception(exc)
            elif position <= synced:
                fut.set_result(None)
            else:
                waiting.append((position, fut))
        self._waiters = waiting
        if waiting:
            self._start()


def group_commit(burst: int = 3000, rounds: int = 3) -> dict[str, Any]:
    """µs per message for a burst of concurrent appends: shield per waiter vs fan-out futures."""
    from ingest.spool import GroupCommitter, Spool

    line = b"x" * 180 + b"\n"

    async def burst_us(make: Callable[[Any], Any]) -> float:
        best = float("inf")
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                spool = Spool(tmp, max_bytes=1 << 30)
                committer = make(spool)

                async def one(c: Any) -> None:
                    await asyncio.sleep(0)  # arrive spread over loop turns, as gmqtt's tasks do
                    await c.append(line)

                t0 = time.perf_counter()
                await asyncio.gather(*(one(committer) for _ in range(burst)))
                best = min(best, (time.perf_counter() - t0) / burst * 1e6)
                spool.close()
        return best

    return {
        "burst": burst,
        "shield_per_waiter_us": round(asyncio.run(burst_us(GroupCommitter)), 2),
        "fan_out_futures_us": round(asyncio.run(burst_us(FanOutCommitter)), 2),
    }


def lineproto() -> dict[str, Any]:
    """`telemetry_line` per reading (the tag prefix is cached)."""
    from gateway.model import Limb, Reading
    from ingest.lineproto import telemetry_line

    r = Reading("t1", "c001", "a-001", Limb.LEFT_LEG, 1, 2, 180.0, 3.0, True, 180.0, 90.0,
                None, 4)
    return {"telemetry_line_us": round(best_us(lambda: telemetry_line(r, 180.0)), 2)}


def run() -> dict[str, Any]:
    """Every measurement; each one's failure is recorded, not raised."""
    out: dict[str, Any] = {}
    for name, fn in (("decode", decode), ("reading", reading), ("dedup", dedup),
                     ("spool_append", spool_append), ("group_commit", group_commit),
                     ("lineproto", lineproto)):
        try:
            out[name] = fn()
        except Exception as exc:
            out[name] = {"error": repr(exc)}
    out["payload_bytes"] = [len(p) for p in _payloads()]
    out["sample_payload"] = json.loads(_payloads()[0])
    return out
