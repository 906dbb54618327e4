"""Helpers for integration tests: a gateway in-process, an MQTT test client, polling waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from servers import dump_toml

from core.config import Settings, load_settings
from gateway.app import Gateway

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


def gateway_settings(
    *, broker_url: str, topic_root: str, spool_dir: Path, teams: dict[str, Any],
    influx: dict[str, Any] | None = None, protocol: int = 5, instance: str | None = None,
    alerts: dict[str, Any] | None = None, health: dict[str, Any] | None = None,
    spool_max_bytes: int = 64 << 20, **extra: Any,
) -> Settings:
    """Settings for a test gateway: health on a free port, its own spool and client id."""
    return load_settings(
        instance=instance or f"gw-{uuid.uuid4().hex[:8]}",
        topic_root=topic_root,
        broker={"url": broker_url, "protocol": protocol, "username": "gateway"},
        influx=influx or {"api": "file", "file_dir": str(spool_dir / "lines")},
        spool={"dir": str(spool_dir), "max_bytes": spool_max_bytes},
        health=health or {"host": "127.0.0.1", "port": 0},
        alerts=alerts or {},
        teams=teams,
        **extra,
    )


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


def write_config(path: Path, settings: Settings) -> Path:
    """Write settings as a cuffwatch.toml a gateway process can load (secrets excluded)."""
    import tomllib  # noqa: F401 - the format we emit must load back with it

    data = settings.model_dump(mode="json", exclude_none=True)
    path.write_text(dump_toml(data))
    return path


class GatewayProcess:
    """`cuffwatch run -c FILE` as a real child process: start, SIGTERM, SIGKILL, RSS."""

    def __init__(self, config: Path, health_port: int, log_path: Path) -> None:
        self.config = config
        self.health_port = health_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> GatewayProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
            [sys.executable, "-m", "ops.cli", "run", "-c", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent,
        )
        log.close()

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{self.health_port}/readyz",
                    timeout=aiohttp.ClientTimeout(total=1),
                ) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await wait_for(ready, what=f"gateway ready\n{self.log_tail()}")
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    async def terminate(self, within_s: float = 30.0) -> int:
        """SIGTERM; the exit code once the process has drained and exited."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, within_s)

    def rss_bytes(self) -> int:
        import psutil

        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{self.health_port}/metrics"
        ) as resp:
            return await resp.text()

    async def metric(self, name: str) -> float:
        for line in (await self.metrics()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no metric {name}")
