"""One-tap acknowledgement in pushes (SPEC §3, issue 16): the link a push carries, and how.

A push about a firing alert (raised, reopened, refired, escalated, or a rise in severity
while it fires) carries a link of its own when `[ack]` is on (`public_url` set) and a secret
is available: a token (core.acktoken) naming the alert and the route's `person`, with its
own nonce, expiring `link_ttl_s` after the push is sent (each attempt at sending it signs
anew). Resolutions and pushes about an acknowledged alert carry none. By service:

- ntfy: an `http` action button, "Acknowledge", that POSTs to the link and clears the
  notification; through Apprise (its ntfy plugin's `actions`, sent as `X-Actions`).
- Pushover at emergency priority: the receipt's `callback` is the link's `/pushover` form,
  so acknowledging the emergency in the Pushover app acknowledges the alert; Apprise has no
  `callback`, so alerts.pushover sends these itself, the expiry cut to the token's lifetime.
- Pushover below emergency (or end-to-end encrypted): the link as the supplementary URL
  (`url`, `url_title`); through Apprise.
- JSON webhooks: the link as the body's last line and as an `ack_url` field; through
  Apprise (payload extras, as a route URL's `:ack_url=` would add it).
- Anything else (e-mail, Slack, Telegram, …): the link as the body's last line.

A route whose URL sets what we would (ntfy `actions`, Pushover `url`) keeps its own and gets
the link in the text: ntfy takes at most three actions and a push it refuses is lost.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import apprise

from alerts.model import Alert, AlertState, Change, Transition
from alerts.pushover import PushoverTarget, pushover_target
from alerts.routes import load_apprise, service_fields
from core import acktoken

if TYPE_CHECKING:  # alerts/ imports core.model only at run time (docs/architecture.md)
    from core.config import Settings

__all__ = [
    "ACK_LABEL",
    "JSON_FIELD",
    "PUSHOVER_URL_MAX",
    "AckLink",
    "AckLinks",
    "AckPlan",
    "Carrier",
    "Style",
    "carrier_for",
    "ntfy_actions",
    "wants_ack",
]

log = logging.getLogger("alerts.push")

ACK_LABEL: Final = "Acknowledge"  # the ntfy button and the Pushover link title
JSON_FIELD: Final = "ack_url"  # the JSON webhook's field holding the link
# Pushover refuses a supplementary URL longer than this (https://pushover.net/api#limits);
# a longer link (a long public_url, long ids) goes in the text instead.
PUSHOVER_URL_MAX: Final = 512


def wants_ack(transition: Transition) -> bool:
    """A push about a firing alert: it gets an ack link (never a resolution or an ack)."""
    return (transition.alert.state is AlertState.FIRING
            and transition.change not in (Change.RESOLVED, Change.ACKNOWLEDGED))


@dataclass(frozen=True, slots=True)
class AckLink:
    """One push's signed link: the page (GET shows, POST acknowledges) and Pushover's form."""

    page: str
    pushover: str
    expires_at: int  # Unix seconds
    # a link for no one in particular (the route has no `person`): the page asks for a name,
    # so a button must open it rather than POST to it
    asks_name: bool = False


@dataclass(frozen=True, slots=True)
class AckLinks:
    """Signs a link per push under the `[ack]` secret; `from_settings` gives None when off."""

    public_url: str
    secret: bytes = field(repr=False)
    ttl_s: float
    wall_clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if len(self.secret) < acktoken.MIN_SECRET_BYTES or self.ttl_s <= 0:
            raise ValueError(f"the ack secret must be at least {acktoken.MIN_SECRET_BYTES} "
                             "bytes and ttl_s > 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> AckLinks | None:
        """Links for `[ack]`; None (pushes carry none) while `public_url` is unset, and, with
        a warning, when no usable secret is configured."""
        ack = settings.ack
        if not ack.enabled:
            return None
        why = ""
        try:
            secret = ack.secret_bytes()
        except OSError as exc:
            secret, why = None, f"ack.secret_file unreadable ({exc.strerror or type(exc).__name__})"
        if secret is None:
            why = why or "no ack.secret (CUFFWATCH_ACK__SECRET) or ack.secret_file"
        elif len(secret) < acktoken.MIN_SECRET_BYTES:
            secret, why = None, f"the ack secret is shorter than {acktoken.MIN_SECRET_BYTES} bytes"
        if secret is None:
            log.warning("push: [ack] public_url is set but %s: pushes carry no ack link", why)
            return None
        return cls(ack.public_url, secret, ack.link_ttl_s)

    def make(self, alert: Alert, person: str) -> AckLink:
        """A new link (own nonce) to acknowledge `alert` as `person`, valid for ttl_s from now."""
        expires_at = int(self.wall_clock() + self.ttl_s)
        token = acktoken.sign(
            self.secret, alert_id=alert.id, team=alert.team, cuff=alert.cuff,
            kind=alert.kind.value, person=person, expires_at=expires_at,
        )
        return AckLink(
            page=acktoken.ack_url(self.public_url, token),
            pushover=acktoken.ack_url(self.public_url, token, pushover=True),
            expires_at=expires_at,
            asks_name=not person,
        )


# Stands in for a link when a route is loaded, to check that its service takes one.
_PROBE: Final = AckLink("https://cuffwatch.invalid/ack/probe",
                        "https://cuffwatch.invalid/ack/probe/pushover", 0)


def ntfy_actions(url: str, *, asks_name: bool = False) -> str:
    """ntfy's `actions` (JSON form): one `http` button POSTing to `url`, clearing the push; or,
    for a link whose page asks who acknowledges, a `view` button opening it."""
    action: dict[str, Any] = (
        {"action": "view", "label": ACK_LABEL, "url": url, "clear": True} if asks_name else
        {"action": "http", "label": ACK_LABEL, "url": url, "method": "POST", "clear": True}
    )
    return json.dumps([action], separators=(",", ":"))


class Style(enum.Enum):
    """How a route's service carries the link."""

    ACTION = "ntfy action"
    CALLBACK = "pushover callback"
    PUSHOVER_URL = "pushover url"
    JSON_FIELD = "json field"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class AckPlan:
    """What one push does with its link."""

    # the route's service fields (secret: keys, tokens), link built in
    service: dict[str, Any] | None = field(default=None, repr=False)
    text_link: str | None = None  # the link as the body's last line
    callback: str | None = None  # Pushover's receipt callback (alerts.pushover sends)


@dataclass(frozen=True, slots=True, eq=False)
class Carrier:
    """A route's service as loaded (its URL, or the critical one) and how it carries a link."""

    apprise: apprise.Apprise
    style: Style = Style.TEXT
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False)  # secret: keys, tokens
    pushover: PushoverTarget | None = None  # Style.CALLBACK: what our client sends

    def plan(self, link: AckLink) -> AckPlan:
        """How a push through this service carries `link`."""
        url = link.page
        if self.style is Style.CALLBACK:
            return AckPlan(callback=link.pushover)
        if self.style is Style.ACTION:
            return AckPlan(service={**self.fields,
                                    "actions": ntfy_actions(url, asks_name=link.asks_name)})
        if self.style is Style.PUSHOVER_URL and len(url) <= PUSHOVER_URL_MAX:
            return AckPlan(service={**self.fields, "supplemental_url": url,
                                    "supplemental_url_title": ACK_LABEL})
        if self.style is Style.JSON_FIELD:
            payload = {**self.fields.get("payload", {}), JSON_FIELD: url}
            return AckPlan(service={**self.fields, "payload": payload}, text_link=url)
        return AckPlan(text_link=url)


def _style(fields: Mapping[str, Any], service: Any) -> Style:
    schema = fields.get("schema")
    if schema in ("ntfy", "ntfys"):
        return Style.TEXT if fields.get("actions") else Style.ACTION
    if schema == "pover":
        return Style.TEXT if getattr(service, "supplemental_url", None) else Style.PUSHOVER_URL
    if schema in ("json", "jsons"):
        return Style.JSON_FIELD
    return Style.TEXT


def carrier_for(url: str, obj: apprise.Apprise) -> Carrier:
    """How pushes through `obj` (Apprise holding exactly `url`) carry a link."""
    fields = service_fields(url)
    if fields is None:
        return Carrier(obj)
    service = next(iter(obj))
    target = pushover_target(service)
    if target is not None:
        return Carrier(obj, Style.CALLBACK, fields, target)
    carrier = Carrier(obj, _style(fields, service), fields)
    probe = carrier.plan(_PROBE).service
    if probe is not None and load_apprise(probe)[1] is not None:
        return Carrier(obj)  # the service will not take the link its way: text it is
    return carrier
