"""The fence around gmqtt (gateway/gmqtt_compat.py): what the simulator reaches through it.

A refusal raised as our own ConnectRefused, and `gmqtt_tasks` finding the tasks gmqtt starts
on its own, so that a caller can let them finish after a disconnect. The version check and the
gateway's link are tested in test_mqtt_wire.py, test_durability.py and test_gateway_e2e.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from gateway.gmqtt_compat import ConnectRefused, LinkClient, gmqtt_tasks, new_client
from tests.support.servers import MosquittoServer

WAIT_S = 10.0


def _client(*, protocol: int, username: str | None = None,
            password: str | None = None) -> LinkClient:
    """A clean-session publisher client, as the simulator builds one."""
    return new_client(
        f"compat-{uuid.uuid4().hex[:12]}", protocol=protocol, clean_start=True,
        session_expiry_s=0, receive_maximum=65535, will=None, username=username,
        password=password,
    )


async def _settle(before: set[asyncio.Task[object]]) -> None:
    """Wait for the gmqtt tasks started (or being cancelled) since `before` to finish."""
    ending = {t for t in gmqtt_tasks() if t not in before or t.cancelling()}
    if ending:
        await asyncio.wait(ending, timeout=WAIT_S)
    assert all(t.done() for t in ending)


async def test_gmqtt_tasks_are_gmqtt_coroutines_and_link_client_reconnects_only() -> None:
    client = _client(protocol=5)
    mine = asyncio.create_task(asyncio.sleep(WAIT_S), name="test.not-gmqtt")
    reconnect = asyncio.create_task(client.reconnect(delay=True), name="test.reconnect")
    disconnect = asyncio.create_task(client.disconnect(), name="test.gmqtt-coroutine")
    try:
        found = gmqtt_tasks()
        assert reconnect in found  # what gmqtt schedules on a lost connection
        assert disconnect in found  # a coroutine defined in gmqtt's own source
        assert mine not in found
    finally:
        mine.cancel()
        await asyncio.gather(mine, reconnect, disconnect, return_exceptions=True)


@pytest.mark.parametrize("protocol", [5, 3])
async def test_the_tasks_gmqtt_starts_for_a_connection_are_found_and_end_after_leaving(
    mosquitto: MosquittoServer, protocol: int
) -> None:
    before = gmqtt_tasks()
    client = _client(protocol=protocol)
    await asyncio.wait_for(
        client.connect_once(mosquitto.host, mosquitto.port, tls=False, keepalive_s=15,
                            protocol=protocol),
        WAIT_S,
    )
    started = gmqtt_tasks() - before
    assert started  # gmqtt keeps the connection alive from a task of its own
    await client.leave()
    await _settle(before)
    assert all(t.done() for t in started)


@pytest.mark.parametrize("protocol", [5, 3])
async def test_a_refused_login_raises_connect_refused_with_the_reason(
    make_mosquitto: Callable[..., MosquittoServer], protocol: int
) -> None:
    broker = make_mosquitto(users={"squad": "right"})
    before = gmqtt_tasks()
    client = _client(protocol=protocol, username="squad", password="wrong")
    try:
        with pytest.raises(ConnectRefused, match=r"^code \d+ \(Connection Refused: "):
            await asyncio.wait_for(
                client.connect_once(broker.host, broker.port, tls=False, keepalive_s=15,
                                    protocol=protocol),
                WAIT_S,
            )
    finally:
        await client.leave()
        await _settle(before)


async def test_connect_once_connects_like_connect_to(mosquitto: MosquittoServer) -> None:
    before = gmqtt_tasks()
    client = _client(protocol=5)
    connected: list[bool] = []
    client.watch_connection(connected.append, lambda: None)
    await asyncio.wait_for(
        client.connect_once(mosquitto.host, mosquitto.port, tls=False, keepalive_s=15,
                            protocol=5),
        WAIT_S,
    )
    assert connected == [False]  # one CONNACK, a clean session
    await client.leave()
    await _settle(before)
