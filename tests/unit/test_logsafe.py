"""core/logsafe.py: one log record is one line, whatever its arguments carry; a traceback follows
it indented, so no line of it can pass for a record."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from core.logsafe import OneLineFormatter, escape_controls
from ops.cli import setup_logging

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FORGED = "a\n2026-12-07 00:00:00,000 CRITICAL FORGED"
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture
def emit() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through OneLineFormatter into a string, as `cuffwatch run` does."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter(FORMAT))
    logger = logging.getLogger("test.logsafe")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)
    logger.propagate = True


def test_a_forged_newline_in_an_argument_stays_on_the_records_line(
    emit: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = emit
    # the gateway's assignment line, with the athlete of a hostile retained assignment
    logger.info("%s/%s: assigned to %s %s", "t1", "c7", FORGED, "left_leg")
    [line] = out.getvalue().splitlines()
    assert RECORD_START.match(line), line
    assert line.endswith(
        "test.logsafe: t1/c7: assigned to a\\n2026-12-07 00:00:00,000 CRITICAL FORGED left_leg")


@pytest.mark.parametrize(("raw", "escaped"), [
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\r\n", "\\r\\n"),
    ("\t", "\\t"),
    ("\x00", "\\x00"),
    ("\x1b[2J", "\\x1b[2J"),  # a terminal escape sequence (clear screen)
    ("\x0b\x0c\x1c\x1d\x1e", "\\x0b\\x0c\\x1c\\x1d\\x1e"),  # what str.splitlines splits on
    ("\x7f", "\\x7f"),
    ("\x85", "\\x85"),  # NEL, a C1 line break
    ("\xa0", "\\xa0"),  # no-break space: reads as a space, is none
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
    ("\u202e", "\\u202e"),  # right-to-left override: text that reads differently on screen
    ("\u2066", "\\u2066"),
    ("\u200b", "\\u200b"),  # zero-width space
    ("\ufeff", "\\ufeff"),  # byte order mark
    ("\ud800", "\\ud800"),  # a lone surrogate: JSON "\ud800" decodes to one
    ("\ue000", "\\ue000"),  # private use
    ("\U000e0001", "\\U000e0001"),  # a language tag, outside the BMP
], ids=["lf", "cr", "crlf", "tab", "nul", "esc", "splitlines", "del", "nel", "nbsp", "u2028",
        "u2029", "rlo", "lri", "zwsp", "bom", "surrogate", "private", "astral"])
def test_non_printable_characters_are_escaped(
    emit: tuple[logging.Logger, io.StringIO], raw: str, escaped: str,
) -> None:
    logger, out = emit
    logger.warning("rejected: %s|", f"x{raw}y")
    text = out.getvalue()
    assert text.endswith(f"rejected: x{escaped}y|\n")
    assert len(text.splitlines()) == 1
    assert escape_controls(raw) == escaped
    assert escape_controls(raw).isprintable()


def test_escaping_covers_the_message_itself_not_only_its_arguments(
    emit: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = emit
    logger.warning(f"no arguments: {FORGED}\x00")  # what escaping after formatting also covers
    [line] = out.getvalue().splitlines()
    assert line.endswith("no arguments: a\\n2026-12-07 00:00:00,000 CRITICAL FORGED\\x00")


def test_plain_text_and_printable_unicode_are_left_alone(
    emit: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = emit
    text = "t1/c7: assigned to Zoë Müller-Łukasz 王 ✓ C:\\path\\n (literal backslash)"
    logger.info("%s", text)
    assert out.getvalue().endswith(f": {text}\n")
    assert escape_controls(text) == text


def test_a_traceback_follows_indented_and_escaped_so_no_line_of_it_starts_a_record(
    emit: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = emit
    try:
        # an exception's text can carry what a device sent
        raise ValueError(f"bad athlete {FORGED}\nsecond line\x00")
    except ValueError:
        logger.exception("internal error handling a message on %s", f"t/{FORGED}")
    lines = out.getvalue().splitlines()
    assert RECORD_START.match(lines[0]), lines
    assert lines[0].endswith("on t/a\\n2026-12-07 00:00:00,000 CRITICAL FORGED")
    assert lines[1] == "  Traceback (most recent call last):"
    assert any(line.startswith('    File "') for line in lines[2:])
    assert lines[-3:] == ["  ValueError: bad athlete a",
                          "  2026-12-07 00:00:00,000 CRITICAL FORGED",
                          "  second line\\x00"]
    assert all(line.startswith("  ") for line in lines[1:])


def test_stack_info_follows_indented(emit: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = emit
    logger.warning("where: %s", "x\ny", stack_info=True)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("where: x\\ny")
    assert lines[1] == "  Stack (most recent call last):"
    assert len(lines) > 2
    assert all(line.startswith("  ") for line in lines[1:])


def test_a_traceback_another_formatter_cached_is_not_used_nor_ours_cached(
    emit: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = emit
    plain = logging.Formatter("%(message)s")
    seen: list[str] = []

    class Plain(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(plain.format(record))  # caches record.exc_text, unescaped

    logger.handlers.insert(0, Plain())  # formats the record first
    try:
        try:
            raise ValueError(FORGED)
        except ValueError:
            logger.exception("failed")
    finally:
        del logger.handlers[0]
    lines = out.getvalue().splitlines()
    assert lines[-2:] == ["  ValueError: a", "  2026-12-07 00:00:00,000 CRITICAL FORGED"]
    assert seen[0].endswith(f"ValueError: {FORGED}")  # the other handler's, as it was


def test_the_record_is_not_changed_for_other_handlers(
    emit: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = emit
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    other = Keep()
    logger.addHandler(other)
    try:
        logger.warning("a %s", "b\nc")
    finally:
        logger.removeHandler(other)
    assert out.getvalue().endswith("a b\\nc\n")
    assert seen[0].getMessage() == "a b\nc"


def test_setup_logging_installs_the_one_line_formatter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # a root logger without handlers, as in a fresh `cuffwatch` process; restored afterwards
    # in place (pytest's own capture handlers live in that list)
    root = logging.getLogger()
    for name in ("", "gmqtt", "amqtt", "transitions", "aiohttp.access", "apprise", "urllib3"):
        named = logging.getLogger(name)
        monkeypatch.setattr(named, "level", named.level)
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        setup_logging()
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        assert isinstance(handler.formatter, OneLineFormatter)
        assert handler.stream is sys.stderr
        logging.getLogger("cuffwatch.gateway").info("%s/%s: assigned to %s %s", "t1", "c7",
                                                    FORGED, "left_leg")
    finally:
        root.handlers[:] = saved
    [line] = capsys.readouterr().err.splitlines()
    assert RECORD_START.match(line), line
    assert line.endswith("INFO    cuffwatch.gateway: t1/c7: assigned to "
                         "a\\n2026-12-07 00:00:00,000 CRITICAL FORGED left_leg")
