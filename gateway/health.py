"""`/healthz`, `/readyz` and Prometheus `/metrics` on a small aiohttp server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.decode import RejectReason

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    """Plain counters bumped on the hot path; read only when scraped or reported."""

    received: int = 0  # messages
    readings_received: int = 0
    accepted: int = 0  # readings
    rejected: int = 0  # messages
    duplicates: int = 0
    alerts_published: int = 0
    internal_errors: int = 0
    backpressure_waits: int = 0
    lag_ms_max: int = 0  # transport lag (receive − device time) of the last stats interval
    rejected_by_reason: dict[RejectReason, int] = field(
        default_factory=lambda: dict.fromkeys(RejectReason, 0)
    )


Gauges = Callable[[], dict[str, float]]
Labeled = Callable[[], Iterable[tuple[str, dict[str, str], float, str]]]


class GatewayCollector(Collector):
    """Exposes the gateway's counters and the stages' gauges in Prometheus format."""

    def __init__(self, counters: Counters, gauges: Gauges, labeled: Labeled) -> None:
        self._c = counters
        self._gauges = gauges
        self._labeled = labeled

    def collect(self) -> Iterable[Metric]:
        c = self._c
        for name, value, doc in (
            ("messages_received", c.received, "MQTT messages received"),
            ("readings_received", c.readings_received, "readings in received messages"),
            ("readings_accepted", c.accepted, "readings accepted and stored"),
            ("duplicates", c.duplicates, "QoS 1 redeliveries dropped by (cuff, seq)"),
            ("alerts_published", c.alerts_published, "alert state changes published"),
            ("internal_errors", c.internal_errors, "messages whose handling raised (a bug)"),
            ("backpressure_waits", c.backpressure_waits, "messages held while the spool was full"),
        ):
            yield CounterMetricFamily(f"cuffwatch_{name}", doc, value=value)
        rejected = CounterMetricFamily(
            "cuffwatch_messages_rejected", "messages rejected at the boundary", labels=["reason"]
        )
        for reason, n in c.rejected_by_reason.items():
            rejected.add_metric([reason.value], n)
        yield rejected
        for gauge, level in sorted(self._gauges().items()):
            yield GaugeMetricFamily(f"cuffwatch_{gauge}", gauge.replace("_", " "), value=level)
        families: dict[str, GaugeMetricFamily] = {}
        for family, labels, level, doc in self._labeled():
            fam = families.get(family)
            if fam is None:
                fam = families[family] = GaugeMetricFamily(
                    f"cuffwatch_{family}", doc, labels=sorted(labels)
                )
            fam.add_metric([labels[k] for k in sorted(labels)], level)
        yield from families.values()


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
        # aiohttp has no public accessor for the bound port (port 0 = any free one)
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
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
