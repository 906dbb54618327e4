"""Push delivery (SPEC §3 push routes) against real local receivers: HTTP (json://, ntfy://),
SMTP (mailto://), a server that never answers and a closed port.

Rendering and routing without a receiver: tests/unit/test_push.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from alerts.model import AlertKind, AlertState, Change, Transition
from alerts.push import PushDispatcher
from core.model import Severity
from tests.support.alert_samples import NAMES, T0_MS, alert, raised, resolved, spec
from tests.support.push_rig import eventually, running
from tests.support.receivers import HangingServer, HttpReceiver, smtp_server

# Retries fast enough for a test, same code path as production.
FAST: dict[str, Any] = {
    "attempt_timeout_s": 2.0,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "max_attempts": 3,
}


# -- receivers (fixtures: tests/integration/conftest.py) ------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here now: connection refused




async def test_full_queue_drops_oldest_non_critical_first(receiver: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", receiver.url("/q"))]}, queue_size=3, **FAST)
    d.submit(raised(alert("W1", athlete="w1", severity=Severity.WARNING)))
    d.submit(raised(alert("C1", athlete="c1")))
    d.submit(raised(alert("W2", athlete="w2", severity=Severity.WARNING)))
    d.submit(raised(alert("C2", athlete="c2")))  # full: W1 goes
    d.submit(raised(alert("C3", athlete="c3")))  # full: W2 goes
    d.submit(raised(alert("C4", athlete="c4")))  # only criticals left: the oldest, C1, goes
    assert d.stats()["t1/0-json"].dropped_full == 3
    async with running(d):
        await eventually(lambda: len(receiver.at("/q")) == 3)
    assert [t.split(" — ")[1] for t in receiver.titles("/q")] == ["c2", "c3", "c4"]


# -- delivery to real receivers ------------------------------------------------------------------


async def test_json_route_posts_the_lock_screen_text_and_type(receiver: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", receiver.url("/hook"))]}, directory=NAMES,
                       **FAST)
    async with running(d):
        a = alert()
        d.submit(raised(a))
        warn = alert("W", severity=Severity.WARNING, kind=AlertKind.OVER_TIME).evolve(
            value=605.0, threshold=600.0, unit="s",
            message="a-17 left_leg cuff inflated for 605 s (limit 600 s)")
        d.submit(raised(warn))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 2)
        d.submit(resolved(a, at_s=135.0))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 3)
    assert [{k: r.body[k] for k in ("title", "type", "message")} for r in receiver.at("/hook")] == [
        {"title": "Pressure too high — Jamie Striker", "type": "failure",
         "message": "Left leg cuff at 312 mmHg, limit 300 mmHg\n"
                    "Deflate the cuff now\n"
                    "Senior squad · since 12:06"},
        {"title": "Bout running long — Jamie Striker", "type": "warning",
         "message": "Left leg cuff inflated for 10 min 5 s, warning at 10 min\n"
                    "Deflate at the end of this set\n"
                    "Senior squad · since 12:06"},
        {"title": "Resolved: pressure too high — Jamie Striker",
         "type": "success",
         "message": "Left leg: pressure back within limits\n"
                    "Lasted 2 min 15 s, 12:06–12:08 · Senior squad"},
    ]
    stats = d.stats()["t1/0-json"]
    assert (stats.sent, stats.failed, stats.retried) == (3, 0, 0)
    assert stats.last_error is None


async def test_without_a_directory_pushes_name_ids_in_utc(receiver: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", receiver.url("/ids"))]}, **FAST)
    async with running(d):
        d.submit(raised(alert()))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 1)
    [push] = receiver.at("/ids")
    assert (push.body["title"], push.body["message"]) == (
        "Pressure too high — a-17",
        "Left leg cuff at 312 mmHg, limit 300 mmHg\nDeflate the cuff now\nt1 · since 11:06",
    )


async def test_ntfy_priority_max_for_critical_default_for_warning(receiver: HttpReceiver) -> None:
    token = "tk_ntfysecret42"
    url = f"ntfy://{token}@127.0.0.1:{receiver.port}/cuffs-t1?mode=private"
    d = PushDispatcher({"t1": [spec("t1/0-ntfy", url)]}, **FAST)
    async with running(d):
        d.submit(raised(alert("W", severity=Severity.WARNING)))
        await eventually(lambda: len(receiver.ntfy("cuffs-t1")) == 1)
        d.submit(raised(alert("C")))
        await eventually(lambda: len(receiver.ntfy("cuffs-t1")) == 2)
    warn, crit = receiver.ntfy("cuffs-t1")
    assert warn.body["title"] == "Pressure above target — a-17"
    assert "X-Priority" not in warn.headers  # ntfy's default priority
    assert crit.body["title"] == "Pressure too high — a-17"
    assert crit.headers["X-Priority"] == "max"
    assert crit.headers["Authorization"] == f"Bearer {token}"


async def test_mailto_route_over_plain_smtp_with_login() -> None:
    async with smtp_server("cuffwatch", "smtpSecret77") as mailbox:
        d = PushDispatcher({"t1": [spec("t1/0-mailto", mailbox.url())]}, directory=NAMES,
                           **FAST)
        async with running(d):
            a = alert()
            d.submit(raised(a))
            await eventually(lambda: len(mailbox.envelopes) == 1)
            d.submit(resolved(a, at_s=75.0))
            await eventually(lambda: len(mailbox.envelopes) == 2)
    assert mailbox.logins == ["cuffwatch", "cuffwatch"]
    assert [(m.mail_from, m.rcpt_tos) for m in mailbox.envelopes] == [
        ("cuffwatch@example.org", ["staff@example.org"])] * 2
    assert [(subject, body.rstrip("\n")) for subject, body in mailbox.texts()] == [
        ("Pressure too high — Jamie Striker",
         "Left leg cuff at 312 mmHg, limit 300 mmHg\n"
         "Deflate the cuff now\n"
         "Senior squad · since 12:06"),
        ("Resolved: pressure too high — Jamie Striker",
         "Left leg: pressure back within limits\n"
         "Lasted 1 min 15 s, 12:06–12:07 · Senior squad"),
    ]


async def test_every_change_reaches_its_routes_in_lock_screen_words(
    receiver: HttpReceiver,
) -> None:
    """Raised, escalated (to the escalation route only), refired after an ack's silence,
    resolved, reopened within the flap guard and resolved again: each push's exact text."""
    d = PushDispatcher(
        {
            "t1": [
                spec("t1/0-json", receiver.url("/staff")),
                spec("t1/1-json", receiver.url("/lead"), escalation=True),
            ]
        },
        directory=NAMES,
        **FAST,
    )

    def at(s: float, **changes: Any) -> Any:
        return alert(at_s=s).evolve(**changes)

    steps = [
        (Transition(at(0), Change.RAISED, True), "/staff"),
        (Transition(at(60, escalated=True), Change.ESCALATED, True, escalation=True), "/lead"),
        (Transition(at(65, state=AlertState.ACKNOWLEDGED, acknowledged_by="Sam",
                       escalated=True), Change.ACKNOWLEDGED, True), None),  # not pushed
        (Transition(at(125, acknowledged_by="Sam", escalated=True), Change.REFIRED, True),
         "/staff"),
        (Transition(at(130, state=AlertState.RESOLVED, acknowledged_by="Sam", escalated=True),
                    Change.RESOLVED, True), "/staff /lead"),
        (Transition(at(140, acknowledged_by="Sam"), Change.REOPENED, True), "/staff"),
        (Transition(at(190, state=AlertState.RESOLVED, acknowledged_by="Sam"),
                    Change.RESOLVED, True), "/staff"),
    ]
    expected = {"/staff": 0, "/lead": 0}
    async with running(d):
        for transition, paths in steps:
            d.submit(transition)
            for path in (paths or "").split():
                expected[path] += 1
            # one at a time: critical pushes jump the queue, and the order is the point here
            await eventually(lambda: all(len(receiver.at(p)) == n for p, n in expected.items())
                             and all(s.queue_depth == 0 for s in d.stats().values()))

    def pushes(path: str) -> list[str]:
        return [f"{r.body['title']}\n{r.body['message']}" for r in receiver.at(path)]

    fact = "Left leg cuff at 312 mmHg, limit 300 mmHg\nDeflate the cuff now\n"
    assert pushes("/staff") == [
        "Pressure too high — Jamie Striker\n" + fact + "Senior squad · since 12:06",
        "Still: pressure too high — Jamie Striker\n" + fact
        + "Senior squad · since 12:06 · acknowledged by Sam, still on",
        "Resolved: pressure too high — Jamie Striker\n"
        "Left leg: pressure back within limits\n"
        "Lasted 2 min 10 s, 12:06–12:08 · Senior squad",
        "Again: pressure too high — Jamie Striker\n" + fact
        + "Senior squad · back at 12:09, first at 12:06",
        "Resolved: pressure too high — Jamie Striker\n"
        "Left leg: pressure back within limits\n"
        "Lasted 3 min 10 s, 12:06–12:09 · Senior squad",
    ]
    assert pushes("/lead") == [
        "Escalated: pressure too high — Jamie Striker\n" + fact
        + "Senior squad · since 12:06 · not acknowledged",
        "Resolved: pressure too high — Jamie Striker\n"
        "Left leg: pressure back within limits\n"
        "Lasted 2 min 10 s, 12:06–12:08 · Senior squad",
    ]
    assert [r.body["type"] for r in receiver.at("/staff")] == [
        "failure", "failure", "success", "failure", "success"]


async def test_newer_push_supersedes_a_queued_older_one(receiver: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", receiver.url("/s"))]}, **FAST)
    w = alert(severity=Severity.WARNING)
    d.submit(raised(w))
    d.submit(Transition(w.evolve(severity=Severity.CRITICAL, updated_at_ms=T0_MS + 2000),
                        Change.UPDATED, True))
    async with running(d):
        await eventually(lambda: d.stats()["t1/0-json"].superseded == 1)
    assert receiver.titles("/s") == ["Pressure too high — a-17"]


async def test_rate_limit_caps_warnings_but_a_critical_goes_through(receiver: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", receiver.url("/r"), max_per_minute=3)]}, **FAST)
    async with running(d):
        for i in range(10):
            d.submit(raised(alert(f"W{i}", severity=Severity.WARNING)))
        await eventually(lambda: d.stats()["t1/0-json"].queue_depth == 0
                         and len(receiver.at("/r")) == 2)
        d.submit(raised(alert("C")))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 3)
    stats = d.stats()["t1/0-json"]
    assert (stats.sent, stats.dropped_rate) == (3, 8)
    crit = receiver.at("/r")[-1].body
    assert crit["title"] == "Pressure too high — a-17"
    assert "+8 earlier push(es) left out by the rate limit" in crit["message"]


async def test_critical_pushes_wait_for_tokens_instead_of_being_dropped(
    receiver: HttpReceiver,
) -> None:
    # 2 per 0.5 s: five criticals need a couple of refills
    d = PushDispatcher(
        {"t1": [spec("t1/0-json", receiver.url("/c"), max_per_minute=2)]}, rate_window_s=0.5, **FAST
    )
    async with running(d):
        for i in range(5):
            d.submit(raised(alert(f"C{i}", athlete=f"c{i}")))
        await eventually(lambda: len(receiver.at("/c")) == 5)
    assert [t.split(" — ")[1] for t in receiver.titles("/c")] == [f"c{i}" for i in range(5)]
    assert d.stats()["t1/0-json"].dropped_rate == 0


async def test_retries_after_server_errors_deliver_once(receiver: HttpReceiver) -> None:
    receiver.fail_first["/flaky"] = 2
    d = PushDispatcher({"t1": [spec("t1/0-json", receiver.url("/flaky"))]}, **FAST)
    async with running(d):
        d.submit(raised(alert()))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 1)
    assert receiver.hits["/flaky"] == 3
    assert len(receiver.at("/flaky")) == 1
    stats = d.stats()["t1/0-json"]
    assert (stats.retried, stats.failed, stats.last_error) == (2, 0, "PushFailedError")
    assert (stats.consecutive_failures, stats.failing) == (0, False)


async def test_dead_routes_do_not_delay_a_healthy_one(
    receiver: HttpReceiver, hanging: HangingServer, closed_port: int
) -> None:
    d = PushDispatcher(
        {
            "t1": [
                spec("t1/0-json", f"json://127.0.0.1:{hanging.port}/hang"),
                spec("t1/1-json", f"json://127.0.0.1:{closed_port}/refused"),
                spec("t1/2-json", receiver.url("/healthy")),
            ]
        },
        **{**FAST, "attempt_timeout_s": 30.0},  # the hanging request is still open at the end
    )
    async with running(d):
        d.submit(raised(alert()))
        # submit() only queued: nothing has been sent, every route holds the push
        assert [s.queue_depth for s in d.stats().values()] == [1, 1, 1]
        await eventually(lambda: len(receiver.at("/healthy")) == 1 and hanging.requests == 1)
        # the healthy route got its push while the hanging route's request is unanswered
        assert d.stats()["t1/0-json"].sent == 0
        await eventually(lambda: d.stats()["t1/1-json"].failed == 1)
        assert d.failing_routes() == ["t1/1-json"]  # 3 refused attempts in a row
        refused = d.stats()["t1/1-json"]
        assert (refused.retried, refused.last_error) == (2, "PushFailedError")
        d.submit(raised(alert("A2")))
        await eventually(lambda: len(receiver.at("/healthy")) == 2)
        assert (d.stats()["t1/0-json"].sent, hanging.requests) == (0, 1)


async def test_hanging_route_attempts_time_out_and_give_up(hanging: HangingServer) -> None:
    d = PushDispatcher(
        {"t1": [spec("t1/0-json", f"json://127.0.0.1:{hanging.port}/hang")]},
        **{**FAST, "attempt_timeout_s": 0.2, "max_attempts": 2},
    )
    async with running(d):
        d.submit(raised(alert()))
        await eventually(lambda: d.stats()["t1/0-json"].failed == 1)
    stats = d.stats()["t1/0-json"]
    assert (stats.sent, stats.retried, stats.last_error) == (0, 1, "PushTimeoutError")


async def test_logs_name_routes_by_label_never_by_secret(
    receiver: HttpReceiver, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="alerts.push")
    secrets = ["jsonPassw0rd", "tk_ntfyToken9", "refusedPassw0rd"]
    d = PushDispatcher(
        {
            "t1": [
                spec("t1/0-json", receiver.url("/ok", auth=f"user:{secrets[0]}@")),
                spec("t1/1-ntfy", f"ntfy://{secrets[1]}@127.0.0.1:{receiver.port}/topic"),
                spec("t1/2-json", f"json://user:{secrets[2]}@127.0.0.1:{closed_port}/x"),
            ]
        },
        **FAST,
    )
    async with running(d):
        d.submit(raised(alert()))
        await eventually(lambda: d.stats()["t1/2-json"].failed == 1
                         and d.stats()["t1/0-json"].sent == 1
                         and d.stats()["t1/1-ntfy"].sent == 1)
    ours = [r.getMessage() for r in caplog.records if r.name == "alerts.push"]
    assert any("push[t1/2-json] gave up" in m for m in ours)
    assert any("push[t1/0-json] sent" in m for m in ours)
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in everything
    assert secrets[0] not in repr(d.stats())


async def test_run_returns_after_aclose_and_pending_pushes_are_dropped(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", f"json://127.0.0.1:{closed_port}/x")]},
                       **{**FAST, "backoff_initial_s": 30.0, "backoff_max_s": 30.0})
    task = asyncio.create_task(d.run(), name="test.push.run")
    for i in range(3):
        d.submit(raised(alert(f"A{i}")))
    await eventually(lambda: d.stats()["t1/0-json"].retried == 0
                     and d.stats()["t1/0-json"].consecutive_failures == 1)
    await d.aclose()  # the worker is in its 30 s backoff: cancelled, not awaited out
    await task
    assert d.stats()["t1/0-json"].queue_depth == 0
    assert "2 unsent push(es) dropped at shutdown" in caplog.text
