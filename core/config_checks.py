"""Checks of a loaded configuration before it is used: the files a command will read, and
what the push routes leave undone.

`file_problems` is run by each command for the parts it uses (`run`: all of them), so that
a missing password file is one clear line before anything starts, not a traceback half-way
through start-up. `route_warnings` is said by `cuffwatch check` and at the gateway's start.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from core.acktoken import MIN_SECRET_BYTES
from core.config import BrokerSettings, Settings


def file_problems(settings: Settings, *parts: str) -> list[str]:
    """Every `*_file` (secrets, TLS) that `parts` need and that cannot be used, one line each.

    `parts`: "broker" (password_file, TLS files), "influx" (token_file, password_file,
    ca_file), "routes" (url_file), "ack" (the secret, while the endpoint is on). A command
    checks the ones it uses before it starts, so that a missing file is one clear line, not
    a traceback half-way through start-up.
    """
    problems: list[str] = []
    if "broker" in parts:
        b = settings.broker
        problems += _secret_file_problem("broker.password_file", b.password_file,
                                         given=b.password is not None)
        tls = [("broker.ca_file", b.ca_file), ("broker.cert_file", b.cert_file),
               ("broker.key_file", b.key_file)]
        unreadable = [_file_problem(key, path) for key, path in tls if path]
        problems += [line for line in unreadable if line]
        if b.tls and not any(unreadable):
            problems += _tls_problems(b)
    if "influx" in parts and settings.influx.api != "file":
        i = settings.influx
        if i.api == "v2":
            problems += _secret_file_problem("influx.token_file", i.token_file,
                                             given=i.token is not None)
        else:
            problems += _secret_file_problem("influx.password_file", i.password_file,
                                             given=i.password is not None)
        if i.ca_file and (line := _file_problem("influx.ca_file", i.ca_file)):
            problems.append(line)
    if "routes" in parts:
        for team_id, team in settings.teams.items():
            for n, route in enumerate(team.routes):
                problems += _secret_file_problem(
                    f"teams.{team_id}.routes[{n}].url_file", route.url_file, given=False
                )
    if "ack" in parts:
        problems += _ack_secret_problems(settings)
    return problems


def _ack_secret_problems(settings: Settings) -> list[str]:
    """While `[ack]` is on, its secret must be given and long enough to sign links with."""
    ack = settings.ack
    if not ack.enabled:
        return []
    if ack.secret is None and not ack.secret_file:
        return ["ack.secret: ack.public_url is set, so the links need a secret: set "
                "CUFFWATCH_ACK__SECRET or ack.secret_file (at least "
                f"{MIN_SECRET_BYTES} bytes)"]
    problems = _secret_file_problem("ack.secret_file", ack.secret_file,
                                    given=ack.secret is not None)
    if not problems and len(ack.secret_bytes() or b"") < MIN_SECRET_BYTES:
        problems.append(f"ack.secret_file: {ack.secret_file}: the secret must be at least "
                        f"{MIN_SECRET_BYTES} bytes")
    return problems


def route_warnings(settings: Settings, teams: Iterable[str] | None = None) -> list[str]:
    """What the push routes leave undone, one line per team (warnings, not errors).

    A team without routes is told only through MQTT and the dashboards; one without an
    escalation route escalates its unacknowledged criticals to nobody; one with only
    escalation routes pushes nothing until an alert escalates.
    """
    lines: list[str] = []
    for team_id in settings.teams if teams is None else teams:
        team = settings.teams.get(team_id)
        if team is None:
            continue
        escalate_s = settings.team_alerts(team_id).escalate_after_s
        escalation = [r for r in team.routes if r.escalation]
        if not team.routes:
            lines.append(
                f"team {team_id}: no push route: its alerts reach staff only over MQTT "
                f"and the dashboards, and a critical unacknowledged after {escalate_s:g} s "
                "is escalated to nobody"
            )
        elif not escalation:
            lines.append(
                f"team {team_id}: no escalation route: a critical alert unacknowledged "
                f"after {escalate_s:g} s (escalate_after_s) is escalated to nobody; "
                "give a route escalation = true"
            )
        elif len(escalation) == len(team.routes):
            lines.append(
                f"team {team_id}: only escalation routes: nothing is pushed until a "
                f"critical alert has gone unacknowledged for {escalate_s:g} s"
            )
    return lines


def _file_problem(key: str, path: str) -> str | None:
    """Why the file at `path` cannot be read, as `key: path: reason`; None if it can."""
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        return f"{key}: {path}: no such file"
    except IsADirectoryError:
        return f"{key}: {path}: is a directory, not a file"
    except PermissionError:
        return f"{key}: {path}: permission denied (running as uid {os.getuid()})"
    except OSError as exc:
        return f"{key}: {path}: cannot read it ({exc.strerror or exc})"
    return None


def _secret_file_problem(key: str, path: str | None, *, given: bool) -> list[str]:
    """`key`'s secret file unusable: unreadable or empty. Not looked at when the secret itself
    is `given` (from the environment, say): the file is then unused."""
    if not path or given:
        return []
    if problem := _file_problem(key, path):
        return [problem]
    if not Path(path).read_text(encoding="utf-8", errors="replace").strip():
        # an empty secret is a provisioning mistake; sent as-is it is refused as wrong
        return [f"{key}: {path}: is empty"]
    return []


def _tls_problems(broker: BrokerSettings) -> list[str]:
    """The broker's TLS files readable but not usable (not PEM, key not matching)."""
    try:
        ctx = ssl.create_default_context(cafile=broker.ca_file)
    except ssl.SSLError as exc:
        return [f"broker.ca_file: {broker.ca_file}: not a PEM CA bundle ({exc.reason or exc})"]
    if broker.cert_file:
        try:
            ctx.load_cert_chain(broker.cert_file, broker.key_file)
        except ssl.SSLError as exc:
            return [f"broker.cert_file: {broker.cert_file} with key_file "
                    f"{broker.key_file or '(in cert_file)'}: not a usable PEM certificate "
                    f"and key ({exc.reason or exc})"]
    elif broker.key_file:
        return ["broker.key_file: given without cert_file"]
    return []
