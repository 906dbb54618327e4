"""Every reach into gmqtt, fenced in one module and checked against the version it was written for.

gmqtt has no hooks for what the gateway's link needs (gateway/mqtt.py, docs/architecture.md,
"Durability path"): acknowledging a QoS 1 message only once the spool has fsynced it, parsing
the PUBLISH packets of a socket read itself, resending unacknowledged publishes in order on
every CONNACK, and reconnecting under a supervisor with backoff. So this module reaches into
gmqtt's internals; each reach carries a "relies on" comment saying what it assumes. Nothing
else in the product imports gmqtt.

At import the installed gmqtt is checked against VERIFIED_GMQTT_VERSIONS; any other version is
refused with ImportError, because a silently changed internal would break the
acknowledge-after-fsync guarantee without any test of the happy path failing. To upgrade:
re-verify every "relies on" comment below against the new gmqtt's source, run
tests/integration/test_durability.py, tests/integration/test_gateway_e2e.py and
tests/integration/test_alerts_e2e.py, then add the version to VERIFIED_GMQTT_VERSIONS (and
move the pin in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.package import Package

# The gmqtt releases whose internals this module was read against (pyproject.toml pins 0.8.0).
VERIFIED_GMQTT_VERSIONS: Final = frozenset({"0.8.0"})

# gmqtt's logger: the CLI quiets it by this name (ops/cli.py, setup_logging).
_GMQTT_LOGGER: Final = "gmqtt"

# What a socket read's bytes are handed to: it returns the bytes consumed (-1: reset the
# connection) and passes the packets it does not handle itself to the sink, for gmqtt.
PacketSink = Callable[[int, bytes], None]  # first header byte, body
Reader = Callable[[bytes, PacketSink], int]


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """An MQTT 5 request's Response Topic and Correlation Data (§4.10): where to answer."""

    topic: str
    correlation: bytes | None = None


# A QoS 1 message gmqtt parsed (one with MQTT 5 properties): packet id, payload, topic,
# retain, and where the sender wants an answer (None: it asked for none).
Qos1Delivery = Callable[[int, bytes, str, int, ReplyTo | None], None]
# Any other message gmqtt delivers (QoS 0): topic, payload, QoS, retain, reply-to.
MessageDelivery = Callable[[str, bytes, int, bool, ReplyTo | None], None]


def _reply_to(properties: dict[str, Any]) -> ReplyTo | None:
    # relies on: gmqtt's parsed properties mapping each name to a list of its values
    topics = properties.get("response_topic")
    if not topics or not isinstance(topics[0], str):
        return None
    correlation = properties.get("correlation_data")
    data = correlation[0] if correlation and isinstance(correlation[0], bytes) else None
    return ReplyTo(topics[0], data)


def check_gmqtt_version(installed: str) -> None:
    """Return if `installed` is a gmqtt version this module was verified with; else ImportError."""
    if installed in VERIFIED_GMQTT_VERSIONS:
        return
    verified = ", ".join(sorted(VERIFIED_GMQTT_VERSIONS))
    raise ImportError(
        f"gmqtt {installed} is installed, but gateway/gmqtt_compat.py was verified against "
        f"gmqtt {verified} only. The gateway acknowledges messages after fsync by reaching into "
        "gmqtt's private internals, which an upgrade can change silently. Re-verify every "
        "'relies on' comment in gateway/gmqtt_compat.py against the new gmqtt, run "
        "tests/integration/test_durability.py, tests/integration/test_gateway_e2e.py and "
        "tests/integration/test_alerts_e2e.py, then "
        "add the version to VERIFIED_GMQTT_VERSIONS; or install the pinned gmqtt==0.8.0."
    )


def _installed_gmqtt_version() -> str:
    """The installed gmqtt distribution's version; ImportError if it has no metadata."""
    try:
        return importlib.metadata.version("gmqtt")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ImportError("gmqtt is importable but not installed as a distribution: "
                          "cannot check its version (install gmqtt==0.8.0)") from exc


check_gmqtt_version(_installed_gmqtt_version())


class NoPacketId(Exception):
    """No packet id is free: as many QoS 1 publishes as the broker allows await its PUBACK."""


class ConnectRefused(Exception):
    """The broker refused the CONNECT (a CONNACK with a failure code: credentials, ACL, ...)."""


async def _resend_elsewhere() -> None:
    """gmqtt's resend on a resumed session: the link resends on every CONNACK, in order."""


def _keep_unacknowledged() -> None:
    """gmqtt's drop of unacknowledged publishes on a new session: they are kept, resent."""


class LinkClient(gmqtt.Client):  # type: ignore[misc]  # gmqtt is untyped
    """gmqtt's client with its reconnects handed to us, and typed access to what the link uses.

    gmqtt schedules `reconnect()` as an unowned task on every lost connection and keepalive
    failure; such a task can outlive a stop, dial again after it, and when cancelled at exit
    it logs a CancelledError traceback. Here it only reports the loss (`on_lost`).
    """

    on_lost: Callable[[], None] | None = None

    async def reconnect(self, delay: bool = False) -> None:
        """Report the lost connection; the link's supervisor reconnects (with backoff)."""
        # relies on: gmqtt calls Client.reconnect (via the handler's reconnect_callback) on
        # every lost connection and keepalive failure, and nothing else dials again
        if self.on_lost is not None:
            self.on_lost()

    # -- connecting ------------------------------------------------------------------------

    async def connect_to(
        self, host: str, port: int, *, tls: ssl.SSLContext | bool, keepalive_s: int,
        protocol: int,
    ) -> None:
        """Connect and wait for the CONNACK (MQTT 5 if `protocol` is 5, else 3.1.1)."""
        version = MQTTv50 if protocol == 5 else MQTTv311
        await self.connect(host, port, ssl=tls, keepalive=keepalive_s, version=version)

    async def connect_once(
        self, host: str, port: int, *, tls: ssl.SSLContext | bool, keepalive_s: int,
        protocol: int,
    ) -> None:
        """As `connect_to`, but a refusal by the broker raises ConnectRefused (its reason)."""
        try:
            await self.connect_to(host, port, tls=tls, keepalive_s=keepalive_s, protocol=protocol)
        except gmqtt.MQTTConnectError as exc:
            # relies on: Client.connect raising MQTTConnectError(code) for a CONNACK with a
            # failure code, its str() "code N (reason)"
            raise ConnectRefused(str(exc)) from exc

    async def drop_connection(self) -> None:
        """Close the current connection, if any, and stay active (the supervisor dials again)."""
        # relies on: Client._disconnect closes the transport without clearing _is_active
        await self._disconnect()

    async def leave(self) -> None:
        """Disconnect cleanly (DISCONNECT: no last will) and stop being active."""
        await self.disconnect()

    def watch_connection(
        self, connected: Callable[[bool], None], disconnected: Callable[[], None]
    ) -> None:
        """Call `connected(session_present)` on each CONNACK, `disconnected()` on each loss."""

        def on_connect(_client: Any, flags: int, _rc: int, _properties: Any) -> None:
            connected(bool(flags))  # gmqtt passes CONNACK's session-present flag as `flags`

        def on_disconnect(*_why: Any) -> None:  # (client, packet or error[, exception])
            disconnected()

        self.on_connect = on_connect
        self.on_disconnect = on_disconnect

    def subscribe_qos1(self, topics: Sequence[str], *, retain_as_published: bool = False) -> None:
        """Subscribe to `topics` at QoS 1, in one SUBSCRIBE.

        `retain_as_published` (MQTT 5 only: on 3.1.1 the option bits must be 0) asks the broker
        to pass on each publisher's RETAIN flag, so that a watcher sees whether a live message
        was published retained (`cuffwatch conform`).
        """
        # relies on: Subscription's retain_as_published going into the options byte (§3.8.3.1)
        self.subscribe([gmqtt.Subscription(topic, qos=1, retain_as_published=retain_as_published)
                        for topic in topics])

    # -- our publishes -----------------------------------------------------------------------

    def send_publish(
        self, topic: str, payload: bytes, *, qos: int, retain: bool,
        reply: ReplyTo | None = None, response_topic: str | None = None,
    ) -> None:
        """Publish; a QoS 1 one is stored until its PUBACK. NoPacketId if no id is free.

        MQTT 5 only: `reply` answers a request (its Correlation Data goes back with it);
        `response_topic` makes this publish a request, answered there.
        """
        props: dict[str, Any] = {}
        if reply is not None and reply.correlation is not None:
            props["correlation_data"] = reply.correlation
        if response_topic is not None:
            props["response_topic"] = response_topic
        try:
            # relies on: Client.publish passing extra keywords to Message as MQTT 5 properties
            self.publish(topic, payload, qos=qos, retain=retain, **props)
        except OverflowError as exc:
            # relies on: IdGenerator raising OverflowError when every packet id its maximum
            # (the broker's Receive Maximum, applied on CONNACK) allows is in use
            raise NoPacketId(f"no packet id free for {topic}") from exc

    def unacknowledged(self) -> list[tuple[int, bytes]]:
        """Our QoS 1 publishes awaiting a PUBACK: (packet id, encoded PUBLISH), oldest first."""
        # relies on: Client._persistent_storage (PersistentStorage.get_all: (mid, packet) pairs
        # in send order, a packet removed when its PUBACK is handled)
        return list(self._persistent_storage.get_all())

    async def wait_acknowledged(self) -> None:
        """Return once no publish of ours awaits a PUBACK."""
        # relies on: Client._persistent_storage.wait_empty() resolving when the last is removed
        await self._persistent_storage.wait_empty()

    def send_raw(self, data: bytes) -> None:
        """Write encoded packets to the current connection as they are (one socket write)."""
        # relies on: Client._connection being the live MQTTConnection, whose send_package
        # writes bytes to the transport unchanged
        self._connection.send_package(data)

    def send_puback(self, mid: int) -> None:
        """Acknowledge the broker's QoS 1 publish `mid` (success)."""
        # relies on: MqttPackageHandler._send_puback(mid) encoding and sending a PUBACK
        self._package_handler._send_puback(mid)

    # -- taking over gmqtt's QoS 1 handling ----------------------------------------------------

    def watch_pubacks(self, on_puback: Callable[[bytes], None]) -> None:
        """After gmqtt handles each PUBACK (id freed, publish forgotten), call `on_puback(body)`.

        Call it before connecting: gmqtt caches its handler on the first PUBACK.
        """
        # relies on: MqttPackageHandler dispatching PUBACK to _handle_puback_packet(cmd, body),
        # looked up on the instance by name when the first one arrives (_handler_cache)
        handler = self._package_handler
        plain = handler._handle_puback_packet

        def puback(cmd: int, body: bytes) -> None:
            plain(cmd, body)
            on_puback(body)

        handler._handle_puback_packet = puback

    def keep_unacknowledged(self) -> None:
        """Stop gmqtt from resending (after on_connect) or dropping our unacknowledged publishes.

        gmqtt resends them only if the broker kept the session, and after on_connect, so a stale
        retained state could land last; on a new session it drops them, and an alert transition
        would never reach a staff app. The link resends them itself on every CONNACK; their
        packet ids stay reserved in gmqtt's id generator until acknowledged.
        """
        # relies on: the handler calling _resend_qos_callback() (session present) or
        # _clear_qos_callback() (new session) on CONNACK, before on_connect
        handler = self._package_handler
        handler._resend_qos_callback = _resend_elsewhere
        handler._clear_qos_callback = _keep_unacknowledged

    def deliver_messages_to(self, qos0: MessageDelivery, qos1: Qos1Delivery) -> None:
        """Route the messages gmqtt parses: QoS 1 ones to `qos1` (no ack sent), others to `qos0`."""
        # relies on: MqttPackageHandler._handle_publish_packet calling
        # _handle_qos_1_publish_packet(mid, payload, topic, properties) for every QoS 1 PUBLISH,
        # which is what sends (or schedules) gmqtt's own PUBACK
        self._package_handler._handle_qos_1_publish_packet = (
            lambda mid, payload, topic, properties: qos1(
                mid, payload, topic, properties.get("retain", 0), _reply_to(properties)
            )
        )

        def on_message(
            _client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
        ) -> None:
            qos0(topic, payload, qos, bool(properties.get("retain", False)),
                 _reply_to(properties))

        self.on_message = on_message

    def install_reader(self, read: Reader) -> None:
        """Give the current connection's socket reads to `read`; what it passes on goes to gmqtt.

        Call it on each CONNACK: every connection has a reader of its own. Reads of a connection
        that has been superseded go to gmqtt's own reader (which drops their packets).
        """
        conn = self._connection  # relies on: Client._connection, the connection just made
        protocol = conn._protocol  # relies on: MQTTConnection._protocol, its MQTTProtocol
        handler = self._package_handler
        # relies on: MQTTProtocol._read_loop calling self._read_packet(buffer) with everything
        # unparsed so far, keeping the bytes past the count returned, resetting on -1
        plain_read = type(protocol)._read_packet.__get__(protocol)
        put_package = conn.put_package

        def to_gmqtt(cmd: int, body: bytes) -> None:
            # relies on: gmqtt.mqtt.package.Package(cmd, data), what put_package dispatches
            put_package(Package(cmd, body))

        def read_packets(data: bytes) -> int:
            # relies on: MqttPackageHandler.current_connection naming the live connection
            if handler.current_connection is not conn:
                return int(plain_read(data))  # superseded: gmqtt drops its packets
            # relies on: MQTTConnection._keep_connection closing a connection whose
            # _last_data_in is older than twice the keepalive (put_package updates it too)
            conn._last_data_in = time.monotonic()
            return read(data, to_gmqtt)

        protocol._read_packet = read_packets


def new_client(
    client_id: str,
    *,
    protocol: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int,
    will: tuple[str, bytes] | None,
    username: str | None,
    password: str | None,
) -> LinkClient:
    """A client that does not acknowledge on receipt; `will` is (topic, payload), QoS 1, retained.

    MQTT 5 only: the session expiry and the Receive Maximum we grant the broker.
    """
    props: dict[str, Any] = {}
    if protocol == 5:
        props = {"session_expiry_interval": session_expiry_s, "receive_maximum": receive_maximum}
    will_message = gmqtt.Message(will[0], will[1], qos=1, retain=True) if will else None
    client = LinkClient(
        client_id,
        clean_session=clean_start,
        optimistic_acknowledgement=False,
        will_message=will_message,
        logger=logging.getLogger(_GMQTT_LOGGER),
        **props,
    )
    if username:
        client.set_auth_credentials(username, password)
    return client


def gmqtt_tasks() -> set[asyncio.Task[Any]]:
    """The running loop's tasks that run gmqtt's own coroutines or a LinkClient's `reconnect`.

    gmqtt starts tasks nobody owns (its reconnects, its connection's keepalive and close); a
    caller takes this before connecting and waits after its disconnects for the tasks that are
    new (or being cancelled) to finish, so that none outlives it.
    """
    found = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is None:
            continue
        # relies on: gmqtt's coroutines being defined in the modules of its `gmqtt` package
        # directory, and gmqtt scheduling Client.reconnect (ours) as a task of its own
        if f"{os.sep}gmqtt{os.sep}" in code.co_filename or code is LinkClient.reconnect.__code__:
            found.add(task)
    return found
