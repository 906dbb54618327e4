"""The unit tier: nothing here may listen on a socket.

The servers' fixtures are not visible from this directory (tests/integration/conftest.py
holds them), and this guard catches the rest: a stand-in HTTP server, a receiver, an
aiohttp site. Connecting to a closed port (a "connection refused" test) is fine.
"""

from __future__ import annotations

import socket

import pytest


class ListeningInUnitTestError(AssertionError):
    """A unit test started something that listens: it belongs in tests/integration."""


@pytest.fixture(autouse=True)
def _nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any `listen()` during a unit test."""

    def listen(self: socket.socket, *_args: object) -> None:
        raise ListeningInUnitTestError(
            f"a unit test listens on {self.getsockname()}: move it to tests/integration")

    monkeypatch.setattr(socket.socket, "listen", listen)
