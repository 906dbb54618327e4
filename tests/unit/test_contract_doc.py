"""docs/contract.md stays true: its tables are checked against the code, both directions.

The doc is the repository's own reference of the contract (a clone has no ../shared/SPEC.md),
so whatever it lists — alert kinds, rejection codes, configuration keys and their defaults,
command-line subcommands and options, payload fields, stored measurements — must be what the
code has, and everything the code has must be listed. No network, no servers.

Table format the tests read: a row whose first cell is exactly one code span (`` `x` ``) is a
data row; header and separator rows are skipped. Configuration keys are dotted paths with
`<name>` for a key of a table of tables (`teams.<team>.name`) and `[]` for an entry of an
array of tables (`teams.<team>.routes[].url`); their default cell is a TOML literal in a code
span, `unset` (None) or `required` (no default).
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from alerts import clock, evidence, rules
from alerts.model import Alert, AlertKind, AlertState, BoutSummary, Change, Transition
from core.config import AlertSettings, Assignment, Settings
from core.model import PLAUSIBLE_MAX_MMHG, PLAUSIBLE_MIN_MMHG, Limb, Reading, Severity
from gateway import state
from gateway.decode import MAX_PAYLOAD_BYTES, MAX_READINGS_PER_MESSAGE, ReadingIn, RejectReason
from ingest import lineproto
from ops.cli import build_parser
from tests.support.paths import REPO

DOC_PATH = REPO / "docs" / "contract.md"
DOC_NAME = "docs/contract.md"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_ONE_CODE_SPAN = re.compile(r"^`([^`]+)`$")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_PLACEHOLDER = re.compile(r"<[A-Za-z_]+>")
_LONG_OPTION = re.compile(r"--[A-Za-z0-9][A-Za-z0-9-]*")

WILD = "<*>"  # a key of a dict[str, Model] level, whatever the doc names it


# -- reading the doc -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> str:
    assert DOC_PATH.is_file(), f"{DOC_NAME} is missing"
    return DOC_PATH.read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The body under the heading `title`, up to the next heading of the same or a higher level.

    Lines inside fenced code blocks are never headings.
    """
    lines = text.splitlines()
    start: int | None = None
    level = 0
    fenced = False
    body: list[str] = []
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if start is None:
            if m is not None and m.group(2) == title:
                start = len(body)
                level = len(m.group(1))
            continue
        if m is not None and len(m.group(1)) <= level:
            break
        body.append(line)
    if start is None:
        pytest.fail(f"{DOC_NAME} has no heading {title!r}")
    return "\n".join(body)


def raw_rows(text: str) -> list[list[str]]:
    """Every table row in `text`, as stripped cells."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([c.strip() for c in _CELL_SPLIT.split(stripped.strip("|"))])
    return rows


def table_rows(text: str) -> list[list[str]]:
    """The data rows of every table in `text`: rows whose first cell is one code span."""
    return [cells for cells in raw_rows(text) if _ONE_CODE_SPAN.match(cells[0])]


def first_codes(rows: list[list[str]]) -> list[str]:
    out: list[str] = []
    for cells in rows:
        m = _ONE_CODE_SPAN.match(cells[0])
        assert m is not None
        out.append(m.group(1))
    return out


def json_blocks(text: str) -> list[Any]:
    """Every ```json fenced block in `text`, parsed ("…" in an id is kept as text)."""
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, flags=re.DOTALL)]


def missing(label: str, names: set[str], where: str) -> str:
    return f"{label} {sorted(names)} missing from {where}"


def assert_same(listed: set[str], code: set[str], *, table: str, source: str) -> None:
    """The doc's `table` names exactly the `source` values, both ways."""
    assert not listed - code, (
        f"{DOC_NAME} '{table}' lists what {source} lacks: {sorted(listed - code)}"
    )
    assert not code - listed, missing(source, code - listed, f"'{table}' of {DOC_NAME}")


# -- walking the Settings models -------------------------------------------------------------------


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def config_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key, field) of every leaf field, recursing into sub-models, dicts and lists."""
    for name, info in model.model_fields.items():
        key = prefix + name
        ann = info.annotation
        sub = _model(ann)
        if sub is not None:
            yield from config_fields(sub, key + ".")
            continue
        origin = typing.get_origin(ann)
        args = typing.get_args(ann)
        if origin is dict and (sub := _model(args[1])) is not None:
            yield from config_fields(sub, f"{key}.{WILD}.")
            continue
        if origin is list and (sub := _model(args[0])) is not None:
            yield from config_fields(sub, f"{key}[].")
            continue
        if origin in (typing.Union, types.UnionType) and any(_model(a) for a in args):
            pytest.fail(f"{key}: an optional sub-model; teach config_fields how to list it")
        yield key, info


CODE_KEYS: dict[str, FieldInfo] = dict(config_fields(Settings))


def doc_config(doc: str) -> dict[str, tuple[str, list[str]]]:
    """Normalised key -> (key as the doc writes it, row cells) of the configuration tables."""
    out: dict[str, tuple[str, list[str]]] = {}
    rows = table_rows(section(doc, "Configuration keys"))
    for written, cells in zip(first_codes(rows), rows, strict=True):
        key = _PLACEHOLDER.sub(WILD, written)
        assert key not in out, f"{DOC_NAME}: configuration key `{written}` is listed twice"
        out[key] = (written, cells)
    return out


_UNSET = object()


def parse_default(written: str, cell: str) -> Any:
    """A default cell: a TOML literal in a code span, `unset` (None) or `required`."""
    if cell == "unset":
        return None
    if cell == "required":
        return _UNSET
    m = _ONE_CODE_SPAN.match(cell)
    if m is None:
        pytest.fail(
            f"{DOC_NAME}: default of `{written}` is {cell!r}; write a TOML literal in "
            "backticks, `unset` or `required`"
        )
    try:
        return tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{DOC_NAME}: default of `{written}` is not a TOML value: {exc}")


def comparable(value: Any) -> Any:
    """A code default as TOML would spell it (enums as their value, tuples as lists)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [comparable(v) for v in value]
    return value


def same_default(doc_value: Any, code_value: Any) -> bool:
    if isinstance(doc_value, bool) or isinstance(code_value, bool):
        return type(doc_value) is type(code_value) and doc_value == code_value
    return bool(doc_value == code_value)


# -- (1) alert kinds ---------------------------------------------------------------------------


def test_alert_table_lists_exactly_the_alert_kinds(doc: str) -> None:
    listed = set(first_codes(table_rows(section(doc, "Alert kinds"))))
    code = {k.value for k in AlertKind}
    assert_same(listed, code, table="Alert kinds", source="alerts.model.AlertKind")


def test_alert_table_severities_are_the_rules(doc: str) -> None:
    """Each kind's severities in the table are those of its rows in alerts.rules."""
    table: dict[str, set[str]] = {}
    for cells in table_rows(section(doc, "Alert kinds")):
        kind = cells[0].strip("`")
        words = set(re.findall(r"\b(info|warning|critical)\b", cells[2]))
        assert words, f"{DOC_NAME}: an `{kind}` row of 'Alert kinds' names no severity"
        table.setdefault(kind, set()).update(words)
    for kind in AlertKind:
        code = {row.severity.label for row in rules.ROWS if row.kind is kind}
        assert table.get(kind.value) == code, (
            f"{DOC_NAME}: `{kind.value}` severities {sorted(table.get(kind.value, set()))}, "
            f"alerts.rules says {sorted(code)}"
        )


# -- (2) configuration keys ------------------------------------------------------------------------


def test_every_documented_config_key_exists_in_settings(doc: str) -> None:
    extra = {written for key, (written, _) in doc_config(doc).items() if key not in CODE_KEYS}
    assert not extra, (
        f"{DOC_NAME} lists configuration keys that core.config's Settings models lack: "
        f"{sorted(extra)} (keys that are not built belong in 'Not yet built', not in a table)"
    )


def test_every_settings_field_is_documented(doc: str) -> None:
    listed = doc_config(doc)
    absent = {key for key in CODE_KEYS if key not in listed}
    assert not absent, missing(
        "configuration keys of core.config",
        absent,
        f"the 'Configuration keys' tables of {DOC_NAME} ({WILD} = any <placeholder>)",
    )


def test_not_yet_built_keys_are_really_not_built(doc: str) -> None:
    """What 'Not yet built' names as missing keys must indeed be missing from the code."""
    text = section(doc, "Not yet built")
    named = {_PLACEHOLDER.sub(WILD, k) for k in _CODE_SPAN.findall(text) if "." in k}
    named = {k for k in named if re.fullmatch(r"[a-z_<>*\[\].]+", k)}
    built = named & CODE_KEYS.keys()
    assert not built, f"{DOC_NAME}: 'Not yet built' lists keys the code has: {sorted(built)}"


# -- (3) defaults ----------------------------------------------------------------------------------


def test_documented_defaults_equal_the_code_defaults(doc: str) -> None:
    wrong: list[str] = []
    for key, (written, cells) in doc_config(doc).items():
        info = CODE_KEYS.get(key)
        if info is None:
            continue  # reported by test_every_documented_config_key_exists_in_settings
        assert len(cells) >= 2, f"{DOC_NAME}: `{written}` has no default cell"
        stated = parse_default(written, cells[1])
        if info.is_required():
            if stated is not _UNSET:
                wrong.append(f"`{written}`: doc says {cells[1]}, code says required")
            continue
        actual = comparable(info.get_default(call_default_factory=True))
        if stated is _UNSET or not same_default(stated, actual):
            wrong.append(f"`{written}`: doc says {cells[1]}, code default is {actual!r}")
    assert not wrong, f"{DOC_NAME} defaults differ from core.config:\n" + "\n".join(wrong)


def test_alert_defaults_equal_alert_settings(doc: str) -> None:
    """The [alerts] defaults as an `AlertSettings()` holds them (nested tables included)."""
    defaults = AlertSettings()
    checked = 0
    for key, (written, cells) in doc_config(doc).items():
        if not key.startswith("alerts."):
            continue
        value: Any = defaults
        for part in key.split(".")[1:]:
            assert hasattr(value, part), f"{DOC_NAME}: `{written}` is not an AlertSettings field"
            value = getattr(value, part)
        stated = parse_default(written, cells[1])
        assert same_default(stated, value), (
            f"{DOC_NAME}: `{written}` default {cells[1]}, AlertSettings() has {value!r}"
        )
        checked += 1
    expected = sum(1 for k in CODE_KEYS if k.startswith("alerts."))
    assert checked == expected, (
        f"{DOC_NAME} states defaults for {checked} of the {expected} [alerts] keys"
    )


# -- (4) rejection codes ---------------------------------------------------------------------------


def test_rejection_table_lists_exactly_the_reject_reasons(doc: str) -> None:
    listed = set(first_codes(table_rows(section(doc, "Rejection codes"))))
    code = {r.value for r in RejectReason}
    assert_same(listed, code, table="Rejection codes", source="gateway.decode.RejectReason")


# -- (5) command line ------------------------------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subs) == 1, "ops.cli.build_parser: expected one set of subcommands"
    choices: dict[str, argparse.ArgumentParser] = subs[0].choices
    return choices


def _doc_commands(doc: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cells in table_rows(section(doc, "Command line")):
        words = cells[0].strip("`").split()
        if len(words) != 2 or words[0] != "cuffwatch":
            pytest.fail(
                f"{DOC_NAME} 'Command line': write the first cell as `cuffwatch COMMAND`, "
                f"not {cells[0]}"
            )
        out[words[1]] = cells
    return out


def test_command_table_lists_exactly_the_subcommands(doc: str) -> None:
    listed = set(_doc_commands(doc))
    code = set(_subcommands())
    assert_same(listed, code, table="Command line", source="ops.cli subcommands")


def test_command_options_match_the_parser(doc: str) -> None:
    """Each subcommand's long options and positional choices, as its row lists them."""
    rows = _doc_commands(doc)
    problems: list[str] = []
    common = {"--help", "--config"}  # every subcommand has them; the text says so once
    for name, sub in _subcommands().items():
        cells = rows.get(name)
        if cells is None:
            continue  # reported by test_command_table_lists_exactly_the_subcommands
        row = " | ".join(cells[1:])
        spans = set(_CODE_SPAN.findall(row))
        options = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
        options -= common
        written = set(_LONG_OPTION.findall(row))
        if options - spans:
            problems.append(f"`cuffwatch {name}`: options {sorted(options - spans)} not listed")
        if written - options - common:
            problems.append(
                f"`cuffwatch {name}`: lists {sorted(written - options - common)}, "
                "which the parser does not have"
            )
        for action in sub._actions:
            if not action.option_strings and action.choices is not None:
                absent = {str(c) for c in action.choices} - spans
                if absent:
                    problems.append(f"`cuffwatch {name}`: choices {sorted(absent)} not listed")
    assert not problems, f"{DOC_NAME} 'Command line' vs ops.cli:\n" + "\n".join(problems)


def test_global_options_are_documented(doc: str) -> None:
    parser = build_parser()
    options = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    text = section(doc, "Command line")
    absent = {o for o in options - {"--help"} if o not in text}
    assert not absent, missing(
        "cuffwatch's global options", absent, f"'Command line' of {DOC_NAME}"
    )


# -- payloads and storage --------------------------------------------------------------------------


def test_reading_table_lists_exactly_the_reading_fields(doc: str) -> None:
    listed = set(first_codes(table_rows(section(doc, "The reading object"))))
    code = set(ReadingIn.model_fields)
    assert listed == code, (
        f"{DOC_NAME} 'The reading object': extra {sorted(listed - code)}, "
        f"missing {sorted(code - listed)} (gateway.decode.ReadingIn)"
    )
    required = {n for n, f in ReadingIn.model_fields.items() if f.is_required()}
    for cells in table_rows(section(doc, "The reading object")):
        name = cells[0].strip("`")
        assert (cells[2] == "yes") == (name in required), (
            f"{DOC_NAME}: reading field `{name}` required={cells[2]!r}, "
            f"code says {'required' if name in required else 'optional'}"
        )


def test_assignment_table_and_example_match_the_model(doc: str) -> None:
    text = section(doc, "Assigning a cuff")
    listed = set(first_codes(table_rows(text)))
    code = set(Assignment.model_fields)
    assert listed == code, (
        f"{DOC_NAME} assignment table: extra {sorted(listed - code)}, "
        f"missing {sorted(code - listed)} (core.config.Assignment)"
    )
    (example,) = json_blocks(text)
    Assignment.model_validate(example)  # the example is a valid assignment


def test_alert_object_example_has_the_published_fields(doc: str) -> None:
    text = section(doc, "The alert object")
    (example,) = json_blocks(text)
    published = Alert(
        id="01JD0000000000000000000000", team="t1", cuff="c7", athlete="a-17", limb="left_leg",
        kind=AlertKind.OVER_PRESSURE, severity=Severity.CRITICAL, state=AlertState.FIRING,
        value=312.0, threshold=300.0, unit="mmHg", message="m", started_at_ms=0,
        updated_at_ms=0,
    ).to_dict()
    assert set(example) == set(published), (
        f"{DOC_NAME} alert object example: extra {sorted(set(example) - set(published))}, "
        f"missing {sorted(set(published) - set(example))} (alerts.model.Alert.to_dict)"
    )
    described = {f for cells in raw_rows(text) for f in _CODE_SPAN.findall(cells[0])}
    assert described, f"{DOC_NAME}: the alert object's fields are not described in a table"
    assert not described - set(published), (
        f"{DOC_NAME} alert object table describes fields the alert lacks: "
        f"{sorted(described - set(published))}"
    )
    assert set(re.findall(r"`(firing|acknowledged|resolved)`", text)) == {
        s.value for s in AlertState
    }


def _keys_of_line(text: str) -> tuple[str, set[str], set[str]]:
    """(measurement, tag keys, field keys) of one simple line-protocol line (no escapes)."""
    head, fields, _ts = text.rsplit(" ", 2)
    measurement, *tags = head.split(",")
    return (
        measurement,
        {t.split("=", 1)[0] for t in tags},
        {f.split("=", 1)[0] for f in fields.split(",")},
    )


def _written_lines() -> list[str]:
    """One point of each measurement the gateway writes per reading, bout and alert change."""
    reading = Reading(
        "t1", "c7", "a-17", Limb.LEFT_LEG, 1_000, 5, 130.0, 12.0, True, 132.0, 80.0, 400.0, 1_000
    )
    bout = BoutSummary(
        team="t1", cuff="c7", athlete="a-17", limb="left_leg", start_ms=0, duration_s=60.0,
        mean_pressure_mmhg=130.0, min_pressure_mmhg=120.0, max_pressure_mmhg=140.0,
        target_mmhg=132.0, time_in_band_pct=90.0, alerts=1,
    )
    alert = Alert(
        id="01JD0000000000000000000000", team="t1", cuff="c7", athlete="a-17", limb="left_leg",
        kind=AlertKind.OVER_PRESSURE, severity=Severity.CRITICAL, state=AlertState.ACKNOWLEDGED,
        value=312.0, threshold=300.0, unit="mmHg", message="m", started_at_ms=0,
        updated_at_ms=1, acknowledged_by="Sam",
    )
    return [
        lineproto.telemetry_line(reading),
        lineproto.bout_line(bout),
        lineproto.alert_line(Transition(alert, Change.ACKNOWLEDGED, push=False)),
    ]


def test_storage_table_matches_what_is_written(doc: str) -> None:
    rows = {
        cells[0].strip("`"): cells
        for cells in table_rows(section(doc, "Stored data (InfluxDB)"))
    }
    measurements = {
        lineproto.TELEMETRY, lineproto.BOUT, lineproto.ALERT, lineproto.GATEWAY_STATS,
    }
    assert set(rows) == measurements, (
        f"{DOC_NAME} storage table: measurements {sorted(rows)}, code has {sorted(measurements)}"
    )

    def names(cell: str) -> set[str]:
        return {re.sub(r"\s*\(.*\)$", "", n).strip() for n in cell.split(",")}

    for text in _written_lines():
        measurement, tags, fields = _keys_of_line(text)
        cells = rows[measurement]
        assert names(cells[1]) == tags, (
            f"{DOC_NAME}: `{measurement}` tags {sorted(names(cells[1]))}, written {sorted(tags)}"
        )
        assert names(cells[2]) == fields, (
            f"{DOC_NAME}: `{measurement}` fields {sorted(names(cells[2]))}, "
            f"written {sorted(fields)}"
        )


def test_gateway_stats_fields_are_what_the_gateway_writes(doc: str, tmp_path: Path) -> None:
    from gateway.app import Gateway
    from tests.support.harness import gateway_settings

    settings = gateway_settings(broker_url="mqtt://127.0.0.1:1", topic_root="bfr",
                                spool_dir=tmp_path / "spool", teams={})
    gw = Gateway(settings, health=False)
    try:
        measurement, tags, fields = _keys_of_line(gw._stats_line())
    finally:
        gw.spool.close()
    rows = {cells[0].strip("`"): cells
            for cells in table_rows(section(doc, "Stored data (InfluxDB)"))}
    documented = {n.strip() for n in rows[measurement][2].split(",")}
    assert (measurement, tags) == (lineproto.GATEWAY_STATS, {"instance"})
    assert documented == fields, (
        f"{DOC_NAME}: `gateway_stats` fields {sorted(documented)}, written {sorted(fields)}"
    )


# -- numbers the prose states ------------------------------------------------------------------


def _number(x: float) -> str:
    return f"{x:g}"


def test_misbehaving_device_numbers_are_the_codes(doc: str) -> None:
    text = section(doc, "What the gateway does with misbehaving devices")
    for heading in (
        "Duplicates", "Clock trouble", "Sparse cadences", "Backlog vs lagging clocks",
        "Huge but valid values", "Retained messages", "v2 rules",
    ):
        section(text, heading)
    ipc = AlertSettings().ipc
    expected = {
        "dedup window (gateway.state.DEDUP_SLOTS)": f"last {state.DEDUP_SLOTS:,}",
        "step back (alerts.clock.BACK_TOLERANCE_MS)": f"{clock.BACK_TOLERANCE_MS} ms",
        "step slack (alerts.clock.STEP_SLACK_MS)": f"max({clock.STEP_SLACK_MS // 1000} s",
        "plausible range": f"{_number(PLAUSIBLE_MIN_MMHG)}..{_number(PLAUSIBLE_MAX_MMHG)} mmHg",
        "rejection code": f"`{RejectReason.RETAINED.value}`",
        "ipc warn": f"warning at {_number(ipc.warn_bout_s)} s",
        "ipc max": f"critical at {_number(ipc.max_bout_s)} s",
        "ipc rest": f"rest: {_number(ipc.min_rest_s)} s",
    }
    wrong = {label: phrase for label, phrase in expected.items() if phrase not in text}
    assert not wrong, f"{DOC_NAME} misbehaving devices: phrases not found {wrong}"
    assert evidence.MAX_ELAPSED_S == 86_400.0, "the doc says elapsed_s is held to a day"
    defaults = AlertSettings()
    for key in ("max_clock_skew_s", "max_backlog_s", "alert_max_age_s"):
        phrase = f"`{key}` ({_number(getattr(defaults, key))} s)"
        assert phrase in text, f"{DOC_NAME} misbehaving devices: {phrase!r} not found"


def test_reading_limits_in_the_prose_are_the_codes(doc: str) -> None:
    text = section(doc, "The reading object")
    assert f"up to {MAX_READINGS_PER_MESSAGE}" in text
    assert f"at most {MAX_PAYLOAD_BYTES // 1024} KiB" in text
