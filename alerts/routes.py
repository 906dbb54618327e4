"""Push routes: what one route is, where the routes come from, and its URL made ready to send.

A route is an Apprise URL (secret: it carries tokens and passwords) plus which alerts it gets.
It is named everywhere by its label, `t1/0-ntfy` (team, position, scheme), never by its URL.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import apprise
from apprise.plugins import url_to_dict

from alerts.errors import PushConfigError
from core.model import Severity

if TYPE_CHECKING:  # alerts/ imports core.model only at run time (docs/architecture.md)
    from core.config import Settings

__all__ = [
    "CRITICAL_PRIORITY",
    "RouteSpec",
    "critical_url",
    "load_apprise",
    "route_label",
    "routes_from_settings",
    "service_fields",
]

# Each service's highest priority, as the query parameter and value Apprise reads, by scheme:
# used for critical alerts when the route's URL does not set that parameter itself.
# Pushover's emergency priority repeats until acknowledged in the Pushover app; Apprise
# supplies its required interval (900 s) and expiry (3600 s) unless the URL sets
# `interval`/`expire`.
_HIGHEST_PRIORITY: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("priority", "max"): ("ntfy", "ntfys"),
    ("priority", "emergency"): (
        "pover", "gotify", "gotifys", "prowl", "psafer", "psafers", "join", "opsgenie",
    ),
    ("level", "critical"): ("bark", "barks"),
}
CRITICAL_PRIORITY: Mapping[str, tuple[str, str]] = {
    scheme: rule for rule, schemes in _HIGHEST_PRIORITY.items() for scheme in schemes
}

_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]{0,15}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec:
    """One push route: an Apprise URL (secret) and which alerts it receives."""

    label: str  # names the route in logs and metrics; never derived from more than the scheme
    url: str = field(repr=False)  # carries tokens/passwords: never logged
    min_severity: Severity = Severity.WARNING
    escalation: bool = False  # True: receives escalations only
    max_per_minute: int = 30
    person: str = ""  # acknowledged_by for a tap on this route's pushes ("": the page asks)


def route_label(team: str, index: int, url: str) -> str:
    """`t1/0-ntfy`: team, position in the team's list, and the URL's scheme (nothing else)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return f"{team}/{index}-{scheme if _SCHEME_RE.match(scheme) else 'url'}"


def routes_from_settings(settings: Settings) -> dict[str, list[RouteSpec]]:
    """Every team's push routes from the configuration (reads `url_file` secrets).

    Raises PushConfigError listing every route whose `url_file` cannot be read.
    """
    out: dict[str, list[RouteSpec]] = {}
    problems: list[str] = []
    for team_id, team in settings.teams.items():
        specs: list[RouteSpec] = []
        for index, route in enumerate(team.routes):
            try:
                url = route.secret_url()
            except OSError as exc:
                problems.append(f"teams.{team_id}.routes[{index}]: url_file unreadable: {exc}")
                continue
            specs.append(
                RouteSpec(
                    label=route_label(team_id, index, url),
                    url=url,
                    min_severity=route.severity,
                    escalation=route.escalation,
                    max_per_minute=route.max_per_minute,
                    person=route.person,
                )
            )
        out[team_id] = specs
    if problems:
        raise PushConfigError(problems)
    return out


def critical_url(url: str) -> str:
    """`url` with its service's highest priority added, unless it sets that parameter."""
    parts = urlsplit(url)
    rule = CRITICAL_PRIORITY.get(parts.scheme.lower())
    if rule is None:
        return url
    key, value = rule
    if any(k.lower() == key for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return url
    query = f"{parts.query}&{key}={value}" if parts.query else f"{key}={value}"
    return urlunsplit(parts._replace(query=query))


def service_fields(url: str) -> dict[str, Any] | None:
    """The URL as the keyword arguments of its Apprise service (`schema` names it), or None.

    `load_apprise` takes them back, amended: how a push carries its ack link (alerts.ackpush).
    """
    fields = url_to_dict(url, secure_logging=True)  # type: ignore[no-untyped-call]
    return cast("dict[str, Any] | None", fields)


def load_apprise(url: str | Mapping[str, Any]) -> tuple[apprise.Apprise, str | None]:
    """An Apprise object holding exactly this one URL (or `service_fields` of one), or the
    reason it cannot (no service in it)."""
    # No Apprise-level deadline or retries (ours are per attempt), and our own User-Agent.
    asset = apprise.AppriseAsset(service_timeout=0, app_id="cuffwatch")
    obj = apprise.Apprise(asset=asset)
    with warnings.catch_warnings():
        # Loading Apprise's e-mail plugin imports the stdlib's deprecated imghdr (3.11).
        warnings.filterwarnings("ignore", "'imghdr' is deprecated", DeprecationWarning)
        # a copy: Apprise writes the asset and tags into the fields it is given
        loaded = obj.add(url if isinstance(url, str) else dict(url))
    if not loaded or len(obj) == 0:
        return obj, "Apprise cannot load this URL (unknown scheme or bad syntax)"
    if len(obj) != 1:
        return obj, "one Apprise URL per route (this one reads as several)"
    for service in obj:
        # Our token bucket is the route's rate limit; Apprise's built-in 5.5 s pause between
        # two sends of one plugin would hold a critical push behind the previous one.
        service.request_rate_per_sec = 0
    return obj, None
