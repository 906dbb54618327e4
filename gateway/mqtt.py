"""The gateway's MQTT edge on gmqtt: persistent session, acknowledgement on our terms.

gmqtt runs `on_message` as a task per message and, with `optimistic_acknowledgement=False`
on MQTT 5, sends the PUBACK only when that coroutine returns: the gateway returns once a
reading is durable. On MQTT 3.1.1 gmqtt always acknowledges on receipt (weaker guarantee,
documented in the README).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

log = logging.getLogger(__name__)

# Reconnect backoff: first retry soon (a broker restart takes a second or two), doubling up
# to a cap that keeps a gateway from hammering a broker that is down for long.
INITIAL_BACKOFF_S = 0.5
MAXIMUM_BACKOFF_S = 30.0
# The broker may keep this many unacknowledged QoS 1 messages in flight to us: enough to
# cover the spool's group-commit latency at full rate (we acknowledge after fsync).
RECEIVE_MAXIMUM = 65535

MessageHandler = Callable[[str, bytes, int, bool], Awaitable[int]]


class MqttError(Exception):
    """The broker could not be reached or refused us."""


def backoff_delays(initial: float = INITIAL_BACKOFF_S, cap: float = MAXIMUM_BACKOFF_S) -> Any:
    """Jittered exponential backoff ("full jitter" over a doubling ceiling)."""
    ceiling = initial
    while True:
        yield random.uniform(initial / 2, ceiling)
        ceiling = min(cap, ceiling * 2)


def make_ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """TLS client context: system CAs or `ca_file`, optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class MqttLink:
    """One gmqtt client with a persistent session, birth/will and resubscribe on connect."""

    def __init__(
        self,
        *,
        client_id: str,
        host: str,
        port: int,
        protocol: int = 5,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        clean_start: bool = False,
        session_expiry_s: int = 3600,
        keepalive_s: int = 30,
        will: tuple[str, bytes] | None = None,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        on_connected: Callable[[bool], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._version = MQTTv50 if protocol == 5 else MQTTv311
        self._tls: ssl.SSLContext | bool = tls or False
        self._keepalive = keepalive_s
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_connected = on_connected
        self._log = logger or log
        self.connected = asyncio.Event()
        self.connections = 0
        self._backoff = backoff_delays()
        props: dict[str, Any] = {}
        if protocol == 5:
            props = {
                "session_expiry_interval": session_expiry_s,
                "receive_maximum": RECEIVE_MAXIMUM,
            }
        will_msg = gmqtt.Message(will[0], will[1], qos=1, retain=True) if will else None
        self.client = gmqtt.Client(
            client_id,
            clean_session=clean_start,
            optimistic_acknowledgement=False,
            will_message=will_msg,
            logger=logging.getLogger("gmqtt"),
            **props,
        )
        if username:
            self.client.set_auth_credentials(username, password)
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message

    @property
    def protocol_version(self) -> int:
        return 5 if self._version == MQTTv50 else 3

    async def connect(self, *, retry: bool = True) -> None:
        """Connect, retrying with jittered backoff while `retry`; gmqtt reconnects after that."""
        while True:
            try:
                await self.client.connect(
                    self._host,
                    self._port,
                    ssl=self._tls,
                    keepalive=self._keepalive,
                    version=self._version,
                )
                return
            except (TimeoutError, OSError) as exc:
                if not retry:
                    raise MqttError(f"cannot reach {self._host}:{self._port}: {exc}") from exc
                delay = next(self._backoff)
                self._log.warning(
                    "broker %s:%s unreachable (%s); retrying in %.1f s",
                    self._host,
                    self._port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
            except Exception as exc:
                # gmqtt raises its own errors for refusals (bad credentials, not authorised)
                raise MqttError(f"broker {self._host}:{self._port} refused us: {exc}") from exc

    def _handle_connect(self, client: Any, flags: int, rc: int, properties: Any) -> None:
        self.connections += 1
        self._backoff = backoff_delays()
        # gmqtt's own reconnect waits reconnect_delay; we jitter it on every disconnect
        self.client.reconnect_delay = INITIAL_BACKOFF_S
        session_present = bool(flags)
        if self._subscriptions:
            subs = [gmqtt.Subscription(t, qos=1) for t in self._subscriptions]
            self.client.subscribe(subs)
        self.connected.set()
        self._log.info(
            "connected to %s:%s (MQTT %s, session %s)",
            self._host,
            self._port,
            self.protocol_version,
            "resumed" if session_present else "new",
        )
        if self._on_connected:
            self._on_connected(session_present)

    def _handle_disconnect(
        self, client: Any, packet: Any, exc: BaseException | None = None
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        self.client.reconnect_delay = next(self._backoff)
        if was:
            self._log.warning(
                "disconnected from %s:%s; reconnecting in %.1f s",
                self._host,
                self._port,
                self.client.reconnect_delay,
            )

    async def _handle_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        if self._on_message is None:
            return 0
        retain = bool(properties.get("retain", False))
        return await self._on_message(topic, payload, qos, retain)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue a publish; False if there is no connection (gmqtt resends QoS 1 on reconnect)."""
        try:
            self.client.publish(topic, payload, qos=qos, retain=retain)
            return True
        except Exception as exc:  # noqa: BLE001 - a closed transport must never break the caller
            self._log.debug("publish to %s failed: %s", topic, exc)
            return False

    async def disconnect(self) -> None:
        """Disconnect cleanly (no last will)."""
        self.client.stop_reconnect()
        if self.client.is_connected:
            await self.client.disconnect()
