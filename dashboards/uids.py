"""Grafana uids of the dashboards and folders: stable, `cw-` prefixed, at most 40 characters."""

from __future__ import annotations

import hashlib
import re

__all__ = ["folder_uid", "stable_uid"]

# Grafana rejects uids longer than 40 characters (dashboard and folder alike).
MAX_UID_LEN = 40
# Hex digits of the hash that keeps a shortened uid unique.
UID_HASH_LEN = 8
_UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def stable_uid(*parts: str) -> str:
    """`cw-` and the parts joined by `-`, shortened with a hash to Grafana's 40 chars."""
    uid = "-".join(("cw", *parts))
    if len(uid) > MAX_UID_LEN:
        digest = hashlib.sha256(uid.encode()).hexdigest()[:UID_HASH_LEN]
        uid = f"{uid[: MAX_UID_LEN - UID_HASH_LEN - 1]}-{digest}"
    if not _UID_RE.match(uid):
        raise ValueError(f"cannot make a Grafana uid from {parts!r}")
    return uid


def folder_uid(team: str) -> str:
    """The stable uid of a team's Grafana folder."""
    return stable_uid(team)
