"""The simulator's publisher against a real Mosquitto: telemetry and retained statuses over
MQTT 5 and 3.1.1, one client per cuff or shared, reconnects, clean stops and refusals.

The squad model itself is tested without servers in test_squad.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from gateway.decode import decode_readings, decode_status
from sim.simulate import (
    CuffSpec,
    SimOptions,
    SimStats,
    SimulationError,
    generated_squad,
    run_simulation,
)
from tests.support.servers import MosquittoServer

WAIT_S = 20.0  # waits for the broker return as soon as their condition holds


# -- a subscriber on the broker ---------------------------------------------------------------


class Probe:
    """A gmqtt subscriber that records (topic, payload, retained) for every message."""

    def __init__(self, broker: MosquittoServer, topic_filter: str, protocol: int = 5) -> None:
        self._broker = broker
        self._filter = topic_filter
        self._version = MQTTv50 if protocol == 5 else MQTTv311
        self.client = gmqtt.Client(f"probe-{uuid.uuid4().hex[:12]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.messages: list[tuple[str, bytes, bool]] = []
        self._changed = asyncio.Event()
        self._subscribed = asyncio.Event()

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int,
                    properties: dict[str, Any]) -> int:
        self.messages.append((topic, payload, bool(properties.get("retain"))))
        self._changed.set()
        return 0

    def _on_subscribe(self, client: Any, mid: int, qos: Any, properties: Any) -> None:
        self._subscribed.set()

    async def __aenter__(self) -> Self:
        await self.client.connect(self._broker.host, self._broker.port, version=self._version)
        self.client.subscribe(self._filter, qos=1)
        async with asyncio.timeout(WAIT_S):
            await self._subscribed.wait()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.client.disconnect()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait for messages until predicate() holds."""
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def statuses(self, cuff: str) -> list[str]:
        return [p.decode() for t, p, _ in self.messages if t.endswith(f"/cuffs/{cuff}/status")]

    def readings(self, cuff: str) -> list[Any]:
        return [r for t, p, _ in self.messages if t.endswith(f"/cuffs/{cuff}/telemetry")
                for r in decode_readings(p)]


def unique_squad(n: int, teams: int = 1) -> tuple[CuffSpec, ...]:
    """Generated cuffs with ids no other test uses (they are MQTT client ids too)."""
    tag = uuid.uuid4().hex[:8]
    return tuple(replace(s, cuff=f"{s.cuff}-{tag}") for s in generated_squad(n, teams, seed=7))


@dataclass(frozen=True, slots=True)
class Run:
    protocol: Literal[5, 3]
    pool: bool
    cuffs: int
    rate: float  # readings/s over the squad
    batch: int


@pytest.mark.parametrize(
    "case", [Run(5, False, 3, 10.0, 1), Run(3, False, 3, 10.0, 1), Run(5, True, 9, 45.0, 3)],
    ids=["mqtt5-client-per-cuff", "mqtt311-client-per-cuff", "mqtt5-shared-clients-batched"],
)
async def test_a_squad_publishes_telemetry_and_status_to_mosquitto(
    mosquitto: MosquittoServer, topic_root: str, case: Run
) -> None:
    squad = unique_squad(case.cuffs, teams=2)
    batch = case.batch
    options = SimOptions(squad=squad, host=mosquitto.host, port=mosquitto.port,
                         protocol=case.protocol, topic_root=topic_root, rate=case.rate,
                         batch=batch, duration_s=2.0, pool=case.pool, seed=7)
    stats = SimStats()
    async with Probe(mosquitto, f"{topic_root}/#", case.protocol) as probe:
        await run_simulation(options, stats=stats)
        await probe.until(lambda: all(probe.statuses(s.cuff)[-1:] == ["offline"] for s in squad))
    expected = {f"{topic_root}/{s.team}/cuffs/{s.cuff}/{leaf}" for s in squad
                for leaf in ("telemetry", "status")}
    assert {topic for topic, _, _ in probe.messages} == expected
    assert stats.readings == sum(len(probe.readings(s.cuff)) for s in squad) > 0
    assert stats.messages == sum(t.endswith("/telemetry") for t, _, _ in probe.messages)
    for spec in squad:
        # a clean stop: `offline` once, by us, and no last will on top
        assert probe.statuses(spec.cuff) == ["online", "offline"]
        readings = probe.readings(spec.cuff)
        assert [r.seq for r in readings] == list(range(len(readings)))
        stamps = [r.ts_ms() for r in readings]
        assert stamps == sorted(stamps)
        assert all(r.target_mmhg == spec.target_mmhg for r in readings)
    if batch > 1:
        payloads = [json.loads(p) for t, p, _ in probe.messages if t.endswith("/telemetry")]
        assert all(isinstance(p, list) and 1 <= len(p) <= batch for p in payloads)
    # the retained status a staff app finds afterwards
    async with Probe(mosquitto, f"{topic_root}/+/cuffs/+/status") as late:
        await late.until(lambda: all(late.statuses(s.cuff) for s in squad))
    assert all(late.statuses(s.cuff) == ["offline"] for s in squad)
    assert all(retained for _, _, retained in late.messages)
    assert all(decode_status(p) is False for _, p, _ in late.messages)


class LogEvent(logging.Handler):
    """Sets an event when a log record contains a text."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_cuffs_reconnect_after_a_broker_restart_and_go_offline_on_stop(
    make_mosquitto: Callable[..., MosquittoServer], topic_root: str
) -> None:
    broker = make_mosquitto()
    squad = unique_squad(2)
    options = SimOptions(squad=squad, host=broker.host, port=broker.port,
                         topic_root=topic_root, rate=8.0)
    task = asyncio.create_task(run_simulation(options), name="test.simulation")
    try:
        async with Probe(broker, f"{topic_root}/#") as probe:
            await probe.until(lambda: all(probe.readings(s.cuff) for s in squad))
            before = {s.cuff: probe.readings(s.cuff)[-1].seq for s in squad}
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)
        async with Probe(broker, f"{topic_root}/#") as probe:
            await probe.until(lambda: all(
                any(r.seq > before[s.cuff] for r in probe.readings(s.cuff)) for s in squad
            ))
            # announced again on the new connection (the broker may have sent the wills)
            await probe.until(lambda: all(probe.statuses(s.cuff)[-1:] == ["online"]
                                          for s in squad))
            await stop(task)
            await probe.until(lambda: all(probe.statuses(s.cuff)[-1:] == ["offline"]
                                          for s in squad))
    finally:
        await stop(task)


async def test_stopping_while_the_broker_is_down_leaves_nothing_running(
    make_mosquitto: Callable[..., MosquittoServer], topic_root: str
) -> None:
    lost = LogEvent("lost the connection")
    sim_log = logging.getLogger("cuffwatch.simulate")
    sim_log.addHandler(lost)
    broker = make_mosquitto()
    squad = unique_squad(1)
    options = SimOptions(squad=squad, host=broker.host, port=broker.port, topic_root=topic_root,
                         rate=5.0)
    task = asyncio.create_task(run_simulation(options), name="test.simulation")
    try:
        async with Probe(broker, f"{topic_root}/#") as probe:
            await probe.until(lambda: bool(probe.readings(squad[0].cuff)))
        await asyncio.to_thread(broker.kill)
        async with asyncio.timeout(WAIT_S):
            await lost.seen.wait()
    finally:
        sim_log.removeHandler(lost)
        await stop(task)
    assert task.cancelled()  # the autouse fixture checks that no gmqtt reconnect is left


async def test_a_refused_login_stops_the_simulation_with_one_clear_error(
    make_mosquitto: Callable[..., MosquittoServer], topic_root: str
) -> None:
    broker = make_mosquitto(users={"squad": "right"})
    options = SimOptions(squad=unique_squad(2), host=broker.host, port=broker.port,
                         topic_root=topic_root, username="squad", password="wrong")
    with pytest.raises(SimulationError, match="refused"):
        await run_simulation(options)
