"""Line protocol as InfluxDB 1.x reads it: a reference parser, sample records, strategies.

The unit tier checks every builder of ingest.lineproto against the parser; the integration
tier stores the same records in a real InfluxDB, and checks the demo's import files with it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from alerts.model import Alert, AlertKind, AlertState, BoutSummary, Change, Transition
from core.model import Limb, Reading, Severity
from ingest import lineproto

# -- a reference parser with InfluxDB 1.x's semantics -----------------------------------------

NAME_ESCAPES = ",= "  # 1.x unescapes `\,` `\=` `\ ` in names; every other backslash is literal


def _scan_name(text: str, i: int, stops: str) -> tuple[str, int]:
    """A measurement/tag/field name up to an unescaped stop; refuses ambiguous backslashes."""
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1] if i + 1 < len(text) else ""
            # 1.x's scanner skips the byte after any backslash but unescapes only three:
            # `\\` or a trailing backslash would be read differently by different servers.
            assert nxt not in ("", "\\"), f"ambiguous backslash in {text!r}"
            out.append(nxt if nxt in NAME_ESCAPES else "\\" + nxt)
            i += 2
            continue
        if c in stops:
            break
        out.append(c)
        i += 1
    return "".join(out), i


def _scan_value(text: str, i: int) -> tuple[Any, int]:
    """A field value: quoted string (`\\"` and `\\\\` unescaped), bool, `i` integer or float."""
    if text[i] == '"':
        out: list[str] = []
        i += 1
        while text[i] != '"':
            if text[i] == "\\" and text[i + 1] in '"\\':
                out.append(text[i + 1])
                i += 2
            else:
                out.append(text[i])
                i += 1
        return "".join(out), i + 1
    end = i
    while end < len(text) and text[end] not in ", ":
        end += 1
    token = text[i:end]
    if token in ("true", "false"):
        return token == "true", end
    if token.endswith("i"):
        return int(token[:-1]), end
    return float(token), end


def parse_line(text: str) -> tuple[str, dict[str, str], dict[str, Any], int]:
    """measurement, tags, fields, timestamp of one line (no newline allowed inside)."""
    assert "\n" not in text
    assert "\r" not in text
    measurement, i = _scan_name(text, 0, ", ")
    tags: dict[str, str] = {}
    while text[i] == ",":
        key, i = _scan_name(text, i + 1, "=")
        value, i = _scan_name(text, i + 1, ", ")
        assert key, "empty tag key"
        assert value, "empty tag value"
        tags[key] = value
    assert text[i] == " "
    fields: dict[str, Any] = {}
    i += 1
    while True:
        key, i = _scan_name(text, i, "=")
        value, i = _scan_value(text, i + 1)
        fields[key] = value
        if text[i] == " ":
            break
        assert text[i] == ","
        i += 1
    return measurement, tags, fields, int(text[i + 1 :])


# -- sample records -------------------------------------------------------------------------

TS = 1_763_900_000_123


def reading(**changes: Any) -> Reading:
    base: dict[str, Any] = {
        "team": "t1", "cuff": "c7", "athlete": "a-17", "limb": Limb.LEFT_LEG, "ts_ms": TS,
        "seq": 42, "pressure_mmhg": 151.25, "elapsed_s": 12.5, "inflated": True,
        "target_mmhg": None, "battery_pct": 88.0, "clock_skew_s": None, "received_ms": TS + 5,
    }
    return Reading(**(base | changes))


def transition(**changes: Any) -> Transition:
    base: dict[str, Any] = {
        "id": "01JDXYZ", "team": "t1", "cuff": "c7", "athlete": "a-17", "limb": "left_leg",
        "kind": AlertKind.OVER_PRESSURE, "severity": Severity.CRITICAL, "state": AlertState.FIRING,
        "value": 312.0, "threshold": 300.0, "unit": "mmHg",
        "message": "a-17 left_leg cuff at 312 mmHg (limit 300)",
        "started_at_ms": TS, "updated_at_ms": TS + 1000,
    }
    return Transition(alert=Alert(**(base | changes)), change=Change.RAISED, push=True)


def bout(**changes: Any) -> BoutSummary:
    base: dict[str, Any] = {
        "team": "t1", "cuff": "c7", "athlete": "a-17", "limb": "left_leg", "start_ms": TS,
        "duration_s": 300.5, "mean_pressure_mmhg": 140.0, "min_pressure_mmhg": 120.0,
        "max_pressure_mmhg": 170.25, "target_mmhg": 132.0, "time_in_band_pct": 93.5, "alerts": 2,
    }
    return BoutSummary(**(base | changes))


# -- names and values for property tests ----------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
HOSTILE = st.lists(
    st.sampled_from([*',= \\"\n\r\t#é😀\x00', "ab", "\\\\", "\\,"]), max_size=12
).map("".join)  # the characters line protocol cares about, densely
NAMES = TEXT | HOSTILE
FINITE = st.floats(allow_nan=False, allow_infinity=False)


# -- batches of readings with full float64 values (the sinks' tests) ------------------------

BATCH_TS = 1_763_900_000_000  # 2025-11-23, inside VictoriaMetrics' retention and not in the future


def readings(
    n: int, *, athlete: str = "a 17,=x", cuff: str = "c7", digits: int | None = None
) -> list[Reading]:
    """Readings with full float64 pressures, or rounded to `digits` decimals."""
    return [
        Reading(
            team="t1", cuff=cuff, athlete=athlete, limb=Limb.RIGHT_ARM, ts_ms=BATCH_TS + 250 * i,
            seq=i, pressure_mmhg=round(100.0 + i / 7, digits), elapsed_s=i * 0.25,
            inflated=i % 2 == 0,
            target_mmhg=None, battery_pct=55.5 if i % 3 else None, clock_skew_s=None,
            received_ms=BATCH_TS + 250 * i + 3,
        )
        for i in range(n)
    ]


def body_of(rs: list[Reading]) -> bytes:
    return lineproto.encode_lines(lineproto.telemetry_line(r, target_mmhg=120.0) for r in rs)


def alert_point(team: str, athlete: str, cuff: str, *, kind: str, severity: str, state: str,
                alert_id: str, ts_ms: int, message: str,
                acknowledged_by: str | None = None) -> str:
    """One stored change of an alert, as a seed for queries (value and threshold 1.0)."""
    return lineproto.line(
        "alert",
        [("team", team), ("cuff", cuff), ("athlete", athlete), ("kind", kind),
         ("severity", severity)],
        [("state", state), ("value", 1.0), ("threshold", 1.0), ("message", message),
         ("alert_id", alert_id), ("acknowledged_by", acknowledged_by)],
        ts_ms,
    )
