"""Raw-socket helpers for the tests of our HTTP listeners' limits (health, ack endpoint)."""

from __future__ import annotations

import asyncio

import pytest

WITHIN_S = 10.0  # how long to wait for what should happen: a bound for a wedged server only


async def until_closed(reader: asyncio.StreamReader, within_s: float = WITHIN_S,
                       ) -> tuple[float, bytes]:
    """Read until the server closes the connection: the seconds that took and what it sent.

    Fails the test if the connection is still open after `within_s`.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    received = b""
    try:
        async with asyncio.timeout(within_s):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"server kept the connection open for {within_s:g} s "
                    f"(sent {received[:80]!r})", pytrace=False)
    return loop.time() - start, received
