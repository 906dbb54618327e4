"""The health server's connection limits (issue #17 item 3: idle connections took health down).

Real sockets against a real server: a `HealthServer` in-process on a free port, with a short
idle timeout, for the deadlines, the head limits and the cap; and a `cuffwatch run` child
process under a lowered descriptor limit for the issue's failure itself (descriptors are a
process's, so that one needs a process of its own). Waits are generous (a loaded 2-core box
runs late); no assertion needs something to happen quickly, only eventually or not early.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from prometheus_client import CollectorRegistry, Gauge

from gateway.health import (
    MAX_CONNECTIONS,
    MAX_FIELD_SIZE,
    MAX_HEADERS,
    MAX_LINE_SIZE,
    HealthServer,
)
from gateway.lowhttp import HTTP_LOG_PER_MINUTE, HTTP_LOGGER, OneLineBudget
from tests.support.gateway_process import GatewayProcess, http_get
from tests.support.harness import gateway_settings, wait_for
from tests.support.raw_http import CONNECT_TIMEOUT_S, HOST, Conn, connect, slowloris, until_closed
from tests.support.roster import prescribed, roster
from tests.support.servers import MosquittoServer

IDLE_S = 1.0  # the in-process server's idle timeout (IDLE_TIMEOUT_S, 5 s, in production)
WITHIN_S = 10.0  # how long to wait for what should happen: a bound for a wedged server only
FD_LIMIT = 256  # the child's RLIMIT_NOFILE: the issue's ~1,100 idle vs 1,024, scaled down
IDLE_CONNECTIONS = 300  # more than FD_LIMIT, so the old server runs out of descriptors
READYZ_TIMEOUT_S = 10.0  # /readyz of a gateway under the flood (the old one never answers)
FD_SLACK = 8  # descriptors the gateway may open meanwhile besides health connections
TEAMS = roster({"t1": {"c7": "a-17"}}, athletes={"t1": prescribed("a-17")})
# what Prometheus sends with each scrape
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
              "text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.53.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}

StartHealth = Callable[..., Awaitable[HealthServer]]


@pytest.fixture
async def start_health() -> AsyncIterator[StartHealth]:
    """Start HealthServers on free loopback ports (ready, one metric); stopped at the end."""
    started: list[HealthServer] = []

    async def start(idle_timeout_s: float = IDLE_S,
                    registry: CollectorRegistry | None = None) -> HealthServer:
        if registry is None:
            registry = CollectorRegistry()
            Gauge("cuffwatch_test_up", "a sample for /metrics", registry=registry).set(1)
        server = HealthServer(HOST, 0, lambda: (True, "ok"), registry,
                              idle_timeout_s=idle_timeout_s)
        await server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


@pytest.fixture
async def health(start_health: StartHealth) -> HealthServer:
    return await start_health()


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


def held_by_server(port: int) -> list[int]:
    """The client ports of the connections this process's server on `port` holds open.

    A server-side socket is one whose local port is the server's; its descriptor exists
    until the server closes it, whatever the client does.
    """
    return sorted(c.raddr.port for c in psutil.Process().net_connections(kind="tcp")
                  if c.laddr and c.laddr.port == port and c.raddr)


async def read_status(reader: asyncio.StreamReader) -> int:
    """The status code of the next answer on a raw connection."""
    async with asyncio.timeout(WITHIN_S):
        line = await reader.readline()
    assert line.startswith(b"HTTP/1."), f"no answer, got {line!r}"
    return int(line.split()[1])


# -- a connection that never sends a whole request head is closed --------------------------------


async def test_a_silent_connection_is_closed_at_the_idle_deadline(health: HealthServer) -> None:
    reader, writer = await connect(health.port)
    try:
        took, sent = await until_closed(reader)
    finally:
        writer.close()
    assert sent == b""
    assert took >= IDLE_S * 0.5  # the deadline, not an eager close


async def test_a_slowloris_trickling_a_header_is_closed_at_the_deadline(
    health: HealthServer,
) -> None:
    """A byte every 0.1 s does not move the deadline: the whole head is due IDLE_S after
    connecting (the trickle goes on for ever, so only the deadline can close it)."""
    took, sent = await slowloris(health.port,
                                 b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert sent == b""
    assert took >= IDLE_S * 0.5


# -- oversized requests: a 4xx, then the connection is closed -------------------------------------

HEAD_END = b"Host: 127.0.0.1\r\n\r\n"
OVERSIZED = {
    "request line": b"GET /readyz?" + b"a" * (MAX_LINE_SIZE + 100) + b" HTTP/1.1\r\n" + HEAD_END,
    "header field": b"GET /readyz HTTP/1.1\r\nX-Big: " + b"a" * (MAX_FIELD_SIZE + 100)
                    + b"\r\n" + HEAD_END,
    "header count": b"GET /readyz HTTP/1.1\r\n"
                    + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 8)) + HEAD_END,
    "body": b"GET /readyz HTTP/1.1\r\nContent-Length: 1048576\r\n" + HEAD_END + b"a" * 1048576,
}


@pytest.mark.parametrize("what", list(OVERSIZED))
async def test_an_oversized_request_gets_a_4xx_and_is_closed(
    health: HealthServer, what: str,
) -> None:
    reader, writer = await connect(health.port)
    try:
        writer.write(OVERSIZED[what])  # not drained: the server may answer before reading it all
        status = await read_status(reader)
        assert 400 <= status < 500, status
        await until_closed(reader)
    finally:
        writer.close()


async def test_a_flood_of_malformed_requests_is_logged_in_a_few_one_line_records(
    health: HealthServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiohttp logs each malformed request at ERROR with a traceback: any client could fill
    # the gateway's log. At most HTTP_LOG_PER_MINUTE lines a minute, one line each.
    # (a fresh minute's budget: earlier tests in this process may have spent the shared one)
    monkeypatch.setattr(logging.getLogger(HTTP_LOGGER), "filters", [OneLineBudget()])
    caplog.set_level(logging.DEBUG, logger=HTTP_LOGGER)
    for _ in range(3 * HTTP_LOG_PER_MINUTE):
        reader, writer = await connect(health.port)
        try:
            writer.write(OVERSIZED["header field"])
            assert 400 <= await read_status(reader) < 500
            await until_closed(reader)
        finally:
            writer.close()
    lines = [r for r in caplog.records if r.name == HTTP_LOGGER]
    assert 1 <= len(lines) <= HTTP_LOG_PER_MINUTE, [r.getMessage() for r in lines]
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in lines)
    assert all("\n" not in r.getMessage() for r in lines)


# -- what a scraper and an orchestrator do still works ------------------------------------------


async def test_a_scraper_keeps_its_connection_until_idle_then_reconnects(
    start_health: StartHealth,
) -> None:
    """Keep-alive as Prometheus does it: scrapes within the idle timeout of each other share
    one connection (for longer in all than one timeout); after a pause the server has closed
    it, and the next scrape opens a new one."""
    idle_s, gap_s, gaps = 2.0, 0.25, 10  # 2.5 s in all; each gap 1.75 s short of the timeout
    health = await start_health(idle_timeout_s=idle_s)
    url = f"http://{HOST}:{health.port}/metrics"
    opened: list[int] = []  # one entry per connection the client opened

    async def on_create(*_: object) -> None:
        opened.append(1)

    async def scrape(http: aiohttp.ClientSession) -> None:
        async with http.get(url, headers=PROMETHEUS_HEADERS) as resp:
            assert resp.status == 200
            assert b"cuffwatch_test_up 1.0" in await resp.read()

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(on_create)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     trace_configs=[tracing]) as http:
        await scrape(http)
        for _ in range(gaps):
            await asyncio.sleep(gap_s)
            await scrape(http)
        assert len(opened) == 1, "keep-alive connection not reused"
        await wait_for(lambda: not held_by_server(health.port), WITHIN_S,
                       what="the server to close the idle keep-alive connection")
        await asyncio.sleep(0.2)  # the client's side sees the close
        await scrape(http)
        assert len(opened) == 2


async def test_a_probe_without_keep_alive_gets_its_answer(health: HealthServer) -> None:
    """The container's HEALTHCHECK: urllib, one request per connection."""
    status, body = await asyncio.to_thread(http_get, f"http://{HOST}:{health.port}/readyz")
    assert (status, body) == (200, b"ok\n")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/healthz", 200), ("GET", "/readyz", 200), ("GET", "/metrics", 200),
    ("GET", "/readyz?verbose=1", 200), ("HEAD", "/metrics", 200), ("GET", "/", 404),
    ("GET", "/metrics/x", 404), ("POST", "/readyz", 405), ("DELETE", "/metrics", 405),
])
async def test_only_the_three_get_paths_answer(
    health: HealthServer, method: str, path: str, status: int,
) -> None:
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"http://{HOST}:{health.port}{path}") as resp:
        assert resp.status == status
        if status == 405:
            assert {m.strip() for m in resp.headers["Allow"].split(",")} == {"GET", "HEAD"}


async def test_a_head_answer_has_no_body(health: HealthServer) -> None:
    """On the wire (a client library would hide a stray body): the head, then nothing."""
    reader, writer = await connect(health.port)
    try:
        writer.write(b"HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        _, sent = await until_closed(reader)
    finally:
        writer.close()
    head, _, rest = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), sent
    assert rest == b""


# -- the cap: the oldest connection makes way, so health never runs out ---------------------------


async def test_past_the_cap_the_oldest_connections_are_closed(
    start_health: StartHealth,
) -> None:
    """No idle timeout within the test, so only the cap closes anything."""
    extra = 8
    health = await start_health(idle_timeout_s=600)
    conns: list[Conn] = []
    try:
        for _ in range(MAX_CONNECTIONS + extra):  # one by one: the server accepts in this order
            conns.append(await connect(health.port))
        for reader, _ in conns[:extra]:
            _, sent = await until_closed(reader)
            assert sent == b""
        # the first `extra` are gone, so every later one was accepted: the cap holds the rest
        newest = sorted(w.get_extra_info("sockname")[1] for _, w in conns[extra:])
        assert held_by_server(health.port) == newest
        status, body = await asyncio.to_thread(http_get, f"http://{HOST}:{health.port}/readyz")
        assert (status, body) == (200, b"ok\n")
        assert len(held_by_server(health.port)) <= MAX_CONNECTIONS
    finally:
        close_all(conns)


async def test_the_cap_frees_a_client_that_never_reads_its_answers(
    start_health: StartHealth,
) -> None:
    """A client pipelining scrapes without reading the answers holds the server mid-answer
    (no idle deadline applies); the cap frees its descriptor all the same."""
    registry = CollectorRegistry()
    big = Gauge("cuffwatch_test_big", "a large /metrics", ["n"], registry=registry)
    for n in range(5000):  # ~250 kB an answer
        big.labels(n=str(n)).set(n)
    health = await start_health(idle_timeout_s=600, registry=registry)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up at once
    stalled.setblocking(False)
    conns: list[Conn] = []
    try:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(stalled, (HOST, health.port)), CONNECT_TIMEOUT_S)
        await loop.sock_sendall(stalled, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 20)
        stalled_port = stalled.getsockname()[1]
        await wait_for(lambda: stalled_port in held_by_server(health.port), WITHIN_S,
                       what="the server to accept the stalled client")
        await asyncio.sleep(0.5)  # the server writes until the client's window is shut
        for _ in range(MAX_CONNECTIONS):
            conns.append(await connect(health.port))
        await wait_for(lambda: stalled_port not in held_by_server(health.port), WITHIN_S,
                       what="the server to let go of the client that never reads")
        assert len(held_by_server(health.port)) <= MAX_CONNECTIONS
    finally:
        stalled.close()
        close_all(conns)


async def test_readyz_answers_with_more_idle_connections_than_descriptors(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    """The issue itself: a gateway process with fewer descriptors than idle connections."""
    settings = gateway_settings(broker_url=mosquitto.url, topic_root=topic_root,
                                spool_dir=tmp_path / "spool", teams=TEAMS)
    gw = GatewayProcess.for_settings(settings, tmp_path).start()
    conns: list[Conn] = []
    try:
        child = psutil.Process(gw.pid)
        child.rlimit(psutil.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        await asyncio.to_thread(gw.wait_ready)
        baseline = child.num_fds()
        opened = await asyncio.gather(*(connect(gw.health_port) for _ in range(IDLE_CONNECTIONS)),
                                      return_exceptions=True)
        conns = [c for c in opened if not isinstance(c, BaseException)]
        try:
            status, body = await asyncio.to_thread(http_get, gw.url("/readyz"), READYZ_TIMEOUT_S)
        except OSError as exc:
            pytest.fail(f"/readyz with {len(conns)} idle connections open: {exc!r}; "
                        f"{gw.log_path}:\n{gw.log_tail()}", pytrace=False)
        held = child.num_fds() - baseline
    finally:
        close_all(conns)
        gw.stop()
    assert status == 200, body
    assert held <= MAX_CONNECTIONS + FD_SLACK, f"{held} descriptors more than when it was ready"
    log = gw.log_path.read_text()
    assert "Traceback" not in log, log
    assert "out of system resource" not in log, log
