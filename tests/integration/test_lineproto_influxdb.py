"""Line protocol against the real InfluxDB 1.x: hostile names and arbitrary values stored as built.

Exact output and the reference parser: tests/unit/test_lineproto.py.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest import lineproto
from tests.support.lineproto_ref import FINITE, NAMES, TS, reading, transition
from tests.support.servers import InfluxDB1Server

# -- the real InfluxDB 1.x ------------------------------------------------------------------

HOSTILE_NAMES = [
    "a b", "a,b", "a=b", "a\\b", "a\\\\b", "a\\", "\\", "\\,", "a\\ b", 'a"b', "a\\\"b", "#x",
    "x\ny", "x\r\ny", "\t", " ", "=", ",", "é😀", "\u2028", "O'Brien", "a\x00b", "😀 \\= ,",
]


def _select_one(influxdb: InfluxDB1Server, db: str, measurement: str, ts: int) -> dict[str, Any]:
    """The one point in millisecond `ts` (a reading's is a seq's worth of ns into it)."""
    query = f'SELECT * FROM "{measurement}" WHERE time >= {ts}ms AND time < {ts + 1}ms'
    rows = influxdb.query(db, query)
    assert len(rows) == 1, rows
    return rows[0]


def test_hostile_names_are_stored_exactly_as_normalized(
    influxdb: InfluxDB1Server, influx_db: str
) -> None:
    lines = []
    for i, name in enumerate(HOSTILE_NAMES):
        r = reading(athlete=name, cuff=f"c{i}", ts_ms=TS + i)
        lines.append(lineproto.telemetry_line(r, target_mmhg=130.5))
        t = transition(athlete=name, message=name, acknowledged_by=name, updated_at_ms=TS + i)
        lines.append(lineproto.alert_line(t))
    influxdb.write(influx_db, lineproto.encode_lines(lines).decode())
    for i, name in enumerate(HOSTILE_NAMES):
        row = _select_one(influxdb, influx_db, "cuff_telemetry", TS + i)
        assert row["athlete"] == lineproto.normalize_name(name), name
        assert row["cuff"] == f"c{i}"
        assert row["pressure_mmhg"] == 151.25
        assert row["target_mmhg"] == 130.5
        assert row["seq"] == 42
        assert row["inflated"] is True
        alert = _select_one(influxdb, influx_db, "alert", TS + i)
        assert alert["athlete"] == lineproto.normalize_name(name)
        assert alert["message"] == lineproto.normalize_string_field(name)
        assert alert["acknowledged_by"] == lineproto.normalize_string_field(name)


_timestamps = itertools.count(TS)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(athlete=NAMES.filter(lambda s: lineproto.normalize_name(s) != ""), message=NAMES,
       pressure=FINITE, elapsed=st.floats(0, 1e6), seq=st.integers(0, 2**32))
@example(athlete="\\\\", message='\\"', pressure=-0.0, elapsed=5e-324, seq=0)
@example(athlete="x", message="", pressure=1.7976931348623157e308, elapsed=0.1 + 0.2, seq=2**32)
def test_arbitrary_values_round_trip_through_influxdb(
    influxdb: InfluxDB1Server, influx_db: str, *, athlete: str, message: str, pressure: float,
    elapsed: float, seq: int,
) -> None:
    ts = next(_timestamps)
    r = reading(athlete=athlete, pressure_mmhg=pressure, elapsed_s=elapsed, seq=seq, ts_ms=ts)
    t = transition(athlete=athlete, message=message, updated_at_ms=ts)
    body = lineproto.encode_lines([lineproto.telemetry_line(r), lineproto.alert_line(t)])
    influxdb.write(influx_db, body.decode())
    row = _select_one(influxdb, influx_db, "cuff_telemetry", ts)
    assert row["time"] == ts
    assert row["athlete"] == lineproto.normalize_name(athlete)
    assert float(row["pressure_mmhg"]) == pressure  # JSON prints a whole float as an integer
    assert float(row["elapsed_s"]) == elapsed
    assert row["seq"] == seq
    alert = _select_one(influxdb, influx_db, "alert", ts)
    assert alert["message"] == lineproto.normalize_string_field(message)
