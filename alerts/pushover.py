"""Pushover emergency pushes with a receipt callback: the one send Apprise cannot make.

Apprise's Pushover plugin sends emergency priority with `retry`/`expire` but has no
`callback`, the URL Pushover POSTs to when a recipient acknowledges the emergency in the
Pushover app (https://pushover.net/api/receipts#callback). A push about a firing alert on an
emergency-priority Pushover route therefore goes out here, on Pushover's documented message
API (https://pushover.net/api): one form POST to `messages.json` per recipient (the user key
with its devices, each delivery group key), `priority=2`, the route's `retry` and `expire`
and our `callback`. Everything else about the route (its keys, devices, groups, sound,
retry and expiry) is read by Apprise from the same route URL, so a route means the same
whichever path sends it; the dispatcher's retries, timeout and rate limit apply as to any
push. A route with end-to-end encryption (`key=`) stays with Apprise, which encrypts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableSet
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from apprise.plugins.pushover import NotifyPushover, PushoverPriority

from alerts.errors import PushFailedError
from alerts.render import PushMessage

__all__ = [
    "API_URL",
    "MESSAGE_MAX",
    "TITLE_MAX",
    "PushoverTarget",
    "emergency_form",
    "new_session",
    "pushover_target",
    "send_emergency",
]

log = logging.getLogger("alerts.push")

API_URL: Final = "https://api.pushover.net/1/messages.json"
# The API's limits (https://pushover.net/api#limits): longer fields are refused, so cut.
MESSAGE_MAX: Final = 1024
TITLE_MAX: Final = 250
# Socket timeouts as Apprise's HTTP plugins have them (connect 4 s, read 4 s); the
# dispatcher's per-attempt timeout stays the backstop.
CONNECT_TIMEOUT_S: Final = 4.0
READ_TIMEOUT_S: Final = 4.0
# Apprise's word for "every device of the user" (it sends it as a device name; we leave
# `device` out, which is what the API documents for all devices).
_ALL_DEVICES: Final = "ALL_DEVICES"


@dataclass(frozen=True, slots=True)
class PushoverTarget:
    """An emergency-priority Pushover route as Apprise read its URL (keys never in a repr)."""

    token: str = field(repr=False)
    # (user or group key, comma-separated devices or "" for all of them)
    recipients: tuple[tuple[str, str], ...] = field(repr=False)
    sound: str
    retry_s: int
    expire_s: int
    url: str | None = None  # the route's own supplementary URL, if its URL sets one
    url_title: str | None = None


def pushover_target(plugin: object) -> PushoverTarget | None:
    """The target of a loaded Apprise Pushover service at emergency priority and without
    end-to-end encryption, else None (Apprise sends it: not ours to do)."""
    if not isinstance(plugin, NotifyPushover):
        return None
    service: Any = plugin  # its attributes, as its constructor parsed them
    if service.priority != PushoverPriority.EMERGENCY:
        return None
    if service.encryption_key and service.e2ee:
        return None
    recipients: list[tuple[str, str]] = []
    if service.devices:
        devices = ",".join(d for d in service.devices if d != _ALL_DEVICES)
        recipients.append((str(service.user_key), devices))
    recipients.extend((str(group), "") for group in service.groups)
    return PushoverTarget(
        token=str(service.token),
        recipients=tuple(recipients),
        sound=str(service.sound or ""),
        retry_s=int(service.interval),
        expire_s=int(service.expire),
        url=service.supplemental_url or None,
        url_title=service.supplemental_url_title or None,
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def emergency_form(
    target: PushoverTarget, user: str, device: str, message: PushMessage, *,
    callback: str, expire_s: int,
) -> dict[str, str]:
    """The form fields of one emergency message to one recipient."""
    form = {
        "token": target.token,
        "user": user,
        "title": _cut(message.title, TITLE_MAX),
        "message": _cut(message.body, MESSAGE_MAX),
        "priority": str(int(PushoverPriority.EMERGENCY)),
        "retry": str(target.retry_s),
        "expire": str(expire_s),
        "callback": callback,
    }
    if device:
        form["device"] = device
    if target.sound:
        form["sound"] = target.sound
    if target.url:
        form["url"] = target.url
        if target.url_title:
            form["url_title"] = target.url_title
    return form


def new_session() -> aiohttp.ClientSession:
    """The dispatcher's HTTP session for these sends (call it in the event loop)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                      sock_read=READ_TIMEOUT_S),
        headers={"User-Agent": "cuffwatch"},
    )


def _accepted(status: int, body: bytes) -> bool:
    """HTTP 200 with `"status": 1`: the API queued the message (and made its receipt)."""
    if status != 200:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("status") == 1


async def send_emergency(
    session: aiohttp.ClientSession, api_url: str, target: PushoverTarget, message: PushMessage,
    *, callback: str, expire_s: int, done: MutableSet[str],
) -> None:
    """Send to every recipient not in `done` (adding each that is accepted); raise
    PushFailedError naming no key if one is refused or unreachable (the caller retries)."""
    for user, device in target.recipients:
        if user in done:  # accepted on an earlier attempt: a retry must not repeat it
            continue
        form = emergency_form(target, user, device, message, callback=callback, expire_s=expire_s)
        try:
            async with session.post(api_url, data=form) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError) as exc:
            raise PushFailedError(type(exc).__name__) from None
        if not _accepted(status, body):
            raise PushFailedError(f"Pushover answered HTTP {status}")
        done.add(user)
