"""Payload validation at the boundary (SPEC §2): every class of bad input, and what passes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.model import Limb
from gateway.decode import (
    MAX_PAYLOAD_BYTES,
    Rejected,
    Rejection,
    RejectReason,
    decode_readings,
    decode_status,
    echo_payload,
)

GOOD = {"ts": 1_795_000_000_000, "seq": 7, "pressure_mmhg": 132.5, "elapsed_s": 12.0}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_one_reading_with_optional_fields_and_unknown_ones() -> None:
    payload = enc(
        {
            **GOOD,
            "inflated": True,
            "target_mmhg": 130,
            "athlete": "a-1",
            "limb": "left_leg",
            "battery_pct": 55,
            "firmware": "1.2.3",
        }
    )
    [r] = decode_readings(payload)
    assert r.ts_ms() == GOOD["ts"]
    assert r.pressure_mmhg == 132.5
    assert r.limb is Limb.LEFT_LEG
    assert r.is_inflated()
    assert r.battery_pct == 55.0


def test_rfc3339_timestamp_and_inflated_default() -> None:
    expected = int(datetime(2026, 11, 23, 10, 2, 3, 120000, tzinfo=UTC).timestamp() * 1000)
    [r] = decode_readings(enc({**GOOD, "ts": "2026-11-23T10:02:03.120Z", "elapsed_s": 0}))
    assert r.ts_ms() == expected
    assert not r.is_inflated()
    [r] = decode_readings(enc({**GOOD, "ts": "2026-11-23T11:02:03.120+01:00"}))
    assert r.ts_ms() == expected
    assert r.is_inflated()


def test_array_of_readings() -> None:
    readings = decode_readings(enc([{**GOOD, "seq": i} for i in range(256)]))
    assert [r.seq for r in readings] == list(range(256))


@pytest.mark.parametrize(
    ("payload", "reason", "fragment"),
    [
        (b"{not json", RejectReason.INVALID_JSON, "not valid JSON"),
        (b"", RejectReason.INVALID_JSON, "not valid JSON"),
        (b"[]", RejectReason.EMPTY_BATCH, "empty"),
        (enc([GOOD] * 257), RejectReason.TOO_MANY_READINGS, "256"),
        (b'"online"', RejectReason.INVALID_READING, "object"),
        (enc({**GOOD, "pressure_mmhg": "120"}), RejectReason.INVALID_READING, "pressure_mmhg"),
        (enc({**GOOD, "pressure_mmhg": True}), RejectReason.INVALID_READING, "pressure_mmhg"),
        (enc({**GOOD, "seq": 1.5}), RejectReason.INVALID_READING, "seq"),
        (enc({**GOOD, "seq": -1}), RejectReason.INVALID_READING, "seq"),
        (enc({**GOOD, "seq": 2**32}), RejectReason.INVALID_READING, "seq"),
        (enc({**GOOD, "elapsed_s": -0.1}), RejectReason.INVALID_READING, "elapsed_s"),
        (enc({**GOOD, "battery_pct": 101}), RejectReason.INVALID_READING, "battery_pct"),
        (enc({**GOOD, "limb": "tail"}), RejectReason.INVALID_READING, "limb"),
        (enc({**GOOD, "ts": "2026-11-23T10:02:03"}), RejectReason.INVALID_READING, "timezone"),
        (enc({**GOOD, "ts": 1.5}), RejectReason.INVALID_READING, "ts"),
        (enc({k: v for k, v in GOOD.items() if k != "seq"}), RejectReason.INVALID_READING, "seq"),
        (
            b'{"ts":1,"seq":1,"pressure_mmhg":NaN,"elapsed_s":0}',
            RejectReason.INVALID_READING,
            "finite",
        ),
        (
            b'{"ts":1,"seq":1,"pressure_mmhg":Infinity,"elapsed_s":0}',
            RejectReason.INVALID_READING,
            "finite",
        ),
        (
            b'{"ts":1,"seq":1,"pressure_mmhg":1e999,"elapsed_s":0}',
            RejectReason.INVALID_READING,
            "finite",
        ),
        (enc([GOOD, {**GOOD, "seq": "x"}]), RejectReason.INVALID_READING, "1.seq"),
        (b"\xff\xfe garbage", RejectReason.INVALID_JSON, "JSON"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_reason(
    payload: bytes, reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(Rejected) as info:
        decode_readings(payload)
    assert info.value.reason is reason
    assert fragment in info.value.detail


def test_oversized_payload_is_rejected_unread() -> None:
    payload = b"[" + b" " * MAX_PAYLOAD_BYTES + b"]"
    with pytest.raises(Rejected) as info:
        decode_readings(payload)
    assert info.value.reason is RejectReason.TOO_LARGE


def test_implausible_pressure_is_not_a_validation_error() -> None:
    # SPEC §2: out-of-range pressure is stored and alerted on, never rejected
    for p in (-50.0, 700.0):
        [r] = decode_readings(enc({**GOOD, "pressure_mmhg": p}))
        assert r.pressure_mmhg == p


@pytest.mark.parametrize(
    ("payload", "online"),
    [
        (b"online", True),
        (b"offline", False),
        (b'{"state": "online"}', True),
        (b' {"state":"offline"} ', False),
    ],
)
def test_status_payloads(payload: bytes, online: bool) -> None:
    assert decode_status(payload) is online


@pytest.mark.parametrize("payload", [b"", b"on", b"{", b'{"state": 1}', b"[]", b'"online"'])
def test_bad_status(payload: bytes) -> None:
    with pytest.raises(Rejected):
        decode_status(payload)


def test_rejection_echo_is_truncated_and_base64_for_binary() -> None:
    text = "€" * 2000  # 3 bytes each: 1 KiB cuts the 342nd character in two
    echoed = echo_payload(text.encode())
    assert echoed == "€" * 341
    binary = bytes(range(256)) * 8
    assert base64.b64decode(echo_payload(binary)) == binary[:1024]
    body = json.loads(Rejection("t1", "c1", RejectReason.INVALID_JSON, "bad", b"{x").to_json())
    assert body == {"reason": "bad", "code": "invalid_json", "payload": "{x"}


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_decoder(payload: bytes) -> None:
    try:
        readings = decode_readings(payload)
    except Rejected as exc:
        reason = exc.reason
        assert reason in RejectReason
        return
    assert 1 <= len(readings) <= 256


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "ts",
                "seq",
                "pressure_mmhg",
                "elapsed_s",
                "inflated",
                "limb",
                "battery_pct",
                "athlete",
                "x",
            ]
        ),
        json_values,
    )
)
def test_arbitrary_json_objects_are_accepted_or_rejected_never_crash(
    obj: dict[str, object],
) -> None:
    try:
        payload = json.dumps(obj).encode()
    except ValueError:
        return
    try:
        [r] = decode_readings(payload)
    except Rejected:
        return
    assert isinstance(r.seq, int)
    assert r.pressure_mmhg == r.pressure_mmhg  # never NaN
