"""Signed one-tap acknowledgement links (SPEC §3, issue 16): what a push's ack action carries.

A token names one alert (id, team, cuff, kind), who taps it (the route's `person`, or "" for
the page to ask), when it expires and a random nonce, signed with HMAC-SHA256 under the
`[ack]` secret:

    <base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, the first part))>

`sign` makes one, `verify` checks one in constant time and returns its claims, or raises
`BadToken` with a reason for the log (never for the client: the endpoint answers a bare
403/404). Expiry is checked here; single use is the endpoint's (it remembers nonces until
they expire). Pure functions, no I/O: the gateway's ack endpoint and the push renderer share
them.

Links: `{public_url}/ack/{token}` (GET shows the alert and a button, POST acknowledges),
`{public_url}/ack/{token}/pushover` (Pushover's emergency-receipt callback, a POST).

A token of kind PROBE_KIND (`probe_token`) names no alert: `cuffwatch check` sends one to
`{public_url}/ack/{token}` and only an endpoint holding the same secret answers it as ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from core.errors import CoreError

__all__ = [
    "MAX_TOKEN_CHARS", "MIN_SECRET_BYTES", "PROBE_KIND", "AckClaims", "BadToken", "ack_url",
    "probe_token", "sign", "verify",
]

NONCE_BYTES = 9  # 12 base64url characters
# an HMAC-SHA256 key shorter than the hash's output is weaker than the hash (RFC 2104 §3)
MIN_SECRET_BYTES = 32
# a token's JSON claims stay small (ids ≤ 64 chars, a person ≤ 64): anything longer is refused
# before any decoding or hashing
MAX_TOKEN_CHARS = 1024
# the only characters of a token: base64url without padding, and the one dot. Anything else
# is refused before decoding (Python's base64 decoder would otherwise skip stray characters,
# so that many strings would carry one signature)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# a probe's kind: no alert kind starts with an underscore, so a probe never acknowledges
PROBE_KIND = "_probe"
PROBE_TTL_S = 60


class BadToken(CoreError):
    """Not a token of ours, tampered with, malformed or expired; `reason` is for the log."""


@dataclass(frozen=True, slots=True)
class AckClaims:
    """What a valid token says."""

    alert_id: str
    team: str
    cuff: str
    kind: str
    person: str  # acknowledged_by for this link's tap; "" when the page asks for a name
    expires_at: int  # Unix seconds
    nonce: str  # unique per link: single use is remembered by it

    def to_json(self) -> bytes:
        return json.dumps(
            {"a": self.alert_id, "t": self.team, "c": self.cuff, "k": self.kind,
             "p": self.person, "e": self.expires_at, "n": self.nonce},
            separators=(",", ":"), ensure_ascii=False,
        ).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()


def sign(
    secret: bytes, *, alert_id: str, team: str, cuff: str, kind: str, person: str,
    expires_at: int, nonce: str | None = None,
) -> str:
    """A token for one alert, valid until `expires_at` (Unix seconds)."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the ack secret must be at least {MIN_SECRET_BYTES} bytes")
    claims = AckClaims(alert_id, team, cuff, kind, person, expires_at,
                       nonce or _b64(secrets.token_bytes(NONCE_BYTES)))
    body = _b64(claims.to_json())
    return f"{body}.{_b64(_mac(secret, body))}"


def verify(secret: bytes, token: str, *, now: float) -> AckClaims:
    """The claims of a token we signed that has not expired; BadToken otherwise."""
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(token):
        raise BadToken("not a token")
    body, mac = token.split(".")
    # the signature's one canonical spelling, compared in constant time
    if not hmac.compare_digest(mac.encode("ascii"), _b64(_mac(secret, body)).encode("ascii")):
        raise BadToken("bad signature")
    try:
        raw = json.loads(_unb64(body))
        claims = AckClaims(raw["a"], raw["t"], raw["c"], raw["k"], raw["p"], raw["e"], raw["n"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise BadToken("signed, but not claims of ours") from None  # a leaked secret's misuse
    if not all(isinstance(v, str) for v in (claims.alert_id, claims.team, claims.cuff,
                                              claims.kind, claims.person, claims.nonce)):
        raise BadToken("claims of the wrong types")
    if (not isinstance(claims.expires_at, int) or isinstance(claims.expires_at, bool)
            or claims.expires_at <= now):
        raise BadToken("expired")
    return claims


def probe_token(secret: bytes, *, now: float) -> str:
    """A token naming no alert, valid for PROBE_TTL_S: proves an endpoint shares `secret`."""
    return sign(secret, alert_id="", team="", cuff="", kind=PROBE_KIND, person="",
                expires_at=int(now) + PROBE_TTL_S)


def ack_url(public_url: str, token: str, *, pushover: bool = False) -> str:
    """The link a push carries: the page (GET, then POST), or Pushover's callback."""
    return f"{public_url.rstrip('/')}/ack/{token}{'/pushover' if pushover else ''}"
