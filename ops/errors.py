"""The root of the operations tools' exceptions."""

from __future__ import annotations


class OpsError(Exception):
    """An operations command could not do its job; the message says why."""
