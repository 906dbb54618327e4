"""The rule table is complete: every alert kind has rows, a judge and words (alerts/rules.py).

Adding a kind touches alerts/rules.py only; these checks say what it must bring.
"""

from __future__ import annotations

from alerts import rules
from alerts.rules import ON_READING, ON_TICK, ROWS, AlertKind


def test_every_kind_has_rows_and_one_judge_after_each_reading() -> None:
    assert {row.kind for row in ROWS} == set(AlertKind)
    kinds = [kind for kind, _ in ON_READING]
    # each exactly once; cuff_offline is the engine's own (stale watch, status, a reading)
    assert sorted(kinds) == sorted(set(AlertKind) - {AlertKind.CUFF_OFFLINE})
    assert set(ON_TICK) <= set(AlertKind)


def test_every_row_has_its_own_message() -> None:
    assert set(rules.MESSAGES) == {row.key for row in ROWS}
    fallback = rules.describe(None, "a1 left_arm", 1.0, 2.0)
    for row in ROWS:
        text = rules.describe(row, "a1 left_arm", 1.0, 2.0)
        assert text != fallback, row.key
        assert text.startswith("a1 left_arm"), row.key


def test_row_keys_are_unique_and_sensor_faults_map_to_their_rows() -> None:
    assert len({row.key for row in ROWS}) == len(ROWS)
    assert all(row.kind is AlertKind.SENSOR_FAULT for row in rules.FAULT_ROWS.values())


def test_every_row_has_push_words() -> None:
    """What a push to a phone says about the row (alerts/render.py fills them in)."""
    assert set(rules.PUSH_WORDS) == {row.key for row in ROWS}
    for key, words in rules.PUSH_WORDS.items():
        assert all(words), key
        assert "_" not in words.what + words.action, key  # plain words, no codes
