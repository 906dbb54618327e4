"""Line protocol: exact output, and every builder against an InfluxDB 1.x reference parser.

The same records stored in a real InfluxDB 1.x: tests/integration/test_lineproto_influxdb.py.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.model import AlertKind, AlertState
from core.model import Severity
from ingest import lineproto
from tests.support.lineproto_ref import (
    FINITE,
    NAMES,
    TEXT,
    TS,
    bout,
    parse_line,
    reading,
    transition,
)

NS = lineproto.NS_PER_MS

# -- exact output ----------------------------------------------------------------------------


def test_telemetry_line_is_exact() -> None:
    # in ns: the reading's ms, and its seq (42) as the sub-millisecond part
    assert lineproto.telemetry_line(reading(), target_mmhg=132.0) == (
        "cuff_telemetry,athlete=a-17,cuff=c7,limb=left_leg,team=t1 seq=42i,inflated=true,"
        "pressure_mmhg=151.25,elapsed_s=12.5,target_mmhg=132.0,battery_pct=88.0 "
        "1763900000123000042"
    )
    assert lineproto.PRECISION == "ns"


def _stamp(line: str) -> int:
    return int(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("pressure", [151.25, math.nan])  # both of telemetry_line's paths
def test_readings_in_one_millisecond_are_distinct_points_ordered_by_seq(pressure: float) -> None:
    """Issue #17 (5): same series and same ms was one point in InfluxDB, the last one."""
    seqs = [7, 8, 9, 999_999, 1_000_000, 2**32 - 1]
    stamps = [_stamp(lineproto.telemetry_line(reading(seq=s, pressure_mmhg=pressure)))
              for s in seqs]
    assert stamps == [TS * NS + s % 1_000_000 for s in seqs]
    assert len(set(stamps)) == len(seqs)
    assert stamps[:4] == sorted(stamps[:4])  # in seq order (within a million)
    assert all(s // NS == TS for s in stamps)  # still in the reading's own ms
    # the same reading is the same point: a redelivery rewrites it
    assert _stamp(lineproto.telemetry_line(reading(seq=8))) == stamps[1]


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
        'acknowledged_by="Dr \\"Jo\\"" 1763900001123000000'
    )


def test_alert_line_without_numbers_or_ack() -> None:
    m, tags, fields, ts = parse_line(
        lineproto.alert_line(
            transition(value=None, threshold=None, kind=AlertKind.CUFF_OFFLINE,
                       severity=Severity.WARNING, state=AlertState.RESOLVED)
        )
    )
    assert (m, ts) == ("alert", (TS + 1000) * NS)
    assert tags["kind"] == "cuff_offline"
    assert tags["severity"] == "warning"
    assert fields == {
        "state": "resolved", "message": "a-17 left_leg cuff at 312 mmHg (limit 300)",
        "alert_id": "01JDXYZ",
    }


def test_bout_line() -> None:
    m, tags, fields, ts = parse_line(lineproto.bout_line(bout(mean_pressure_mmhg=None)))
    assert (m, ts) == ("occlusion_bout", TS * NS)
    assert tags == {"athlete": "a-17", "cuff": "c7", "limb": "left_leg", "team": "t1"}
    assert fields == {
        "alerts": 2, "duration_s": 300.5, "min_pressure_mmhg": 120.0,
        "max_pressure_mmhg": 170.25, "target_mmhg": 132.0, "time_in_band_pct": 93.5,
    }


def test_stats_line_types_fields_by_python_type() -> None:
    text = lineproto.stats_line("gw 1", TS, received=10, lag_ms=12.5, healthy=True, note="a\nb")
    assert text == (
        f'gateway_stats,instance=gw\\ 1 received=10i,lag_ms=12.5,healthy=true,note="a b" '
        f"{TS * NS}"
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
    assert ts == TS * NS + seq % 1_000_000


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


# -- an earlier gateway's lines, in ms (its spool records outlive an upgrade) --------------------
# (the spool's side: tests/unit/test_spool.py; the sinks': tests/unit/test_sinks.py)


def test_lines_timed_in_ms_by_an_earlier_gateway_are_timed_in_ns() -> None:
    new = [lineproto.telemetry_line(reading(seq=s)) for s in (1, 2)]
    old = [text.rsplit(" ", 1)[0] + f" {TS + i}" for i, text in enumerate(new)]  # ms stamps
    old.append(lineproto.alert_line(transition()).rsplit(" ", 1)[0] + f" {TS + 1000}")
    body = lineproto.ms_lines_to_ns(lineproto.encode_lines(old))
    assert body.endswith(b"\n")
    fixed = body.decode().splitlines()
    assert [_stamp(text) for text in fixed] == [TS * NS, (TS + 1) * NS, (TS + 1000) * NS]
    # nothing but the stamps changed: a string field ending in digits is no timestamp
    assert [text.rsplit(" ", 1)[0] for text in fixed] == [text.rsplit(" ", 1)[0] for text in old]
    untimed = b'm,t=a\\ 1 msg="limit 300",x=1i\nm v=2 1\n'
    assert lineproto.ms_lines_to_ns(untimed) == b'm,t=a\\ 1 msg="limit 300",x=1i\nm v=2 1000000\n'
    assert lineproto.ms_lines_to_ns(b"") == b""
