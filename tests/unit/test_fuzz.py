"""Hostile input (SPEC §2, §4): the committed corpus and property tests on the decoders.

The corpus is tests/data/hostile/payloads.jsonl (written by make_corpus.py next to it).
Every payload either meets the contract's verdict (accept / reject with a reason) or, where
SPEC is silent, is merely survived: never an internal error, never a point InfluxDB refuses.
The same payloads against a live gateway: tests/integration/test_fuzz_gateway.py.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from alerts.model import Alert, Change, Transition
from core.config import Settings, load_settings
from core.model import Limb
from core.seq import SEQ_MODULUS
from gateway.decode import (
    MAX_READINGS_PER_MESSAGE,
    REJECTED_ECHO_BYTES,
    RawReading,
    Rejected,
    Rejection,
    RejectReason,
    decode_readings,
    decode_status,
    echo_payload,
)
from gateway.state import Fleet
from ingest import lineproto
from tests.support.hostile import CORPUS_PATH, HOSTILE_DIR, TARGET, TEAMS, Hostile, load_corpus

T = TypeVar("T")

RECEIVED_MS = 1_795_000_000_000  # the gateway's clock in the pure property tests
INT64_MAX = 2**63 - 1
# InfluxDB stores nanoseconds in an int64, and keeps its two extremes for itself (1.x
# models.MinNanoTime / MaxNanoTime): the timestamps a line can carry
INFLUX_MIN_NS = -(2**63) + 2
INFLUX_MAX_NS = INT64_MAX - 1


# -- the corpus --------------------------------------------------------------------------------


CORPUS = load_corpus()
BY_NAME = {h.name: h for h in CORPUS}


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE_DIR / "make_corpus.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_committed_corpus_is_what_its_generator_writes() -> None:
    gen = _generator()
    assert CORPUS_PATH.read_text(encoding="ascii") == gen.render(gen.build()), (
        "tests/data/hostile/payloads.jsonl is stale: run python tests/data/hostile/make_corpus.py"
    )


def test_corpus_covers_every_attack_class_at_its_exact_size() -> None:
    required = [
        "recursion-bomb-array", "recursion-bomb-object", "pressure-1e308", "pressure-1e309",
        "pressure-minus-zero", "pressure-2pow64", "pressure-NaN", "pressure-Infinity",
        "duplicate-key-nan-last", "utf8-bom", "invalid-utf8-in-string", "utf16-le-bom",
        "nul-trailing", "exactly-64KiB", "64KiB-plus-1", "256-readings", "257-readings",
        "athlete-100k-chars", "athlete-cyrillic-a", "athlete-ansi-escape", "athlete-comma",
        "athlete-space", "athlete-equals", "athlete-backslash", "athlete-newline", "ts-zero",
        "ts-negative", "ts-year-9999-minus-14h", "ts-offset-23-59", "seq-2pow32",
        "status-recursion-bomb", "ack-recursion-bomb", "alert-severity-number",
    ]
    assert [name for name in required if name not in BY_NAME] == []
    assert len(BY_NAME["exactly-64KiB"].payload) == 64 * 1024
    assert len(BY_NAME["64KiB-plus-1"].payload) == 64 * 1024 + 1
    assert len(json.loads(BY_NAME["256-readings"].payload)) == MAX_READINGS_PER_MESSAGE
    assert len(json.loads(BY_NAME["257-readings"].payload)) == MAX_READINGS_PER_MESSAGE + 1
    assert b"x" * 100_000 in BY_NAME["athlete-100k-chars"].payload
    assert BY_NAME["recursion-bomb-array"].payload.count(b"[") == 30_000
    for h in CORPUS:
        assert h.expect in ("accept", "reject", "any"), h.name
        assert (h.reason is not None) == (h.expect == "reject"), h.name
        if h.reason is not None:
            RejectReason(h.reason)
    assert {h.kind for h in CORPUS} == {"telemetry", "status", "assignment", "ack", "alert"}


# -- what "accepted" must mean -------------------------------------------------------------------


def _settings() -> Settings:
    return load_settings(teams=TEAMS)


def assert_storable(raws: list[RawReading], fleet: Fleet, received_ms: int = RECEIVED_MS) -> None:
    """Accepted readings are in range, finite, and resolve to a line InfluxDB can store."""
    alerts = fleet.settings.alerts
    lo = received_ms - int(alerts.max_backlog_s * 1000)
    hi = received_ms + int(alerts.max_clock_skew_s * 1000) + len(raws)
    state = fleet.lookup(*TARGET)
    for raw in raws:
        assert 0 <= raw.seq < SEQ_MODULUS
        assert math.isfinite(raw.pressure_mmhg)
        assert math.isfinite(raw.elapsed_s)
        assert raw.elapsed_s >= 0
        if raw.target_mmhg is not None:
            assert 0 <= raw.target_mmhg <= 1000
        if raw.battery_pct is not None:
            assert 0 <= raw.battery_pct <= 100
        if raw.athlete is not None:
            assert 1 <= len(raw.athlete) <= 64
        # the transport lag of a reading is stored as gateway_stats.lag_ms, an int64 (SPEC §4)
        assert abs(received_ms - raw.ts_ms()) <= INT64_MAX
        reading = fleet.to_reading(state, raw, received_ms)
        # SPEC §2: a device clock outside the window is flagged and receive time used instead
        assert lo <= reading.ts_ms <= hi
        assert (reading.clock_skew_s is None) or math.isfinite(reading.clock_skew_s)
        text = lineproto.telemetry_line(reading)
        assert "\n" not in text
        assert "\r" not in text
        # written in ns (lineproto.PRECISION): the reading's own ms, its seq below it
        stamp = int(text.rsplit(" ", 1)[1])
        assert INFLUX_MIN_NS <= stamp <= INFLUX_MAX_NS
        assert divmod(stamp, lineproto.NS_PER_MS) == (
            reading.ts_ms, reading.seq % lineproto.SUB_MS_SLOTS)


def verdict(decode: Callable[[bytes], T], payload: bytes) -> T | Rejected:
    """What a decoder made of a payload: its result, or the rejection (anything else raises)."""
    try:
        return decode(payload)
    except Rejected as rej:
        return rej


@pytest.mark.parametrize(
    "hostile", [h for h in CORPUS if h.kind == "telemetry"], ids=lambda h: h.name
)
def test_corpus_telemetry_gets_the_contracts_verdict(hostile: Hostile) -> None:
    outcome = verdict(decode_readings, hostile.payload)
    if isinstance(outcome, Rejected):
        assert hostile.expect != "accept", f"{hostile.name} rejected: {outcome.detail}"
        assert hostile.reason in (None, outcome.reason.value), outcome.detail
    else:
        assert hostile.expect != "reject", f"{hostile.name} accepted, expected {hostile.reason}"
        assert_storable(outcome, Fleet(_settings()))


@pytest.mark.parametrize(
    "hostile", [h for h in CORPUS if h.kind == "status"], ids=lambda h: h.name
)
def test_corpus_status_gets_the_contracts_verdict(hostile: Hostile) -> None:
    outcome = verdict(decode_status, hostile.payload)
    if isinstance(outcome, Rejected):
        assert hostile.expect != "accept", f"{hostile.name} rejected: {outcome.detail}"
        assert hostile.reason in (None, outcome.reason.value), outcome.detail
    else:
        assert hostile.expect != "reject", f"{hostile.name} accepted"


def restore(payload: bytes) -> Alert | Exception:
    """What the gateway's start-up makes of a retained alert: an Alert, or a refusal."""
    try:
        return Alert.from_dict(json.loads(payload))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        return exc


@pytest.mark.parametrize("hostile", [h for h in CORPUS if h.kind == "alert"], ids=lambda h: h.name)
def test_corpus_retained_alert_is_refused_or_fully_usable(hostile: Hostile) -> None:
    """A restored alert is published and stored again later (on a tick): it must fit both."""
    alert = restore(hostile.payload)
    if isinstance(alert, Alert):
        for change in (Change.ESCALATED, Change.RESOLVED):
            line = lineproto.alert_line(Transition(alert, change, push=True))
            assert line.startswith("alert,")
            assert "\n" not in line
        assert json.loads(alert.to_json())["id"] == alert.id


# -- property tests on the decoder ----------------------------------------------------------------

ANY_INT = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, -(2**63), 2**64]),
)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)  # json.dumps writes NaN, Infinity
SCALAR = st.one_of(st.none(), st.booleans(), ANY_INT, ANY_FLOAT, st.text(max_size=70))
ANY_JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=8,
)


@st.composite
def rfc3339(draw: st.DrawFn) -> str:
    """RFC 3339 date-times over the whole range, odd offsets and fractions included."""
    year = draw(st.integers(1, 9999))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28))
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(
        st.integers(0, 59))
    frac = draw(st.sampled_from(["", ".1", ".123", ".123456", ".123456789"]))
    offset = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    zone = draw(st.sampled_from(["Z", "z", f"{'+' if offset >= 0 else '-'}"
                                 f"{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"]))
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{frac}{zone}"


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes anything JSON can hold."""
    return st.one_of(valid, valid, ANY_JSON)


READING = st.fixed_dictionaries(
    {
        "ts": field(st.one_of(st.integers(RECEIVED_MS - 10**7, RECEIVED_MS + 10**6), rfc3339(),
                              ANY_INT)),
        "seq": field(st.integers(0, SEQ_MODULUS - 1)),
        "pressure_mmhg": field(st.floats(-1e308, 1e308)),
        "elapsed_s": field(st.floats(0, 1e308)),
    },
    optional={
        "inflated": field(st.booleans()),
        "target_mmhg": field(st.floats(0, 1000)),
        "athlete": field(st.text(min_size=1, max_size=64)),
        "limb": field(st.sampled_from([str(limb) for limb in Limb])),
        "battery_pct": field(st.floats(0, 100)),
        "firmware": ANY_JSON,
    },
)
PAYLOAD = st.one_of(READING, st.lists(READING, max_size=5), ANY_JSON).map(
    lambda obj: json.dumps(obj, allow_nan=True).encode()
)


@given(PAYLOAD)
@example(json.dumps({"ts": 10**400, "seq": 1, "pressure_mmhg": 1.0, "elapsed_s": 0}).encode())
@example(json.dumps({"ts": -(2**63), "seq": 1, "pressure_mmhg": 1.0, "elapsed_s": 0}).encode())
@example(b'{"ts": "9999-12-31T23:59:59-23:59", "seq": 0, "pressure_mmhg": -0, "elapsed_s": 0}')
def test_decoder_raises_only_rejected_and_what_it_accepts_is_storable(payload: bytes) -> None:
    outcome = verdict(decode_readings, payload)
    if not isinstance(outcome, Rejected):
        assert 1 <= len(outcome) <= MAX_READINGS_PER_MESSAGE
        assert_storable(outcome, Fleet(_settings()))


@given(st.binary(max_size=3000) | PAYLOAD)
def test_rejection_echo_is_at_most_1_kib_of_the_original(payload: bytes) -> None:
    body = json.loads(Rejection("t1", "c1", RejectReason.INVALID_JSON, "d", payload).to_json())
    echo = body["payload"]
    assert echo == echo_payload(payload)
    try:
        head = payload[:REJECTED_ECHO_BYTES]
        head.decode("utf-8")
    except UnicodeDecodeError:
        text_ok = False
    else:
        text_ok = True
    raw = echo.encode("utf-8")
    if payload.startswith(raw) and (text_ok or len(raw) >= REJECTED_ECHO_BYTES - 3):
        assert len(raw) <= REJECTED_ECHO_BYTES  # UTF-8 text, possibly cut at a character
        assert len(raw) >= min(len(payload), REJECTED_ECHO_BYTES - 3)
    else:
        assert base64.b64decode(echo, validate=True) == payload[:REJECTED_ECHO_BYTES]


@given(st.binary(max_size=512) | ANY_JSON.map(lambda o: json.dumps(o).encode()))
def test_status_decoder_raises_only_rejected(payload: bytes) -> None:
    with contextlib.suppress(Rejected):
        decode_status(payload)
