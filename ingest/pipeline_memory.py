"""Memory mode of the ingest pipeline: the bounded buffer batches are taken from.

While the pipeline is healthy, every record `submit()` appends to the spool is also
buffered here, so batches come from memory and the disk is only written, never read. The
buffer holds exactly the records after the last batch taken; when it would grow past its
cap, the pipeline drops it and catches up from the spool (`ingest.pipeline_replay`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ingest.spool_record import HEADER_BYTES

__all__ = ["Batch", "Entry", "MemoryBuffer"]


@dataclass(slots=True)
class Batch:
    """Records taken for one write, with the position of the last one."""

    body: bytes
    lines: int
    records: int
    last_position: int
    replayed_lines: int  # of `lines`, how many were read back from the spool


@dataclass(slots=True)
class Entry:
    """A buffered record: it spans (position - HEADER_BYTES - len(payload), position]."""

    position: int
    payload: bytes
    lines: int
    arrived: float  # time.monotonic(); -inf for a record read back from the spool

    @property
    def start(self) -> int:
        """The position of the record before it (where this one's header begins)."""
        return self.position - HEADER_BYTES - len(self.payload)


class MemoryBuffer:
    """The records after the last batch taken, at most `max_lines` lines of them.

    `wake` is set when the consumer should look: a first record, or a batch's worth.
    """

    def __init__(self, max_lines: int, batch_lines: int, wake: asyncio.Event) -> None:
        """An empty buffer."""
        self.entries: deque[Entry] = deque()
        self.lines = 0
        self.bytes = 0
        self.max_lines = max_lines
        self.batch_lines = batch_lines
        self.max_lines_seen = 0
        self._wake = wake

    def add(self, position: int, payload: bytes, count: int) -> bool:
        """Buffer a just-submitted record; False (nothing done) if it would pass the cap."""
        if self.lines + count > self.max_lines:
            return False
        self.entries.append(Entry(position, payload, count, time.monotonic()))
        self.lines += count
        self.bytes += len(payload)
        self.max_lines_seen = max(self.max_lines_seen, self.lines)
        if len(self.entries) == 1 or self.lines >= self.batch_lines:
            self._wake.set()
        return True

    def adopt(self, entries: Iterable[Entry]) -> None:
        """Append what replay hands over when memory mode resumes (no cap check, no wake)."""
        for entry in entries:
            self.entries.append(entry)
            self.lines += entry.lines
            self.bytes += len(entry.payload)

    def take(self, taken: int, max_lines: int) -> Batch:
        """The oldest records, at least one, up to `max_lines` lines (`taken`: the last
        position taken before, for an empty buffer)."""
        entries = self.entries
        parts: list[bytes] = []
        lines = replayed = 0
        last = taken
        while entries and (not parts or lines + entries[0].lines <= max_lines):
            entry = entries.popleft()
            parts.append(entry.payload)
            lines += entry.lines
            if entry.arrived == -math.inf:  # read back by replay, adopted by the buffer
                replayed += entry.lines
            last = entry.position
            self.lines -= entry.lines
            self.bytes -= len(entry.payload)
        # what stays between batches (right after a switch from replay it may have been more)
        self.max_lines_seen = max(self.max_lines_seen, self.lines)
        return Batch(b"".join(parts), lines, len(parts), last, replayed)

    def clear(self) -> None:
        """Forget every record (they stay in the spool)."""
        self.entries.clear()
        self.lines = 0
        self.bytes = 0
