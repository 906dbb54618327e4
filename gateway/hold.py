"""Storing records and holding the messages they came from until the spool has them durable.

A record goes to the spool at once (`submit`: its position, which the MQTT link acknowledges
once the group commit covers it). A record the spool refuses (full at its cap, a full disk,
or a failing disk) is held by a coroutine that retries with backoff; every later record
queues behind it, in order, so that no message is acknowledged before one that came
earlier. The messages of a held record stay unacknowledged and the broker keeps them. The
link's acknowledgements wait here too (`wait_durable`), retried the same way.

A full disk (the filesystem refuses the spool's writes: ENOSPC, EDQUOT, EFBIG) is a state
like the spool's cap: `disk_full`, logged once when it begins and once when it ends,
shown in the status, /metrics and /readyz. Alerts never wait for storage, so they go on.
It ends by itself: when InfluxDB drains the spool (which frees its files) or space is freed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from core.backoff import jittered, nominal_delay
from gateway.metrics import Counters
from ingest.pipeline import IngestPipeline
from ingest.spool import DiskFull, Spool, SpoolFull

log = logging.getLogger("cuffwatch.gateway")
# While the spool refuses, the held messages (no PUBACK) are retried with backoff: the
# first retry soon (InfluxDB draining a full spool frees it within a batch), then no more
# often than the cap, so a disk that stays full costs a few syscalls a second at most,
# and held messages are acknowledged within ~2 s of room returning.
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 2.0

Held = Coroutine[Any, Any, None]


class HoldState(enum.Enum):
    """Whether records go straight to the spool, and if not, why (STYLE: name the states)."""

    OPEN = "open"  # records go to the spool as they come
    QUEUED = "queued"  # a held record is being retried; later records wait behind it
    FULL = "full"  # the spool is at its cap: held until InfluxDB drains it (not ready)
    DISK_FULL = "disk_full"  # the disk has no room: held until InfluxDB drains or space is freed
    FAILING = "failing"  # the disk failed a write or fsync: held and retried


def encode(lines: list[str]) -> bytes:
    """Line protocol lines as one spool record."""
    return ("\n".join(lines) + "\n").encode()


def retry_delay(attempt: int) -> float:
    """The wait before retry `attempt` (1, 2, …) of a refused record or acknowledgement."""
    return jittered(nominal_delay(attempt, RETRY_INITIAL_S, RETRY_MAX_S))


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
        self.disk_full = False  # the disk refuses the spool's writes (as last observed)
        self.disk_full_episodes = 0
        self._disk_full_since = 0.0
        self._holders = 0  # `_hold` coroutines begun and not finished
        self._lock = asyncio.Lock()  # they run one at a time, in the order they began

    @property
    def busy(self) -> bool:
        """Whether a record is held (its messages unacknowledged)."""
        return self._holders > 0

    @property
    def refusing(self) -> bool:
        """Whether the spool refuses records for lack of room (its cap, or a full disk)."""
        return self.disk_full or self.state in (HoldState.FULL, HoldState.DISK_FULL)

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

    async def wait_durable(self, position: int) -> None:
        """Return once everything up to `position` is durable (the link's acknowledgements),
        retrying with backoff while the spool cannot make it so. Never raises but
        CancelledError (at shutdown: the broker redelivers)."""
        attempt = 0
        while True:
            try:
                await self.pipeline.wait_durable(position)
            except Exception as exc:  # noqa: BLE001 - whatever the disk raised: hold, retry
                attempt += 1
                if attempt == 1 and not isinstance(exc, DiskFull):  # a full disk: observe()
                    log.error("spool not durable (%s); holding acknowledgements", exc)
                self.observe()
                await asyncio.sleep(retry_delay(attempt))
            else:
                self.observe()
                return

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
        position: int | None = None  # appended once; retries only wait for its durability
        attempt = 0
        while True:
            try:
                if position is None:
                    position = (self.pipeline.submit_nowait(body, len(lines)) if lines
                                else self.spool.end_position)
                await self.pipeline.wait_durable(position)
            except DiskFull:
                self._set(HoldState.DISK_FULL)  # logged once by observe()
                self.counters.backpressure_waits += 1
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
                if self.state is not HoldState.FAILING:
                    log.error("spool write failed (%s); holding the message(s)", exc)
                self._set(HoldState.FAILING)
            else:
                if self.state is HoldState.FULL:
                    log.warning("spool has room again; accepting messages")
                if self.state is not HoldState.OPEN:
                    self._set(HoldState.QUEUED)  # OPEN once no other record is held
                self.observe()
                return
            self.observe()
            attempt += 1
            await asyncio.sleep(retry_delay(attempt))

    def observe(self) -> None:
        """Notice the disk filling up or having room again: logged once each way."""
        full = self.spool.disk_full
        if full == self.disk_full:
            return
        self.disk_full = full
        if full:
            self.disk_full_episodes += 1
            self._disk_full_since = time.monotonic()
            log.error(
                "DISK FULL: the spool's filesystem refuses writes (%s; %d bytes of records in "
                "%s): holding messages unacknowledged (the broker keeps them) until InfluxDB "
                "drains the spool or space is freed; alerts go on",
                self.spool.disk_full_reason, self.spool.bytes_used, self.spool.directory,
            )
        else:
            log.warning("disk has room again after %.1f s: the spool writes and messages are "
                        "acknowledged again", time.monotonic() - self._disk_full_since)
        self.on_change(self.state)

    def _set(self, state: HoldState) -> None:
        if state is not self.state:
            self.state = state
            self.on_change(state)
