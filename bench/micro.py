"""In-process cost of hot-path functions: µs per call, best of a few rounds of `timeit`.

The gateway's decoder (msgspec first) against pydantic alone, the contract it agrees with,
the telemetry line builder, and gzip of one write batch (`influx.gzip`).
"""

from __future__ import annotations

import json
import time
import timeit
from collections.abc import Callable
from typing import Any

ROUNDS = 5  # best of: the 2-core box is shared, the minimum is the code's own cost
BATCH_LINES = 5_000  # the sink's batch size (SPEC's ceiling runs use the same)
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


def lineproto() -> dict[str, Any]:
    """`telemetry_line` per reading (the tag prefix is cached)."""
    from core.model import Limb, Reading
    from ingest.lineproto import telemetry_line

    r = Reading("t1", "c001", "a-001", Limb.LEFT_LEG, 1, 2, 180.0, 3.0, True, 180.0, 90.0,
                None, 4)
    return {"telemetry_line_us": round(best_us(lambda: telemetry_line(r, 180.0)), 2)}


def gzip_batch() -> dict[str, Any]:
    """`influx.gzip`: one 5,000-line telemetry batch compressed as the sink does it."""
    import gzip

    from bench.mqttpub import CYCLE_READINGS, SWING
    from core.model import Limb, Reading
    from ingest.lineproto import telemetry_line
    from ingest.sinks import GZIP_LEVEL

    ts = int(time.time() * 1000)
    lines = []
    for k in range(BATCH_LINES):  # 100 cuffs at 1 Hz, pressures swinging as the load's do
        inflated = k // 100 % CYCLE_READINGS < 200
        pressure = 180.0 + SWING[k // 100 % len(SWING)] if inflated else 2.0
        second = k // 100
        r = Reading("t1", f"c{k % 100:03d}", f"a-{k % 100:03d}", Limb.LEFT_LEG,
                    ts + second * 1000, second, pressure, float(second) if inflated else 0.0,
                    inflated, 180.0, 90.0, None, ts + second * 1000 + 5)
        lines.append(telemetry_line(r, 180.0))
    body = ("\n".join(lines) + "\n").encode()
    packed = gzip.compress(body, GZIP_LEVEL)
    return {
        "lines": BATCH_LINES,
        "level": GZIP_LEVEL,
        "raw_bytes": len(body),
        "gzip_bytes": len(packed),
        "ratio": round(len(body) / len(packed), 1),
        "compress_ms": round(best_us(lambda: gzip.compress(body, GZIP_LEVEL)) / 1000, 2),
    }


def run() -> dict[str, Any]:
    """Every measurement; each one's failure is recorded, not raised."""
    out: dict[str, Any] = {}
    for name, fn in (("decode", decode), ("lineproto", lineproto), ("gzip", gzip_batch)):
        try:
            out[name] = fn()
        except Exception as exc:
            out[name] = {"error": repr(exc)}
    out["payload_bytes"] = [len(p) for p in _payloads()]
    out["sample_payload"] = json.loads(_payloads()[0])
    return out
