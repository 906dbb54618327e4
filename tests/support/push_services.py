"""Local stand-ins for push services, for the one-tap ack tests (issue 16).

- `NtfyServer`: enough of ntfy's publish API (https://docs.ntfy.sh/publish/) to receive a
  push as ntfy would: JSON to the root URL or a body to `/<topic>`, parameters from headers
  (`X-Title`, `X-Priority`, `X-Actions`, …) or the query, the JSON body's own fields winning;
  action buttons parsed and checked as ntfy does (JSON or the "simple" format, at most three,
  known actions, a label, a URL for view/http); a Bearer token when one is set. It answers
  with the message as ntfy does, and refuses what ntfy refuses with a 400.
- `PushoverApi`: a stand-in for api.pushover.net's message API, DERIVED from Pushover's
  documentation (https://pushover.net/api, https://pushover.net/api/receipts), not recorded
  from the service: `POST /1/messages.json`, form or JSON; a known app token and user or
  group keys (30 characters of [A-Za-z0-9]), a user's devices; the documented limits
  (message 1024, title 250, url 512, url_title 100 characters); priority −2..2, and for 2
  (emergency) `retry` ≥ 30 and `expire` ≤ 10800 are required, and it answers with a
  `receipt`. `acknowledge(receipt)` does what Pushover does when the recipient acknowledges
  the emergency in the app: a form POST to the message's `callback` with `receipt`,
  `acknowledged=1`, `acknowledged_at`, `acknowledged_by` (the user key) and
  `acknowledged_by_device`.
- `TapRecorder`: stands in for the gateway's ack endpoint (built elsewhere): records every
  request (method, path, form) that a tap, a button or a callback makes, answers 200.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

__all__ = [
    "NtfyMessage",
    "NtfyServer",
    "PushoverApi",
    "Tap",
    "TapRecorder",
    "ntfy_server",
    "parse_ntfy_actions",
    "pushover_api",
    "tap_recorder",
]


async def _serve(handler: Any) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


# -- ntfy --------------------------------------------------------------------------------------

_TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
_PRIORITIES = {"1": 1, "min": 1, "2": 2, "low": 2, "3": 3, "default": 3, "4": 4, "high": 4,
               "5": 5, "max": 5, "urgent": 5}
_ACTIONS = ("view", "broadcast", "http")
_WITH_URL = ("view", "http")
_KEY = re.compile(r"([-.\w]+)\s*=\s*")


class NtfyError(ValueError):
    """What ntfy answers with a 400."""


def _simple_sections(text: str) -> list[list[tuple[str, str]]]:
    """The "simple" actions format as (key or "", value) sections per action: actions split
    at `;`, sections at `,`, values optionally quoted with " or ' (backslash escapes)."""
    actions: list[list[tuple[str, str]]] = []
    sections: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n":
            i += 1
        key = ""
        if m := _KEY.match(text, i):
            key, i = m.group(1), m.end()
        if i < n and text[i] in "\"'":
            quote, i, start = text[i], i + 1, i + 1
            while i < n and not (text[i] == quote and text[i - 1] != "\\"):
                i += 1
            if i >= n:
                raise NtfyError("unexpected end of input in a quoted value")
            value, i = text[start:i], i + 1
            while i < n and text[i] in " \t\r\n":
                i += 1
            if i < n and text[i] not in ",;":
                raise NtfyError(f"unexpected character {text[i]!r} after a quoted value")
        else:
            start = i
            while i < n and text[i] not in ",;":
                i += 1
            value = text[start:i].strip()
        sections.append((key, value))
        end = text[i] if i < n else ";"
        i += 1
        if end == ";":
            actions.append(sections)
            sections = []
    if sections:
        actions.append(sections)
    return actions


def _from_simple(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sections in _simple_sections(text):
        action: dict[str, Any] = {}
        for index, (written, value) in enumerate(sections):
            key = written or {0: "action", 1: "label"}.get(index, "")
            if not written and index == 2 and action.get("action") in _WITH_URL:
                key = "url"
            if not key:
                raise NtfyError(f"term {value!r} unknown")
            if key.startswith(("headers.", "extras.")):
                group, name = key.split(".", 1)
                action.setdefault(group, {})[name] = value
            elif key == "clear":
                if value.lower() not in ("true", "yes", "1", "false", "no", "0"):
                    raise NtfyError(f"clear={value!r} not allowed")
                action["clear"] = value.lower() in ("true", "yes", "1")
            elif key in ("action", "label", "url", "method", "body", "intent"):
                action[key] = value
            else:
                raise NtfyError(f"key {key!r} unknown")
        out.append(action)
    return out


def parse_ntfy_actions(text: str) -> list[dict[str, Any]]:
    """Action buttons as ntfy reads them (JSON array or simple format), checked; NtfyError."""
    text = text.strip()
    if text.startswith("["):
        try:
            actions = json.loads(text)
        except ValueError:
            raise NtfyError("actions: invalid JSON") from None
        if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
            raise NtfyError("actions: not a list of objects")
    else:
        actions = _from_simple(text)
    if len(actions) > 3:
        raise NtfyError("only 3 actions allowed")
    checked: list[dict[str, Any]] = []
    for raw in actions:
        action = {**raw, "action": str(raw.get("action", "")).lower(),
                  "id": secrets.token_hex(5)}
        if "method" in action:
            action["method"] = str(action["method"]).upper()
        if action["action"] not in _ACTIONS:
            raise NtfyError(f"action {action['action']!r} unknown")
        if not action.get("label"):
            raise NtfyError("parameter 'label' is required")
        if action["action"] in _WITH_URL and not action.get("url"):
            raise NtfyError(f"parameter 'url' is required for action {action['action']!r}")
        if action.get("method") in ("GET", "HEAD") and action.get("body"):
            raise NtfyError(f"parameter 'body' cannot be set if method is {action['method']}")
        checked.append(action)
    return checked


@dataclass
class NtfyMessage:
    """One message as ntfy stored it."""

    topic: str
    title: str
    message: str
    priority: int
    actions: list[dict[str, Any]]
    headers: dict[str, str]


class NtfyServer:
    """The publishing side of an ntfy server (see the module doc); `messages` in order."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.port = 0
        self.messages: list[NtfyMessage] = []
        self.refused: list[str] = []  # the error of each publish answered 4xx

    @staticmethod
    def _param(request: web.Request, overrides: dict[str, str], *names: str) -> str:
        for name in names:  # as ntfy's readParam: headers first, then the query
            if name in overrides:
                return overrides[name]
            if (value := request.headers.get(name)) is not None:
                return value
        for name in names:
            if (value := request.query.get(name)) is not None:
                return value
        return ""

    async def handle(self, request: web.Request) -> web.Response:
        if request.method not in ("POST", "PUT"):
            return web.json_response({"code": 40500, "http": 405, "error": "method not allowed"},
                                     status=405)
        if self.token is not None and request.headers.get("Authorization") != (
                f"Bearer {self.token}"):
            return web.json_response({"code": 40101, "http": 401, "error": "unauthorized"},
                                     status=401)
        try:
            message = await self._publish(request)
        except NtfyError as exc:
            self.refused.append(str(exc))
            return web.json_response({"code": 40000, "http": 400, "error": str(exc)},
                                     status=400)
        self.messages.append(message)
        return web.json_response({
            "id": secrets.token_hex(6), "time": int(time.time()), "event": "message",
            "topic": message.topic, "title": message.title, "message": message.message,
            "priority": message.priority, "actions": message.actions,
        })

    async def _publish(self, request: web.Request) -> NtfyMessage:
        raw = await request.read()
        topic = request.match_info["tail"]
        overrides: dict[str, str] = {}  # what a JSON body sets, as ntfy turns it into headers
        if not topic:  # JSON publishing to the root URL
            try:
                body = json.loads(raw)
            except ValueError:
                raise NtfyError("invalid JSON body") from None
            if not isinstance(body, dict):
                raise NtfyError("invalid JSON body")
            topic = str(body.get("topic", ""))
            text = str(body.get("message", ""))
            if body.get("title"):
                overrides["X-Title"] = str(body["title"])
            if body.get("priority"):
                overrides["X-Priority"] = str(body["priority"])
            if body.get("actions"):
                overrides["X-Actions"] = json.dumps(body["actions"])
        else:
            text = raw.decode("utf-8")
        if not _TOPIC.match(topic):
            raise NtfyError(f"invalid topic {topic!r}")
        priority_text = self._param(request, overrides, "X-Priority", "Priority", "prio", "p")
        priority = _PRIORITIES.get(priority_text.lower() or "3")
        if priority is None:
            raise NtfyError(f"invalid priority {priority_text!r}")
        actions_text = self._param(request, overrides, "X-Actions", "Actions", "Action",
                                   "actions", "action")
        return NtfyMessage(
            topic=topic,
            title=self._param(request, overrides, "X-Title", "Title", "t", "title"),
            message=text,
            priority=priority,
            actions=parse_ntfy_actions(actions_text) if actions_text else [],
            headers=dict(request.headers),
        )

    def url(self, topic: str) -> str:
        """The Apprise URL of `topic` on this server (with the token, if one is set)."""
        auth = f"{self.token}@" if self.token else ""
        return f"ntfy://{auth}127.0.0.1:{self.port}/{topic}?mode=private"


@contextlib.asynccontextmanager
async def ntfy_server(token: str | None = None) -> AsyncIterator[NtfyServer]:
    server = NtfyServer(token)
    runner, server.port = await _serve(server.handle)
    try:
        yield server
    finally:
        await runner.cleanup()


# -- Pushover ----------------------------------------------------------------------------------

_KEY_30 = re.compile(r"^[A-Za-z0-9]{30}$")
# Pushover's built-in sounds (https://pushover.net/api#sounds)
SOUNDS = frozenset({
    "pushover", "bike", "bugle", "cashregister", "classical", "cosmic", "falling", "gamelan",
    "incoming", "intermission", "magic", "mechanical", "pianobar", "siren", "spacealarm",
    "tugboat", "alien", "climb", "persistent", "echo", "updown", "vibrate", "none",
})
LIMITS = {"message": 1024, "title": 250, "url": 512, "url_title": 100}


def key30(seed: str) -> str:
    """A well-formed 30-character key (app token, user, group or receipt) from `seed`."""
    return (seed + string.ascii_letters)[:30]


@dataclass
class PushoverApi:
    """Pushover's message API as documented (see the module doc); `accepted` in order."""

    token: str
    users: dict[str, set[str]]  # user or group key -> its device names (groups: none)
    port: int = 0
    accepted: list[dict[str, str]] = field(default_factory=list)  # form fields + receipt
    refused: list[list[str]] = field(default_factory=list)  # the errors of each refusal
    fail_first: dict[str, int] = field(default_factory=dict)  # user -> times to answer 500

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/1/messages.json"

    def _errors(self, form: dict[str, str]) -> list[str]:
        errors: list[str] = []
        if form.get("token") != self.token:
            errors.append("application token is invalid")
        user = form.get("user", "")
        if not _KEY_30.match(user) or user not in self.users:
            errors.append("user identifier is not a valid user, group, or subscribed user key")
        for device in filter(None, form.get("device", "").split(",")):
            if device not in self.users.get(user, set()):
                errors.append(f"device name {device!r} is not valid for user")
        if not form.get("message"):
            errors.append("message cannot be blank")
        errors += [f"{name} is too long (over {limit} characters)"
                   for name, limit in LIMITS.items() if len(form.get(name, "")) > limit]
        if form.get("sound") and form["sound"] not in SOUNDS:
            errors.append("sound is invalid")
        try:
            priority = int(form.get("priority", "0"))
        except ValueError:
            priority = 99
        if not -2 <= priority <= 2:
            errors.append("priority is invalid")
        if priority == 2:
            try:
                retry, expire = int(form["retry"]), int(form["expire"])
            except (KeyError, ValueError):
                errors.append("retry and expire are required with priority 2")
            else:
                if retry < 30:
                    errors.append("retry must be at least 30 seconds")
                if not 0 < expire <= 10800:
                    errors.append("expire must be at most 10800 seconds")
            callback = form.get("callback", "")
            if callback and not re.match(r"^https?://", callback):
                errors.append("callback is not an http(s) URL")
        return errors

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        if request.method != "POST" or request.path != "/1/messages.json":
            return web.json_response({"status": 0, "errors": ["not found"],
                                      "request": request_id}, status=404)
        if request.content_type == "application/json":
            form = {k: str(v) for k, v in (await request.json()).items()}
        else:
            form = {k: str(v) for k, v in (await request.post()).items()}
        user = form.get("user", "")
        if self.fail_first.get(user, 0) > 0:
            self.fail_first[user] -= 1
            return web.Response(status=500, text="internal error")
        if errors := self._errors(form):
            self.refused.append(errors)
            return web.json_response({"status": 0, "errors": errors, "request": request_id},
                                     status=400)
        answer: dict[str, Any] = {"status": 1, "request": request_id}
        if form.get("priority") == "2":
            answer["receipt"] = form["receipt"] = key30(secrets.token_hex(15))
        self.accepted.append(form)
        return web.json_response(answer)

    async def acknowledge(self, receipt: str, device: str = "phone") -> tuple[int, str]:
        """The recipient acknowledged the emergency: Pushover POSTs to its callback; the
        callback's (HTTP status, body)."""
        form = next(m for m in self.accepted if m.get("receipt") == receipt)
        data = {"receipt": receipt, "acknowledged": "1",
                "acknowledged_at": str(int(time.time())), "acknowledged_by": form["user"],
                "acknowledged_by_device": device}
        async with aiohttp.ClientSession() as session, \
                session.post(form["callback"], data=data) as response:
            return response.status, await response.text()


@contextlib.asynccontextmanager
async def pushover_api(token: str, users: dict[str, set[str]]) -> AsyncIterator[PushoverApi]:
    api = PushoverApi(token, users)
    runner, api.port = await _serve(api.handle)
    try:
        yield api
    finally:
        await runner.cleanup()


# -- the ack endpoint's stand-in -----------------------------------------------------------------


@dataclass
class Tap:
    """One request to the ack endpoint's stand-in."""

    method: str
    path: str
    form: dict[str, str]


@dataclass
class TapRecorder:
    """Records what reaches `{url}/ack/…`; the real endpoint is the gateway's (gateway/)."""

    port: int = 0
    prefix: str = "/cuffwatch"  # a public_url with a path, as behind a reverse proxy
    taps: list[Tap] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.can_read_body else {}
        self.taps.append(Tap(request.method, request.path, {k: str(v) for k, v in form.items()}))
        return web.Response(text="ok")


@contextlib.asynccontextmanager
async def tap_recorder() -> AsyncIterator[TapRecorder]:
    recorder = TapRecorder()
    runner, recorder.port = await _serve(recorder.handle)
    try:
        yield recorder
    finally:
        await runner.cleanup()
