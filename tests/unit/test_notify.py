"""Both notifiers are `Notifier`s (alerts/notify.py): mypy checks the calls below, and the
console one's lifecycle runs here; the dispatcher's own behaviour is in test_push.py."""

from __future__ import annotations

import asyncio
import inspect
import io

import pytest
from rich.console import Console

from alerts.console import ConsoleNotifier
from alerts.model import Alert, AlertKind, AlertState, Change, Transition
from alerts.notify import Notifier, RouteStats
from alerts.push import PushDispatcher
from alerts.routes import RouteSpec
from core.model import Severity

T0_MS = 1_795_000_000_000
UNUSED_URL = "json://127.0.0.1:9/never"  # nothing is sent to it in these tests


def raised() -> Transition:
    a = Alert(
        id="A1", team="t1", cuff="c7", athlete="a-17", limb="left_leg",
        kind=AlertKind.OVER_PRESSURE, severity=Severity.CRITICAL, state=AlertState.FIRING,
        value=312.0, threshold=300.0, unit="mmHg", message="cuff at 312 mmHg (limit 300)",
        started_at_ms=T0_MS, updated_at_ms=T0_MS,
    )
    return Transition(a, Change.RAISED, True)


def console_notifier() -> tuple[ConsoleNotifier, io.StringIO]:
    out = io.StringIO()
    return ConsoleNotifier(Console(file=out, width=200, color_system=None)), out


def dispatcher() -> PushDispatcher:
    return PushDispatcher({"t1": [RouteSpec(label="t1/0-json", url=UNUSED_URL)]})


def as_notifier(notifier: Notifier) -> Notifier:
    """Takes any Notifier: mypy rejects a call with anything that is not one."""
    return notifier


def protocol_methods() -> dict[str, bool]:
    """The Notifier's methods by name, True for the async ones."""
    return {
        name: inspect.iscoroutinefunction(member)
        for name, member in vars(Notifier).items()
        if not name.startswith("_") and callable(member)
    }


def test_the_protocol_is_submit_run_aclose_stats() -> None:
    assert protocol_methods() == {"submit": False, "run": True, "aclose": True, "stats": False}


@pytest.mark.parametrize("kind", ["console", "push"])
def test_both_notifiers_have_every_method_of_the_protocol(kind: str) -> None:
    notifier: Notifier = console_notifier()[0] if kind == "console" else dispatcher()
    for name, is_async in protocol_methods().items():
        method = getattr(notifier, name)
        assert inspect.iscoroutinefunction(method) is is_async, name


async def test_both_notifiers_are_notifiers_to_mypy_and_run_until_closed() -> None:
    console, _ = console_notifier()
    push = dispatcher()
    notifiers: list[Notifier] = [as_notifier(console), as_notifier(push)]
    tasks = [asyncio.create_task(n.run(), name=f"test.notify.{type(n).__name__}")
             for n in notifiers]
    await asyncio.sleep(0)
    for n in notifiers:
        await n.aclose()
    async with asyncio.timeout(5.0):
        await asyncio.gather(*tasks)
    assert console.stats() == {}
    assert push.stats() == {"t1/0-json": RouteStats()}  # nothing submitted: all zero


async def test_console_run_returns_at_once_and_aclose_stops_printing() -> None:
    notifier, out = console_notifier()
    async with asyncio.timeout(1.0):
        await notifier.run()  # nothing to run: no worker, no wait for aclose()
    notifier.submit(raised())
    assert len(out.getvalue().splitlines()) == 1
    await notifier.aclose()
    await notifier.aclose()  # twice is fine
    notifier.submit(raised())  # after aclose: ignored, no error
    assert len(out.getvalue().splitlines()) == 1
    assert dict(notifier.stats()) == {}
