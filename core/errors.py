"""The root of core's exceptions: bad configuration or a topic outside the contract."""

from __future__ import annotations


class CoreError(Exception):
    """Something the contract or the configuration does not allow; the message says what."""
