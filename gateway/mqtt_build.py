"""One way to build an `MqttLink` from the broker settings (gateway, `check`, `assign`, `ack`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypedDict, Unpack

from core.config import BrokerSettings
from gateway.mqtt import (
    DurableWaiter,
    FastHandler,
    FlushHandler,
    MqttLink,
    RequestHandler,
    make_ssl_context,
)


class LinkOptions(TypedDict, total=False):
    """`MqttLink`'s keyword arguments that are the caller's to decide, not the settings'."""

    clean_start: bool
    will: tuple[str, bytes] | None
    subscriptions: Sequence[str]
    on_message_fast: FastHandler | None
    on_flush: FlushHandler | None
    on_request: RequestHandler | None
    wait_durable: DurableWaiter | None
    on_connected: Callable[[bool], None] | None
    logger: logging.Logger | None
    # default: the settings' persistent session; 0 for a client that must leave no session
    # (and no queue of messages) behind on the broker, e.g. `cuffwatch conform`'s watcher
    session_expiry_s: int
    retain_as_published: bool  # MQTT 5: see each message's RETAIN flag as published


def link_from_settings(
    broker: BrokerSettings,
    *,
    client_id: str,
    username: str | None = None,
    **extra: Unpack[LinkOptions],
) -> MqttLink:
    """A link to `broker` with its TLS, credentials, protocol, session expiry and keepalive.

    `username` replaces the settings' user (the password stays theirs). Raises OSError or
    ValueError when the TLS files or the password file cannot be read; does not connect.
    """
    extra.setdefault("session_expiry_s", broker.session_expiry_s)
    tls = None
    if broker.tls:
        tls = make_ssl_context(broker.ca_file, broker.cert_file, broker.key_file)
    return MqttLink(
        client_id=client_id,
        host=broker.host,
        port=broker.port,
        protocol=broker.protocol,
        username=username or broker.username,
        password=broker.secret_password(),
        tls=tls,
        keepalive_s=broker.keepalive_s,
        **extra,
    )
