"""`/healthz`, `/readyz` and Prometheus `/metrics` on a small aiohttp server."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class HealthServer:
    """Serves liveness, readiness and metrics; `port` is the bound port once started."""

    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], tuple[bool, str]],
        registry: CollectorRegistry,
    ) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
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

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self._ready()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")
