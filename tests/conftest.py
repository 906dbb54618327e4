"""Shared fixtures: real servers on free ports, unique names per test, no leaked asyncio tasks."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from pytest_asyncio import is_async_test
from servers import (
    InfluxDB1Server,
    MissingBinaryError,
    MosquittoServer,
    ServerError,
    ServerProcess,
    VictoriaMetricsServer,
)

# Property tests: no per-example deadline (a loaded 2-core CI box stalls at random), and in CI
# a fixed seed so a red run reproduces; HYPOTHESIS_PROFILE=dev|ci overrides the choice.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

pytest_plugins = ["pytester"]  # test_servers.py runs the leak check on a throwaway test file

ServerT = TypeVar("ServerT", bound=ServerProcess)

# Session servers that have been started, so a test that leaves one paused or down is caught.
_SESSION_SERVERS: list[ServerProcess] = []

_TEST_LOOP = pytest.StashKey[asyncio.AbstractEventLoop]()
_TASKS_AT_CALL = pytest.StashKey[frozenset[asyncio.Task[Any]]]()


def _started(make: Callable[[], ServerT]) -> ServerT:
    """Build and start a server, turning a missing binary or failed start into a test failure."""
    try:
        server = make()
        return server.start()
    except MissingBinaryError as error:
        failure = str(error)
    except ServerError as error:
        failure = f"could not start a test server: {error}"
    pytest.fail(failure, pytrace=False)  # outside `except`: no chained traceback noise


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """One anonymous Mosquitto broker for the session; give each test its own `topic_root`."""
    server = _started(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto")))
    _SESSION_SERVERS.append(server)
    yield server
    server.close()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    """One InfluxDB 1.x server for the session; give each test its own database (`influx_db`)."""
    server = _started(lambda: InfluxDB1Server(tmp_path_factory.mktemp("influxdb")))
    _SESSION_SERVERS.append(server)
    yield server
    server.close()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """One VictoriaMetrics server for the session (InfluxDB v2 write API stand-in)."""
    server = _started(lambda: VictoriaMetricsServer(tmp_path_factory.mktemp("victoria")))
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


@pytest.fixture
def topic_root() -> str:
    """A unique MQTT topic root (`t` + 32 hex digits) so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex}"


class _ServerFactory:
    """Starts private servers for one test (restart, kill, auth, TLS) and stops them after."""

    def __init__(self, base: Path) -> None:
        """Keep each server's files under base."""
        self._base = base
        self._servers: list[ServerProcess] = []

    def start(self, make: Callable[[Path], ServerT]) -> ServerT:
        """Build a server in a fresh subdirectory, start it and track it for teardown."""
        tmpdir = self._base / f"server{len(self._servers)}"
        server = _started(lambda: make(tmpdir))
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


def _loop_scope(item: pytest.Item) -> str:
    """The scope of the event loop pytest-asyncio runs this async test in."""
    marker = item.get_closest_marker("asyncio")
    scope = marker.kwargs.get("loop_scope") if marker is not None else None
    return str(scope or item.config.getini("asyncio_default_test_loop_scope") or "function")


def _describe(task: asyncio.Task[Any]) -> str:
    """A task's name and coroutine, for the leak report."""
    coro = task.get_coro()
    return f"{task.get_name()} ({getattr(coro, '__qualname__', coro)!r})"


async def _cancel_all(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel tasks and wait until they have finished."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(autouse=True)
def _no_lingering_tasks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test that leaves tasks running after it and its fixtures are done."""
    item = request.node
    if not is_async_test(item):
        yield
        return
    scope = _loop_scope(item)
    # Requesting the runner here means this teardown runs before the runner closes its loop
    # and after the test's async fixtures (set up after this autouse one) are torn down.
    runner: asyncio.Runner = request.getfixturevalue(f"_{scope}_scoped_runner")
    loop = runner.get_loop()
    item.stash[_TEST_LOOP] = loop
    before: frozenset[asyncio.Task[Any]] = frozenset(asyncio.all_tasks(loop))
    yield
    if scope != "function":
        # A shared loop also carries tasks of wider-scoped fixtures set up for this test.
        at_call = item.stash.get(_TASKS_AT_CALL, before)
        before |= at_call
    leaked = {task for task in asyncio.all_tasks(loop) if task not in before}
    if leaked:
        runner.run(_cancel_all(leaked))
        names = ", ".join(sorted(_describe(task) for task in leaked))
        pytest.fail(f"test left {len(leaked)} asyncio task(s) running: {names}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Note the tasks that exist when an async test body starts (see _no_lingering_tasks)."""
    loop = item.stash.get(_TEST_LOOP, None)
    if loop is not None:
        item.stash[_TASKS_AT_CALL] = frozenset(asyncio.all_tasks(loop))
    return (yield)
