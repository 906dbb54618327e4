"""Storing records and holding the messages they came from until the spool has them durable.

A record goes to the spool at once (`submit`: its position, which the MQTT link acknowledges
once the group commit covers it). A record the spool refuses (full at its cap, or a failing
disk) is held by a coroutine that retries; every later record queues behind it, in order,
so that no message is acknowledged before one that came earlier. The messages of a held
record stay unacknowledged and the broker keeps them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.metrics import Counters
from ingest.pipeline import IngestPipeline
from ingest.spool import Spool, SpoolFull

log = logging.getLogger("cuffwatch.gateway")
RETRY_S = 0.5  # while the spool refuses, hold the messages (no PUBACK) and try again this often

Held = Coroutine[Any, Any, None]


class HoldState(enum.Enum):
    """Whether records go straight to the spool, and if not, why (STYLE: name the states)."""

    OPEN = "open"  # records go to the spool as they come
    QUEUED = "queued"  # a held record is being retried; later records wait behind it
    FULL = "full"  # the spool is at its cap: held until InfluxDB drains it (not ready)
    FAILING = "failing"  # the disk failed a write or fsync: held and retried


def encode(lines: list[str]) -> bytes:
    """Line protocol lines as one spool record."""
    return ("\n".join(lines) + "\n").encode()


class StorageHold:
    """Puts records in the spool in order; holds them (and their messages) while it refuses."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        spool: Spool,
        counters: Counters,
        *,
        max_bytes: int,
        on_change: Callable[[HoldState], None] = lambda _state: None,
    ) -> None:
        self.pipeline = pipeline
        self.spool = spool
        self.counters = counters
        self.max_bytes = max_bytes
        self.on_change = on_change
        self.state = HoldState.OPEN
        self._holders = 0  # `_hold` coroutines begun and not finished
        self._lock = asyncio.Lock()  # they run one at a time, in the order they began

    @property
    def busy(self) -> bool:
        """Whether a record is held (its messages unacknowledged)."""
        return self._holders > 0

    def submit(self, lines: list[str]) -> int | Held:
        """The spool position covering `lines`, or, while records are held, a coroutine that
        returns once they are durable (behind the held ones)."""
        if self.state is not HoldState.OPEN:
            return self.hold(lines)
        try:
            return self.pipeline.submit_nowait(encode(lines), len(lines))
        except Exception:  # noqa: BLE001 - SpoolError or whatever the disk raised: hold, retry
            self._set(HoldState.QUEUED)
            return self.hold(lines)

    def durable_end(self) -> int | Held:
        """For a message of duplicates only: everything stored before it must be durable
        first (its originals may still wait for the disk). The position, or a coroutine."""
        return self.hold([]) if self.state is not HoldState.OPEN else self.spool.end_position

    async def hold(self, lines: list[str]) -> None:
        """Return once `lines` are durable, retrying while the spool refuses them. Never
        raises but CancelledError (at shutdown: the broker redelivers)."""
        self._holders += 1
        try:
            async with self._lock:
                await self._until_durable(lines)
        finally:
            self._holders -= 1
            if not self._holders:
                self._set(HoldState.OPEN)

    async def _until_durable(self, lines: list[str]) -> None:
        body = encode(lines) if lines else b""
        while True:
            try:
                if lines:
                    await self.pipeline.submit(body, len(lines))
                else:
                    await self.pipeline.wait_durable(self.spool.end_position)
            except SpoolFull:
                if self.state is not HoldState.FULL:
                    log.error(
                        "SPOOL FULL (%d bytes, cap %d): holding messages unacknowledged until "
                        "InfluxDB drains it; the broker keeps them",
                        self.spool.bytes_used, self.max_bytes,
                    )
                self._set(HoldState.FULL)
                self.counters.backpressure_waits += 1
            except Exception as exc:  # noqa: BLE001 - whatever the disk raised: hold and retry
                # an fsync failed or the disk is gone: never acknowledge what is not durable
                self.counters.internal_errors += 1
                log.error("spool write failed (%s); holding the message(s)", exc)
                self._set(HoldState.FAILING)
            else:
                if self.state is HoldState.FULL:
                    log.warning("spool has room again; accepting messages")
                if self.state is not HoldState.OPEN:
                    self._set(HoldState.QUEUED)  # OPEN once no other record is held
                return
            await asyncio.sleep(RETRY_S)

    def _set(self, state: HoldState) -> None:
        if state is not self.state:
            self.state = state
            self.on_change(state)
