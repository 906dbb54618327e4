"""`/healthz`, `/readyz` and Prometheus `/metrics` on a small aiohttp server.

Its clients are a scraper and an orchestrator's probes: a handful of connections, each sending
a small GET as soon as it connects. So the server bounds what anyone else can hold (issue #17:
~1,100 idle connections used up the 1,024 descriptors and /readyz failed): at most
MAX_CONNECTIONS at once, a deadline for each request head, small heads, no bodies
(`gateway.lowhttp`, which the ack endpoint shares).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from gateway import lowhttp

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
# Request-head limits (aiohttp's defaults are 8,190 bytes and 128 headers); past one, a 400.
# Our request lines are `GET /metrics HTTP/1.1`; a field allows for a long Authorization a
# scraper may send.
MAX_LINE_SIZE = 2048
MAX_FIELD_SIZE = 4096
MAX_HEADERS = 32

_Handler = Callable[[], Awaitable[web.Response]]


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
        limits = lowhttp.Limits(
            cap=MAX_CONNECTIONS, idle_timeout_s=self._idle_timeout_s,
            max_line_size=MAX_LINE_SIZE, max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS,
        )
        self._runner, self.port = await lowhttp.serve(self._handle, self._host, self._port, limits)
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
