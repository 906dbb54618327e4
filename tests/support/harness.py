"""A gateway in-process, an MQTT test client, polling waits, and the settings they use.

A gateway as a child process (`cuffwatch run -c FILE`) is `gateway_process.GatewayProcess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from core.config import Settings, load_settings
from gateway.app import Gateway
from tests.support.servers import InfluxDB1Server, MosquittoServer

WAIT_TIMEOUT_S = 20.0  # generous: a loaded 2-core CI box; waits return as soon as true


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = WAIT_TIMEOUT_S,  # noqa: ASYNC109 - a polling helper: the deadline is its point
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll until predicate() (a value or an awaitable) is truthy; return it, or fail."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        last = value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)


class MqttProbe:
    """A test MQTT client that records every message it receives, by topic."""

    def __init__(self, host: str, port: int, *, protocol: int = 5,
                 client_id: str | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        self.host, self.port = host, port
        self.version = MQTTv50 if protocol == 5 else MQTTv311
        self.client = gmqtt.Client(client_id or f"probe-{uuid.uuid4().hex[:10]}")
        if username:
            self.client.set_auth_credentials(username, password)
        self.messages: dict[str, list[tuple[bytes, bool]]] = defaultdict(list)
        self.client.on_message = self._on_message

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int,
                    properties: dict[str, Any]) -> int:
        self.messages[topic].append((payload, bool(properties.get("retain"))))
        return 0

    async def __aenter__(self) -> MqttProbe:
        await self.client.connect(self.host, self.port, version=self.version)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.client.disconnect()

    async def subscribe(self, *filters: str) -> None:
        self.client.subscribe([gmqtt.Subscription(f, qos=1) for f in filters])
        await asyncio.sleep(0.2)  # SUBACK; retained messages follow it

    def publish(self, topic: str, payload: bytes | str | dict[str, Any] | list[Any], *,
                retain: bool = False, qos: int = 1) -> None:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def json(self, topic: str) -> list[Any]:
        return [json.loads(p) for p, _ in self.messages.get(topic, []) if p]


def influx_v1(influxdb: InfluxDB1Server, db: str, **options: Any) -> dict[str, Any]:
    """The `[influx]` settings of a gateway writing to database `db` on a test InfluxDB 1.x."""
    return {"api": "v1", "url": influxdb.url, "database": db, **options}


def gateway_settings(
    *, broker_url: str, topic_root: str, spool_dir: Path, teams: Mapping[str, Any],
    influx: dict[str, Any] | None = None, protocol: int = 5, instance: str | None = None,
    alerts: dict[str, Any] | None = None, health: dict[str, Any] | None = None,
    spool_max_bytes: int = 64 << 20, broker: Mapping[str, Any] | None = None, **extra: Any,
) -> Settings:
    """Settings for a test gateway: health on a free port, its own spool and client id.

    `broker` adds `[broker]` keys (teams, shared_group, TLS files…) to the url and protocol.
    """
    return load_settings(
        instance=instance or f"gw-{uuid.uuid4().hex[:8]}",
        topic_root=topic_root,
        broker={"url": broker_url, "protocol": protocol, "username": "gateway", **(broker or {})},
        influx=influx or {"api": "file", "file_dir": str(spool_dir / "lines")},
        spool={"dir": str(spool_dir), "max_bytes": spool_max_bytes},
        health=health or {"host": "127.0.0.1", "port": 0},
        alerts=alerts or {},
        teams=teams,
        **extra,
    )


def settings_against(mosquitto: MosquittoServer, influxdb: InfluxDB1Server, db: str,
                     topic_root: str, spool_dir: Path, *, teams: Mapping[str, Any],
                     influx_options: Mapping[str, Any] | None = None, **extra: Any) -> Settings:
    """`gateway_settings` for a gateway on `mosquitto` writing to database `db` of `influxdb`."""
    return gateway_settings(broker_url=mosquitto.url, topic_root=topic_root, spool_dir=spool_dir,
                            teams=teams, influx=influx_v1(influxdb, db, **(influx_options or {})),
                            **extra)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, **kwargs: Any) -> AsyncIterator[Gateway]:
    """Start a gateway, wait until it is subscribed, stop and drain it at the end."""
    gw = Gateway(settings, **kwargs)
    task = asyncio.create_task(gw.run(), name="test.gateway")
    try:
        await wait_for(lambda: gw.ready.is_set() or task.done(), what="gateway ready")
        if task.done():
            task.result()
        await asyncio.sleep(0.3)  # SUBACK before the test publishes
        yield gw
    finally:
        gw.stop()
        await asyncio.wait_for(task, 30)
