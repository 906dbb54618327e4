"""`cuffwatch check`: the config is valid, and every connection it names answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import tempfile
import uuid
from pathlib import Path

import aiohttp

from core.config import Settings
from gateway.mqtt import MqttError
from gateway.mqtt_build import link_from_settings


def _say(ok: bool, what: str, detail: str) -> str | None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    return None if ok else f"{what}: {detail}"


def _influx_error(status: int, body: str) -> str:
    """InfluxDB's own error message (a missing database answers 200 with one), on one line."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        data = json.loads(body)
        errors = [data.get("error"), *(r.get("error") for r in data.get("results", []))]
        if found := [str(e) for e in errors if e]:
            return "; ".join(found)
    return f"{status} {' '.join(body.split())[:200]}"


async def _check_broker(s: Settings, timeout_s: float) -> str | None:
    b = s.broker
    try:
        link = link_from_settings(
            b, client_id=f"cuffwatch-check-{uuid.uuid4().hex[:8]}", clean_start=True
        )
    except (OSError, ValueError) as exc:  # TLS files or the password file unreadable
        what = "TLS certificates or password file" if b.tls else "password file"
        return _say(False, "broker", f"{b.url}: cannot load the {what}: {exc}")
    try:
        await asyncio.wait_for(link.connect(retry=False), timeout_s)
    except (MqttError, TimeoutError) as exc:
        return _say(False, "broker", f"{b.url}: {exc or 'timed out'}")
    finally:
        await link.disconnect()
    return _say(True, "broker", f"{b.url} (MQTT {b.protocol})")


async def _check_influx(s: Settings, timeout_s: float) -> str | None:
    i = s.influx
    if i.api == "file":
        return _check_dir("line-protocol store", Path(i.file_dir))
    url = i.url.rstrip("/")
    headers: dict[str, str] = {}
    auth = None
    if i.api == "v2":
        token = i.secret_token()
        if not token:
            return _say(False, "influx", "api v2 needs a token (CUFFWATCH_INFLUX__TOKEN)")
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
                    return _say(False, "influx", f"{url}/ping answered {resp.status}")
            async with http.get(probe[0], params=probe[1], headers=headers, auth=auth) as resp:
                body = await resp.text()
                if resp.status in (401, 403):
                    return _say(False, "influx", f"{url}: credentials refused ({resp.status})")
                if i.api == "v2" and resp.status == 404:
                    pass  # a v2 write endpoint without the bucket API (VictoriaMetrics)
                elif resp.status >= 400 or '"error"' in body:
                    return _say(False, "influx", f"{url}: {_influx_error(resp.status, body)}")
                elif i.api == "v2" and f'"name":"{i.bucket}"' not in body.replace(" ", ""):
                    return _say(False, "influx", f"{url}: no bucket {i.bucket} in org {i.org}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _say(False, "influx", f"{url}: {exc or 'timed out'}")
    target = i.bucket if i.api == "v2" else i.database
    return _say(True, "influx", f"{url} ({i.api}, {target})")


def _check_dir(what: str, path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path) as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return _say(False, what, f"{path}: not writable ({exc.strerror or exc})")
    return _say(True, what, f"{path} writable")


def _check_routes(s: Settings) -> list[str | None]:
    import apprise

    out: list[str | None] = []
    for team_id, team in s.teams.items():
        for n, route in enumerate(team.routes):
            label = f"route {team_id}/{n}"
            try:
                url = route.secret_url()
            except OSError as exc:
                out.append(_say(False, label, f"url_file unreadable: {exc}"))
                continue
            scheme = url.split("://", 1)[0]
            ok = apprise.Apprise().add(url)
            out.append(
                _say(ok, label, f"{scheme}:// {'understood' if ok else 'not a valid Apprise URL'}")
            )
    return out


async def run_checks(settings: Settings, *, timeout_s: float = 5.0) -> list[str]:
    """Print one line per check; return the problems (empty = all good)."""
    results = [
        _say(
            True,
            "config",
            f"{len(settings.teams)} team(s), "
            f"{sum(len(t.cuffs) for t in settings.teams.values())} cuff(s)",
        )
    ]
    results.append(_check_dir("spool", Path(settings.spool.dir)))
    broker, influx = await asyncio.gather(
        _check_broker(settings, timeout_s), _check_influx(settings, timeout_s)
    )
    results += [broker, influx]
    results += _check_routes(settings)
    return [r for r in results if r is not None]
