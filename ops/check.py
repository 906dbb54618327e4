"""`cuffwatch check`: the config is valid, and every connection it names answers.

One line per check, in a fixed order, each starting with its outcome:

    ok    it answered (nothing was sent to a push service)
    FAIL  a problem: check exits 1
    warn  works, but leaves something undone (a team whose criticals escalate to nobody)
    skip  not tried, and why (a cloud push service is reached only by a real push)

Push routes are tried without sending a push: a webhook (json/xml/form) gets a HEAD, a
self-hosted ntfy server the topic's `auth` endpoint, an SMTP server EHLO and the login. With
`--send-test` every route instead gets a push labelled as a test. No line shows a secret:
URLs are printed masked, and known secrets are scrubbed from every message. While `[ack]` is
on, `public_url` gets a GET of a probe link signed with the ack secret: only the endpoint of a
gateway holding the same secret answers it as ours, so `ok` proves the proxy, its TLS and the
secret at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import smtplib
import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from alerts.routes import load_apprise, route_label
from core.acktoken import MIN_SECRET_BYTES, probe_token
from core.config import Route, Settings
from core.config_checks import route_warnings
from core.redact import mask_url, scrub
from gateway.ack_desk import PROBE_ANSWER
from gateway.mqtt import MqttError
from gateway.mqtt_build import link_from_settings

Outcome = Literal["ok", "FAIL", "warn", "skip"]

# Apprise plugins check can reach without sending anything, by their `protocol` name
_WEBHOOKS = {"json": "JSON webhook", "xml": "XML webhook", "form": "form webhook"}
TEST_TITLE = "cuffwatch check: test push"


@dataclass(frozen=True, slots=True)
class Line:
    """One line of check's report."""

    outcome: Outcome
    what: str
    detail: str

    def text(self, secrets: list[str]) -> str:
        return f"{self.outcome:<4} {self.what}: {scrub(self.detail, secrets)}"


def _reason(exc: BaseException) -> str:
    """A connection failure in a few words ("connection refused", "timed out")."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        exc = exc.os_error
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # asyncio's own text names the address again
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def _influx_error(status: int, body: str) -> str:
    """InfluxDB's own error message (a missing database answers 200 with one), on one line."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        data = json.loads(body)
        errors = [data.get("error"), *(r.get("error") for r in data.get("results", []))]
        if found := [str(e) for e in errors if e]:
            return "; ".join(found)
    return f"{status} {' '.join(body.split())[:200]}"


# -- broker, influx, spool ------------------------------------------------------------------------


async def _check_broker(s: Settings, timeout_s: float) -> Line:
    b = s.broker
    shown = mask_url(b.url, tokens=False)
    try:
        link = link_from_settings(
            b, client_id=f"cuffwatch-check-{uuid.uuid4().hex[:8]}", clean_start=True
        )
    except (OSError, ValueError) as exc:  # TLS files or the password file unreadable
        what = "TLS certificates or password file" if b.tls else "password file"
        return Line("FAIL", "broker", f"{shown}: cannot load the {what}: {exc}")
    try:
        await asyncio.wait_for(link.connect(retry=False), timeout_s)
    except (MqttError, TimeoutError) as exc:
        return Line("FAIL", "broker", f"{shown}: {exc or 'timed out'}")
    finally:
        await link.disconnect()
    return Line("ok", "broker", f"{shown} (MQTT {b.protocol})")


async def _check_influx(s: Settings, timeout_s: float) -> Line:
    i = s.influx
    if i.api == "file":
        return _check_dir("line-protocol store", Path(i.file_dir))
    url = i.url.rstrip("/")
    shown = mask_url(url, tokens=False)
    headers: dict[str, str] = {}
    auth = None
    if i.api == "v2":
        token = i.secret_token()
        if not token:
            return Line("FAIL", "influx", "api v2 needs a token (CUFFWATCH_INFLUX__TOKEN)")
        headers["Authorization"] = f"Token {token}"
        probe = (f"{url}/api/v2/buckets", {"name": i.bucket, "org": i.org})
    else:
        if i.username:
            auth = aiohttp.BasicAuth(i.username, i.secret_password() or "")
        probe = (f"{url}/query", {"db": i.database, "q": "SHOW RETENTION POLICIES"})
    try:
        ssl_option: ssl.SSLContext | bool = True
        if url.startswith("https://"):
            ssl_option = ssl.create_default_context(cafile=i.ca_file) if i.verify_ssl else False
        connector = aiohttp.TCPConnector(ssl=ssl_option)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), connector=connector
        ) as http:
            async with http.get(f"{url}/ping") as resp:
                if resp.status >= 400:
                    return Line("FAIL", "influx", f"{shown}/ping answered {resp.status}")
            async with http.get(probe[0], params=probe[1], headers=headers, auth=auth) as resp:
                body = await resp.text()
                if resp.status in (401, 403):
                    return Line("FAIL", "influx", f"{shown}: credentials refused ({resp.status})")
                if i.api == "v2" and resp.status == 404:
                    pass  # a v2 write endpoint without the bucket API (VictoriaMetrics)
                elif resp.status >= 400 or '"error"' in body:
                    return Line("FAIL", "influx", f"{shown}: {_influx_error(resp.status, body)}")
                elif i.api == "v2" and f'"name":"{i.bucket}"' not in body.replace(" ", ""):
                    return Line("FAIL", "influx", f"{shown}: no bucket {i.bucket} in org {i.org}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Line("FAIL", "influx", f"{shown}: {_reason(exc)}")
    target = i.bucket if i.api == "v2" else i.database
    return Line("ok", "influx", f"{shown} ({i.api}, {target})")


def _check_dir(what: str, path: Path) -> Line:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path) as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return Line("FAIL", what, f"{path}: not writable ({exc.strerror or exc})")
    return Line("ok", what, f"{path} writable")


# -- the ack endpoint -----------------------------------------------------------------------------


async def _probe_ack(url: str, timeout_s: float) -> tuple[int, bytes] | str:
    """Status and body of a GET of `url` (no redirect followed), or why none came."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            return resp.status, await resp.content.read(len(PROBE_ANSWER) + 1)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return _reason(exc)


async def _check_ack(settings: Settings, timeout_s: float) -> Line | None:
    """`public_url` reaches this gateway's ack endpoint, proven with a link signed by the
    secret (only an endpoint holding it answers as ours); None while `[ack]` is off."""
    ack = settings.ack
    if not ack.enabled:
        return None
    what = "ack endpoint"
    try:
        secret = ack.secret_bytes()
    except OSError as exc:
        return Line("FAIL", what, f"ack.secret_file unreadable: {exc.strerror or exc}")
    if secret is None or len(secret) < MIN_SECRET_BYTES:
        return Line("FAIL", what, f"the links need a secret of at least {MIN_SECRET_BYTES} "
                                  "bytes (CUFFWATCH_ACK__SECRET or ack.secret_file)")
    path = "/ack/" + probe_token(secret, now=time.time())
    public = mask_url(ack.public_url, tokens=False)
    local_host = "127.0.0.1" if ack.host in ("", "0.0.0.0", "::") else ack.host
    local_host = f"[{local_host}]" if ":" in local_host else local_host
    local = f"{local_host}:{ack.port}"
    there, here = await asyncio.gather(_probe_ack(ack.public_url + path, timeout_s),
                                       _probe_ack(f"http://{local}{path}", timeout_s))
    if there == (200, PROBE_ANSWER):
        if urlsplit(ack.public_url).scheme != "https":
            return Line("warn", what, f"{public} reaches this gateway's endpoint, but without "
                                      "TLS: links travel in clear (serve it over https)")
        return Line("ok", what, f"{public} reaches this gateway's endpoint (links signed with "
                                "this secret work)")
    if isinstance(there, str):
        return Line("FAIL", what, f"{public}: cannot connect ({there}): phones cannot reach "
                                  "the ack endpoint")
    status = there[0]
    if here == (200, PROBE_ANSWER):
        return Line("FAIL", what, f"{public}/ack/ answered {status}, not the endpoint that "
                                  f"answers on {local}: route /ack/ there in the proxy")
    if isinstance(here, tuple) and here[0] == 403:
        return Line("FAIL", what, f"the endpoint on {local} refused a link signed with this "
                                  "secret: the running gateway has another one")
    return Line("warn", what, f"{public}/ack/ answered {status}, and no gateway answers on "
                              f"{local}: start `cuffwatch run`, then check again")


# -- push routes ----------------------------------------------------------------------------------


def _origin(plugin: Any) -> str:
    """scheme://host[:port] of a plugin's server: what check prints (paths may hold tokens)."""
    scheme = "https" if plugin.secure else "http"
    port = f":{plugin.port}" if isinstance(plugin.port, int) else ""
    host = f"[{plugin.host}]" if ":" in str(plugin.host) else plugin.host
    return f"{scheme}://{host}{port}"


async def _probe_http(
    what: str, service: str, plugin: Any, url: str, *, method: str,
    auth: aiohttp.BasicAuth | None, headers: dict[str, str], timeout_s: float,
) -> Line:
    """One request that sends nothing: reachable, and the route's credentials not refused."""
    origin = mask_url(_origin(plugin), tokens=False)
    verify = bool(getattr(plugin, "verify_certificate", True))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.request(method, url, auth=auth, headers=headers, allow_redirects=False,
                         ssl=verify) as resp,
        ):
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Line("FAIL", what, f"{service} at {origin}: cannot connect ({_reason(exc)})")
    if status in (401, 403):
        return Line("FAIL", what, f"{service} at {origin} refused the route's credentials "
                                  f"({method} answered {status})")
    if status >= 500:
        return Line("FAIL", what, f"{service} at {origin} is failing ({method} answered "
                                  f"{status})")
    return Line("ok", what, f"{service} at {origin} answered {method} with {status} "
                            "(nothing sent)")


def _probe_smtp(plugin: Any, timeout_s: float) -> str:
    """Connect, EHLO (STARTTLS or TLS as the route says) and log in; send nothing, QUIT."""
    mode = str(getattr(plugin, "secure_mode", "insecure"))
    port = plugin.port or {"ssl": 465, "starttls": 587}.get(mode, 25)
    host = plugin.smtp_host or plugin.host
    smtp: smtplib.SMTP
    if mode == "ssl":
        smtp = smtplib.SMTP_SSL(host, port, timeout=timeout_s,
                                context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout_s)
    with smtp:
        smtp.ehlo()
        if mode == "starttls":
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        done = "answered EHLO"
        if plugin.user and plugin.password:
            smtp.login(plugin.user, plugin.password)
            done += " and accepted the login"
    return f"SMTP server {host}:{port} {done} (nothing sent)"


async def _check_smtp(what: str, plugin: Any, timeout_s: float) -> Line:
    try:
        detail = await asyncio.wait_for(
            asyncio.to_thread(_probe_smtp, plugin, timeout_s), timeout_s * 3
        )
    except smtplib.SMTPAuthenticationError as exc:
        return Line("FAIL", what, f"SMTP server {plugin.smtp_host or plugin.host} refused the "
                                  f"route's login ({exc.smtp_code})")
    except (smtplib.SMTPException, OSError, TimeoutError) as exc:
        return Line("FAIL", what, f"SMTP server {plugin.smtp_host or plugin.host}: "
                                  f"{_reason(exc)}")
    return Line("ok", what, detail)


async def _send_test(what: str, obj: Any, settings: Settings, team_id: str,
                     timeout_s: float) -> Line:
    """A real push, labelled as a test, through the route (`check --send-test`)."""
    team = settings.teams[team_id]
    body = (f"A test from `cuffwatch check --send-test` (gateway {settings.instance}) for "
            f"team {team.name or team_id}. No alert is open; nothing to do.")

    def send() -> bool:
        return bool(obj.notify(title=TEST_TITLE, body=body))

    try:
        sent = await asyncio.wait_for(asyncio.to_thread(send), max(timeout_s, 30.0))
    except TimeoutError:
        return Line("FAIL", what, "test push: no outcome in time")
    if not sent:
        return Line("FAIL", what, "test push not delivered (the service refused it or could "
                                  "not be reached; `cuffwatch -v check --send-test` logs why)")
    return Line("ok", what, "test push delivered")


async def _check_route(settings: Settings, team_id: str, n: int, route: Route, *,
                       timeout_s: float, send_test: bool) -> Line:
    try:
        url = route.secret_url()
    except OSError as exc:
        return Line("FAIL", f"route {team_id}/{n}", f"url_file unreadable: {exc.strerror}")
    what = f"route {route_label(team_id, n, url)}"
    scheme = url.split("://", 1)[0]
    obj, problem = load_apprise(url)
    if problem is not None:
        return Line("FAIL", what, f"{scheme}:// {problem}")
    if send_test:
        return await _send_test(what, obj, settings, team_id, timeout_s)
    plugin = obj[0]
    service = str(getattr(plugin, "service_name", scheme))
    protocol = getattr(plugin, "protocol", None)
    if protocol in _WEBHOOKS:
        auth = (aiohttp.BasicAuth(plugin.user, plugin.password or "")
                if plugin.user else None)
        return await _probe_http(
            what, _WEBHOOKS[protocol], plugin, _origin(plugin) + (plugin.fullpath or "/"),
            method="HEAD", auth=auth, headers=dict(getattr(plugin, "headers", {}) or {}),
            timeout_s=timeout_s,
        )
    if protocol == "ntfy" and getattr(plugin, "mode", "") == "private":
        headers: dict[str, str] = {}
        auth = None
        token = getattr(plugin, "token", None)
        if getattr(plugin, "auth", "") == "token" and token:
            headers["Authorization"] = f"Bearer {token}"
        elif plugin.user:
            auth = aiohttp.BasicAuth(plugin.user, plugin.password or "")
        topic = next(iter(getattr(plugin, "topics", None) or []), "")
        # ntfy answers GET /<topic>/auth with the route's credentials judged, publishing nothing
        return await _probe_http(
            what, "ntfy server", plugin, f"{_origin(plugin)}/{topic}/auth", method="GET",
            auth=auth, headers=headers, timeout_s=timeout_s,
        )
    if protocol == "mailto":
        return await _check_smtp(what, plugin, timeout_s)
    where = "ntfy.sh (cloud)" if protocol == "ntfy" else service
    return Line("skip", what, f"{where}: not tried: only a real push reaches it "
                              "(`cuffwatch check --send-test` sends each route one, labelled "
                              "as a test)")


def _secrets(settings: Settings) -> list[str]:
    """Every secret the report could echo: scrubbed from each line whatever prints it."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        found += [settings.broker.secret_password() or ""]
    with contextlib.suppress(OSError):
        found += [settings.influx.secret_token() or "", settings.influx.secret_password() or ""]
    with contextlib.suppress(OSError):
        found.append((settings.ack.secret_bytes() or b"").decode())
    for team in settings.teams.values():
        for route in team.routes:
            with contextlib.suppress(OSError):
                url = route.secret_url()
                found.append(url)
                obj, problem = load_apprise(url)
                if problem is None:
                    plugin = obj[0]
                    found += [str(getattr(plugin, key, None) or "")
                              for key in ("password", "token", "apikey", "secret")]
    return [s for s in found if s]


# -- all of it ------------------------------------------------------------------------------------


async def run_checks(
    settings: Settings, *, timeout_s: float = 5.0, send_test: bool = False
) -> list[str]:
    """Print one line per check; return the problems, the FAIL lines (empty = all good)."""
    lines = [
        Line(
            "ok",
            "config",
            f"{len(settings.teams)} team(s), "
            f"{sum(len(t.cuffs) for t in settings.teams.values())} cuff(s)",
        )
    ]
    for warning in route_warnings(settings):
        what, _, detail = warning.partition(": ")
        lines.append(Line("warn", what, detail))
    lines.append(_check_dir("spool", Path(settings.spool.dir)))
    routes = [
        _check_route(settings, team_id, n, route, timeout_s=timeout_s, send_test=send_test)
        for team_id, team in settings.teams.items()
        for n, route in enumerate(team.routes)
    ]
    lines += await asyncio.gather(
        _check_broker(settings, timeout_s), _check_influx(settings, timeout_s), *routes
    )
    if (ack := await _check_ack(settings, timeout_s)) is not None:
        lines.append(ack)
    secrets = _secrets(settings)
    for line in lines:
        print(line.text(secrets))
    return [f"{line.what}: {scrub(line.detail, secrets)}" for line in lines
            if line.outcome == "FAIL"]
