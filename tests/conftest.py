"""What both tiers share: property-test profiles, unique topic roots, no leaked asyncio tasks.

The servers' fixtures are the integration tier's (tests/integration/conftest.py); the unit
tier's own conftest keeps its tests from listening on any socket.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from pytest_asyncio import is_async_test

# Property tests: no per-example deadline (a loaded 2-core CI box stalls at random), and in CI
# a fixed seed so a red run reproduces; HYPOTHESIS_PROFILE=dev|ci overrides the choice.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

pytest_plugins = ["pytester"]  # integration/test_servers.py runs the leak check on a test file

_TEST_LOOP = pytest.StashKey[asyncio.AbstractEventLoop]()
_TASKS_AT_CALL = pytest.StashKey[frozenset[asyncio.Task[Any]]]()


@pytest.fixture
def topic_root() -> str:
    """A unique MQTT topic root (`t` + 32 hex digits) so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex}"


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
