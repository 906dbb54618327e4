"""The integration tier's fixtures: real servers on free ports, receivers, a test PKI.

Session servers are shared (give each test its own `topic_root` and `influx_db`); the
make_* fixtures start private ones a test may stop, kill or pause. A server that cannot
start fails the test, never skips it: under CI=true a missing binary is a red build.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import receivers
from tests.support.pki import Pki, make_pki
from tests.support.receivers import HangingServer, HttpReceiver
from tests.support.servers import (
    InfluxDB1Server,
    MosquittoServer,
    ServerProcess,
    ServerT,
    VictoriaMetricsServer,
    start_or_fail,
)

# Session servers that have been started, so a test that leaves one paused or down is caught.
_SESSION_SERVERS: list[ServerProcess] = []


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """One anonymous Mosquitto broker for the session; give each test its own `topic_root`."""
    server = start_or_fail(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto")))
    _SESSION_SERVERS.append(server)
    yield server
    server.close()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    """One InfluxDB 1.x server for the session; give each test its own database (`influx_db`)."""
    server = start_or_fail(lambda: InfluxDB1Server(tmp_path_factory.mktemp("influxdb")))
    _SESSION_SERVERS.append(server)
    yield server
    server.close()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """One VictoriaMetrics server for the session (InfluxDB v2 write API stand-in)."""
    server = start_or_fail(lambda: VictoriaMetricsServer(tmp_path_factory.mktemp("victoria")))
    _SESSION_SERVERS.append(server)
    yield server
    server.close()


@pytest.fixture
def influx_db(influxdb: InfluxDB1Server) -> Iterator[str]:
    """The name of a fresh database on the session InfluxDB, dropped after the test."""
    name = f"t_{uuid.uuid4().hex}"
    influxdb.create_database(name)
    yield name
    if influxdb.running and not influxdb.paused:
        influxdb.drop_database(name)


class _ServerFactory:
    """Starts private servers for one test (restart, kill, auth, TLS) and stops them after."""

    def __init__(self, base: Path) -> None:
        """Keep each server's files under base."""
        self._base = base
        self._servers: list[ServerProcess] = []

    def start(self, make: Callable[[Path], ServerT]) -> ServerT:
        """Build a server in a fresh subdirectory, start it and track it for teardown."""
        tmpdir = self._base / f"server{len(self._servers)}"
        server = start_or_fail(lambda: make(tmpdir))
        self._servers.append(server)
        return server

    def close(self) -> None:
        """Stop every server this factory started."""
        for server in reversed(self._servers):
            server.close()


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[Callable[..., MosquittoServer]]:
    """A function starting a private broker for this test, taking MosquittoServer's kwargs."""
    factory = _ServerFactory(tmp_path)

    def make(**kwargs: Any) -> MosquittoServer:
        """Start a MosquittoServer with these keyword arguments."""
        return factory.start(lambda tmpdir: MosquittoServer(tmpdir, **kwargs))

    yield make
    factory.close()


@pytest.fixture
def make_influxdb(tmp_path: Path) -> Iterator[Callable[[], InfluxDB1Server]]:
    """A function starting a private InfluxDB 1.x server for this test."""
    factory = _ServerFactory(tmp_path)
    yield lambda: factory.start(InfluxDB1Server)
    factory.close()


@pytest.fixture
def make_victoria(tmp_path: Path) -> Iterator[Callable[[], VictoriaMetricsServer]]:
    """A function starting a private VictoriaMetrics server for this test."""
    factory = _ServerFactory(tmp_path)
    yield lambda: factory.start(VictoriaMetricsServer)
    factory.close()


@pytest.fixture(autouse=True)
def _session_servers_intact() -> Iterator[None]:
    """Fail a test that leaves a session server paused or down, after putting it right."""
    yield
    broken: list[str] = []
    for server in _SESSION_SERVERS:
        if server.paused:
            server.resume()
            broken.append(f"{server.name} left paused")
        elif not server.running:
            server.start()
            broken.append(f"{server.name} left stopped (restarted)")
    if broken:
        pytest.fail(
            "; ".join(broken) + ": restore session servers, or use make_* fixtures to kill them",
            pytrace=False,
        )


# -- stand-ins for what the gateway pushes to, and a CA -----------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    """A local HTTP receiver (Apprise `json://`, `ntfy://`): records each request."""
    async with receivers.http_receiver() as rec:
        yield rec


@pytest.fixture
async def hanging() -> AsyncIterator[HangingServer]:
    """A server that accepts connections and requests and never answers."""
    async with receivers.hanging_server() as server:
        yield server


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate for 127.0.0.1 and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))
