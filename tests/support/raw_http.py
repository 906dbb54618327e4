"""Raw-socket helpers for the tests of our HTTP listeners' limits (health, ack endpoint)."""

from __future__ import annotations

import asyncio

import pytest

WITHIN_S = 10.0  # how long to wait for what should happen: a bound for a wedged server only
HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 3.0  # a loopback connect; a server out of descriptors never accepts

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int) -> Conn:
    """A raw connection to one of our listeners on loopback."""
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), CONNECT_TIMEOUT_S)


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


async def slowloris(port: int, head: bytes) -> tuple[float, bytes]:
    """Send `head`, then one more byte every 0.1 s for ever, until the server closes the
    connection: the seconds that took and what it sent (only a deadline can close it)."""
    reader, writer = await connect(port)

    async def trickle() -> None:
        writer.write(head)
        try:
            while True:
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b"a")
        except OSError:  # the server closed it: a reset or a broken pipe
            return

    trickler = asyncio.create_task(trickle())
    try:
        return await until_closed(reader)
    finally:
        trickler.cancel()
        await asyncio.gather(trickler, return_exceptions=True)
        writer.close()
