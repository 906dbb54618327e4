"""Broker lock-down (SPEC §2): Mosquitto's password file, ACL and config snippet from the roster.

Principals: every cuff (username = client id = cuff id) writes only its own telemetry and
status and reads only its own assignment; the gateway user reads everything under the
topic root and writes alerts, rejected and gateway status; `staff-{team}` reads its team's
alerts, telemetry, status and assignments and writes its team's acks and assignments.
Anonymous clients are refused. Passwords live in a 0600 credentials TOML: kept when
present, generated for every principal missing from it, never printed.
"""

from __future__ import annotations

import argparse
import base64
import enum
import grp
import hashlib
import hmac
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.config import Settings
from core.topics import Topics
from ops.errors import OpsError

__all__ = [
    "DEFAULT_GATEWAY_USER",
    "STAFF_PREFIX",
    "BrokerAuthError",
    "BrokerFiles",
    "Grant",
    "Principal",
    "Role",
    "add_arguments",
    "give_to_group",
    "hash_password",
    "load_credentials",
    "principals",
    "render_acl",
    "render_conf",
    "render_passwd",
    "run_command",
    "staff_user",
    "verify_password",
    "write_broker_files",
]

DEFAULT_GATEWAY_USER = "gateway"  # SPEC §7's example `broker.username`
STAFF_PREFIX = "staff-"  # staff user of team T is `staff-T`

# mosquitto_passwd 2.0 writes `$7$` lines: PBKDF2-HMAC-SHA512 with 101 iterations, a
# 12-byte salt and a 64-byte digest, both base64. The broker reads the iteration count
# from each line, so matching its tool keeps `mosquitto_passwd -U`/-D interoperable.
PBKDF2_SHA512_ID = "7"
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
DIGEST_BYTES = 64
# 24 random bytes (192 bits) → 32 URL-safe characters: far beyond online guessing, and
# free of characters that need quoting in an env file or a device's config.
PASSWORD_BYTES = 24

CREDENTIALS_MODE = 0o600  # plaintext passwords: owner only
# The broker drops privileges before reading passwd/acl (checked on Mosquitto 2.0.11), so
# its group must be able to read them; set-up scripts chgrp them to the broker's group.
BROKER_FILE_MODE = 0o640
BROKER_GROUP = "mosquitto"  # Debian's mosquitto runs as user and group mosquitto
DEFAULT_CREDENTIALS_NAME = "broker-credentials.toml"  # beside --out, never inside it

USERS_FILE_NAME = "passwd"
ACL_NAME = "acl"
CONF_NAME = "cuffwatch-auth.conf"

# A username goes verbatim into `user NAME` ACL lines and `NAME:hash` passwd lines.
_USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_TOML_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

Access = Literal["read", "write", "readwrite"]


class BrokerAuthError(OpsError):
    """The roster or the credentials cannot produce broker files; the message says why."""


class Role(enum.StrEnum):
    """What a broker principal is."""

    GATEWAY = "gateway"
    STAFF = "staff"
    CUFF = "cuff"


@dataclass(frozen=True, slots=True)
class Grant:
    """One ACL line: `topic ACCESS TOPIC`."""

    access: Access
    topic: str


@dataclass(frozen=True, slots=True)
class Principal:
    """A broker user and the topics it may use."""

    username: str
    role: Role
    team: str | None
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """Paths written by `write_broker_files` (the credentials file holds plaintext)."""

    passwd: Path
    acl: Path
    conf: Path
    credentials: Path
    gateway_password: Path | None = None


def staff_user(team: str) -> str:
    """The staff username of `team`."""
    return f"{STAFF_PREFIX}{team}"


def _gateway_principal(username: str, root: str) -> Principal:
    grants = (
        Grant("read", f"{root}/#"),
        Grant("write", f"{root}/+/alerts/+/+"),  # alert states and their retained clears
        Grant("write", f"{root}/+/cuffs/+/rejected"),
        Grant("write", f"{root}/+/replies/+"),  # answers to staff requests (ack, assign)
        Grant("write", f"{root}/_gateway/#"),
    )
    return Principal(username, Role.GATEWAY, None, grants)


def _staff_principal(team: str, root: str) -> Principal:
    base = f"{root}/{team}"
    grants = (
        Grant("read", f"{base}/alerts/#"),
        Grant("write", f"{base}/alerts/+/+/ack"),
        Grant("readwrite", f"{base}/cuffs/+/assignment"),
        Grant("read", f"{base}/cuffs/+/telemetry"),
        Grant("read", f"{base}/cuffs/+/status"),
        Grant("read", f"{base}/replies/+"),  # the gateway's answers to its acks and assignments
        Grant("read", f"{root}/_gateway/+/status"),  # is anyone watching for alerts?
    )
    return Principal(staff_user(team), Role.STAFF, team, grants)


def _cuff_principal(team: str, cuff: str, topics: Topics) -> Principal:
    grants = (
        Grant("write", topics.telemetry(team, cuff)),
        Grant("write", topics.status(team, cuff)),  # also its last will
        Grant("read", topics.assignment(team, cuff)),
    )
    return Principal(cuff, Role.CUFF, team, grants)


def principals(settings: Settings) -> list[Principal]:
    """Every broker principal of the roster: the gateway, then per team its staff and cuffs."""
    root = settings.topic_root
    topics = Topics(root)
    gateway = settings.broker.username or DEFAULT_GATEWAY_USER
    out = [_gateway_principal(gateway, root)]
    for team_id, team in settings.teams.items():
        out.append(_staff_principal(team_id, root))
        out.extend(_cuff_principal(team_id, cuff_id, topics) for cuff_id in team.cuffs)
    problems: list[str] = []
    seen: dict[str, Principal] = {}
    for p in out:
        if not _USERNAME_RE.match(p.username):
            problems.append(f"broker username {p.username!r}: use 1–64 of [A-Za-z0-9_.@-]")
        if p.username in seen:
            problems.append(
                f"broker username {p.username!r} is both the {_describe(seen[p.username])} "
                f"and the {_describe(p)}: rename one"
            )
        seen[p.username] = p
    if problems:
        raise BrokerAuthError("; ".join(problems))
    return out


def _describe(p: Principal) -> str:
    if p.role is Role.GATEWAY:
        return "gateway user"
    if p.role is Role.STAFF:
        return f"staff user of team {p.team}"
    return f"cuff of team {p.team}"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Encode `password` as mosquitto_passwd 2.0 does (`$7$101$salt$digest`)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS, DIGEST_BYTES
    )
    b64 = base64.b64encode
    return f"${PBKDF2_SHA512_ID}${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `encoded` (a `$7$` passwd hash) matches `password`."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != PBKDF2_SHA512_ID:
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, len(expected)
    )
    return hmac.compare_digest(digest, expected)


def render_passwd(users: Iterable[Principal], passwords: Mapping[str, str]) -> str:
    """The password file: one `user:$7$…` line per principal."""
    return "".join(f"{p.username}:{hash_password(passwords[p.username])}\n" for p in users)


def render_acl(users: Iterable[Principal]) -> str:
    """The ACL file (Mosquitto 2.0 syntax): one explicit `user` block per principal."""
    lines = [
        "# Generated by `cuffwatch broker-auth` from the roster: regenerate, do not edit.",
        "# No topic line precedes the first `user` block, so anonymous clients get nothing",
        "# (and the broker refuses them anyway: allow_anonymous false).",
    ]
    for p in users:
        lines += ["", f"# {_describe(p)}", f"user {p.username}"]
        lines += [f"topic {g.access} {g.topic}" for g in p.grants]
    return "\n".join(lines) + "\n"


def render_conf(passwd: str, acl: str) -> str:
    """A mosquitto.conf snippet enabling the files (for Debian's /etc/mosquitto/conf.d/)."""
    return (
        "# Generated by `cuffwatch broker-auth`: every client authenticates and is confined\n"
        "# by the ACL. Include from mosquitto.conf (Debian: drop into /etc/mosquitto/conf.d/).\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {acl}\n"
    )


def load_credentials(path: Path) -> dict[str, str]:
    """`[passwords]` of the credentials TOML; {} if absent; refuses a file others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & 0o077:
        raise BrokerAuthError(
            f"{path}: holds passwords but is accessible to other users "
            f"(mode {mode & 0o777:o}); run chmod 600 {path}"
        )
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise BrokerAuthError(f"{path}: not valid TOML: {exc}") from None
    table = data.get("passwords", {})
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in table.items()
    ):
        raise BrokerAuthError(f"{path}: [passwords] must map usernames to non-empty strings")
    return dict(table)


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _TOML_BARE_KEY_RE.match(key) else _toml_string(key)


def render_credentials(passwords: Mapping[str, str]) -> str:
    """The credentials TOML text for `passwords`."""
    lines = [
        "# Broker passwords for cuffwatch (SECRET: keep mode 0600, never commit).",
        "# `cuffwatch broker-auth` keeps these and adds one for every new principal.",
        "[passwords]",
    ]
    lines += [f"{_toml_key(user)} = {_toml_string(pw)}" for user, pw in passwords.items()]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` via a same-directory temp file, created with `mode`, then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed os.open's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_broker_files(
    settings: Settings,
    out_dir: Path,
    *,
    credentials: Path,
    broker_dir: str | None = None,
    gateway_password_file: Path | None = None,
) -> BrokerFiles:
    """Write passwd, acl and conf snippet to `out_dir`, keeping and extending `credentials`."""
    # broker_dir: where the broker sees out_dir (a container mount), named by the snippet.
    # gateway_password_file: the gateway's password alone, for broker.password_file.
    users = principals(settings)
    if out_dir.resolve() == credentials.resolve().parent:
        raise BrokerAuthError(
            f"{credentials}: keep the credentials out of {out_dir} (the broker reads that "
            "directory and must never see plaintext passwords)"
        )
    stored = load_credentials(credentials)
    passwords = dict(stored)
    gateway = users[0].username
    try:
        configured = settings.broker.secret_password()
    except FileNotFoundError:
        configured = None  # not written yet: `gateway_password_file` is how it gets made
    except OSError as exc:
        raise BrokerAuthError(f"broker.password_file: {exc}") from None
    if configured is not None:
        if passwords.get(gateway, configured) != configured:
            raise BrokerAuthError(
                f"{credentials}: the password of {gateway!r} differs from the configured "
                "broker password; make them agree"
            )
        passwords[gateway] = configured
    for p in users:
        if p.username not in passwords:
            passwords[p.username] = secrets.token_urlsafe(PASSWORD_BYTES)
    if passwords != stored or not credentials.exists():
        credentials.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(credentials, render_credentials(passwords), CREDENTIALS_MODE)

    out_dir.mkdir(parents=True, exist_ok=True)
    passwd = out_dir / USERS_FILE_NAME
    acl = out_dir / ACL_NAME
    conf = out_dir / CONF_NAME
    seen_dir = broker_dir.rstrip("/") if broker_dir else str(out_dir.resolve())
    _write_atomic(passwd, render_passwd(users, passwords), BROKER_FILE_MODE)
    _write_atomic(acl, render_acl(users), BROKER_FILE_MODE)
    _write_atomic(
        conf,
        render_conf(f"{seen_dir}/{USERS_FILE_NAME}", f"{seen_dir}/{ACL_NAME}"),
        BROKER_FILE_MODE,
    )
    if gateway_password_file is not None:
        gateway_password_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(gateway_password_file, passwords[gateway] + "\n", CREDENTIALS_MODE)
    return BrokerFiles(passwd, acl, conf, credentials, gateway_password_file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cuffwatch broker-auth` (the config file option `-c` is the caller's)."""
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR",
        help="directory for passwd, acl and cuffwatch-auth.conf (the broker reads it)",
    )
    parser.add_argument(
        "--credentials", type=Path, default=None, metavar="FILE",
        help=f"passwords TOML, kept and extended (0600; default: {DEFAULT_CREDENTIALS_NAME} "
        "beside DIR)",
    )
    parser.add_argument(
        "--broker-dir", default=None, metavar="PATH",
        help="where the broker sees DIR, if elsewhere (e.g. a container mount)",
    )
    parser.add_argument(
        "--gateway-password-file", type=Path, default=None, metavar="FILE",
        help="also write the gateway user's password alone to FILE (0600)",
    )
    parser.add_argument(
        "--group", default=BROKER_GROUP, metavar="GROUP",
        help="the group the broker reads DIR's files as (Mosquitto drops root for its own "
        f"user; default {BROKER_GROUP}; a container's numeric gid, e.g. 1883, works too)",
    )


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run `cuffwatch broker-auth`: write the files, print their paths (never a password)."""
    out_dir: Path = args.out
    credentials: Path = args.credentials or out_dir.resolve().parent / DEFAULT_CREDENTIALS_NAME
    try:
        files = write_broker_files(
            settings,
            out_dir,
            credentials=credentials,
            broker_dir=args.broker_dir,
            gateway_password_file=args.gateway_password_file,
        )
    except (BrokerAuthError, OSError) as exc:
        print(f"broker-auth: {exc}", file=sys.stderr)
        return 1
    readable = give_to_group((files.passwd, files.acl, files.conf), out_dir, args.group)
    print(f"password file: {files.passwd}")
    print(f"ACL file:      {files.acl}")
    print(f"conf snippet:  {files.conf}")
    print(f"credentials:   {files.credentials} (secret)")
    if files.gateway_password is not None:
        print(f"gateway pass:  {files.gateway_password} (secret)")
    if readable is not None:
        print(readable)
    return 0


def give_to_group(paths: Sequence[Path], directory: Path, group: str) -> str | None:
    """Let `group` (the broker's) read the broker's files: chgrp them and their directory.

    Mosquitto starts as root and drops to its own user before it reads its password file and
    ACL, so root-owned 0640 files are "Unable to open pwfile". Returns None when done, else
    the one command that does it (not root, or no such group on this machine).
    """
    targets = [directory, *paths]
    command = (f"sudo chgrp {group} {' '.join(str(p) for p in targets)} && "
               f"sudo chmod g+rx {directory}")
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        return (f"no group {group!r} here: before the broker starts, let its group read the "
                f"files (--group GROUP to name it): {command}")
    if os.geteuid() != 0:
        return f"the broker reads these files as group {group}; as root, run: {command}"
    for target in targets:
        os.chown(target, -1, gid)
    directory.chmod(directory.stat().st_mode | 0o050)
    return None
