"""Push delivery (SPEC §3 push routes) against real local receivers: HTTP (json://, ntfy://),
SMTP (mailto://), a server that never answers and a closed port."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import apprise
import pytest
from receivers import (
    HangingServer,
    HttpReceiver,
    hanging_server,
    http_receiver,
    smtp_server,
)
from rich.console import Console

from alerts.console import ConsoleNotifier, format_transition
from alerts.errors import (
    AlertsError,
    PushConfigError,
    PushError,
    PushFailedError,
    PushTimeoutError,
)
from alerts.model import Alert, AlertKind, AlertState, Change, Transition
from alerts.push import BACKOFF_JITTER, PushDispatcher
from alerts.render import render
from alerts.route_queue import TokenBucket
from alerts.routes import RouteSpec, critical_url, route_label, routes_from_settings
from core.config import load_settings
from core.model import Severity

WAIT_S = 10.0  # upper bound for "eventually"; every wait here normally ends in milliseconds
# Retries fast enough for a test, same code path as production.
FAST: dict[str, Any] = {
    "attempt_timeout_s": 2.0,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "max_attempts": 3,
}
T0_MS = 1_795_000_000_000


# -- alerts ------------------------------------------------------------------------------------


def alert(
    alert_id: str = "A1",
    *,
    team: str = "t1",
    athlete: str = "a-17",
    severity: Severity = Severity.CRITICAL,
    state: AlertState = AlertState.FIRING,
    kind: AlertKind = AlertKind.OVER_PRESSURE,
    at_s: float = 0.0,
) -> Alert:
    return Alert(
        id=alert_id,
        team=team,
        cuff="c7",
        athlete=athlete,
        limb="left_leg",
        kind=kind,
        severity=severity,
        state=state,
        value=312.0,
        threshold=300.0,
        unit="mmHg",
        message=f"{athlete} left_leg cuff at 312 mmHg (limit 300)",
        started_at_ms=T0_MS,
        updated_at_ms=T0_MS + int(at_s * 1000),
    )


def raised(a: Alert, *, push: bool = True) -> Transition:
    return Transition(a, Change.RAISED, push)


def resolved(a: Alert, *, at_s: float = 60.0) -> Transition:
    done = a.evolve(state=AlertState.RESOLVED, updated_at_ms=T0_MS + int(at_s * 1000))
    return Transition(done, Change.RESOLVED, True)


# -- receivers (tests/receivers.py) -----------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[HttpReceiver]:
    async with http_receiver() as receiver:
        yield receiver


@pytest.fixture
async def hanging() -> AsyncIterator[HangingServer]:
    async with hanging_server() as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here now: connection refused


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 (polls counters and receivers; no event to await)
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(dispatcher: PushDispatcher) -> AsyncIterator[PushDispatcher]:
    task = asyncio.create_task(dispatcher.run(), name="test.push.run")
    try:
        yield dispatcher
    finally:
        await dispatcher.aclose()
        await task


def spec(label: str, url: str, **kwargs: Any) -> RouteSpec:
    return RouteSpec(label=label, url=url, **kwargs)


# -- pure parts --------------------------------------------------------------------------------


def test_render_title_body_and_type() -> None:
    a = alert()
    msg = render(raised(a))
    assert msg.title == "CRITICAL over_pressure — a-17 left_leg"
    assert msg.body.splitlines()[0] == "a-17 left_leg cuff at 312 mmHg (limit 300)"
    assert "firing since 2026-11-18" in msg.body
    assert "team t1 · cuff c7" in msg.body
    assert msg.notify_type is apprise.NotifyType.FAILURE

    warn = render(raised(alert(severity=Severity.WARNING)))
    assert warn.title.startswith("WARNING ")
    assert warn.notify_type is apprise.NotifyType.WARNING
    assert render(raised(alert(severity=Severity.INFO))).notify_type is apprise.NotifyType.INFO

    done = render(resolved(a, at_s=135.0))
    assert done.title == "RESOLVED over_pressure — a-17 left_leg"
    assert "after 2 min 15 s" in done.body
    assert done.notify_type is apprise.NotifyType.SUCCESS

    esc = render(Transition(a, Change.ESCALATED, True, escalation=True), suppressed=4)
    assert esc.title.endswith("(escalated)")
    assert "+4 earlier push(es) left out by the rate limit" in esc.body

    nobody = render(raised(alert(athlete="").evolve(limb="")))
    assert nobody.title == "CRITICAL over_pressure — cuff c7"


def test_critical_url_uses_the_services_highest_priority() -> None:
    assert critical_url("ntfy://host/topic") == "ntfy://host/topic?priority=max"
    assert (
        critical_url("ntfys://tk_abc@host:8443/topic?mode=private")
        == "ntfys://tk_abc@host:8443/topic?mode=private&priority=max"
    )
    assert critical_url("pover://user@token") == "pover://user@token?priority=emergency"
    assert critical_url("barks://host/device") == "barks://host/device?level=critical"
    # an explicit priority on the route wins; other parameters are kept as written
    assert critical_url("pover://u@t?priority=high&sound=siren") == "pover://u@t?priority=high&sound=siren"
    assert critical_url("ntfy://h/t?Priority=4") == "ntfy://h/t?Priority=4"
    # services without a priority notion: Apprise's notification type says it all
    assert critical_url("json://h/p?x=1") == "json://h/p?x=1"
    assert critical_url("mailto://u:p@h?to=a@b") == "mailto://u:p@h?to=a@b"


@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # apprise's e-mail
def test_apprise_reads_the_amended_urls_as_top_priority() -> None:
    pushover = critical_url("pover://" + "u" * 30 + "@" + "a" * 30)
    ntfy = critical_url("ntfy://127.0.0.1:9/topic")
    got = {}
    for url in (pushover, ntfy):
        obj = apprise.Apprise()
        assert obj.add(url)
        [service] = obj
        got[type(service).__name__] = getattr(service, "priority", None)
    assert got == {"NotifyPushover": 2, "NotifyNtfy": "max"}  # Pushover 2 = emergency


def test_route_labels_and_routes_from_settings(tmp_path: Path) -> None:
    secret_file = tmp_path / "pover.url"
    secret_file.write_text("pover://userkey@apptoken\n", encoding="utf-8")
    settings = load_settings(
        None,
        teams={
            "t1": {
                "routes": [
                    {"url": "ntfy://tk_secret@ntfy.example.org/t1-staff"},
                    {"url_file": str(secret_file), "min_severity": "critical", "escalation": True,
                     "max_per_minute": 5},
                    {"url": "tk_secret_without_scheme"},
                ]
            },
            "t2": {},
        },
    )
    routes = routes_from_settings(settings)
    assert routes["t2"] == []
    ntfy, pover, odd = routes["t1"]
    assert (ntfy.label, ntfy.min_severity, ntfy.escalation) == (
        "t1/0-ntfy", Severity.WARNING, False
    )
    assert (pover.label, pover.url, pover.min_severity) == (
        "t1/1-pover", "pover://userkey@apptoken", Severity.CRITICAL
    )
    assert (pover.escalation, pover.max_per_minute) == (True, 5)
    assert odd.label == "t1/2-url"
    assert "secret" not in repr(routes)  # the URL is not in a RouteSpec's repr
    assert route_label("t9", 3, "MailTo://x") == "t9/3-mailto"


def test_token_bucket_keeps_a_reserve_and_refills() -> None:
    bucket = TokenBucket(3, 60.0, now=0.0)
    assert bucket.take(0.0, keep=1)
    assert bucket.take(0.0, keep=1)
    assert not bucket.take(0.0, keep=1)  # the last token is kept for a critical push
    assert bucket.take(0.0)
    assert not bucket.take(0.0)
    assert bucket.wait_s(0.0) == pytest.approx(20.0)
    assert bucket.take(20.0)
    assert not bucket.take(20.0)
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]  # capacity caps


def test_unusable_url_is_a_config_error_naming_the_route_only() -> None:
    with pytest.raises(PushConfigError) as info:
        PushDispatcher({"t1": [spec("t1/0-nosuch", "nosuch://tk_topsecret@host/x")]})
    assert info.value.problems == [
        "t1/0-nosuch: Apprise cannot load this URL (unknown scheme or bad syntax)"
    ]
    assert "topsecret" not in str(info.value)


def test_every_push_error_is_an_alerts_error() -> None:
    for error in (PushConfigError, PushError, PushFailedError, PushTimeoutError):
        assert issubclass(error, AlertsError), error


def test_retry_delays_double_up_to_the_cap_with_jitter() -> None:
    # min(max, initial·2^(n−1)) × uniform(1 − BACKOFF_JITTER, 1), drawn per retry
    d = PushDispatcher({}, backoff_initial_s=1.0, backoff_max_s=5.0)
    nominal = [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    for _ in range(50):
        delays = d._retry_delays()
        for expected in nominal:
            assert expected * (1.0 - BACKOFF_JITTER) <= next(delays) <= expected
    random.seed(7)
    drawn = [next(d._retry_delays()) for _ in range(3)]
    random.seed(7)
    assert drawn == [random.uniform(1.0 - BACKOFF_JITTER, 1.0) for _ in range(3)]
    capped = PushDispatcher({}, backoff_initial_s=9.0, backoff_max_s=5.0)._retry_delays()
    assert all(next(capped) <= 5.0 for _ in range(3))  # capped from the first delay on


# -- which routes get what -----------------------------------------------------------------------


async def test_route_selection_by_severity_escalation_push_and_change() -> None:
    unused = "json://127.0.0.1:9/never"  # nothing is sent: run() is not started
    d = PushDispatcher(
        {
            "t1": [
                spec("t1/0-json", unused, min_severity=Severity.WARNING),
                spec("t1/1-json", unused, min_severity=Severity.CRITICAL),
                spec("t1/2-json", unused, escalation=True),
            ],
            "t2": [spec("t2/0-json", unused, min_severity=Severity.INFO)],
        }
    )

    def depths() -> tuple[int, ...]:
        stats = d.stats()
        return tuple(stats[k].queue_depth for k in sorted(stats))

    a1 = alert("A1", severity=Severity.WARNING)
    d.submit(raised(a1))
    assert depths() == (1, 0, 0, 0)
    d.submit(raised(alert("A2", severity=Severity.INFO, kind=AlertKind.BATTERY_LOW)))
    assert depths() == (1, 0, 0, 0)  # info is below both min_severity
    d.submit(Transition(a1.evolve(value=260.0), Change.UPDATED, True))
    assert depths() == (1, 0, 0, 0)  # same severity: no new push
    a1c = a1.evolve(severity=Severity.CRITICAL, updated_at_ms=T0_MS + 1000)
    d.submit(Transition(a1c, Change.UPDATED, True))
    assert depths() == (2, 1, 0, 0)  # upgraded: now critical enough for route 1 too
    d.submit(Transition(a1c.evolve(severity=Severity.WARNING), Change.UPDATED, True))
    d.submit(Transition(a1c, Change.UPDATED, True))
    assert depths() == (2, 1, 0, 0)  # flapping back to a severity already pushed: quiet
    acked = a1c.evolve(state=AlertState.ACKNOWLEDGED, acknowledged_by="jo")
    d.submit(Transition(acked, Change.ACKNOWLEDGED, True))
    assert depths() == (2, 1, 0, 0)  # acks are not pushed
    d.submit(Transition(a1c, Change.ESCALATED, True, escalation=True))
    assert depths() == (2, 1, 1, 0)  # escalations go to escalation routes only
    d.submit(Transition(a1c, Change.REFIRED, True))
    assert depths() == (3, 2, 1, 0)  # escalation routes get nothing without the flag
    a3 = alert("A3")
    d.submit(raised(a3, push=False))
    d.submit(Transition(a3, Change.ESCALATED, False, escalation=True))
    d.submit(resolved(a3))
    assert depths() == (3, 2, 1, 0)  # push=False goes nowhere; nor its resolution
    d.submit(resolved(a1c))
    assert depths() == (4, 3, 2, 0)  # resolution to every route that got the alert
    d.submit(resolved(alert("A2", severity=Severity.INFO, kind=AlertKind.BATTERY_LOW)))
    assert depths() == (4, 3, 2, 0)
    d.submit(raised(alert("B1", team="t2", severity=Severity.INFO)))
    d.submit(raised(alert("C1", team="t-unknown")))
    assert depths() == (4, 3, 2, 1)  # teams are isolated
    await d.aclose()
    d.submit(raised(alert("A9")))  # after close: ignored, no error
    assert depths() == (0, 0, 0, 0)


async def test_full_queue_drops_oldest_non_critical_first(http: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", http.url("/q"))]}, queue_size=3, **FAST)
    d.submit(raised(alert("W1", athlete="w1", severity=Severity.WARNING)))
    d.submit(raised(alert("C1", athlete="c1")))
    d.submit(raised(alert("W2", athlete="w2", severity=Severity.WARNING)))
    d.submit(raised(alert("C2", athlete="c2")))  # full: W1 goes
    d.submit(raised(alert("C3", athlete="c3")))  # full: W2 goes
    d.submit(raised(alert("C4", athlete="c4")))  # only criticals left: the oldest, C1, goes
    assert d.stats()["t1/0-json"].dropped_full == 3
    async with running(d):
        await eventually(lambda: len(http.at("/q")) == 3)
    assert [t.split(" — ")[1] for t in http.titles("/q")] == [
        "c2 left_leg", "c3 left_leg", "c4 left_leg"
    ]


# -- delivery to real receivers ------------------------------------------------------------------


async def test_json_route_posts_title_message_and_type(http: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", http.url("/hook"))]}, **FAST)
    async with running(d):
        a = alert()
        d.submit(raised(a))
        d.submit(raised(alert("W", severity=Severity.WARNING, kind=AlertKind.OVER_TIME)))
        d.submit(resolved(a))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 3)
    crit, warn, done = (r.body for r in http.at("/hook"))
    assert crit["title"] == "CRITICAL over_pressure — a-17 left_leg"
    assert crit["message"].startswith("a-17 left_leg cuff at 312 mmHg (limit 300)\nfiring since")
    assert crit["type"] == "failure"
    assert (warn["title"], warn["type"]) == ("WARNING over_time — a-17 left_leg", "warning")
    assert (done["title"], done["type"]) == ("RESOLVED over_pressure — a-17 left_leg", "success")
    stats = d.stats()["t1/0-json"]
    assert (stats.sent, stats.failed, stats.retried) == (3, 0, 0)
    assert stats.last_error is None


async def test_ntfy_priority_max_for_critical_default_for_warning(http: HttpReceiver) -> None:
    token = "tk_ntfysecret42"
    url = f"ntfy://{token}@127.0.0.1:{http.port}/cuffs-t1?mode=private"
    d = PushDispatcher({"t1": [spec("t1/0-ntfy", url)]}, **FAST)
    async with running(d):
        d.submit(raised(alert("W", severity=Severity.WARNING)))
        await eventually(lambda: len(http.ntfy("cuffs-t1")) == 1)
        d.submit(raised(alert("C")))
        await eventually(lambda: len(http.ntfy("cuffs-t1")) == 2)
    warn, crit = http.ntfy("cuffs-t1")
    assert warn.body["title"].startswith("WARNING over_pressure")
    assert "X-Priority" not in warn.headers  # ntfy's default priority
    assert crit.body["title"].startswith("CRITICAL over_pressure")
    assert crit.headers["X-Priority"] == "max"
    assert crit.headers["Authorization"] == f"Bearer {token}"


async def test_mailto_route_over_plain_smtp_with_login() -> None:
    async with smtp_server("cuffwatch", "smtpSecret77") as mailbox:
        d = PushDispatcher({"t1": [spec("t1/0-mailto", mailbox.url())]}, **FAST)
        async with running(d):
            d.submit(raised(alert()))
            await eventually(lambda: len(mailbox.envelopes) == 1)
    [mail] = mailbox.envelopes
    assert mailbox.logins == ["cuffwatch"]
    assert mail.mail_from == "cuffwatch@example.org"
    assert mail.rcpt_tos == ["staff@example.org"]
    assert isinstance(mail.content, bytes)
    content = mail.content.decode()
    assert "Subject: =?utf-8?q?CRITICAL_over=5Fpressure" in content
    assert "a-17 left_leg cuff at 312 mmHg (limit 300)" in content


async def test_escalation_route_gets_escalations_and_their_resolution(http: HttpReceiver) -> None:
    d = PushDispatcher(
        {
            "t1": [
                spec("t1/0-json", http.url("/staff")),
                spec("t1/1-json", http.url("/lead"), escalation=True),
            ]
        },
        **FAST,
    )
    async with running(d):
        a = alert()
        d.submit(raised(a))
        d.submit(Transition(a.evolve(escalated=True), Change.ESCALATED, True, escalation=True))
        d.submit(resolved(a))
        await eventually(lambda: len(http.at("/staff")) == 2 and len(http.at("/lead")) == 2)
    assert http.titles("/staff") == [
        "CRITICAL over_pressure — a-17 left_leg",
        "RESOLVED over_pressure — a-17 left_leg",
    ]
    assert http.titles("/lead") == [
        "CRITICAL over_pressure — a-17 left_leg (escalated)",
        "RESOLVED over_pressure — a-17 left_leg",
    ]


async def test_newer_push_supersedes_a_queued_older_one(http: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", http.url("/s"))]}, **FAST)
    w = alert(severity=Severity.WARNING)
    d.submit(raised(w))
    d.submit(Transition(w.evolve(severity=Severity.CRITICAL, updated_at_ms=T0_MS + 2000),
                        Change.UPDATED, True))
    async with running(d):
        await eventually(lambda: d.stats()["t1/0-json"].superseded == 1)
    assert http.titles("/s") == ["CRITICAL over_pressure — a-17 left_leg"]


async def test_rate_limit_caps_warnings_but_a_critical_goes_through(http: HttpReceiver) -> None:
    d = PushDispatcher({"t1": [spec("t1/0-json", http.url("/r"), max_per_minute=3)]}, **FAST)
    async with running(d):
        for i in range(10):
            d.submit(raised(alert(f"W{i}", severity=Severity.WARNING)))
        await eventually(lambda: d.stats()["t1/0-json"].queue_depth == 0
                         and len(http.at("/r")) == 2)
        d.submit(raised(alert("C")))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 3)
    stats = d.stats()["t1/0-json"]
    assert (stats.sent, stats.dropped_rate) == (3, 8)
    crit = http.at("/r")[-1].body
    assert crit["title"].startswith("CRITICAL")
    assert "+8 earlier push(es) left out by the rate limit" in crit["message"]


async def test_critical_pushes_wait_for_tokens_instead_of_being_dropped(http: HttpReceiver) -> None:
    # 2 per 0.5 s: five criticals need a couple of refills
    d = PushDispatcher(
        {"t1": [spec("t1/0-json", http.url("/c"), max_per_minute=2)]}, rate_window_s=0.5, **FAST
    )
    async with running(d):
        for i in range(5):
            d.submit(raised(alert(f"C{i}", athlete=f"c{i}")))
        await eventually(lambda: len(http.at("/c")) == 5)
    assert [t.split(" — ")[1] for t in http.titles("/c")] == [f"c{i} left_leg" for i in range(5)]
    assert d.stats()["t1/0-json"].dropped_rate == 0


async def test_retries_after_server_errors_deliver_once(http: HttpReceiver) -> None:
    http.fail_first["/flaky"] = 2
    d = PushDispatcher({"t1": [spec("t1/0-json", http.url("/flaky"))]}, **FAST)
    async with running(d):
        d.submit(raised(alert()))
        await eventually(lambda: d.stats()["t1/0-json"].sent == 1)
    assert http.hits["/flaky"] == 3
    assert len(http.at("/flaky")) == 1
    stats = d.stats()["t1/0-json"]
    assert (stats.retried, stats.failed, stats.last_error) == (2, 0, "PushFailedError")
    assert (stats.consecutive_failures, stats.failing) == (0, False)


async def test_dead_routes_do_not_delay_a_healthy_one(
    http: HttpReceiver, hanging: HangingServer, closed_port: int
) -> None:
    d = PushDispatcher(
        {
            "t1": [
                spec("t1/0-json", f"json://127.0.0.1:{hanging.port}/hang"),
                spec("t1/1-json", f"json://127.0.0.1:{closed_port}/refused"),
                spec("t1/2-json", http.url("/healthy")),
            ]
        },
        **{**FAST, "attempt_timeout_s": 30.0},  # the hanging request is still open at the end
    )
    async with running(d):
        d.submit(raised(alert()))
        # submit() only queued: nothing has been sent, every route holds the push
        assert [s.queue_depth for s in d.stats().values()] == [1, 1, 1]
        await eventually(lambda: len(http.at("/healthy")) == 1 and hanging.requests == 1)
        # the healthy route got its push while the hanging route's request is unanswered
        assert d.stats()["t1/0-json"].sent == 0
        await eventually(lambda: d.stats()["t1/1-json"].failed == 1)
        assert d.failing_routes() == ["t1/1-json"]  # 3 refused attempts in a row
        refused = d.stats()["t1/1-json"]
        assert (refused.retried, refused.last_error) == (2, "PushFailedError")
        d.submit(raised(alert("A2")))
        await eventually(lambda: len(http.at("/healthy")) == 2)
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
    http: HttpReceiver, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="alerts.push")
    secrets = ["jsonPassw0rd", "tk_ntfyToken9", "refusedPassw0rd"]
    d = PushDispatcher(
        {
            "t1": [
                spec("t1/0-json", http.url("/ok", auth=f"user:{secrets[0]}@")),
                spec("t1/1-ntfy", f"ntfy://{secrets[1]}@127.0.0.1:{http.port}/topic"),
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


# -- console ---------------------------------------------------------------------------------------


def test_console_notifier_prints_one_line_per_transition() -> None:
    out = io.StringIO()
    notifier = ConsoleNotifier(Console(file=out, width=200, color_system=None))
    a = alert()
    notifier.submit(raised(a))
    notifier.submit(Transition(a.evolve(acknowledged_by="jo"), Change.ACKNOWLEDGED, False))
    notifier.submit(resolved(a))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "CRITICAL raised" in lines[0]
    assert "over_pressure t1/c7 a-17 left_leg — a-17 left_leg cuff at 312 mmHg" in lines[0]
    assert lines[1].endswith("(ack: jo) [not pushed]")
    assert "RESOLVED resolved" in lines[2]
    styled = format_transition(raised(a, push=True))
    assert any("red" in str(span.style) for span in styled.spans)
    assert json.dumps(styled.plain)  # plain text, no markup left in it
