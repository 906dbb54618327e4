"""The ack endpoint's decisions (gateway.ack_desk), driven directly: no socket, a fake clock.

A real `MessageHandler` and `AlertEngine` behind it, so an alert is raised by a reading and a
link's ack goes through the same `MessageHandler.ack` as an `…/ack` message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.engine import AlertEngine
from alerts.model import Alert, AlertKind, AlertState, Change
from core.acktoken import probe_token, sign
from core.config import Settings, load_settings
from gateway.ack_desk import PROBE_ANSWER, AckDesk, Reply, Route, clean_name
from gateway.ack_guard import UsedLinks
from gateway.ack_page import CSP, AckPages
from gateway.handler import Actions, MessageHandler, Store
from gateway.metrics import Counters, RejectLog
from gateway.state import Fleet
from tests.support.alert_rig import FakeClock

T0 = 1_900_000_000.0
SECRET = b"k" * 32
TTL = 3600
NASTY = "Jo <script>alert(1)</script> & \"Co\""


def _settings() -> Settings:
    return load_settings(
        ack={"public_url": "https://club.example/cw", "secret": SECRET.decode(),
             "link_ttl_s": TTL},
        teams={
            "t1": {"name": "First <team>", "timezone": "Europe/London",
                   "athletes": {"a1": {"name": NASTY}, "a2": {}},
                   "cuffs": {"c1": {"athlete": "a1", "limb": "left_arm"},
                             "c2": {"athlete": "a2", "limb": "left_arm"}}},
            "t2": {"cuffs": {"c9": {"athlete": "b1", "limb": "left_arm"}}},
        },
    )


class Target:
    """The gateway as the desk sees it; records what each ack asked the edge to do."""

    def __init__(self, handler: MessageHandler) -> None:
        self.handler = handler
        self.acks: list[Actions] = []

    def knows(self, team: str, cuff: str, kind: str) -> bool:
        return self.handler.knows(team, cuff, kind)

    def open_alert(self, team: str, cuff: str, kind: str) -> Alert | None:
        return self.handler.open_alert(team, cuff, kind)

    def acknowledge(self, team: str, cuff: str, kind: str, by: str) -> Alert | None:
        actions = self.handler.ack(team, cuff, kind, by)
        self.acks.append(actions)
        return actions.answer.alert if actions.answer and actions.answer.ok else None


class Rig:
    def __init__(self, used_path: Path | None = None, *, cap: int = 100) -> None:
        self.clock = FakeClock(T0)
        self.settings = _settings()
        self.counters = Counters()
        self.engine = AlertEngine(clock=self.clock)
        self.handler = MessageHandler(self.settings, fleet=Fleet(self.settings),
                                      engine=self.engine, counters=self.counters,
                                      rejects=RejectLog(self.counters))
        self.target = Target(self.handler)
        self.used = UsedLinks(used_path, cap=cap)
        self.desk = AckDesk(secret=SECRET, link_ttl_s=TTL, prefix="/cw", target=self.target,
                            used=self.used, pages=AckPages(self.settings),
                            counters=self.counters)

    def raise_alert(self, cuff: str = "c1", team: str = "t1", seq: int = 1) -> Alert:
        reading = {"ts": int(self.clock.t * 1000), "seq": seq, "pressure_mmhg": 262.0,
                   "elapsed_s": 10.0}
        actions = self.handler.handle(f"bfr/{team}/cuffs/{cuff}/telemetry",
                                      json.dumps(reading).encode(), False, self.clock.t)
        [t] = [t for t in actions.alerts if t.alert.kind is AlertKind.OVER_PRESSURE]
        return t.alert

    def link(self, alert: Alert, *, person: str = "Sam", **over: Any) -> str:
        claims: dict[str, Any] = {
            "alert_id": alert.id, "team": alert.team, "cuff": alert.cuff,
            "kind": alert.kind.value, "person": person,
            "expires_at": int(self.clock.t) + TTL, **over}
        return sign(SECRET, **claims)

    def get(self, token: str, path: str = "/cw/ack/{}") -> Reply:
        route = self.desk.route("GET", path.format(token))
        assert route is not None
        admitted = self.desk.admit(route, self.clock.t)
        return admitted if isinstance(admitted, Reply) else self.desk.visit(admitted)

    def post(self, token: str, form: dict[str, str] | None = None) -> Reply:
        return self.desk.tap(Route(token, pushover=False), form or {}, self.clock.t)

    def state(self, alert: Alert) -> AlertState | None:
        now = self.engine.open_alert(alert.team, alert.cuff, alert.kind)
        return None if now is None else now.state


def text(reply: Reply) -> str:
    return reply.body.decode()


# -- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "route"), [
    ("GET", "/ack/AbC.d-_", Route("AbC.d-_", False)),
    ("POST", "/ack/AbC.d-_", Route("AbC.d-_", False)),
    ("GET", "/cw/ack/AbC.d-_", Route("AbC.d-_", False)),  # public_url's path kept by the proxy
    ("POST", "/ack/AbC.d/pushover", Route("AbC.d", True)),
    ("GET", "/ack/AbC.d/pushover", None),
    ("HEAD", "/ack/AbC.d", None),
    ("PUT", "/ack/AbC.d", None),
    ("DELETE", "/ack/AbC.d", None),
    ("GET", "/ack/", None),
    ("GET", "/ack", None),
    ("GET", "/", None),
    ("GET", "/metrics", None),
    ("GET", "/ack/a%2Eb", None),
    ("GET", "/ack/a/b", None),
    ("POST", "/ack/a/pushover/x", None),
    ("GET", "/other/ack/abc", None),
    ("GET", "/ack/" + "a" * 1025, None),
])
def test_only_our_paths_and_methods_have_a_route(method: str, path: str,
                                                 route: Route | None) -> None:
    assert Rig().desk.route(method, path) == route


# -- GET shows, POST acknowledges ---------------------------------------------------------------


def test_a_get_shows_the_alert_and_a_button_and_acknowledges_nothing() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    link = rig.link(alert)
    for _ in range(3):  # a mail scanner, a chat preview, the phone itself
        reply = rig.get(link)
        assert (reply.status, reply.content_type, reply.persist) == (200, "text/html", False)
    page = text(reply)
    assert rig.state(alert) is AlertState.FIRING
    assert rig.target.acks == []
    assert "Jo &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;Co&quot;" in page
    assert "<script" not in page
    assert "First &lt;team&gt;" in page
    assert "262 mmHg" in page
    assert "limit 250 mmHg" in page
    assert re.search(r"since \d\d:\d\d", page)
    assert "<form method=\"post\">" in page  # posts back to this page's own address
    assert "action=" not in page
    assert "Acknowledge as Sam" in page
    assert "name=\"by\"" not in page  # the link names its person
    assert not re.search(r"(src|href)=", page)  # nothing fetched, nothing linked


def test_the_page_is_in_the_team_s_local_time() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    page = text(rig.get(rig.link(alert)))
    # T0 is 2030-03-17 17:46:40 UTC; London is on GMT then
    assert "since 17:46" in page


def test_the_page_style_is_the_one_the_policy_allows() -> None:
    rig = Rig()
    page = text(rig.get(rig.link(rig.raise_alert())))
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style[1].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in CSP
    assert "default-src 'none'" in CSP
    assert "form-action 'self'" in CSP


def test_a_post_acknowledges_as_the_link_s_person_exactly_as_an_mqtt_ack() -> None:
    by_link, by_mqtt = Rig(), Rig()
    alert = by_link.raise_alert()
    by_mqtt.raise_alert()
    by_link.clock.advance(2.0)
    by_mqtt.clock.advance(2.0)
    reply = by_link.post(by_link.link(alert))
    assert (reply.status, reply.persist) == (200, True)
    assert "Acknowledged by Sam at " in text(reply)
    mqtt = by_mqtt.handler.handle("bfr/t1/alerts/c1/over_pressure/ack", b'{"by": "Sam"}', False,
                                  by_mqtt.clock.t)
    [link] = by_link.target.acks
    assert link.store is mqtt.store is Store.LINES
    assert [t.change for t in link.alerts] == [Change.ACKNOWLEDGED]
    link_alert, mqtt_alert = link.alerts[0].alert, mqtt.alerts[0].alert
    assert link_alert.evolve(id="x") == mqtt_alert.evolve(id="x")  # ids are ULIDs of each rig
    assert (link_alert.state, link_alert.acknowledged_by) == (AlertState.ACKNOWLEDGED, "Sam")
    assert link.lines[0].replace(link_alert.id, "X") == mqtt.lines[0].replace(mqtt_alert.id, "X")
    assert by_link.counters.ack_links_acknowledged == 1


def test_a_link_works_once() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    link = rig.link(alert)
    assert rig.post(link).status == 200
    assert rig.post(link).status == 403
    assert rig.get(link).status == 403
    assert len(rig.target.acks) == 1


def test_a_link_without_a_person_asks_for_a_name() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    link = rig.link(alert, person="")
    page = text(rig.get(link))
    assert "name=\"by\"" in page
    assert "required" in page
    unnamed = rig.post(link, {"by": "  \u200b "})
    assert unnamed.status == 400
    assert "Say who you are" in text(unnamed)
    assert rig.state(alert) is AlertState.FIRING
    named = rig.post(link, {"by": "  Alex\x00 <coach>\n\n  Smith " + "x" * 100})
    assert named.status == 200
    now = rig.engine.open_alert("t1", "c1", AlertKind.OVER_PRESSURE)
    assert now is not None
    assert now.acknowledged_by == ("Alex <coach> Smith " + "x" * 100)[:64]
    assert "Alex &lt;coach&gt;" in text(named)


def test_a_name_sent_with_a_link_that_names_its_person_is_ignored() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    rig.post(rig.link(alert), {"by": "Mallory"})
    now = rig.engine.open_alert("t1", "c1", AlertKind.OVER_PRESSURE)
    assert now is not None
    assert now.acknowledged_by == "Sam"


def test_an_already_acknowledged_alert_may_be_acknowledged_again_as_over_mqtt() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    rig.handler.handle("bfr/t1/alerts/c1/over_pressure/ack", b'{"by": "Kim"}', False, rig.clock.t)
    link = rig.link(alert)
    assert "Already acknowledged by Kim" in text(rig.get(link))
    assert rig.post(link).status == 200
    now = rig.engine.open_alert("t1", "c1", AlertKind.OVER_PRESSURE)
    assert now is not None
    assert now.acknowledged_by == "Sam"


# -- refused ------------------------------------------------------------------------------------


def test_tampered_expired_foreign_and_over_long_links_are_a_bare_403() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    good = rig.link(alert)
    body, mac = good.split(".")
    links = {
        "tampered": f"{body[:-2]}{'AA' if body[-2:] != 'AA' else 'BB'}.{mac}",
        "other secret": sign(b"z" * 32, alert_id=alert.id, team="t1", cuff="c1",
                             kind="over_pressure", person="Sam",
                             expires_at=int(rig.clock.t) + 60),
        "expired": rig.link(alert, expires_at=int(rig.clock.t) - 1),
        "other team": rig.link(alert, team="t2"),  # signed, but c1 is not t2's
        "unknown cuff": rig.link(alert, cuff="c404"),
        "no such kind": rig.link(alert, kind="over_everything"),
        "too long-lived": rig.link(alert, expires_at=int(rig.clock.t) + TTL + 3600),
    }
    for why, link in links.items():
        for reply in (rig.get(link), rig.post(link)):
            assert (reply.status, reply.body) == (403, b""), why
    assert rig.state(alert) is AlertState.FIRING
    assert rig.target.acks == []
    assert rig.counters.ack_links_refused == 2 * len(links)


def test_a_link_to_an_old_alert_never_acknowledges_the_new_one() -> None:
    rig = Rig()
    old = rig.raise_alert()
    link = rig.link(old)
    # back in range for long enough to resolve, past the flap guard: a new alert, a new id
    for i, t in enumerate(range(2, 40)):
        rig.clock.advance(1.0)
        reading = {"ts": int(rig.clock.t * 1000), "seq": 10 + i, "pressure_mmhg": 120.0,
                   "elapsed_s": 10.0 + t}
        rig.handler.handle("bfr/t1/cuffs/c1/telemetry", json.dumps(reading).encode(), False,
                           rig.clock.t)
        rig.handler.tick()
    assert rig.state(old) is None
    new = rig.raise_alert(seq=100)
    assert new.id != old.id
    for reply in (rig.get(link), rig.post(link)):
        assert reply.status == 410
        assert "no longer open" in text(reply)
    assert rig.state(new) is AlertState.FIRING
    assert rig.target.acks == []


def test_the_probe_answers_a_get_and_acknowledges_nothing() -> None:
    rig = Rig()
    rig.raise_alert()
    probe = probe_token(SECRET, now=rig.clock.t)
    assert (rig.get(probe).status, rig.get(probe).body) == (200, PROBE_ANSWER)
    assert rig.post(probe).status == 403
    other = probe_token(b"q" * 32, now=rig.clock.t)
    assert rig.get(other).status == 403


def test_when_full_of_used_links_a_tap_is_refused_not_a_link_forgotten() -> None:
    rig = Rig(cap=1)
    first = rig.raise_alert("c1")
    second = rig.raise_alert("c2")
    assert rig.post(rig.link(first)).status == 200
    assert rig.post(rig.link(second)).status == 503
    assert rig.state(second) is AlertState.FIRING
    rig.clock.advance(TTL + 1)  # the first link expired: room again
    assert rig.post(rig.link(second)).status == 200


# -- Pushover's callback ------------------------------------------------------------------------

# the fields Pushover POSTs to a callback URL once its emergency receipt is acknowledged
PUSHOVER_FORM = {"receipt": "rLqVuqTRh62UzxtmqiaLzQmVcPgiCy", "acknowledged": "1",
                 "acknowledged_at": str(int(T0)),
                 "acknowledged_by": "uQiRzpo4DXghDmr9QzzfQu27cmVRsG",
                 "acknowledged_by_device": "sams-iphone"}


@pytest.mark.parametrize(("person", "form", "by"), [
    ("Sam", PUSHOVER_FORM, "Sam"),
    ("", PUSHOVER_FORM, "sams-iphone (Pushover)"),
    ("", {**PUSHOVER_FORM, "acknowledged_by_device": ""}, "Pushover"),
])
def test_pushover_s_callback_acknowledges(person: str, form: dict[str, str], by: str) -> None:
    rig = Rig()
    alert = rig.raise_alert()
    link = rig.link(alert, person=person)
    reply = rig.desk.pushover(Route(link, pushover=True), form, rig.clock.t)
    assert (reply.status, reply.persist) == (200, True)
    now = rig.engine.open_alert("t1", "c1", AlertKind.OVER_PRESSURE)
    assert now is not None
    assert (now.state, now.acknowledged_by) == (AlertState.ACKNOWLEDGED, by)
    again = rig.desk.pushover(Route(link, pushover=True), form, rig.clock.t)
    assert again.status == 403


def test_a_pushover_callback_that_acknowledges_nothing_is_refused() -> None:
    rig = Rig()
    alert = rig.raise_alert()
    link = rig.link(alert)
    for form in ({**PUSHOVER_FORM, "acknowledged": "0"}, {}):
        assert rig.desk.pushover(Route(link, pushover=True), form, rig.clock.t).status == 403
    assert rig.state(alert) is AlertState.FIRING


# -- whatever arrives never acknowledges ----------------------------------------------------------

_TOKEN_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=400) | st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=400)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(token=_TOKEN_TEXT, name=st.text(max_size=80), pushover=st.booleans())
def test_random_links_never_acknowledge(token: str, name: str, pushover: bool) -> None:
    rig = _SHARED
    path = f"/ack/{token}" + ("/pushover" if pushover else "")
    for method in ("GET", "POST"):
        route = rig.desk.route(method, path)
        if route is None:
            continue
        form = {"by": name, "acknowledged": "1", "acknowledged_by_device": name}
        reply = (rig.desk.pushover(route, form, rig.clock.t) if route.pushover
                 else rig.desk.tap(route, form, rig.clock.t))
        assert reply.status == 403
        assert reply.body == b""
    assert rig.target.acks == []
    assert rig.state(_SHARED_ALERT) is AlertState.FIRING


_SHARED = Rig()
_SHARED_ALERT = _SHARED.raise_alert()


@settings(max_examples=200, deadline=None)
@given(where=st.integers(min_value=0), char=st.sampled_from(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."))
def test_a_valid_link_with_one_character_changed_never_acknowledges(where: int, char: str) -> None:
    good = _SHARED.link(_SHARED_ALERT)
    i = where % len(good)
    changed = good[:i] + char + good[i + 1:]
    if changed == good:
        return
    assert _SHARED.post(changed).status == 403
    assert _SHARED.target.acks == []


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "clean"), [
    ("Sam", "Sam"), ("  Sam \t (physio)\n", "Sam (physio)"), ("\x1b[31mred\x1b[0m", "[31mred[0m"),
    ("a\u202eb", "ab"), ("", ""), ("x" * 100, "x" * 64),
])
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean
