"""Line protocol: exact output, a reference parser for every builder, and the real InfluxDB 1.x."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from servers import InfluxDB1Server

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


# -- fixtures ------------------------------------------------------------------------------

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


# -- exact output ----------------------------------------------------------------------------


def test_telemetry_line_is_exact() -> None:
    assert lineproto.telemetry_line(reading(), target_mmhg=132.0) == (
        "cuff_telemetry,athlete=a-17,cuff=c7,limb=left_leg,team=t1 seq=42i,inflated=true,"
        "pressure_mmhg=151.25,elapsed_s=12.5,target_mmhg=132.0,battery_pct=88.0 1763900000123"
    )


def test_telemetry_optional_fields_are_omitted_and_target_falls_back_to_the_reading() -> None:
    r = reading(battery_pct=None, target_mmhg=140.0, clock_skew_s=-301.5, inflated=False)
    _, _, fields, _ = parse_line(lineproto.telemetry_line(r))
    assert fields == {
        "seq": 42, "inflated": False, "pressure_mmhg": 151.25, "elapsed_s": 12.5,
        "target_mmhg": 140.0, "clock_skew_s": -301.5,
    }
    _, _, fields, _ = parse_line(lineproto.telemetry_line(r, target_mmhg=99.5))
    assert fields["target_mmhg"] == 99.5


def test_non_finite_floats_are_omitted() -> None:
    r = reading(pressure_mmhg=math.nan, battery_pct=math.inf)
    _, _, fields, _ = parse_line(lineproto.telemetry_line(r))
    assert "pressure_mmhg" not in fields
    assert "battery_pct" not in fields


def test_float_memo_gives_exact_texts_in_any_order_and_stays_bounded() -> None:
    # The hot path remembers float texts; what it writes must not depend on what came first.
    def fields_text(line: str) -> str:
        return line.split(" ")[1]

    # more distinct values than the memo holds, so it is cleared on the way
    values: list[float] = [i / 10 for i in range(-200, 20_001)] + [180, 0, -0.0, 1e-300, 1e300]
    assert len(set(values)) > lineproto.FLOAT_MEMO_SIZE
    for order in (values, values[::-1], values[:5000] * 2):
        for v in order:
            text = lineproto.telemetry_line(reading(pressure_mmhg=v, elapsed_s=v, battery_pct=v,
                                                    target_mmhg=v))
            field = repr(float(v)) if v else "0.0"
            assert fields_text(text) == (
                f"seq=42i,inflated=true,pressure_mmhg={field},elapsed_s={field},"
                f"target_mmhg={field},battery_pct={field}"
            )
            assert len(lineproto._float_texts) <= lineproto.FLOAT_MEMO_SIZE
    assert fields_text(lineproto.telemetry_line(reading(pressure_mmhg=-0.0))).startswith(
        "seq=42i,inflated=true,pressure_mmhg=0.0,"
    )


def test_empty_tag_values_are_omitted() -> None:
    _, tags, _, _ = parse_line(lineproto.telemetry_line(reading(athlete="")))
    assert tags == {"cuff": "c7", "limb": "left_leg", "team": "t1"}


def test_alert_line_is_exact() -> None:
    assert lineproto.alert_line(transition(acknowledged_by='Dr "Jo"')) == (
        "alert,athlete=a-17,cuff=c7,kind=over_pressure,severity=critical,team=t1 "
        'state="firing",value=312.0,threshold=300.0,'
        'message="a-17 left_leg cuff at 312 mmHg (limit 300)",alert_id="01JDXYZ",'
        'acknowledged_by="Dr \\"Jo\\"" 1763900001123'
    )


def test_alert_line_without_numbers_or_ack() -> None:
    m, tags, fields, ts = parse_line(
        lineproto.alert_line(
            transition(value=None, threshold=None, kind=AlertKind.CUFF_OFFLINE,
                       severity=Severity.WARNING, state=AlertState.RESOLVED)
        )
    )
    assert (m, ts) == ("alert", TS + 1000)
    assert tags["kind"] == "cuff_offline"
    assert tags["severity"] == "warning"
    assert fields == {
        "state": "resolved", "message": "a-17 left_leg cuff at 312 mmHg (limit 300)",
        "alert_id": "01JDXYZ",
    }


def test_bout_line() -> None:
    m, tags, fields, ts = parse_line(lineproto.bout_line(bout(mean_pressure_mmhg=None)))
    assert (m, ts) == ("occlusion_bout", TS)
    assert tags == {"athlete": "a-17", "cuff": "c7", "limb": "left_leg", "team": "t1"}
    assert fields == {
        "alerts": 2, "duration_s": 300.5, "min_pressure_mmhg": 120.0,
        "max_pressure_mmhg": 170.25, "target_mmhg": 132.0, "time_in_band_pct": 93.5,
    }


def test_stats_line_types_fields_by_python_type() -> None:
    text = lineproto.stats_line("gw 1", TS, received=10, lag_ms=12.5, healthy=True, note="a\nb")
    assert text == (
        f'gateway_stats,instance=gw\\ 1 received=10i,lag_ms=12.5,healthy=true,note="a b" {TS}'
    )


def test_a_line_needs_a_field_and_a_sane_measurement() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        lineproto.stats_line("gw-1", TS, lag_ms=None)
    with pytest.raises(ValueError, match="measurement"):
        lineproto.line("#comment", [], [("f", 1)], TS)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a b,c=d", "a\\ b\\,c\\=d"),
        ("line\nbreak\r", "line\\ break\\ "),
        ("back\\slash", "back\\slash"),  # read literally by every server
        ("two\\\\", "two＼＼"),  # a backslash before a backslash or the end: U+FF3C
        ("x\\,y", "x＼\\,y"),
        ('quote"s', 'quote"s'),
    ],
)
def test_escape_tag(raw: str, escaped: str) -> None:
    assert lineproto.escape_tag(raw) == escaped


def test_encode_lines_terminates_every_line_and_survives_lone_surrogates() -> None:
    assert lineproto.encode_lines(["a f=1i 1", "b f=2i 2"]) == b"a f=1i 1\nb f=2i 2\n"
    assert lineproto.encode_lines(["a,t=\ud800 f=1i 1"]) == b"a,t=? f=1i 1\n"


# -- properties ------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
HOSTILE = st.lists(
    st.sampled_from([*',= \\"\n\r\t#é😀\x00', "ab", "\\\\", "\\,"]), max_size=12
).map("".join)  # the characters line protocol cares about, densely
NAMES = TEXT | HOSTILE
FINITE = st.floats(allow_nan=False, allow_infinity=False)


@given(
    athlete=NAMES, team=NAMES, cuff=NAMES, pressure=FINITE, elapsed=FINITE,
    seq=st.integers(0, 2**32),
)
def test_telemetry_round_trips_through_the_reference_parser(
    *, athlete: str, team: str, cuff: str, pressure: float, elapsed: float, seq: int
) -> None:
    r = reading(
        athlete=athlete, team=team, cuff=cuff, pressure_mmhg=pressure, elapsed_s=elapsed, seq=seq
    )
    measurement, tags, fields, ts = parse_line(lineproto.telemetry_line(r))
    expected = {"athlete": athlete, "cuff": cuff, "limb": "left_leg", "team": team}
    assert measurement == "cuff_telemetry"
    assert tags == {k: lineproto.normalize_name(v) for k, v in expected.items() if v}
    assert fields["pressure_mmhg"] == pressure
    assert fields["elapsed_s"] == elapsed
    assert fields["seq"] == seq
    assert ts == TS


@given(message=NAMES, by=NAMES, athlete=NAMES, value=FINITE)
def test_alert_strings_round_trip_through_the_reference_parser(
    message: str, by: str, athlete: str, value: float
) -> None:
    t = transition(message=message, acknowledged_by=by, athlete=athlete, value=value)
    _, tags, fields, _ = parse_line(lineproto.alert_line(t))
    assert fields["message"] == lineproto.normalize_string_field(message)
    assert fields["acknowledged_by"] == lineproto.normalize_string_field(by)
    assert fields["value"] == value
    assert tags.get("athlete", "") == lineproto.normalize_name(athlete)


@given(name=NAMES, key=st.text(st.characters(codec="utf-8"), min_size=1, max_size=10))
def test_general_lines_round_trip(name: str, key: str) -> None:
    _, tags, fields, _ = parse_line(lineproto.line("m x", [("k", name)], [(key, name)], 5))
    assert tags.get("k", "") == lineproto.normalize_name(name)
    assert fields == {lineproto.normalize_name(key): lineproto.normalize_string_field(name)}


@given(TEXT)
def test_normalization_changes_only_what_influxdb_cannot_store(text: str) -> None:
    clean = "\\" not in text and "\n" not in text and "\r" not in text
    if clean:
        assert lineproto.normalize_name(text) == text
    assert lineproto.normalize_string_field(text).replace(" ", "") == (
        text.replace("\n", "").replace("\r", "").replace(" ", "")
    )


# -- the real InfluxDB 1.x ------------------------------------------------------------------

HOSTILE_NAMES = [
    "a b", "a,b", "a=b", "a\\b", "a\\\\b", "a\\", "\\", "\\,", "a\\ b", 'a"b', "a\\\"b", "#x",
    "x\ny", "x\r\ny", "\t", " ", "=", ",", "é😀", "\u2028", "O'Brien", "a\x00b", "😀 \\= ,",
]


def _select_one(influxdb: InfluxDB1Server, db: str, measurement: str, ts: int) -> dict[str, Any]:
    query = f'SELECT * FROM "{measurement}" WHERE time = {ts}ms'
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
