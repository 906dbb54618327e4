"""InfluxDB line protocol (SPEC §4): escaping and the builders for our four measurements.

Every builder returns one line without its trailing newline. Builders take times in epoch
ms and write them in nanoseconds (`PRECISION`, line protocol's default), which every writer
declares: a `cuff_telemetry` point is at `ts_ms × 10⁶ + seq mod 10⁶` ns, so two readings of
one cuff in the same millisecond (an array stamped alike, whole-second RFC 3339 times at
5 Hz, clock-skewed readings stored at one receive time) are distinct points, ordered by
`seq` (unless a multiple of 10⁶ falls between their seqs: still distinct), and the same
reading is always the same point (a redelivery rewrites it: no state, so also after a
restart). The offset is below a millisecond: what InfluxQL returns with `epoch=ms`, and
every window in whole ms, sees the reading's own ms. Other points are at `ms × 10⁶`.

What a user can type never breaks a line:

- measurement, tag keys/values and field keys: `,` `=` and space are backslash-escaped
  (`=` not in a measurement); CR and LF become a space (line protocol has no newline
  escape there); a backslash is kept where every parser reads it literally and becomes
  `＼` (U+FF3C) where InfluxDB 1.x cannot represent it (before another backslash, a
  separator or at the end), so all servers agree on the stored name;
- string fields: `\\` and `"` are backslash-escaped; CR and LF become a space, so one line
  is always one point (`influx -import` and our batching split on newlines);
- empty tag values are omitted (InfluxDB rejects them), as are None and non-finite
  float fields (InfluxDB has no NaN); integers carry the `i` suffix, booleans are
  `true`/`false`, floats are `repr()` (the shortest text that round-trips exactly).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import lru_cache
from math import isfinite

from alerts.model import BoutSummary, Transition
from core.model import Reading

__all__ = [
    "NS_PER_MS",
    "PRECISION",
    "SUB_MS_SLOTS",
    "FieldValue",
    "alert_line",
    "bout_line",
    "encode_lines",
    "escape_field_key",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "format_field",
    "line",
    "ms_lines_to_ns",
    "normalize_name",
    "normalize_string_field",
    "stats_line",
    "telemetry_line",
]

FieldValue = bool | int | float | str | None

# The precision every line is written in, as writers name it (`/write?precision=`, the
# v2 client's WritePrecision.NS, `influx write --precision`): nanoseconds.
PRECISION = "ns"
NS_PER_MS = 1_000_000
# A telemetry point's sub-millisecond offset is `seq % SUB_MS_SLOTS` ns: readings of one cuff
# in one ms differ unless their seqs are a multiple of a million apart.
SUB_MS_SLOTS = NS_PER_MS

TELEMETRY = "cuff_telemetry"
BOUT = "occlusion_bout"
ALERT = "alert"
GATEWAY_STATS = "gateway_stats"

# Replaces a backslash InfluxDB 1.x cannot store (it has no `\\` escape in names): looks alike.
BACKSLASH_STANDIN = "\uff3c"
# Distinct tag sets cached by the hot path: a club's cuffs × athletes × limbs fit many times over.
TAG_CACHE_SIZE = 8192

# Float field texts remembered by the hot path: cuffs repeat pressures (one decimal),
# targets, battery levels and whole-second elapsed times, and a lookup costs a fifth of a
# repr. Cleared when full, so it holds the current values and never grows past this.
FLOAT_MEMO_SIZE = 16_384

# A backslash followed by another backslash, a separator, a line break or the end of the text.
_AMBIGUOUS_BACKSLASH = re.compile(r"\\(?=[\\,= \r\n]|\Z)")
_NAME_SPECIALS = frozenset(",= \\\r\n")
# A line break becomes a space, which is then escaped like any other.
_NAME_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\r": "\\ ", "\n": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "\r": "\\ ", "\n": "\\ "})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\r": " ", "\n": " "})


def normalize_name(text: str) -> str:
    """The name InfluxDB stores for `text` as a measurement, tag key/value or field key."""
    if "\\" in text:
        text = _AMBIGUOUS_BACKSLASH.sub(BACKSLASH_STANDIN, text)
    if "\r" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text


def normalize_string_field(text: str) -> str:
    """The value InfluxDB stores for `text` as a string field (line breaks become spaces)."""
    if "\r" in text or "\n" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


def escape_tag(text: str) -> str:
    """A tag key or value escaped for line protocol (see the module docstring)."""
    if _NAME_SPECIALS.isdisjoint(text):
        return text
    if "\\" in text:
        text = _AMBIGUOUS_BACKSLASH.sub(BACKSLASH_STANDIN, text)
    return text.translate(_NAME_ESCAPES)


escape_field_key = escape_tag


def escape_measurement(text: str) -> str:
    """A measurement name escaped for line protocol; it must not start with `#` (a comment)."""
    if not text or text.startswith("#"):
        raise ValueError(f"invalid measurement name {text!r}")
    if "\\" in text:
        text = _AMBIGUOUS_BACKSLASH.sub(BACKSLASH_STANDIN, text)
    return text.translate(_MEASUREMENT_ESCAPES)


def escape_string_field(text: str) -> str:
    """A string field value, quoted and escaped for line protocol."""
    return '"' + text.translate(_STRING_ESCAPES) + '"'


def _float(value: float) -> str | None:
    """A float field's text, or None for NaN and infinities (InfluxDB stores neither)."""
    return repr(float(value)) if math.isfinite(value) else None


def format_field(value: FieldValue) -> str | None:
    """One field value in line protocol by its Python type, or None when it is omitted."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return _float(value)
    return escape_string_field(value)


def line(
    measurement: str,
    tags: Iterable[tuple[str, str | None]],
    fields: Iterable[tuple[str, FieldValue]],
    ts_ms: int,
) -> str:
    """A general line at `ts_ms` (written in ns); empty or None tags and None fields are left
    out; no fields is an error."""
    head = escape_measurement(measurement)
    pairs = sorted(tags, key=lambda kv: kv[0])
    tag_text = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in pairs if v)
    parts = []
    for key, value in fields:
        text = format_field(value)
        if text is not None:
            parts.append(f"{escape_field_key(key)}={text}")
    if not parts:
        raise ValueError(f"a {measurement} line needs at least one field")
    return f"{head}{tag_text} {','.join(parts)} {int(ts_ms) * NS_PER_MS}"


@lru_cache(maxsize=TAG_CACHE_SIZE)
def _tag_prefix(measurement: str, *pairs: str) -> str:
    """Escaped `measurement,k=v,...` for sorted (key, value) pairs given flat; empties omitted."""
    out = [measurement]
    for i in range(0, len(pairs), 2):
        value = pairs[i + 1]
        if value:
            out.append(f",{pairs[i]}={escape_tag(value)}")
    return "".join(out)


def _opt(key: str, value: float | None) -> str:
    """`,key=value` for a present, finite float; else nothing."""
    if value is None or not math.isfinite(value):
        return ""
    return f",{key}={float(value)!r}"


@lru_cache(maxsize=TAG_CACHE_SIZE)
def _telemetry_prefix(athlete: str, cuff: str, limb: str, team: str) -> str:
    return _tag_prefix(TELEMETRY, "athlete", athlete, "cuff", cuff, "limb", limb, "team", team)


_float_texts: dict[float, str] = {}
_known_float = _float_texts.get


def _float_text(value: float) -> str:
    """`repr(float(value))` of a finite value, remembered (see FLOAT_MEMO_SIZE).

    Zero is "0.0" whatever its sign: -0.0 and 0.0 are one key, and the text must not
    depend on which came first.
    """
    text = repr(float(value)) if value else "0.0"
    if len(_float_texts) >= FLOAT_MEMO_SIZE:
        _float_texts.clear()
    _float_texts[value] = text
    return text


def telemetry_line(r: Reading, target_mmhg: float | None = None) -> str:
    """The `cuff_telemetry` point of one reading; `target_mmhg` overrides the reading's own.

    On the hot path (once per reading): one cached prefix, the usual fields in one f-string,
    float texts from a memo (`known(x) or _float_text(x)`: "0.0" is a true string too).
    Timed at `ts × 10⁶ + seq mod 10⁶` ns (the module docstring says why).
    """
    team, cuff, athlete, limb, ts, seq, p, e, inflated, own_target, battery, skew, _ = r
    prefix = _telemetry_prefix(athlete, cuff, limb, team)
    target = own_target if target_mmhg is None else target_mmhg
    known = _known_float
    tail = ""
    if target is not None and isfinite(target):
        tail = f",target_mmhg={known(target) or _float_text(target)}"
    if battery is not None and isfinite(battery):
        tail += f",battery_pct={known(battery) or _float_text(battery)}"
    if skew is not None:
        tail += _opt("clock_skew_s", skew)
    flag = "true" if inflated else "false"
    if isfinite(p) and isfinite(e):
        # NS_PER_MS and SUB_MS_SLOTS as literals: two global lookups saved per reading
        return (
            f"{prefix} seq={seq}i,inflated={flag},"
            f"pressure_mmhg={known(p) or _float_text(p)},"
            f"elapsed_s={known(e) or _float_text(e)}{tail} {ts * 1_000_000 + seq % 1_000_000}"
        )
    return (
        f"{prefix} seq={seq}i,inflated={flag}{_opt('pressure_mmhg', p)}"
        f"{_opt('elapsed_s', e)}{tail} {ts * NS_PER_MS + seq % SUB_MS_SLOTS}"
    )


def bout_line(b: BoutSummary) -> str:
    """The `occlusion_bout` point of a finished bout, timed at the bout's start."""
    prefix = _tag_prefix(BOUT, "athlete", b.athlete, "cuff", b.cuff, "limb", b.limb, "team", b.team)
    return (
        f"{prefix} alerts={int(b.alerts)}i{_opt('duration_s', b.duration_s)}"
        f"{_opt('mean_pressure_mmhg', b.mean_pressure_mmhg)}"
        f"{_opt('min_pressure_mmhg', b.min_pressure_mmhg)}"
        f"{_opt('max_pressure_mmhg', b.max_pressure_mmhg)}"
        f"{_opt('target_mmhg', b.target_mmhg)}{_opt('time_in_band_pct', b.time_in_band_pct)}"
        f" {int(b.start_ms) * NS_PER_MS}"
    )


def alert_line(t: Transition) -> str:
    """The `alert` point of an alert state change, timed at the alert's `updated_at`."""
    a = t.alert
    prefix = _tag_prefix(
        ALERT, "athlete", a.athlete, "cuff", a.cuff, "kind", str(a.kind),
        "severity", a.severity.label, "team", a.team,
    )
    acked = ""
    if a.acknowledged_by is not None:
        acked = f",acknowledged_by={escape_string_field(a.acknowledged_by)}"
    return (
        f"{prefix} state={escape_string_field(str(a.state))}"
        f"{_opt('value', a.value)}{_opt('threshold', a.threshold)}"
        f",message={escape_string_field(a.message)},alert_id={escape_string_field(a.id)}"
        f"{acked} {int(a.updated_at_ms) * NS_PER_MS}"
    )


def stats_line(instance: str, ts_ms: int, **counters: FieldValue) -> str:
    """The `gateway_stats` point: one field per counter, typed by its Python type (int → `i`)."""
    return line(GATEWAY_STATS, [("instance", instance)], counters.items(), ts_ms)


def encode_lines(lines: Iterable[str]) -> bytes:
    """Lines as one UTF-8 body, each ending in a newline; a lone surrogate becomes `?`."""
    return "".join(f"{text}\n" for text in lines).encode("utf-8", "replace")


def ms_lines_to_ns(body: bytes) -> bytes:
    """Lines timed in ms, as gateways before ns precision wrote them (their spool records
    outlive an upgrade), timed in ns: each line's timestamp × 10⁶, nothing else changed.

    A line's timestamp is its last space-separated token when that is all digits (a field
    set always holds a `=`, so a line without one is left as it is). Not on the hot path:
    only an earlier gateway's records go through it, once each.
    """
    lines = body.split(b"\n")
    for i, text in enumerate(lines):
        _, space, stamp = text.rpartition(b" ")
        if space and stamp.removeprefix(b"-").isdigit():
            lines[i] = text + b"000000"  # × NS_PER_MS
    return b"\n".join(lines)
