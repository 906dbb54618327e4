"""The gateway's MQTT link: one client with a persistent session, reconnects of our own.

`MqttLink` owns the connection (connect with a timeout, a supervisor that reconnects with
jittered backoff, birth/will, resubscribe on CONNACK); its two sides own the traffic:
`Inbound` (gateway/mqtt_inbound.py) runs the fast handler per message and acknowledges each
once its work is fsynced, `Outbound` (gateway/mqtt_outbound.py) sends publishes, resends the
unacknowledged ones on every CONNACK and holds them in order while no packet id is free.

gmqtt is reached only through `gateway.gmqtt_compat` (which checks its version); the packets
are read and the PUBACKs encoded by `gateway.mqtt_wire` (pure functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence

from core.backoff import backoff_delays
from gateway.errors import GatewayError
from gateway.gmqtt_compat import new_client
from gateway.mqtt_inbound import (
    STAGED,
    DurableWaiter,
    FastHandler,
    FastResult,
    FlushHandler,
    Inbound,
    RequestHandler,
    Staged,
)
from gateway.mqtt_outbound import Outbound

__all__ = [
    "STAGED", "DurableWaiter", "FastHandler", "FastResult", "FlushHandler", "MqttError",
    "MqttLink", "RequestHandler", "Staged", "make_ssl_context",
]

log = logging.getLogger(__name__)

# Reconnect backoff: first retry soon (a broker restart takes a second or two), doubling up
# to a cap that keeps a gateway from hammering a broker that is down for long.
INITIAL_BACKOFF_S = 0.5
MAXIMUM_BACKOFF_S = 30.0
# The broker may keep this many unacknowledged QoS 1 messages in flight to us: enough to
# cover the spool's group-commit latency at full rate (we acknowledge after fsync).
RECEIVE_MAXIMUM = 65535


CONNECT_TIMEOUT_S = 10.0  # TCP + TLS + CONNACK; a broker slower than this is treated as down


class MqttError(GatewayError):
    """The broker could not be reached or refused us."""


class _LostError(Exception):
    """The connection closed before the broker's CONNACK."""


def make_ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """TLS client context: system CAs or `ca_file`, optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


class MqttLink:
    """One MQTT client with a persistent session, birth/will and resubscribe on connect."""

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
        on_message_fast: FastHandler | None = None,
        on_flush: FlushHandler | None = None,
        wait_durable: DurableWaiter | None = None,
        on_request: RequestHandler | None = None,
        on_connected: Callable[[bool], None] | None = None,
        logger: logging.Logger | None = None,
        retain_as_published: bool = False,
    ) -> None:
        if on_message_fast is not None and (wait_durable is None or on_flush is None):
            raise ValueError("on_message_fast needs wait_durable and on_flush")
        self._host = host
        self._port = port
        self._protocol = 5 if protocol == 5 else 3
        self._tls: ssl.SSLContext | bool = tls or False
        self._keepalive = keepalive_s
        self._subscriptions = list(subscriptions)
        # MQTT 5 only (3.1.1 has no subscription options): see LinkClient.subscribe_qos1
        self._retain_as_published = retain_as_published and self._protocol == 5
        self._on_connected = on_connected
        self._log = logger or log
        self.connected = asyncio.Event()
        self.connections = 0
        self._closing = False
        self._backoff = backoff_delays(INITIAL_BACKOFF_S, MAXIMUM_BACKOFF_S)
        self._lost = asyncio.Event()
        self.client = new_client(
            client_id, protocol=self._protocol, clean_start=clean_start,
            session_expiry_s=session_expiry_s, receive_maximum=RECEIVE_MAXIMUM, will=will,
            username=username, password=password,
        )
        # reconnects are ours (`supervise`), and so are resends (`Outbound`) and, with a
        # fast handler, QoS 1 delivery and its acknowledgement (`Inbound`)
        self.client.on_lost = self._on_lost
        self.client.watch_connection(self._handle_connect, self._handle_disconnect)
        self.outbound = Outbound(self.client, self._log)
        self.inbound: Inbound | None = None
        if on_message_fast is not None and on_flush is not None and wait_durable is not None:
            self.inbound = Inbound(
                self.client, self.connected, mqtt5=self._protocol == 5,
                on_message_fast=on_message_fast, on_flush=on_flush, wait_durable=wait_durable,
                log=self._log, on_request=on_request,
            )

    @property
    def protocol_version(self) -> int:
        """The MQTT version spoken: 5 or 3 (3.1.1)."""
        return self._protocol

    async def connect(self, *, retry: bool = True) -> None:
        """Connect, retrying with jittered backoff while `retry`; `supervise()` keeps it up."""
        while True:
            try:
                await self._attempt()
                return
            except (TimeoutError, OSError, _LostError) as exc:
                if not retry:
                    raise MqttError(f"cannot reach {self._host}:{self._port}: {exc}") from exc
                delay = next(self._backoff)
                self._log.warning("broker %s:%s unreachable (%s); retrying in %.1f s",
                                  self._host, self._port, exc or type(exc).__name__, delay)
                with contextlib.suppress(Exception):
                    await self.client.drop_connection()
                await asyncio.sleep(delay)
            except Exception as exc:
                # gmqtt raises its own errors for refusals (bad credentials, not authorised)
                raise MqttError(f"broker {self._host}:{self._port} refused us: {exc}") from exc

    async def _attempt(self) -> None:
        """One connection attempt: CONNACK, or the connection lost, or a timeout."""
        self._lost.clear()
        attempt = asyncio.ensure_future(
            self.client.connect_to(self._host, self._port, tls=self._tls,
                                   keepalive_s=self._keepalive, protocol=self._protocol)
        )
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {attempt, lost}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
        if attempt in done:
            attempt.result()  # raises what the connect raised
            return
        if lost in done:
            # e.g. a TLS listener that wants a client certificate closes after the handshake
            raise _LostError("the broker closed the connection")
        raise TimeoutError(f"no CONNACK within {CONNECT_TIMEOUT_S:g} s")

    def _on_lost(self) -> None:
        if not self._closing:
            self._lost.set()

    async def supervise(self) -> None:
        """Reconnect after every lost connection, with jittered backoff (runs forever).

        Start it once `connect()` has succeeded: it is then the only one dialling.
        """
        while True:
            await self._lost.wait()
            self._lost.clear()
            if self._closing:
                return
            if self.connected.is_set():
                continue  # a late report about a connection already replaced
            with contextlib.suppress(Exception):  # the old connection is gone or going
                await self.client.drop_connection()
            delay = next(self._backoff)
            self._log.warning(
                "disconnected from %s:%s; reconnecting in %.1f s", self._host, self._port, delay
            )
            await asyncio.sleep(delay)
            try:
                await self.connect()
            except MqttError as exc:  # refused (credentials, ACL): keep trying, slowly
                self._log.error("%s", exc)
                self._lost.set()

    def _handle_connect(self, session_present: bool) -> None:
        self.connections += 1
        if self.inbound is not None:
            self.inbound.on_connect(self.connections)
        self._backoff = backoff_delays(INITIAL_BACKOFF_S, MAXIMUM_BACKOFF_S)
        if self._subscriptions:
            self.client.subscribe_qos1(self._subscriptions,
                                       retain_as_published=self._retain_as_published)
        # before on_connected's own publishes: per topic, the broker must see them in order
        resent = self.outbound.resend_unacknowledged()
        self.connected.set()
        if resent:
            self._log.info("sent %d unacknowledged publish(es) again (session %s)",
                           resent, "resumed" if session_present else "new")
        self._log.info("connected to %s:%s (MQTT %s, session %s)", self._host, self._port,
                       self._protocol, "resumed" if session_present else "new")
        if self._on_connected:
            self._on_connected(session_present)

    def _handle_disconnect(self) -> None:
        self.connected.clear()
        self._on_lost()

    # -- the two sides ---------------------------------------------------------------------

    @property
    def pending_acks(self) -> int:
        """Messages received and not yet acknowledged (none without a fast handler)."""
        return self.inbound.pending_acks if self.inbound is not None else 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Send a publish, or hold it in order until a packet id is free; False if refused."""
        return self.outbound.publish(topic, payload, qos=qos, retain=retain)

    async def lost_within(self, seconds: float) -> bool:
        """Whether the connection drops within `seconds` (a broker's answer to a refusal)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), seconds)
        return not self.connected.is_set()

    async def disconnect(self) -> None:
        """Disconnect cleanly (no last will) and stop reconnecting."""
        self._closing = True
        self._lost.set()  # wakes the supervisor, which sees _closing and returns
        try:
            # also when not connected: marks the client inactive
            await self.client.leave()
        except OSError as exc:  # e.g. a TLS close_notify race: we are leaving anyway
            self._log.debug("disconnect from %s:%s: %s", self._host, self._port, exc)
