"""msgspec's fast decoder against pydantic's contract: same accepted set, same values.

`decode_readings` tries msgspec first and lets pydantic (`decode_readings_strict`) decide
whatever msgspec refuses. That is only safe if msgspec never accepts a payload pydantic
would refuse, nor reads one differently. These tests hold the two together over generated
JSON text (odd tokens, duplicate keys, escapes, bounds), byte mutations of valid payloads
and the hostile corpus.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.seq import SEQ_MODULUS
from gateway.decode import (
    MAX_READINGS_PER_MESSAGE,
    MAX_TS_MS,
    FastReadingIn,
    Rejected,
    decode_readings,
    decode_readings_strict,
)
from tests.support.hostile import load_corpus


def outcome(decode: Any, payload: bytes) -> tuple[Any, ...]:
    """What a decoder makes of a payload, exactly (floats by repr: -0.0 is not 0.0)."""
    try:
        readings = decode(payload)
    except Rejected as rej:
        return ("rejected", rej.reason, rej.detail)
    return ("accepted", [
        (r.ts_ms(), r.seq, repr(r.pressure_mmhg), repr(r.elapsed_s), r.inflated,
         repr(r.target_mmhg), r.athlete, r.limb, repr(r.battery_pct), r.is_inflated())
        for r in readings
    ])


def agree(payload: bytes) -> tuple[Any, ...]:
    fast, strict = outcome(decode_readings, payload), outcome(decode_readings_strict, payload)
    assert fast == strict, payload[:300]
    return fast


# JSON tokens, valid and not, for every field: numbers at and past each bound, every type
NUMBERS = [
    "0", "-0", "-0.0", "1", "7", "1.5", "-1", "-1.5", "1e3", "1E-3", "1e308", "-1e308", "1e309",
    "-1e309", "2.5e-324", "100", "100.0", "100.00000000000001", "1000", "1000.0000000001",
    "4294967295", "4294967296", "18446744073709551616", "1" + "0" * 40, "NaN", "Infinity",
    "-Infinity", "0x10", "01", "+1", ".5", "5.", str(MAX_TS_MS), str(MAX_TS_MS + 1),
    str(SEQ_MODULUS - 1), str(SEQ_MODULUS), "9223372036854775807", "9223372036854775808",
    "-9223372036854775809", "1795000000000", "1795000000000.0", "1.795e12",
]
OTHERS = [
    "true", "false", "null", '""', '"a"', '"1795000000000"', '"2026-11-23T10:02:03.120Z"',
    '"2026-11-23 10:02:03Z"', '"2026-11-23T10:02:03"', '"left_leg"', '"LEFT_LEG"', '"right_arm"',
    '"a-1"', '"' + "x" * 64 + '"', '"' + "x" * 65 + '"', '"' + "é" * 64 + '"', '"\\u00e9"',
    '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"tab\\there"', "[]", "{}",
    "[1]", '{"a": 1}', '"\\x"',
]
TOKENS = NUMBERS + OTHERS
FIELDS = ["ts", "seq", "pressure_mmhg", "elapsed_s", "inflated", "target_mmhg", "athlete",
          "limb", "battery_pct", "firmware", "TS", "seq\\u0000", "s\\u0065q"]
VALID = {"ts": "1795000000000", "seq": "7", "pressure_mmhg": "132.5", "elapsed_s": "12"}

tokens = st.sampled_from(TOKENS)
field_names = st.sampled_from(FIELDS)


@st.composite
def reading_text(draw: st.DrawFn) -> str:
    """A JSON object: mostly valid fields, some replaced, dropped, duplicated or added."""
    pairs = [(k, v) for k, v in VALID.items() if draw(st.integers(0, 9)) > 0]
    for _ in range(draw(st.integers(0, 4))):
        pairs.append((draw(field_names), draw(tokens)))
    if draw(st.booleans()) and pairs:
        i = draw(st.integers(0, len(pairs) - 1))
        pairs[i] = (pairs[i][0], draw(tokens))
    draw(st.randoms()).shuffle(pairs)
    body = ", ".join(f'"{k}": {v}' for k, v in pairs)
    return "{" + body + "}"


@st.composite
def payload_text(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["one", "array", "other"]))
    if shape == "one":
        text = draw(reading_text())
    elif shape == "array":
        items = draw(st.lists(reading_text() | tokens, min_size=0, max_size=4))
        text = "[" + ", ".join(items) + "]"
    else:
        text = draw(tokens)
    pad = draw(st.sampled_from(["", " ", "\n", "\t ", "\ufeff", " x", ",", "]"]))
    where = draw(st.sampled_from(["before", "after"]))
    text = pad + text if where == "before" else text + pad
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=3000, deadline=None)
@given(payload_text())
def test_fast_and_strict_agree_on_generated_json(payload: bytes) -> None:
    agree(payload)


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_fast_and_strict_agree_on_mutated_bytes(data: st.DataObject) -> None:
    base = json.dumps([{"ts": 1795000000000 + i, "seq": i, "pressure_mmhg": 120.25,
                        "elapsed_s": 3, "inflated": True, "athlete": "a-1", "limb": "left_leg",
                        "target_mmhg": 130, "battery_pct": 55.5} for i in range(3)]).encode()
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["set", "drop", "dup"]))
        if op == "set":
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "drop":
            del buf[i]
        else:
            buf[i:i] = buf[i:i + data.draw(st.integers(1, 8))]
    agree(bytes(buf))


def test_fast_and_strict_agree_on_the_hostile_corpus() -> None:
    corpus = load_corpus()
    accepted = 0
    for entry in corpus:
        if entry.kind == "telemetry":
            accepted += agree(entry.payload)[0] == "accepted"
    assert accepted > 0  # the corpus has payloads the contract accepts, too


def test_batch_bounds_and_the_common_shapes_take_the_fast_path() -> None:
    one = {"ts": 1795000000000, "seq": 1, "pressure_mmhg": 1.0, "elapsed_s": 0}
    full = json.dumps([one] * MAX_READINGS_PER_MESSAGE).encode()
    assert agree(full)[0] == "accepted"
    assert agree(json.dumps([one] * (MAX_READINGS_PER_MESSAGE + 1)).encode())[0] == "rejected"
    assert agree(b"[]")[0] == "rejected"
    # what devices send decodes in msgspec (no pydantic round): the speed is real
    readings = decode_readings(json.dumps(one).encode())
    assert isinstance(readings[0], FastReadingIn)
    assert all(isinstance(r, FastReadingIn) for r in decode_readings(full))
    # an unknown field is pydantic's to ignore (msgspec skips too leniently), still accepted
    [extra] = decode_readings(json.dumps({**one, "firmware": "1.2"}).encode())
    assert not isinstance(extra, FastReadingIn)
    assert extra.seq == 1
    # an RFC 3339 ts is pydantic's alone, and reads the same
    rfc = {**one, "ts": "2026-11-23T10:02:03.120Z"}
    assert agree(json.dumps(rfc).encode())[0] == "accepted"


def test_random_valid_readings_decode_identically() -> None:
    rng = random.Random(7)
    for _ in range(500):
        r: dict[str, Any] = {"ts": rng.randrange(0, MAX_TS_MS + 1),
                             "seq": rng.randrange(0, SEQ_MODULUS),
                             "pressure_mmhg": rng.uniform(-1e6, 1e6),
                             "elapsed_s": rng.choice([0, rng.uniform(0, 1e5), rng.randrange(999)])}
        for key, value in (("inflated", rng.choice([True, False, None])),
                           ("target_mmhg", rng.uniform(0, 1000)),
                           ("battery_pct", rng.choice([0, 100, rng.uniform(0, 100)])),
                           ("athlete", "".join(rng.choices("ab-_é😀 ", k=rng.randint(1, 64)))),
                           ("limb", rng.choice(["left_arm", "right_leg"]))):
            if rng.random() < 0.5:
                r[key] = value
        assert agree(json.dumps(r).encode())[0] == "accepted"


SKIPPED_VALUES = [
    *TOKENS, '"a\tb"', '"a\nb"', '"\x01"', '"\x7f"', "[1,]", '{"a": 1,}', "[1 2]", '{"a" 1}',
    "{1: 2}", "[" * 64 + "]" * 64, "[" * 2000 + "]" * 2000, '{"a": ' * 300 + "1" + "}" * 300,
    "tru", "nul", "-", "1e", "1e+", "--1", '"\\u12"', '"\\uZZZZ"', "'a'", '"a', "1_000",
]


def test_unknown_fields_are_held_to_full_json_by_both() -> None:
    # msgspec skips the values of unknown fields: each must still be valid JSON to pass
    valid = ", ".join(f'"{k}": {v}' for k, v in VALID.items())
    for value in SKIPPED_VALUES:
        for text in ("{" + valid + f', "firmware": {value}' + "}",
                     "[{" + f'"firmware": {value}, ' + valid + "}]"):
            agree(text.encode("utf-8", "surrogatepass"))
