"""Broker lock-down (ops.brokerauth): a two-team roster, its generated files, and MQTT
clients that log in as one principal each, to check the ACL on a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.handler import MQTTConnectError

from core.config import Settings, load_settings
from ops.brokerauth import BrokerFiles, write_broker_files
from tests.support.servers import MosquittoServer, find_binary

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code in a PUBACK / CONNACK for an ACL or auth denial


# Success reason codes of a QoS 1 PUBACK: 0x00, or 0x10 "no matching subscribers".
PUBLISH_ACCEPTED = {0x00, 0x10}


_PUBACK_RE = re.compile(rb"received PUBACK \(Mid: \d+, RC:(\d+)\)")

CUFF = {"limb": "left_leg"}  # a roster cuff needs its limb


def two_team_settings(root: str, **broker: Any) -> Settings:
    """Two teams: t1 with cuffs c7 and c8, t2 with cuff c9."""
    return load_settings(
        None,
        topic_root=root,
        broker={"username": "gateway", **broker},
        teams={
            "t1": {"cuffs": {"c7": CUFF, "c8": CUFF}},
            "t2": {"cuffs": {"c9": CUFF}},
        },
    )


def broker_files(settings: Settings, directory: Path) -> BrokerFiles:
    """Broker files for the roster in `directory/auth`, credentials in `directory/secret`."""
    return write_broker_files(
        settings, directory / "auth", credentials=directory / "secret" / "creds.toml"
    )


class Peer:
    """A gmqtt client for one principal that records what it receives."""

    def __init__(self, username: str | None, password: str | None, *, version: int) -> None:
        """Prepare, without connecting, a clean-session client with a unique client id."""
        self.client = gmqtt.Client(f"{username or 'anon'}-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.client.set_auth_credentials(username, password)
        self.version = version
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._subacks: asyncio.Queue[tuple[int, ...]] = asyncio.Queue()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, _c: Any, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        self.messages.put_nowait((topic, payload))
        return 0

    def _on_subscribe(self, _c: Any, _mid: int, qos: tuple[int, ...], _p: Any) -> None:
        self._subacks.put_nowait(qos)

    async def subscribe(self, topic: str) -> tuple[int, ...]:
        """Subscribe at QoS 1 and return the broker's SUBACK codes."""
        self.client.subscribe(topic, qos=1)
        return await self._subacks.get()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publish."""
        self.client.publish(topic, payload, qos=1, retain=retain)

    async def receive_until(self, topic: str) -> list[str]:
        """Topics received up to and including the first message on `topic` (a barrier)."""
        seen: list[str] = []
        while True:
            got, _payload = await self.messages.get()
            seen.append(got)
            if got == topic:
                return seen


@asynccontextmanager
async def connected(
    server: MosquittoServer,
    username: str | None,
    password: str | None,
    *,
    version: int = MQTTv50,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Peer]:
    """A connected Peer, disconnected on exit."""
    peer = Peer(username, password, version=version)
    await peer.client.connect(
        server.host, port or server.port, ssl=tls or False, version=version, keepalive=30
    )
    try:
        yield peer
    finally:
        peer.client.stop_reconnect()
        # a TLS close can race the broker's last bytes (APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
        # an SSLError, so an OSError): the test is over by then, as MqttLink.disconnect knows
        with contextlib.suppress(OSError):
            await peer.client.disconnect()


async def refused(
    server: MosquittoServer, username: str | None, password: str | None, *, version: int
) -> MQTTConnectError:
    """Connect and return the broker's refusal (fails the test if it accepts)."""
    peer = Peer(username, password, version=version)
    try:
        await peer.client.connect(server.host, server.port, version=version, keepalive=30)
    except MQTTConnectError as exc:
        return exc
    finally:
        peer.client.stop_reconnect()
        # a TLS close can race the broker's last bytes (APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
        # an SSLError, so an OSError): the test is over by then, as MqttLink.disconnect knows
        with contextlib.suppress(OSError):
            await peer.client.disconnect()
    raise AssertionError(f"{username!r} was let in")


async def publish(
    server: MosquittoServer,
    username: str,
    passwords: dict[str, str],
    topic: str,
    *,
    version: int = MQTTv50,
    retain: bool = False,
) -> int:
    """Publish once at QoS 1 with mosquitto_pub and return the PUBACK's reason code.

    Mosquitto 2.0 answers a denied publish and then drops the connection, so each publish
    gets its own short-lived client. When this returns the broker has processed the message:
    anything it allowed is already queued for subscribers ahead of later publishes. MQTT
    3.1.1 has no reason code: a PUBACK there reads 0, allowed or not.
    """
    args = ["-V", "5" if version == MQTTv50 else "mqttv311", "-d", "-q", "1",
            "-h", server.host, "-p", str(server.port), "-u", username, "-P", passwords[username],
            "-i", f"{username}-pub-{uuid.uuid4().hex[:8]}", "-t", topic, "-m", "{}"]
    proc = await asyncio.create_subprocess_exec(
        find_binary("mosquitto_pub"), *args, *(["-r"] if retain else []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    match = _PUBACK_RE.search(out)
    assert match is not None, f"no PUBACK for {username} on {topic}: {out!r} {err!r}"
    return int(match[1])
