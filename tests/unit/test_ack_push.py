"""One-tap ack in pushes (SPEC §3, issue 16) without a receiver: which pushes get a link, the
link's token, how each service carries it, Pushover's emergency form, and the link as text.

Delivery to local receivers (ntfy, Pushover's API, SMTP, webhooks): the integration tier's
test_push_ack.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import apprise
import pytest

from alerts.ackpush import (
    PUSHOVER_URL_MAX,
    AckLink,
    AckLinks,
    AckPlan,
    Style,
    carrier_for,
    ntfy_actions,
    wants_ack,
)
from alerts.model import AlertState, Change, Transition
from alerts.pushover import MESSAGE_MAX, TITLE_MAX, PushoverTarget, emergency_form
from alerts.render import PushMessage, render
from alerts.routes import load_apprise, routes_from_settings
from core.acktoken import BadToken, verify
from core.config import load_settings
from core.model import Severity
from tests.support.alert_samples import NAMES, alert, raised, resolved
from tests.support.push_services import parse_ntfy_actions

SECRET = b"k" * 32
PUBLIC = "https://club.example.org/cuffwatch"
USER = "u" * 30
APP = "a" * 30
NOW = 1_795_000_000.0


def links(ttl_s: float = 3600.0) -> AckLinks:
    return AckLinks(PUBLIC, SECRET, ttl_s, wall_clock=lambda: NOW)


def link(page: str = f"{PUBLIC}/ack/tok.en") -> AckLink:
    return AckLink(page, page + "/pushover", 0)


# -- which pushes carry a link ------------------------------------------------------------------


@pytest.mark.parametrize(("change", "state", "carries"), [
    (Change.RAISED, AlertState.FIRING, True),
    (Change.REOPENED, AlertState.FIRING, True),
    (Change.REFIRED, AlertState.FIRING, True),
    (Change.ESCALATED, AlertState.FIRING, True),
    (Change.UPDATED, AlertState.FIRING, True),  # a rise in severity while it fires
    (Change.UPDATED, AlertState.ACKNOWLEDGED, False),  # someone is on it already
    (Change.ACKNOWLEDGED, AlertState.ACKNOWLEDGED, False),
    (Change.RESOLVED, AlertState.RESOLVED, False),
])
def test_only_pushes_about_a_firing_alert_carry_a_link(
    change: Change, state: AlertState, carries: bool,
) -> None:
    assert wants_ack(Transition(alert(state=state), change, True)) is carries


# -- the link ------------------------------------------------------------------------------------


def test_each_link_names_the_alert_and_person_and_expires_after_the_ttl() -> None:
    a = alert("01JD0000000000000000000000", severity=Severity.WARNING)
    first, second = links(600.0).make(a, "Sam (physio)"), links(600.0).make(a, "Sam (physio)")
    token = first.page.removeprefix(f"{PUBLIC}/ack/")
    assert "/" not in token
    assert first.pushover == f"{first.page}/pushover"
    claims = verify(SECRET, token, now=NOW)
    assert (claims.alert_id, claims.team, claims.cuff, claims.kind, claims.person) == (
        "01JD0000000000000000000000", "t1", "c7", "over_pressure", "Sam (physio)")
    assert claims.expires_at == first.expires_at == NOW + 600
    with pytest.raises(BadToken, match="expired"):
        verify(SECRET, token, now=NOW + 600)
    assert first.page != second.page  # a nonce per link
    assert links().make(a, "").page != first.page  # "" lets the page ask for a name


def _settings(tmp_path: Path, **ack: Any) -> Any:
    return load_settings(None, ack=ack, teams={"t1": {"routes": [
        {"url": "json://127.0.0.1:9/x", "person": "Sam"}]}})


def test_links_from_settings_only_when_on_and_signable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUFFWATCH_ACK__SECRET", raising=False)
    assert AckLinks.from_settings(_settings(tmp_path, secret="s" * 40)) is None  # no public_url
    assert caplog.records == []
    on = AckLinks.from_settings(_settings(tmp_path, public_url=PUBLIC + "/", secret="s" * 40,
                                          link_ttl_s=90))
    assert on is not None
    assert (on.public_url, on.secret, on.ttl_s) == (PUBLIC, b"s" * 40, 90.0)
    assert "s" * 40 not in repr(on)
    secret_file = tmp_path / "ack.secret"
    secret_file.write_text("f" * 32 + "\n", encoding="utf-8")
    from_file = AckLinks.from_settings(_settings(tmp_path, public_url=PUBLIC,
                                                 secret_file=str(secret_file)))
    assert from_file is not None
    assert from_file.secret == b"f" * 32

    caplog.set_level(logging.WARNING)
    # (a secret given but too short is refused when the settings load: test_ack_config)
    for ack in ({}, {"secret_file": str(tmp_path / "missing")}):
        assert AckLinks.from_settings(_settings(tmp_path, public_url=PUBLIC, **ack)) is None
    assert [r.getMessage() for r in caplog.records] == [
        "push: [ack] public_url is set but no ack.secret (CUFFWATCH_ACK__SECRET) or "
        "ack.secret_file: pushes carry no ack link",
        "push: [ack] public_url is set but ack.secret_file unreadable (No such file or "
        "directory): pushes carry no ack link",
    ]


def test_links_refuse_a_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        AckLinks(PUBLIC, b"short", 3600.0)


def test_routes_carry_their_person(tmp_path: Path) -> None:
    [route] = routes_from_settings(_settings(tmp_path))["t1"]
    assert route.person == "Sam"


# -- how each service carries it -------------------------------------------------------------


def carrier(url: str) -> Any:
    obj, problem = load_apprise(url)
    assert problem is None
    return carrier_for(url, obj)


def test_ntfy_gets_an_http_button_posting_to_the_link() -> None:
    c = carrier("ntfys://tk_x@ntfy.example.org/t1?priority=max")
    assert c.style is Style.ACTION
    plan = c.plan(link())
    assert plan.text_link is None
    assert plan.callback is None
    assert plan.service is not None
    assert plan.service["actions"] == ntfy_actions(f"{PUBLIC}/ack/tok.en")
    assert json.loads(plan.service["actions"]) == [{
        "action": "http", "label": "Acknowledge", "url": f"{PUBLIC}/ack/tok.en",
        "method": "POST", "clear": True}]
    # ntfy reads it as one valid button (the checks of its publish API)
    [button] = parse_ntfy_actions(plan.service["actions"])
    assert (button["action"], button["method"], button["clear"]) == ("http", "POST", True)
    # Apprise takes the amended fields, and the route's own (priority, token) stay
    obj, problem = load_apprise(plan.service)
    assert problem is None
    [service] = obj
    assert (getattr(service, "priority", None), getattr(service, "token", None)) == (
        "max", "tk_x")
    # a route that sets its own actions keeps them: the link goes in the text
    own = carrier("ntfy://h/t?actions=view%2C%20Open%2C%20https%3A%2F%2Fexample.org")
    assert own.style is Style.TEXT
    assert own.plan(link()) == AckPlan(text_link=f"{PUBLIC}/ack/tok.en")


def test_pushover_emergency_calls_back_and_lower_priorities_get_a_url() -> None:
    emergency = carrier(f"pover://{USER}@{APP}/phone/tablet/%23{'g' * 30}"
                        "?priority=emergency&sound=siren&interval=60&expire=7200")
    assert emergency.style is Style.CALLBACK
    assert emergency.pushover == PushoverTarget(
        token=APP, recipients=((USER, "phone,tablet"), ("g" * 30, "")), sound="siren",
        retry_s=60, expire_s=7200)
    assert emergency.plan(link()) == AckPlan(callback=f"{PUBLIC}/ack/tok.en/pushover")
    assert APP not in repr(emergency.pushover)
    assert USER not in repr(emergency)

    # every device: no device field (the API's "all devices"), Apprise's retry and expiry
    everyone = carrier(f"pover://{USER}@{APP}?priority=emergency")
    assert everyone.pushover is not None
    assert (everyone.pushover.recipients, everyone.pushover.retry_s,
            everyone.pushover.expire_s) == (((USER, ""),), 900, 3600)

    normal = carrier(f"pover://{USER}@{APP}/phone")
    assert (normal.style, normal.pushover) == (Style.PUSHOVER_URL, None)
    plan = normal.plan(link())
    assert plan.service is not None
    assert (plan.service["supplemental_url"], plan.service["supplemental_url_title"]) == (
        f"{PUBLIC}/ack/tok.en", "Acknowledge")
    # longer than Pushover takes as a URL: in the text
    long_page = PUBLIC + "/ack/" + "t" * PUSHOVER_URL_MAX
    assert normal.plan(link(long_page)) == AckPlan(text_link=long_page)
    # the route's own url wins
    own = carrier(f"pover://{USER}@{APP}?url=https%3A%2F%2Fgrafana.example.org")
    assert own.style is Style.TEXT
    # end-to-end encrypted at emergency: Apprise sends (and encrypts) the link as its url
    e2ee = carrier(f"pover://{USER}@{APP}?priority=emergency&key={'0' * 64}")
    assert (e2ee.style, e2ee.pushover) == (Style.PUSHOVER_URL, None)


def test_json_webhooks_get_an_ack_url_field_and_the_link_in_the_text() -> None:
    c = carrier("json://127.0.0.1:9/hook?:source=cuffwatch")
    assert c.style is Style.JSON_FIELD
    plan = c.plan(link())
    assert plan.text_link == f"{PUBLIC}/ack/tok.en"
    assert plan.service is not None
    assert plan.service["payload"] == {"source": "cuffwatch", "ack_url": f"{PUBLIC}/ack/tok.en"}
    assert c.fields["payload"] == {"source": "cuffwatch"}  # the route's own stay as loaded


@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")  # apprise's e-mail
@pytest.mark.parametrize("url", [
    "mailto://u:p@mail.example.org?to=staff@example.org",
    "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#staff",
    "tgram://123456789:abcdefg_hijklmnop/12315544",
    "discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js",
])
def test_other_services_get_the_link_as_text(url: str) -> None:
    c = carrier(url)
    assert c.style is Style.TEXT
    assert c.plan(link()) == AckPlan(text_link=f"{PUBLIC}/ack/tok.en")


def test_a_route_apprise_loads_as_another_service_keeps_its_object() -> None:
    obj = apprise.Apprise()
    assert obj.add("json://127.0.0.1:9/x")
    c = carrier_for("json://127.0.0.1:9/x", obj)
    assert c.apprise is obj


# -- Pushover's emergency form ------------------------------------------------------------------


def test_emergency_form_is_the_documented_message_api() -> None:
    target = PushoverTarget(token=APP, recipients=((USER, "phone"),), sound="siren",
                            retry_s=60, expire_s=7200)
    message = PushMessage("T" * 300, "m" * 2000, apprise.NotifyType.FAILURE)
    form = emergency_form(target, USER, "phone", message, callback="https://x/ack/t/pushover",
                          expire_s=3570)
    assert form == {
        "token": APP, "user": USER, "device": "phone", "sound": "siren", "priority": "2",
        "retry": "60", "expire": "3570", "callback": "https://x/ack/t/pushover",
        "title": "T" * (TITLE_MAX - 1) + "…", "message": "m" * (MESSAGE_MAX - 1) + "…",
    }
    bare = PushoverTarget(token=APP, recipients=(), sound="", retry_s=30, expire_s=60,
                          url="https://grafana.example.org", url_title="Squad")
    form = emergency_form(bare, "g" * 30, "", PushMessage("t", "m", apprise.NotifyType.FAILURE),
                          callback="https://x/c", expire_s=60)
    assert "device" not in form
    assert "sound" not in form
    assert (form["url"], form["url_title"]) == ("https://grafana.example.org", "Squad")


# -- the link as text ---------------------------------------------------------------------------


def test_the_link_is_the_last_line_and_never_on_a_resolution() -> None:
    a = alert()
    url = f"{PUBLIC}/ack/tok.en"
    assert render(raised(a), NAMES, ack_url=url).body == (
        "Left leg cuff at 312 mmHg, limit 300 mmHg\n"
        "Deflate the cuff now\n"
        "Senior squad · since 12:06\n"
        f"Acknowledge: {url}"
    )
    assert render(raised(a), NAMES, suppressed=2, ack_url=url).body.endswith(
        "left out by the rate limit; see the dashboard)\n" f"Acknowledge: {url}")
    assert "Acknowledge" not in render(resolved(a), NAMES, ack_url=url).body
    assert render(raised(a), NAMES) == render(raised(a), NAMES, ack_url=None)


def test_ntfy_opens_the_page_when_the_route_names_no_person() -> None:
    # the endpoint asks who acknowledges when the link names no one: a POST without a name
    # is refused, so the button opens the page instead of posting to it
    c = carrier("ntfys://tk_x@ntfy.example.org/t1?priority=max")
    plan = c.plan(AckLink(f"{PUBLIC}/ack/tok.en", f"{PUBLIC}/ack/tok.en/pushover", 0,
                          asks_name=True))
    assert plan.service is not None
    [button] = parse_ntfy_actions(plan.service["actions"])
    assert (button["action"], button["url"]) == ("view", f"{PUBLIC}/ack/tok.en")
    assert "method" not in button
