"""`/healthz`, `/readyz` and Prometheus `/metrics` on a small aiohttp server.

Its clients are a scraper and an orchestrator's probes: a handful of connections, each sending
a small GET as soon as it connects. So the server bounds what anyone else can hold (issue #17:
~1,100 idle connections used up the 1,024 descriptors and /readyz failed): at most
MAX_CONNECTIONS at once, a deadline for each request head, small heads, no bodies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# Connections held at once. Legitimate clients are a few (a scraper or two, the orchestrator's
# probes, someone with curl); 32 is several times that and 3 % of the default 1,024
# descriptors the gateway shares with MQTT and the spool. A connection past the cap evicts
# the oldest one instead of being refused, so a flood cannot lock the prober out.
MAX_CONNECTIONS = 32
# A connection is closed when no complete request head arrives this long after it connected
# or after its last answer: the read deadline for silent and slowloris clients (a real client
# sends its GET at once) and the keep-alive bound. A Prometheus scrape every 15 s then opens a
# new connection per scrape, which its client does by itself; scrapes closer together share one.
IDLE_TIMEOUT_S = 5.0
# After refusing a request with a body, read and drop the rest of it for at most this long
# before closing, so the client sees our 413 rather than a reset.
LINGER_S = 1.0
# Request-head limits (aiohttp's defaults are 8,190 bytes and 128 headers); past one, a 400.
# Our request lines are `GET /metrics HTTP/1.1`; a field allows for a long Authorization a
# scraper may send.
MAX_LINE_SIZE = 2048
MAX_FIELD_SIZE = 4096
MAX_HEADERS = 32
# Stopping waits this long for answers in flight (each takes milliseconds), not aiohttp's 60 s
# default, so a health client cannot hold up the gateway's shutdown.
SHUTDOWN_TIMEOUT_S = 2.0

_Handler = Callable[[], Awaitable[web.Response]]


class _CappedServer(web.Server):
    """aiohttp's low-level server holding at most `cap` connections.

    aiohttp has no connection limit. Its protocol reports each connection made and lost to
    its `Server`, so this keeps its own list of open connections, oldest first, and a new one
    past the cap aborts the oldest. Refusing the newcomer instead would let a flood of idle
    connections lock out the orchestrator's probe. Aborting (not closing) frees the descriptor
    at once even when the oldest is a client that stopped reading its answers, which a close
    would keep until the client read them.
    """

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                 *, cap: int, **kwargs: Any) -> None:
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


class HealthServer:
    """Serves liveness, readiness and metrics; `port` is the bound port once started.

    `idle_timeout_s` is IDLE_TIMEOUT_S but for tests, which need not wait that long.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], tuple[bool, str]],
        registry: CollectorRegistry,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._registry = registry
        self._idle_timeout_s = idle_timeout_s
        self._routes: dict[str, _Handler] = {
            "/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics,
        }
        self._runner: web.ServerRunner | None = None
        self.port = port

    async def start(self) -> None:
        # aiohttp arms its keep-alive timer when a connection is made (since 3.14.4) and after
        # each answer, and it closes a connection still waiting for a whole request head then:
        # the keep-alive bound is the read deadline as well.
        server = _CappedServer(
            self._handle, cap=MAX_CONNECTIONS, access_log=None,
            keepalive_timeout=self._idle_timeout_s, lingering_time=LINGER_S,
            max_line_size=MAX_LINE_SIZE, max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # the runner's listening sockets' addresses: the bound port (port 0 = any free one)
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("health on http://%s:%s (/healthz /readyz /metrics)", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """GET (or HEAD) of the three paths, without a body; anything else a 4xx."""
        route = self._routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="not found\n")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="method not allowed\n",
                                headers={"Allow": "GET, HEAD"})
        if request.body_exists:
            resp = web.Response(status=413, text="no request body expected\n")
            resp.force_close()
            return resp
        return await route()

    async def _healthz(self) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self) -> web.Response:
        ok, why = self._ready()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def _metrics(self) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")
