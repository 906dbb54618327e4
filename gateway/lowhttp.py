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
        handler, cap=limits.cap, access_log=None,
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
