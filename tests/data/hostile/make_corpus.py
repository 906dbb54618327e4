"""Writes `payloads.jsonl`, the committed corpus of hostile MQTT payloads (tests/test_fuzz.py).

One JSON object per line:
`{"name", "kind", "expect", "reason", "note", "parts": [{"text"|"b64": str, "times": n}]}`.
The payload is the concatenation of each part repeated `times` times: large payloads (a
64 KiB + 1 message, a 100k-character athlete, recursion bombs) stay a few bytes here. A part
is `text` when it is valid UTF-8 (readable in review), else `b64`.

- `kind`: the topic the payload goes to: `telemetry`, `status`, `assignment`, `ack`, or
  `alert` (a retained alert read back at start-up);
- `expect`: `accept` or `reject` where SPEC §2 decides, `any` where it is silent (then
  only "never a crash, never a bad point" holds);
- `reason`: the `RejectReason` value of a rejection the gateway reports on `rejected`.

Run `python tests/data/hostile/make_corpus.py` after changing the list; a test fails when
the committed file differs from what this script writes.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("payloads.jsonl")

TS = 1_795_000_000_000  # 2026-11-18: a device time, old by the time the tests run
KIB64 = 64 * 1024


@dataclass(frozen=True)
class Entry:
    """One hostile payload and what the contract says about it."""

    name: str
    kind: str
    expect: str  # accept | reject | any
    parts: list[tuple[bytes, int]]
    reason: str | None = None
    note: str = ""

    def payload(self) -> bytes:
        return b"".join(chunk * times for chunk, times in self.parts)

    def to_json(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        for chunk, times in self.parts:
            try:
                parts.append({"text": chunk.decode("utf-8"), "times": times})
            except UnicodeDecodeError:
                parts.append({"b64": base64.b64encode(chunk).decode("ascii"), "times": times})
        return {"name": self.name, "kind": self.kind, "expect": self.expect,
                "reason": self.reason, "note": self.note, "parts": parts}


@dataclass
class Corpus:
    entries: list[Entry] = field(default_factory=list)

    def add(self, name: str, payload: bytes | list[tuple[bytes, int]], expect: str,
            reason: str | None = None, *, kind: str = "telemetry", note: str = "") -> None:
        parts = [(payload, 1)] if isinstance(payload, bytes) else payload
        if expect == "reject" and reason is None:
            raise ValueError(f"{name}: a rejection needs its reason")
        self.entries.append(Entry(name, kind, expect, parts, reason, note))


def reading(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"ts": TS, "seq": 1, "pressure_mmhg": 120.0, "elapsed_s": 30.0}
    for key, value in fields.items():
        if value is _DROP:
            base.pop(key)
        else:
            base[key] = value
    return base


_DROP = object()


def enc(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=True).encode()


def with_run(obj: Any, marker: str, run: bytes, times: int) -> list[tuple[bytes, int]]:
    """`obj` encoded, with the string `marker` in it replaced by `run` repeated `times` times."""
    head, tail = enc(obj).split(marker.encode())
    return [(head, 1), (run, times), (tail, 1)]


def raw_reading(field_name: str, raw_value: str) -> bytes:
    """A reading whose `field_name` is the raw JSON text `raw_value` (tokens json can't write)."""
    body = enc(reading(**{field_name: 0}))
    marker = f'"{field_name}": 0'.encode()
    assert marker in body
    return body.replace(marker, f'"{field_name}": '.encode() + raw_value.encode(), 1)


def telemetry(c: Corpus) -> None:
    # -- numbers --------------------------------------------------------------------------
    c.add("pressure-1e308", raw_reading("pressure_mmhg", "1e308"), "accept",
          note="finite: stored, raises sensor_fault and over_pressure (SPEC §2)")
    c.add("pressure-minus-1e308", raw_reading("pressure_mmhg", "-1e308"), "accept")
    c.add("pressure-1e309", raw_reading("pressure_mmhg", "1e309"), "reject", "invalid_reading",
          note="overflows to infinity")
    c.add("pressure-minus-zero", raw_reading("pressure_mmhg", "-0"), "accept")
    c.add("pressure-2pow64", raw_reading("pressure_mmhg", str(2**64)), "accept",
          note="an integer is a JSON number; implausible, so stored as a sensor fault")
    c.add("pressure-huge-int", raw_reading("pressure_mmhg", "9" * 400), "reject",
          "invalid_reading", note="400 digits: no finite float")
    c.add("pressure-underflow", raw_reading("pressure_mmhg", "1e-400"), "accept")
    c.add("pressure-NaN", raw_reading("pressure_mmhg", "NaN"), "reject", "invalid_reading")
    c.add("pressure-Infinity", raw_reading("pressure_mmhg", "Infinity"), "reject",
          "invalid_reading")
    c.add("pressure-minus-Infinity", raw_reading("pressure_mmhg", "-Infinity"), "reject",
          "invalid_reading")
    c.add("pressure-nan-lowercase", raw_reading("pressure_mmhg", "nan"), "reject",
          "invalid_json")
    c.add("pressure-string", enc(reading(pressure_mmhg="120")), "reject", "invalid_reading")
    c.add("pressure-string-NaN", enc(reading(pressure_mmhg="NaN")), "reject", "invalid_reading")
    c.add("pressure-bool", enc(reading(pressure_mmhg=True)), "reject", "invalid_reading")
    c.add("pressure-null", enc(reading(pressure_mmhg=None)), "reject", "invalid_reading")
    c.add("pressure-hex", raw_reading("pressure_mmhg", "0x10"), "reject", "invalid_json")
    c.add("pressure-leading-zero", raw_reading("pressure_mmhg", "012"), "reject", "invalid_json")
    c.add("pressure-plus-sign", raw_reading("pressure_mmhg", "+1"), "reject", "invalid_json")
    c.add("pressure-bare-dot", raw_reading("pressure_mmhg", ".5"), "reject", "invalid_json")
    c.add("elapsed-negative", enc(reading(elapsed_s=-1e-300)), "reject", "invalid_reading")
    c.add("elapsed-minus-zero", raw_reading("elapsed_s", "-0.0"), "accept")
    c.add("elapsed-1e308", raw_reading("elapsed_s", "1e308"), "accept",
          note="absurd bout length: over_time, never a crash")
    c.add("battery-over-100", enc(reading(battery_pct=100.0000001)), "reject", "invalid_reading")
    c.add("battery-negative", enc(reading(battery_pct=-0.5)), "reject", "invalid_reading")
    c.add("target-over-1000", enc(reading(target_mmhg=1000.5)), "reject", "invalid_reading")
    c.add("inflated-string", enc(reading(inflated="true")), "reject", "invalid_reading")
    c.add("inflated-int", enc(reading(inflated=1)), "reject", "invalid_reading")
    c.add("limb-upper-case", enc(reading(limb="LEFT_LEG")), "reject", "invalid_reading")
    c.add("limb-with-nul", enc(reading(limb="left_leg\u0000")), "reject", "invalid_reading")
    # -- seq --------------------------------------------------------------------------------
    c.add("seq-2pow32", enc(reading(seq=2**32)), "reject", "invalid_reading")
    c.add("seq-2pow32-minus-1", enc(reading(seq=2**32 - 1)), "accept")
    c.add("seq-negative", enc(reading(seq=-1)), "reject", "invalid_reading")
    c.add("seq-float", enc(reading(seq=1.0)), "reject", "invalid_reading")
    c.add("seq-2pow64", enc(reading(seq=2**64)), "reject", "invalid_reading")
    c.add("seq-bool", enc(reading(seq=True)), "reject", "invalid_reading")
    # -- timestamps -------------------------------------------------------------------------
    c.add("ts-zero", enc(reading(ts=0)), "accept", note="1970: flagged clock_skew_s, stored now")
    c.add("ts-negative", enc(reading(ts=-1)), "any")
    c.add("ts-int64-min", enc(reading(ts=-(2**63))), "any")
    c.add("ts-2pow63", enc(reading(ts=2**63)), "any")
    c.add("ts-2pow64", enc(reading(ts=2**64)), "any")
    c.add("ts-400-digits", enc(reading(ts=10**400)), "any",
          note="an integer beyond any float: must not reach float arithmetic")
    c.add("ts-float", enc(reading(ts=1.5e12)), "reject", "invalid_reading")
    c.add("ts-bool", enc(reading(ts=True)), "reject", "invalid_reading")
    c.add("ts-year-9999-minus-14h", enc(reading(ts="9999-12-31T23:59:59.999999-14:00")), "any",
          note="year 10000 in UTC")
    c.add("ts-year-1-plus-14h", enc(reading(ts="0001-01-01T00:00:00+14:00")), "any",
          note="year 0 in UTC")
    c.add("ts-offset-23-59", enc(reading(ts="2026-11-23T10:00:00+23:59")), "accept")
    c.add("ts-offset-minus-00", enc(reading(ts="2026-11-23T10:00:00-00:00")), "accept")
    c.add("ts-offset-24h", enc(reading(ts="2026-11-23T10:00:00+24:00")), "reject",
          "invalid_reading")
    c.add("ts-nanoseconds", enc(reading(ts="2026-11-23T10:00:00.123456789Z")), "accept")
    c.add("ts-lowercase-t-z", enc(reading(ts="2026-11-23t10:00:00z")), "accept")
    c.add("ts-leap-second", enc(reading(ts="2016-12-31T23:59:60Z")), "any")
    c.add("ts-feb-30", enc(reading(ts="2026-02-30T00:00:00Z")), "reject", "invalid_reading")
    c.add("ts-hour-24", enc(reading(ts="2026-11-23T24:00:00Z")), "reject", "invalid_reading")
    c.add("ts-no-offset", enc(reading(ts="2026-11-23T10:00:00")), "reject", "invalid_reading")
    c.add("ts-date-only", enc(reading(ts="2026-11-23")), "reject", "invalid_reading")
    c.add("ts-numeric-string", enc(reading(ts="1795000000")), "reject", "invalid_reading",
          note="not RFC 3339; read as seconds it would mean something else than the int")
    c.add("ts-nul-suffix", enc(reading(ts="2026-11-23T10:00:00Z\u0000")), "reject",
          "invalid_reading")
    # -- JSON structure ----------------------------------------------------------------------
    c.add("missing-seq", enc(reading(seq=_DROP)), "reject", "invalid_reading")
    c.add("missing-everything", b"{}", "reject", "invalid_reading")
    c.add("duplicate-key-nan-last", enc(reading())[:-1] + b', "pressure_mmhg": NaN}', "reject",
          "invalid_reading")
    c.add("duplicate-key-valid-last", b'{"pressure_mmhg": "x", ' + enc(reading())[1:], "any")
    c.add("top-level-null", b"null", "reject", "invalid_reading")
    c.add("top-level-string", b'"online"', "reject", "invalid_reading")
    c.add("top-level-number", b"1e999", "reject", "invalid_reading")
    c.add("empty", b"", "reject", "invalid_json")
    c.add("whitespace", b" \t\r\n", "reject", "invalid_json")
    c.add("trailing-garbage", enc(reading()) + b" x", "reject", "invalid_json")
    c.add("two-objects", enc(reading()) + enc(reading()), "reject", "invalid_json")
    c.add("truncated", enc(reading())[:-1], "reject", "invalid_json")
    c.add("single-quotes", b"{'ts': 1}", "reject", "invalid_json")
    c.add("comment", b"/* hi */" + enc(reading()), "reject", "invalid_json")
    c.add("recursion-bomb-array", [(b"[", 30000), (b"]", 30000)], "reject", "invalid_json")
    c.add("recursion-bomb-object", [(b'{"a":', 10000), (b"1", 1), (b"}", 10000)], "reject",
          "invalid_json")
    c.add("recursion-bomb-in-unknown-field",
          [(enc(reading())[:-1] + b', "x": ', 1), (b"[", 20000), (b"]", 20000), (b"}", 1)],
          "any", note="unknown fields are ignored, but a parser must bound its depth")
    c.add("unknown-field-60k", with_run(reading(firmware="@"), "@", b"f", 60_000), "accept")
    c.add("unknown-fields-many", enc({**reading(), **{f"k{i}": i for i in range(1000)}}),
          "accept")
    # -- encodings ------------------------------------------------------------------------------
    c.add("utf8-bom", b"\xef\xbb\xbf" + enc(reading()), "any",
          note="RFC 8259 lets a parser ignore it or not")
    c.add("utf16-le-bom", enc(reading()).decode().encode("utf-16"), "reject", "invalid_json")
    c.add("utf16-be", enc(reading()).decode().encode("utf-16-be"), "reject", "invalid_json")
    c.add("utf32", enc(reading()).decode().encode("utf-32"), "reject", "invalid_json")
    c.add("invalid-utf8-in-string", enc(reading(athlete="ab"))[:-3] + b'\xff\xfe"}', "reject",
          "invalid_json")
    c.add("overlong-utf8-slash", enc(reading(athlete="ab"))[:-3] + b'\xc0\xaf"}', "reject",
          "invalid_json")
    c.add("utf8-encoded-surrogate", enc(reading(athlete="ab"))[:-3] + b'\xed\xa0\x80"}',
          "reject", "invalid_json")
    c.add("lone-surrogate-escape", enc(reading())[:-1] + b', "athlete": "\\ud800"}', "any")
    c.add("random-binary", bytes(range(256)) * 4, "reject", "invalid_json")
    c.add("nul-trailing", enc(reading()) + b"\x00", "reject", "invalid_json")
    c.add("nul-leading", b"\x00" + enc(reading()), "reject", "invalid_json")
    c.add("nul-only", b"\x00" * 64, "reject", "invalid_json")
    c.add("raw-control-char-in-string", enc(reading(athlete="ab"))[:-3] + b'\x01"}', "reject",
          "invalid_json")
    # -- sizes ------------------------------------------------------------------------------------
    body = enc(reading())
    c.add("exactly-64KiB", [(body[:-1], 1), (b" ", KIB64 - len(body)), (b"}", 1)], "accept")
    c.add("64KiB-plus-1", [(body[:-1], 1), (b" ", KIB64 - len(body) + 1), (b"}", 1)], "reject",
          "too_large")
    c.add("512KiB-of-zeros", [(b"0", 512 << 10)], "reject", "too_large")
    one = enc(reading())
    c.add("256-readings", [(b"[", 1), (one + b",", 255), (one + b"]", 1)], "accept",
          note="the same reading 256 times: the gateway stores it once")
    c.add("257-readings", [(b"[", 1), (one + b",", 256), (one + b"]", 1)], "reject",
          "too_many_readings")
    batch = [reading(seq=i, ts=TS + i) for i in range(20)]
    c.add("empty-array", b"[]", "reject", "empty_batch")
    c.add("array-of-null", b"[null]", "reject", "invalid_reading")
    c.add("nested-array", enc([[reading()]]), "reject", "invalid_reading")
    c.add("array-one-bad-among-good", enc([*batch[:10], reading(seq=-1), *batch[11:20]]),
          "reject", "invalid_reading", note="one invalid reading rejects the whole message")
    c.add("athlete-100k-chars", with_run(reading(athlete="@"), "@", b"x", 100_000), "reject",
          "too_large")
    c.add("athlete-60k-chars", with_run(reading(athlete="@"), "@", b"x", 60_000), "reject",
          "invalid_reading")
    c.add("athlete-65-chars", enc(reading(athlete="x" * 65)), "reject", "invalid_reading")
    c.add("athlete-64-chars", enc(reading(athlete="x" * 64)), "accept")
    c.add("athlete-64-emoji", enc(reading(athlete="\U0001f600" * 64)), "accept",
          note="64 characters, 256 bytes")
    c.add("athlete-empty", enc(reading(athlete="")), "reject", "invalid_reading")
    c.add("athlete-number", enc(reading(athlete=17)), "reject", "invalid_reading")
    # -- names a user types (SPEC §4: no name breaks line protocol) -------------------------------
    for label, name in HOSTILE_ATHLETES:
        c.add(f"athlete-{label}", enc(reading(athlete=name)), "accept")


# Athlete names for the reading override: tag-breaking, control characters, confusables.
HOSTILE_ATHLETES: list[tuple[str, str]] = [
    ("comma", "a,b"),
    ("space", "a b"),
    ("equals", "a=b"),
    ("backslash", "a\\b"),
    ("trailing-backslash", "a\\"),
    ("backslash-comma", "a\\,b"),
    ("newline", "a\nb"),
    ("crlf", "a\r\nb"),
    ("tab", "a\tb"),
    ("nul", "a\u0000b"),
    ("ansi-escape", "\u001b[31mred\u001b[0m"),
    ("quotes", "a\"b'c"),
    ("hash", "#not-a-comment"),
    ("leading-space", " a"),
    ("only-space", " "),
    ("line-protocol", "x field=1i 0\ncuff_telemetry,team=t1 seq=1i"),
    ("influxql", "a' OR '1'='1"),
    ("cyrillic-a", "\u0430-17"),
    ("fullwidth", "\uff41\uff0d\uff11\uff17"),
    ("zero-width", "a\u200b-17"),
    ("rtl-override", "\u202e71-a"),
    ("line-separator", "a\u2028b"),
    ("nel", "a\u0085b"),
    ("bom", "\ufeffa-17"),
    ("emoji", "\U0001f9b5\U0001f3fd"),
    ("combining", "e\u0301"),
    ("max-codepoint", "\U0010ffff"),
]


def others(c: Corpus) -> None:
    c.add("status-online", b"online", "accept", kind="status")
    c.add("status-json-online", b'{"state": "online"}', "accept", kind="status")
    c.add("status-nul", b"online\x00", "reject", "invalid_status", kind="status")
    c.add("status-upper", b"ONLINE", "reject", "invalid_status", kind="status")
    c.add("status-duplicate-key", b'{"state": "offline", "state": "online"}', "any",
          kind="status")
    c.add("status-state-list", b'{"state": ["online"]}', "reject", "invalid_status",
          kind="status")
    c.add("status-recursion-bomb", [(b'{"state":', 30000), (b"1", 1), (b"}", 30000)], "reject",
          "invalid_status", kind="status")
    c.add("status-invalid-utf8", b"\xffonline", "reject", "invalid_status", kind="status")
    c.add("status-512KiB", [(b" ", 512 << 10)], "reject", "invalid_status", kind="status")
    c.add("assignment-nan-lop", b'{"athlete": "a-1", "lop_mmhg": NaN}', "reject",
          "invalid_assignment", kind="assignment")
    c.add("assignment-lop-1e308", b'{"athlete": "a-1", "lop_mmhg": 1e308}', "reject",
          "invalid_assignment", kind="assignment")
    c.add("assignment-athlete-65", enc({"athlete": "x" * 65}), "reject", "invalid_assignment",
          kind="assignment")
    c.add("assignment-no-athlete", b'{"limb": "left_leg"}', "reject", "invalid_assignment",
          kind="assignment")
    c.add("assignment-recursion-bomb", [(b"[", 30000), (b"]", 30000)], "reject",
          "invalid_assignment", kind="assignment")
    c.add("assignment-invalid-utf8", b'{"athlete": "\xff"}', "reject", "invalid_assignment",
          kind="assignment")
    c.add("assignment-hostile-athlete", enc({"athlete": "x,y z=\\", "limb": "left_leg"}),
          "accept", kind="assignment")
    c.add("ack-recursion-bomb", [(b"[", 30000), (b"]", 30000)], "any", kind="ack")
    c.add("ack-object-recursion-bomb", [(b'{"by":', 30000), (b"1", 1), (b"}", 30000)], "any",
          kind="ack")
    c.add("ack-invalid-utf8", b'{"by": "\xff"}', "any", kind="ack")
    c.add("ack-huge-int", b'{"by": ' + b"9" * 5000 + b"}", "any", kind="ack")
    c.add("ack-by-number", b'{"by": 5}', "any", kind="ack")
    c.add("ack-by-long", with_run({"by": "@"}, "@", b"n", 60_000), "any", kind="ack")
    c.add("ack-utf16", '{"by": "jo"}'.encode("utf-16"), "any", kind="ack")
    # retained alerts are read back at start-up: what a rogue client left there must not hurt
    good: dict[str, Any] = {
        "id": "01JDZZZZZZZZZZZZZZZZZZZZZZ", "team": "t1", "cuff": "c1", "athlete": "a-1",
        "limb": "left_leg", "kind": "sensor_fault", "severity": "warning", "state": "firing",
        "value": 700.0, "threshold": 600.0, "unit": "mmHg", "message": "m",
        "started_at": "2026-11-23T10:02:03.120Z", "updated_at": "2026-11-23T10:02:03.120Z",
        "acknowledged_by": None, "escalated": False,
    }
    patches: list[tuple[str, dict[str, Any]]] = [
        ("severity-number", {"severity": 3}),
        ("severity-unknown", {"severity": "apocalyptic"}),
        ("started-at-number", {"started_at": 1}),
        ("started-at-garbage", {"started_at": "yesterday"}),
        ("acknowledged-by-number", {"acknowledged_by": 12345, "state": "acknowledged"}),
        ("acknowledged-by-object", {"acknowledged_by": {"x": 1}, "state": "acknowledged"}),
        ("unit-list", {"unit": ["mmHg"]}),
        ("message-nested", {"message": {"text": "m"}}),
        ("value-string", {"value": "NaN"}),
        ("value-list", {"value": [1]}),
        ("escalated-string", {"escalated": "no"}),
        ("kind-unknown", {"kind": "bored"}),
        ("critical-offline-bad-ack", {"kind": "cuff_offline", "severity": "critical",
                                      "acknowledged_by": 7}),
    ]
    for label, patch in patches:
        c.add(f"alert-{label}", enc({**good, **patch}), "any", kind="alert")
    c.add("alert-recursion-bomb", [(b"[", 30000), (b"]", 30000)], "any", kind="alert")
    c.add("alert-list", b"[1, 2]", "any", kind="alert")
    c.add("alert-invalid-utf8", b"\xff\xfe", "any", kind="alert")


def build() -> list[Entry]:
    c = Corpus()
    telemetry(c)
    others(c)
    names = [e.name for e in c.entries]
    if len(names) != len(set(names)):
        raise ValueError("duplicate entry names")
    return c.entries


def render(entries: list[Entry]) -> str:
    return "".join(
        json.dumps(e.to_json(), ensure_ascii=True, separators=(",", ":")) + "\n" for e in entries
    )


def main() -> int:
    CORPUS.write_text(render(build()), encoding="ascii")
    print(f"wrote {CORPUS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
