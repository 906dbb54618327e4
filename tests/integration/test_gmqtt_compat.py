"""The fence around gmqtt (gateway/gmqtt_compat.py): what the simulator reaches through it.

A refusal raised as our own ConnectRefused, `gmqtt_tasks` finding the tasks gmqtt starts on
its own, so that a caller can let them finish after a disconnect, and a subscription's
retain-as-published option (what `cuffwatch conform` watches with). The version check and the
gateway's link are tested in test_mqtt_wire.py, test_durability.py and test_gateway_e2e.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from core.config import BrokerSettings
from gateway.gmqtt_compat import ConnectRefused, LinkClient, gmqtt_tasks, new_client
from gateway.mqtt_build import link_from_settings
from tests.support.harness import wait_for
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


@pytest.mark.parametrize("protocol", [5, 3])
async def test_retain_as_published_shows_a_live_retained_publish_over_mqtt5_only(
    mosquitto: MosquittoServer, topic_root: str, protocol: int
) -> None:
    """`cuffwatch conform`'s watcher sees a device's RETAIN flag live (MQTT 5; 3.1.1 clears it)."""
    topic = f"{topic_root}/t1/cuffs/c1/status"
    got: list[tuple[bytes, bool]] = []

    def on_message(_topic: str, payload: bytes, _qos: int, retain: bool) -> None:
        got.append((payload, retain))

    async def durable(_position: int) -> None:
        return None

    before = gmqtt_tasks()
    watcher = link_from_settings(
        BrokerSettings(url=mosquitto.url, protocol=protocol),
        client_id=f"compat-{uuid.uuid4().hex[:12]}", clean_start=True, session_expiry_s=0,
        retain_as_published=True, subscriptions=[topic], on_message_fast=on_message,
        on_flush=lambda: None, wait_durable=durable,
    )
    publisher = _client(protocol=5)
    try:
        await watcher.connect(retry=False)  # over 3.1.1 the option is left out, not refused
        await asyncio.sleep(0.2)  # the SUBACK
        await asyncio.wait_for(
            publisher.connect_once(mosquitto.host, mosquitto.port, tls=False, keepalive_s=15,
                                   protocol=5),
            WAIT_S,
        )
        publisher.send_publish(topic, b"online", qos=1, retain=True)
        publisher.send_publish(topic, b"offline", qos=1, retain=False)
        await wait_for(lambda: len(got) == 2, WAIT_S, what="both statuses")
        assert got == [(b"online", protocol == 5), (b"offline", False)]
        publisher.send_publish(topic, b"", qos=1, retain=True)  # clear the retained status
        await asyncio.wait_for(publisher.wait_acknowledged(), WAIT_S)
    finally:
        await publisher.leave()
        await watcher.disconnect()
        await _settle(before)
