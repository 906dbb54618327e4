"""docs/device-makers.md stays true to the gateway: its codes, alert kinds, fields and numbers.

The guide retells docs/contract.md from the cuff's side; docs/contract.md is checked against
the code by test_contract_doc.py, and this file checks the guide's own tables and numbers
the same way, so that neither can drift from the gateway.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from alerts.rules import AlertKind
from core.config import AlertSettings
from core.model import PLAUSIBLE_MAX_MMHG, PLAUSIBLE_MIN_MMHG
from core.params import BATTERY_LOW_PCT, BATTERY_OK_PCT
from gateway.decode import MAX_PAYLOAD_BYTES, MAX_READINGS_PER_MESSAGE, ReadingIn, RejectReason
from ops.cli import build_parser
from tests.support.paths import REPO

GUIDE = REPO / "docs" / "device-makers.md"

# Codes a cuff cannot cause: reserved, or about a staff app's message.
NOT_FROM_A_CUFF = {RejectReason.NOT_AUTHORISED, RejectReason.INVALID_ASSIGNMENT}


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ", 1)[0]
    rest = text[start + len(heading) + 2 :]
    end = re.search(rf"^{level} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[\s|:-]+\|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # the header


def spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_mistake_table_codes_are_the_gateways(guide: str) -> None:
    table = table_rows(section(guide, "## What the gateway does with each mistake"))
    assert len(table) > 20
    reasons = {r.value for r in RejectReason}
    kinds = {k.value for k in AlertKind}
    answers = [spans(row[1]) for row in table]
    said = {token for tokens in answers for token in tokens}
    # every code-like word in the answers is a rejection code, an alert kind, or a counter
    # or field of the contract
    extras = {"duplicates", "clock_skew_s", "elapsed_s", "seq", "ts", "reason"}
    unknown = {t for t in said if re.fullmatch(r"[a-z_]+", t)} - reasons - kinds - extras
    assert not unknown, f"not codes or kinds of the gateway: {unknown}"
    # and every code a cuff can cause is there
    missing = {r.value for r in RejectReason if r not in NOT_FROM_A_CUFF} - said
    assert not missing, f"rejection codes the guide does not explain: {missing}"
    # every alert a cuff's readings can raise on their own is there
    device_kinds = {AlertKind.CUFF_OFFLINE, AlertKind.SENSOR_FAULT, AlertKind.OVER_PRESSURE,
                    AlertKind.BATTERY_LOW}
    assert {k.value for k in device_kinds} <= said


def test_reading_table_is_the_decoders(guide: str) -> None:
    rows = table_rows(section(guide, "### A reading"))
    fields = [name for row in rows for name in spans(row[0])]
    assert sorted(fields) == sorted(ReadingIn.model_fields)
    required = {name for name, f in ReadingIn.model_fields.items() if f.is_required()}
    said_required = {name for row in rows if row[1] == "yes" for name in spans(row[0])}
    assert said_required == required


_ALERTS = AlertSettings()


@pytest.mark.parametrize(
    ("value", "expected", "phrase"),
    [
        (MAX_READINGS_PER_MESSAGE, 256, "an array of 1 to **256** readings"),
        (MAX_PAYLOAD_BYTES, 64 * 1024, "at most **64 KiB**"),
        (_ALERTS.stale_after_s, 10, "goes silent for 10 s while inflated"),
        (_ALERTS.alert_max_age_s, 60, "nothing older than 60 s"),
        (_ALERTS.max_clock_skew_s, 300, "more than 300 s ahead"),
        (_ALERTS.max_backlog_s, 3600, "more than an hour behind"),
        (PLAUSIBLE_MIN_MMHG, -20, "below −20 or above 600 mmHg"),
        (PLAUSIBLE_MAX_MMHG, 600, "below −20 or above 600 mmHg"),
        (BATTERY_LOW_PCT, 15, "`battery_pct` under 15"),
        (BATTERY_OK_PCT, 20, "until it is back at 20"),
    ],
)
def test_numbers_are_the_codes(guide: str, value: float, expected: float, phrase: str) -> None:
    assert value == expected, "the code changed: update the guide"
    assert phrase in " ".join(guide.split())


def test_the_guide_is_linked_and_links_to_what_exists(guide: str) -> None:
    contract = (REPO / "docs" / "contract.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(device-makers.md)" in contract
    assert "(docs/device-makers.md)" in readme
    for anchor in re.findall(r"\(contract\.md#([a-z0-9-]+)\)", guide):
        headings = re.findall(r"^#+ (.+)$", contract, flags=re.MULTILINE)
        slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
        assert anchor in slugs, anchor
    assert (REPO / "deploy" / "devices" / "esphome" / "README.md").exists()
    for target in re.findall(r"\]\((\.\./[^)#]+)", guide):  # links out of docs/
        assert (REPO / "docs" / target).resolve().exists(), target


def test_the_conform_line_names_the_commands_real_options(guide: str) -> None:
    [usage] = [line for line in guide.splitlines() if line.startswith("cuffwatch conform ")]
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
        build_parser().parse_args(["conform", "--help"])
    options = set(re.findall(r"(?<![\w-])(-{1,2}[a-z][a-z-]*)", shown.getvalue()))
    named = set(re.findall(r"(?<![\w-])(-{1,2}[a-z][a-z-]*)", usage))
    assert {"--team", "--cuff", "--for", "--json", "--expect-offline"} <= named
    assert named <= options, sorted(named - options)
