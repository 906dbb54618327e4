"""Push routing without a receiver (SPEC §3 push routes): route settings, rate limits, retry
delays, which routes get which transition, and the console notifier. What a push says:
tests/unit/test_push_text.py.

Delivery to real local receivers: tests/integration/test_push_receivers.py.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import apprise
import pytest
from rich.console import Console

from alerts.console import ConsoleNotifier, format_transition
from alerts.errors import (
    AlertsError,
    PushConfigError,
    PushError,
    PushFailedError,
    PushTimeoutError,
)
from alerts.model import AlertKind, AlertState, Change, Transition
from alerts.push import BACKOFF_JITTER, PushDispatcher
from alerts.route_queue import TokenBucket
from alerts.routes import critical_url, route_label, routes_from_settings
from core.config import load_settings
from core.model import Severity
from tests.support.alert_samples import T0_MS, alert, raised, resolved, spec

# -- settings -----------------------------------------------------------------------


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


def test_console_notifier_lines_cannot_be_forged_by_names_from_mqtt() -> None:
    # the athlete comes from a retained assignment, `acknowledged_by` from an ack's "by"
    forged = "x\n10:00:00 CRITICAL raised FORGED\x00\u2028"
    out = io.StringIO()
    notifier = ConsoleNotifier(Console(file=out, width=400, color_system=None))
    a = alert(athlete=forged)
    notifier.submit(raised(a.evolve(message=f"{forged} left_leg cuff at 312 mmHg")))
    notifier.submit(Transition(a.evolve(acknowledged_by=forged), Change.ACKNOWLEDGED, False))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    escaped = "x\\n10:00:00 CRITICAL raised FORGED\\x00\\u2028"
    assert f"t1/c7 {escaped} left_leg — {escaped} left_leg cuff at 312 mmHg" in lines[0]
    assert lines[1].endswith(f"(ack: {escaped}) [not pushed]")
