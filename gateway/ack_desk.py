"""The ack endpoint's decisions (SPEC §3 one-tap acknowledgement): no I/O, an injected clock.

`AckDesk` is told a request's route (`route`), then admits its link (`admit`: the token
verified, unused, naming the alert that is open now) and answers a GET with the alert's page
or a POST by acknowledging it (`tap`, `pushover`). It answers everything else with a bare
403 (a link that is not ours, tampered with, expired, used, or naming another team's cuff)
or 404 (any other path or method). `gateway/ack_endpoint.py` is the server around it.

Only a POST acknowledges: mail scanners and chat previews fetch every URL they see, with GET.
A link works once: its nonce is remembered (`UsedLinks`) once it has acknowledged.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from alerts.model import Alert
from core.acktoken import MAX_TOKEN_CHARS, PROBE_KIND, AckClaims, BadToken, verify
from gateway.ack_guard import UsedLinks
from gateway.ack_page import AckPages
from gateway.handler import ACK_BY_MAX_CHARS
from gateway.metrics import Counters

log = logging.getLogger("cuffwatch.gateway.ack")

# A token we signed lives link_ttl_s; one claiming to live longer than that (plus this, for
# clocks and a shortened link_ttl_s) is refused. It also bounds how long a nonce is remembered.
EXPIRY_SLACK_S = 300
_TOKEN: Final = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_TOKEN_CHARS}}}")
PROBE_ANSWER: Final = b"cuffwatch ack endpoint\n"
PUSHOVER_DEVICE_MAX_CHARS = 25  # Pushover's own limit on a device name


class AckTarget(Protocol):
    """The gateway as the endpoint sees it: alerts to look at, and the ack to apply."""

    def knows(self, team: str, cuff: str, kind: str) -> bool:
        """Whether team, cuff (of that team) and alert kind are ones this gateway serves."""
        ...

    def open_alert(self, team: str, cuff: str, kind: str) -> Alert | None:
        """The open alert of that kind on that cuff, as published now."""
        ...

    def acknowledge(self, team: str, cuff: str, kind: str, by: str) -> Alert | None:
        """Acknowledge it exactly as an `…/ack` message would; the alert as it now is."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    """A path of ours: `/ack/{token}`, or Pushover's callback `/ack/{token}/pushover`."""

    token: str
    pushover: bool


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer. `persist`: a link was used; make that durable before answering."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    persist: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


FORBIDDEN: Final = Reply(403)
NOT_FOUND: Final = Reply(404)
UNAVAILABLE: Final = Reply(503)


def _html(status: int, body: bytes, *, persist: bool = False) -> Reply:
    return Reply(status, body, "text/html", persist)


def clean_name(text: str) -> str:
    """A name typed into the page or sent by a device, fit for `acknowledged_by`: control and
    format characters dropped, runs of white space made one space, at most 64 characters."""
    kept = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in " \t\n")
    return " ".join(kept.split())[:ACK_BY_MAX_CHARS].strip()


class AckDesk:
    """Decides what each request to the ack endpoint gets; see the module docstring."""

    def __init__(
        self,
        *,
        secret: bytes,
        link_ttl_s: float,
        prefix: str,
        target: AckTarget,
        used: UsedLinks,
        pages: AckPages,
        counters: Counters,
    ) -> None:
        self._secret = secret
        self._max_ttl_s = link_ttl_s + EXPIRY_SLACK_S
        self._prefix = prefix.rstrip("/")  # public_url's path: `/ack/…` is served with it too
        self.target = target
        self.used = used
        self.pages = pages
        self.counters = counters

    def route(self, method: str, path: str) -> Route | None:
        """Our route for this method and (undecoded) path, or None: a bare 404."""
        if self._prefix and path.startswith(self._prefix + "/"):
            path = path[len(self._prefix):]
        parts = path.split("/")
        if len(parts) < 3 or parts[:2] != ["", "ack"] or not _TOKEN.fullmatch(parts[2]):
            return None
        if len(parts) == 3 and method in ("GET", "POST"):
            return Route(parts[2], pushover=False)
        if len(parts) == 4 and parts[3] == "pushover" and method == "POST":
            return Route(parts[2], pushover=True)
        return None

    def admit(self, route: Route, now: float) -> AckClaims | Reply:
        """The link's claims if it names the alert open now; else what to answer instead."""
        try:
            claims = verify(self._secret, route.token, now=now)
        except BadToken as exc:
            return self._refuse(f"not a valid link ({exc})")
        if claims.expires_at > now + self._max_ttl_s:
            return self._refuse("a link living longer than link_ttl_s")
        if self.used.seen(claims.nonce):
            return self._refuse(f"{_names(claims)}: link already used")
        if claims.kind == PROBE_KIND:
            return claims
        if not self.target.knows(claims.team, claims.cuff, claims.kind):
            return self._refuse(f"{_names(claims)}: not a cuff or kind of this gateway's teams")
        alert = self.target.open_alert(claims.team, claims.cuff, claims.kind)
        if alert is None or alert.id != claims.alert_id:
            self.counters.ack_links_refused += 1
            log.info("ack link for %s: alert %s is no longer open", _names(claims),
                     claims.alert_id[:32])
            return _html(410, self.pages.gone())
        return claims

    def visit(self, claims: AckClaims) -> Reply:
        """A GET of an admitted link: the alert's page and its button; acknowledges nothing."""
        if claims.kind == PROBE_KIND:  # `cuffwatch check`: only we hold the secret it signed
            return Reply(200, PROBE_ANSWER)
        alert = self.target.open_alert(claims.team, claims.cuff, claims.kind)
        if alert is None:
            return _html(410, self.pages.gone())
        return _html(200, self.pages.alert(alert, person=claims.person))

    def tap(self, route: Route, form: Mapping[str, str], now: float) -> Reply:
        """A POST of the page's button (or an app's action): acknowledge, as the link's person
        or the name the page asked for. Admits the link again: another tap may have used it
        while this one's body arrived."""
        claims = self.admit(route, now)
        if isinstance(claims, Reply):
            return claims
        if claims.kind == PROBE_KIND:
            return self._refuse("a probe link POSTed")
        by = claims.person or clean_name(form.get("by", ""))
        if not by:
            alert = self.target.open_alert(claims.team, claims.cuff, claims.kind)
            if alert is None:
                return _html(410, self.pages.gone())
            return _html(400, self.pages.alert(
                alert, person="", problem="Say who you are: your name goes with the ack."))
        return self._acknowledge(claims, by, now, page=True)

    def pushover(self, route: Route, form: Mapping[str, str], now: float) -> Reply:
        """Pushover's callback: the emergency receipt was acknowledged in the app
        (`acknowledged=1`, `acknowledged_by` a user key, `acknowledged_by_device`)."""
        claims = self.admit(route, now)
        if isinstance(claims, Reply):
            return Reply(claims.status)  # Pushover reads no page
        if claims.kind == PROBE_KIND or form.get("acknowledged") != "1":
            return self._refuse("a Pushover callback that acknowledges nothing")
        device = clean_name(form.get("acknowledged_by_device", ""))[:PUSHOVER_DEVICE_MAX_CHARS]
        by = claims.person or (f"{device} (Pushover)" if device else "Pushover")
        return self._acknowledge(claims, by, now, page=False)

    def _acknowledge(self, claims: AckClaims, by: str, now: float, *, page: bool) -> Reply:
        if not self.used.use(claims.nonce, claims.expires_at, now):
            log.error("ack link for %s refused: %d used links remembered, none expired",
                      _names(claims), len(self.used))
            return UNAVAILABLE
        alert = self.target.acknowledge(claims.team, claims.cuff, claims.kind, by)
        if alert is None:  # cannot happen: admitted just now, on this same loop turn
            return _html(410, self.pages.gone(), persist=True)
        self.counters.ack_links_acknowledged += 1
        log.info("%s acknowledged by %s through a link", _names(claims), by)
        if not page:
            return Reply(200, b"acknowledged\n", persist=True)
        return _html(200, self.pages.done(alert), persist=True)

    def _refuse(self, why: str) -> Reply:
        self.counters.ack_links_refused += 1
        log.debug("ack endpoint: 403: %s", why)
        return FORBIDDEN


def _names(claims: AckClaims) -> str:
    """team/cuff kind of a link, for the log (signed by us, so our own ids)."""
    return f"{claims.team[:64]}/{claims.cuff[:64]} {claims.kind[:32]}"
