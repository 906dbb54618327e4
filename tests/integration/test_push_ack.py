"""One-tap acknowledgement in pushes (SPEC §3, issue 16) against local receivers: an ntfy
server (the action button), Pushover's message API (the emergency receipt's callback, and the
supplementary URL below emergency), aiosmtpd (the link in a mail), JSON webhooks (the link in
the text and as `ack_url`), and Slack and Telegram through Apprise's own endpoints pointed at
a local receiver (the link in the text).

Every link is checked the way the endpoint will: `core.acktoken.verify` of its token names the
alert, the route's person and an expiry `link_ttl_s` after the push. The endpoint itself is
built elsewhere; `TapRecorder` stands in for it where a tap or a callback is followed.
Stand-ins: tests/support/push_services.py. Routing and retries: test_push_receivers.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from apprise.plugins.pushover import NotifyPushover
from apprise.plugins.slack import NotifySlack
from apprise.plugins.telegram import NotifyTelegram

from alerts.ackpush import AckLinks
from alerts.model import AlertState, Change, Transition
from alerts.push import PushDispatcher
from core.acktoken import AckClaims, verify
from core.model import Severity
from tests.support.alert_samples import NAMES, alert, raised, resolved, spec
from tests.support.push_rig import eventually, running
from tests.support.push_services import (
    key30,
    ntfy_server,
    pushover_api,
    tap_recorder,
)
from tests.support.receivers import HttpReceiver, smtp_server

FAST: dict[str, Any] = {
    "attempt_timeout_s": 2.0,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "max_attempts": 3,
}
SECRET = b"0123456789abcdef0123456789abcdef-test"
PUBLIC = "https://club.example.org/cuffwatch"
TTL_S = 3600.0
APP = key30("app")
USER = key30("user")
GROUP = key30("group")

FACT = ("Left leg cuff at 312 mmHg, limit 300 mmHg\nDeflate the cuff now\n"
        "Senior squad · since 12:06")


def links(public_url: str = PUBLIC) -> AckLinks:
    return AckLinks(public_url, SECRET, TTL_S)




def claims_of(url: str, *, prefix: str = PUBLIC, suffix: str = "") -> AckClaims:
    """The claims of a link `{prefix}/ack/{token}{suffix}`, verified as the endpoint will."""
    assert url.startswith(f"{prefix}/ack/"), url
    assert url.endswith(suffix), url
    token = url[len(f"{prefix}/ack/"):len(url) - len(suffix)]
    assert "/" not in token
    return verify(SECRET, token, now=time.time())


def assert_names(claims: AckClaims, *, person: str, alert_id: str = "A1",
                 sent: tuple[float, float]) -> None:
    """The link acknowledges this alert as `person`, for TTL_S from when it was sent."""
    assert (claims.alert_id, claims.team, claims.cuff, claims.kind, claims.person) == (
        alert_id, "t1", "c7", "over_pressure", person)
    assert sent[0] + TTL_S - 1 <= claims.expires_at <= sent[1] + TTL_S


def last_line(text: str) -> str:
    return text.rstrip("\n").rsplit("\n", 1)[-1]


def link_line(text: str) -> str:
    """The URL of a body's `Acknowledge: …` last line."""
    line = last_line(text)
    assert line.startswith("Acknowledge: "), text
    return line.removeprefix("Acknowledge: ")


# -- ntfy: an action button --------------------------------------------------------------------


async def test_ntfy_push_has_an_acknowledge_button_that_posts_to_the_link() -> None:
    async with ntfy_server(token="tk_ntfy42") as ntfy, tap_recorder() as endpoint:
        d = PushDispatcher({"t1": [spec("t1/0-ntfy", ntfy.url("cuffs-t1"), person="Sam")]},
                           directory=NAMES, ack=links(endpoint.url), **FAST)
        a = alert()
        async with running(d):
            before = time.time()
            d.submit(raised(a))
            d.submit(raised(alert("W", severity=Severity.WARNING)))
            await eventually(lambda: len(ntfy.messages) == 2)
            after = time.time()
            d.submit(resolved(a, at_s=75.0))
            await eventually(lambda: len(ntfy.messages) == 3)
        crit, warn, done = ntfy.messages
        assert ntfy.refused == []
        # the push reads as ever (no link in its text: the button is the tap)
        assert (crit.title, crit.message, crit.priority) == (
            "Pressure too high — Jamie Striker", FACT, 5)
        [button] = crit.actions
        assert {k: v for k, v in button.items() if k != "id"} == {
            "action": "http", "label": "Acknowledge", "url": button["url"], "method": "POST",
            "clear": True}
        assert_names(claims_of(button["url"], prefix=endpoint.url), person="Sam",
                     sent=(before, after))
        # a firing warning gets its own button, with its own token
        [warn_button] = warn.actions
        assert claims_of(warn_button["url"], prefix=endpoint.url).alert_id == "W"
        assert warn_button["url"] != button["url"]
        # a resolution has nothing to acknowledge
        assert done.title.startswith("Resolved: ")
        assert done.actions == []

        # the tap, as the ntfy app makes it: the button's method to its URL, no body
        async with aiohttp.ClientSession() as phone, \
                phone.request(button["method"], button["url"]) as answer:
            assert answer.status == 200
        [tap] = endpoint.taps
        assert (tap.method, f"http://127.0.0.1:{endpoint.port}{tap.path}") == (
            "POST", button["url"])


async def test_ntfy_route_with_its_own_actions_keeps_them_and_gets_the_link_as_text() -> None:
    async with ntfy_server() as ntfy:
        own = "view, Dashboard, https://grafana.example.org/d/squad"
        url = ntfy.url("cuffs-t1") + "&actions=" + own.replace(" ", "%20").replace(",", "%2C")
        d = PushDispatcher({"t1": [spec("t1/0-ntfy", url, person="Sam")]}, directory=NAMES,
                           ack=links(), **FAST)
        async with running(d):
            d.submit(raised(alert()))
            await eventually(lambda: len(ntfy.messages) == 1)
        [push] = ntfy.messages
        assert [(b["action"], b["label"], b["url"]) for b in push.actions] == [
            ("view", "Dashboard", "https://grafana.example.org/d/squad")]
        assert push.message.startswith(FACT + "\nAcknowledge: ")
        assert claims_of(link_line(push.message)).person == "Sam"


# -- Pushover: the emergency receipt's callback; a supplementary URL below emergency ---------


@pytest.fixture
def apprise_to_local_pushover() -> Iterator[Callable[[str], None]]:
    """Points Apprise's Pushover plugin at a local stand-in (its endpoint is a class constant)."""
    with pytest.MonkeyPatch.context() as mp:
        yield lambda url: mp.setattr(NotifyPushover, "notify_url", url)


async def test_pushover_emergency_receipt_calls_back_to_the_link(
    apprise_to_local_pushover: Callable[[str], None],
) -> None:
    async with pushover_api(APP, {USER: {"phone", "tablet"}}) as api, \
            tap_recorder() as endpoint:
        apprise_to_local_pushover(api.url)  # what Apprise still sends (resolutions, warnings)
        url = f"pover://{USER}@{APP}/phone?sound=siren"
        d = PushDispatcher({"t1": [spec("t1/0-pover", url, person="Sam (physio)")]},
                           directory=NAMES, ack=links(endpoint.url), pushover_api_url=api.url,
                           **FAST)
        a = alert()
        async with running(d):
            before = time.time()
            d.submit(raised(a))
            await eventually(lambda: len(api.accepted) == 1)
            after = time.time()
            d.submit(resolved(a, at_s=75.0))
            await eventually(lambda: len(api.accepted) == 2)
            d.submit(raised(alert("W", severity=Severity.WARNING)))
            await eventually(lambda: len(api.accepted) == 3)
        assert api.refused == []
        emergency, done, warning = api.accepted
        callback = emergency["callback"]
        assert emergency == {
            "token": APP, "user": USER, "device": "phone", "sound": "siren",
            "title": "Pressure too high — Jamie Striker", "message": FACT,
            "priority": "2", "retry": "900",  # the route's retry (Apprise's default)
            "expire": str(int(TTL_S - FAST["attempt_timeout_s"])),  # ends before the token
            "callback": callback, "receipt": emergency["receipt"],
        }
        assert_names(claims_of(callback, prefix=endpoint.url, suffix="/pushover"),
                     person="Sam (physio)", sent=(before, after))
        # the resolution went through Apprise as before: no emergency, no link
        assert (done["priority"], done["title"]) == ("0", "Resolved: pressure too high — "
                                                            "Jamie Striker")
        assert "callback" not in done
        assert "url" not in done
        # below emergency there is no receipt: the link is the supplementary URL
        assert (warning["priority"], warning["url_title"]) == ("0", "Acknowledge")
        assert claims_of(warning["url"], prefix=endpoint.url).alert_id == "W"
        assert "Acknowledge" not in warning["message"]

        # the recipient acknowledges in the Pushover app: Pushover calls back
        assert await api.acknowledge(emergency["receipt"]) == (200, "ok")
        [tap] = endpoint.taps
        assert (tap.method, f"http://127.0.0.1:{endpoint.port}{tap.path}") == ("POST", callback)
        assert (tap.form["receipt"], tap.form["acknowledged"], tap.form["acknowledged_by"]) == (
            emergency["receipt"], "1", USER)


async def test_pushover_retries_only_the_recipients_that_did_not_get_it() -> None:
    async with pushover_api(APP, {USER: {"phone"}, GROUP: set()}) as api:
        api.fail_first[GROUP] = 2  # the group's send fails twice (HTTP 500), the user's not
        d = PushDispatcher(
            {"t1": [spec("t1/0-pover", f"pover://{USER}@{APP}/phone/%23{GROUP}", person="Sam")]},
            ack=links(), pushover_api_url=api.url, **FAST)
        async with running(d):
            d.submit(raised(alert()))
            await eventually(lambda: d.stats()["t1/0-pover"].sent == 1)
        assert [(m["user"], m.get("device"), m["priority"]) for m in api.accepted] == [
            (USER, "phone", "2"), (GROUP, None, "2")]  # each once
        stats = d.stats()["t1/0-pover"]
        assert (stats.retried, stats.failed, stats.last_error) == (2, 0, "PushFailedError")
        # each attempt signed its own link: the group's is from the attempt that got through
        user_claims = claims_of(api.accepted[0]["callback"], suffix="/pushover")
        group_claims = claims_of(api.accepted[1]["callback"], suffix="/pushover")
        assert user_claims.nonce != group_claims.nonce
        assert {user_claims.person, group_claims.person} == {"Sam"}


async def test_pushover_refusing_the_message_fails_the_route_like_any_other() -> None:
    async with pushover_api(APP, {USER: {"phone"}}) as api:
        d = PushDispatcher(
            {"t1": [spec("t1/0-pover", f"pover://{USER}@{APP}/laptop")]},  # not a device of
            ack=links(), pushover_api_url=api.url, **FAST)                  # the user
        async with running(d):
            d.submit(raised(alert()))
            await eventually(lambda: d.stats()["t1/0-pover"].failed == 1)
        assert api.accepted == []
        assert api.refused == [["device name 'laptop' is not valid for user"]] * 3
        stats = d.stats()["t1/0-pover"]
        assert (stats.sent, stats.retried, stats.last_error) == (0, 2, "PushFailedError")


# -- a link in the text: e-mail, JSON webhooks, Slack, Telegram --------------------------------


async def test_mail_ends_with_the_link_and_a_resolution_has_none() -> None:
    async with smtp_server("cuffwatch", "smtpSecret77") as mailbox:
        d = PushDispatcher({"t1": [spec("t1/0-mailto", mailbox.url(), person="Sam")]},
                           directory=NAMES, ack=links(), **FAST)
        a = alert()
        async with running(d):
            before = time.time()
            d.submit(raised(a))
            await eventually(lambda: len(mailbox.envelopes) == 1)
            after = time.time()
            d.submit(resolved(a, at_s=75.0))
            await eventually(lambda: len(mailbox.envelopes) == 2)
    (subject, body), (_, done) = mailbox.texts()
    assert subject == "Pressure too high — Jamie Striker"
    link = link_line(body)
    assert body.rstrip("\n") == f"{FACT}\nAcknowledge: {link}"
    assert_names(claims_of(link), person="Sam", sent=(before, after))
    assert "Acknowledge" not in done
    assert "/ack/" not in done


async def test_json_webhook_has_the_link_in_its_text_and_as_ack_url(
    receiver: HttpReceiver,
) -> None:
    d = PushDispatcher(
        {"t1": [spec("t1/0-json", receiver.url("/staff"), person="Sam"),
                spec("t1/1-json", receiver.url("/lead"), escalation=True, person="Alex")]},
        directory=NAMES, ack=links(), **FAST)

    def at(s: float, **changes: Any) -> Any:
        return alert(at_s=s).evolve(**changes)

    steps = [
        Transition(at(0), Change.RAISED, True),
        Transition(at(60, escalated=True), Change.ESCALATED, True, escalation=True),
        Transition(at(65, state=AlertState.ACKNOWLEDGED, acknowledged_by="Sam", escalated=True),
                   Change.ACKNOWLEDGED, True),  # not pushed
        Transition(at(125, acknowledged_by="Sam", escalated=True), Change.REFIRED, True),
        Transition(at(130, state=AlertState.RESOLVED, acknowledged_by="Sam", escalated=True),
                   Change.RESOLVED, True),
    ]
    async with running(d):
        for n, step in enumerate(steps):
            d.submit(step)
            await eventually(lambda: all(s.queue_depth == 0 for s in d.stats().values()))
            if n == 0:  # keep the order: a critical push jumps the queue
                await eventually(lambda: len(receiver.received) == 1)
        await eventually(lambda: len(receiver.received) == 5)
    staff, lead = receiver.at("/staff"), receiver.at("/lead")
    assert [r.body["title"].split(":")[0] for r in staff] == [
        "Pressure too high — Jamie Striker", "Still", "Resolved"]
    assert [r.body["title"].split(":")[0] for r in lead] == ["Escalated", "Resolved"]
    for push, person in ((staff[0], "Sam"), (staff[1], "Sam"), (lead[0], "Alex")):
        link = push.body["ack_url"]
        assert link_line(push.body["message"]) == link
        assert claims_of(link).person == person
    assert len({staff[0].body["ack_url"], staff[1].body["ack_url"]}) == 2  # one link per push
    for done in (staff[2], lead[1]):
        assert "ack_url" not in done.body
        assert "Acknowledge" not in done.body["message"]
    # the rest of the payload is Apprise's, as before
    assert set(staff[0].body) == {"version", "title", "message", "attachments", "type",
                                  "ack_url"}


async def test_slack_and_telegram_carry_the_link_in_their_text(receiver: HttpReceiver) -> None:
    with pytest.MonkeyPatch.context() as mp:
        # Apprise's endpoints for both services are class constants: point them here
        mp.setattr(NotifySlack, "webhook_url", receiver.url("/slack").replace("json", "http"))
        mp.setattr(NotifyTelegram, "notify_url", f"http://127.0.0.1:{receiver.port}/tg/bot")
        d = PushDispatcher(
            {"t1": [spec("t1/0-slack", "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
                         person="Sam"),
                    spec("t1/1-tgram", "tgram://123456789:abcdefg_hijklmnop/12315544?image=no",
                         person="Sam")]},
            directory=NAMES, ack=links(), **FAST)
        async with running(d):
            d.submit(raised(alert()))
            await eventually(lambda: all(s.sent == 1 for s in d.stats().values()))
    [slack] = receiver.at("/slack/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")
    [telegram] = receiver.at("/tg/bot123456789:abcdefg_hijklmnop/sendMessage")
    slack_text = slack.body["attachments"][0]["text"]
    telegram_text = telegram.body["text"]
    for text in (slack_text, telegram_text):
        assert claims_of(link_line(text)).person == "Sam"


# -- [ack] off: pushes as before -------------------------------------------------------------


async def test_without_ack_no_push_carries_an_action_or_link(
    receiver: HttpReceiver, apprise_to_local_pushover: Callable[[str], None],
) -> None:
    async with ntfy_server() as ntfy, pushover_api(APP, {USER: {"phone"}}) as api:
        apprise_to_local_pushover(api.url)
        d = PushDispatcher(
            {"t1": [spec("t1/0-json", receiver.url("/hook"), person="Sam"),
                    spec("t1/1-ntfy", ntfy.url("cuffs-t1"), person="Sam"),
                    spec("t1/2-pover", f"pover://{USER}@{APP}/phone", person="Sam")]},
            directory=NAMES, pushover_api_url=api.url + "-not-used", **FAST)
        async with running(d):
            d.submit(raised(alert()))
            await eventually(lambda: all(s.sent == 1 for s in d.stats().values()))
    [hook] = receiver.at("/hook")
    assert "ack_url" not in hook.body
    assert hook.body["message"] == FACT
    [push] = ntfy.messages
    assert (push.actions, push.message) == ([], FACT)
    [emergency] = api.accepted  # Apprise's, as ever: emergency with its retry, no callback
    assert (emergency["priority"], emergency["retry"], emergency["expire"]) == ("2", "900", "3600")
    assert "callback" not in emergency
    assert "url" not in emergency
