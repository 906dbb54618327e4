"""One log record, one line: a logging Formatter that escapes what could break or forge lines.

Log messages carry untrusted text (athlete names, topic levels, rejection details and error
texts from devices). A newline in one of them writes a second line that a reader, or a log
shipper, takes for a record of its own: `"athlete": "a\\n2026-12-07 00:00:00,000 CRITICAL
FORGED"`. Rather than every log call remembering to escape its arguments, the formatter
escapes the whole formatted message once, after %-formatting, so that no call site can
forget (an `extra` field or an exception passed as an argument included).

Escaped, `repr`-like (`\\n`, `\\r`, `\\t`, `\\x00`, `\\u2028`): every character Python does not
call printable (`str.isprintable`): C0 and C1 controls, DEL, line and paragraph separators
(U+2028/9, which `str.splitlines` and many viewers break lines at), format characters such
as the bidirectional overrides ("Trojan Source") and zero-width ones, lone surrogates (JSON
`"\\ud800"` decodes to one, and a strict UTF-8 stream cannot write it), unassigned and
private-use code points, and spaces other than U+0020. A backslash is left as it is: a
literal `\\n` typed by a sender stays on its record's line, so it cannot forge one, and
messages with paths keep reading as they did.

A traceback (`exc_info`, `stack_info`) stays multi-line, but each of its lines is escaped the
same way and indented: an exception's text can carry untrusted input too, and so in this log
a line that starts in its first column always starts a record.
"""

from __future__ import annotations

import logging

__all__ = ["OneLineFormatter", "escape_controls"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
TRACEBACK_INDENT = "  "  # a traceback's lines, under the record they belong to


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_controls(text: str) -> str:
    """`text` with every character that `str.isprintable` refuses escaped; one line."""
    if text.isprintable():  # nearly every message: one pass in C
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def _indented(block: str) -> str:
    return "\n".join(TRACEBACK_INDENT + escape_controls(line)
                     for line in block.rstrip("\n").split("\n"))


class OneLineFormatter(logging.Formatter):
    """A `logging.Formatter` whose formatted message (fields and arguments included) is always
    one line, followed by the record's traceback, if any, escaped line by line and indented."""

    def format(self, record: logging.LogRecord) -> str:
        # Formatter.format, except that the traceback is formatted here, not taken from or
        # cached in `record.exc_text`, which other handlers' formatters share
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = escape_controls(self.formatMessage(record))
        trace = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        if trace:
            text += "\n" + _indented(trace)
        if record.stack_info:
            text += "\n" + _indented(self.formatStack(record.stack_info))
        return text
