"""The root of the gateway package's exceptions."""

from __future__ import annotations


class GatewayError(Exception):
    """The gateway could not do something: a message refused, the broker unreachable."""


class BrokerRefusedError(GatewayError):
    """The broker refused the gateway's first connection (credentials, not authorised)."""
