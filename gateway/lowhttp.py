"""The gateway's small HTTP listeners (health, ack endpoint): aiohttp's low-level server, bounded.

Neither listener is a web application: each answers a few fixed requests, and each must stay
up whatever its other clients do. So both run on `serve`, which bounds what anyone can hold
(issue #17: ~1,100 idle connections used up the 1,024 descriptors and /readyz failed): at
most `cap` connections at once (one more closes the oldest), a deadline for each request
head, small heads, and a short wait for answers in flight when stopping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# After refusing a request with a body, read and drop the rest of it for at most this long
# before closing, so the client sees our 4xx rather than a reset.
LINGER_S = 1.0
# Stopping waits this long for answers in flight (each takes milliseconds), not aiohttp's 60 s
# default, so a client cannot hold up the gateway's shutdown.
SHUTDOWN_TIMEOUT_S = 2.0


# aiohttp logs every malformed request at ERROR with its traceback: any client could fill the
# log. Its lines go to HTTP_LOGGER, at most this many a minute, each one line without the
# traceback (the exception's text says what was wrong); the rest are counted, and the next
# line passed says how many were left out.
HTTP_LOGGER = "cuffwatch.http"
HTTP_LOG_PER_MINUTE = 10


class OneLineBudget(logging.Filter):
    """At most `per_minute` records a minute, each turned into one WARNING line."""

    def __init__(self, per_minute: int = HTTP_LOG_PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self._clock = clock
        self._window_start = clock()
        self._passed = 0
        self.dropped = 0  # since the last line passed

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if now - self._window_start >= 60.0:
            self._window_start, self._passed = now, 0
        if self._passed >= self.per_minute:
            self.dropped += 1
            return False
        self._passed += 1
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1]!r}"
        if self.dropped:
            text += f" ({self.dropped} more such line(s) left out)"
            self.dropped = 0
        record.msg, record.args = text, ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_http_log = logging.getLogger(HTTP_LOGGER)
_http_log.addFilter(OneLineBudget())


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may hold of a listener; past a head limit aiohttp answers 400."""

    cap: int  # connections held at once; one more closes the oldest
    # a connection is closed when no complete request head arrives this long after it
    # connected or after its last answer: the read deadline for silent and slowloris clients
    # and the keep-alive bound
    idle_timeout_s: float
    max_line_size: int  # the request line (aiohttp's default: 8,190)
    max_field_size: int  # one header field
    max_headers: int  # header fields (aiohttp's default: 128)


class CappedServer(web.Server):
    """aiohttp's low-level server holding at most `cap` connections.

    aiohttp has no connection limit. Its protocol reports each connection made and lost to
    its `Server`, so this keeps its own list of open connections, oldest first, and a new one
    past the cap aborts the oldest. Refusing the newcomer instead would let a flood of idle
    connections lock out the orchestrator's probe (or a physio's tap). Aborting (not closing)
    frees the descriptor at once even when the oldest is a client that stopped reading its
    answers, which a close would keep until the client read them.
    """

    def __init__(self, handler: Handler, *, cap: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._cap = cap
        self._open: dict[web.RequestHandler, asyncio.Transport] = {}  # oldest first

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._open[handler] = transport
        while len(self._open) > self._cap:
            oldest = next(iter(self._open))
            self._open.pop(oldest).abort()

    def connection_lost(self, handler: web.RequestHandler,
                        exc: BaseException | None = None) -> None:
        self._open.pop(handler, None)
        super().connection_lost(handler, exc)


async def serve(handler: Handler, host: str, port: int, limits: Limits
                ) -> tuple[web.ServerRunner, int]:
    """Start `handler` on host:port within `limits`; the runner (to clean up) and bound port."""
    # aiohttp arms its keep-alive timer when a connection is made (since 3.14.4) and after
    # each answer, and it closes a connection still waiting for a whole request head then:
    # the keep-alive bound is the read deadline as well.
    server = CappedServer(
        handler, cap=limits.cap, access_log=None, logger=_http_log,
        keepalive_timeout=limits.idle_timeout_s, lingering_time=LINGER_S,
        max_line_size=limits.max_line_size, max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
    )
    runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    # the runner's listening sockets' addresses: the bound port (port 0 = any free one)
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else port
