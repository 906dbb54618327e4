"""URLs with their secrets masked, for anything a person reads (check's lines, logs).

Apprise URLs keep secrets everywhere: in the user info (`mailto://user:password@…`, ntfy's
`ntfy://tk_token@…`), in the query (`?token=…`), in the host (`pover://user@apptoken`) and
in the path (`slack://TokenA/TokenB/TokenC`, webhooks under `/hooks/<secret>`). The user
info and the secret-looking query values are always masked; hosts and path segments that
look like tokens (8+ characters, letters and digits) are masked too, which is a heuristic:
a name that looks like a token is masked as well, a short secret may not be.
"""

from __future__ import annotations

import re

MASK = "***"
# query keys whose values are secrets (Apprise's and common webhook ones); `+Header` values too
_SECRET_KEY = re.compile(
    r"^\+|pass|token|secret|key|auth|sig|cred|session|bearer|code|hook", re.IGNORECASE
)
_TOKENISH = re.compile(r"[A-Za-z0-9_\-.~%=+]{8,}")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


def _looks_like_token(text: str) -> bool:
    """8+ URL characters with letters and 3+ digits, 16+ with a letter and a digit, or 24+.

    `T1JJ3T3L2` and `9f8e7d6c5b4a3f2e1d0c` are tokens; `t1-staff` and `first-staff` names.
    """
    if not _TOKENISH.fullmatch(text) or _IPV4.fullmatch(text):
        return False
    digits = sum(c.isdigit() for c in text)
    letters = any(c.isalpha() for c in text)
    return (
        (letters and digits >= 3)
        or (len(text) >= 16 and letters and digits > 0)
        or len(text) >= 24
    )


def _mask_host(hostport: str) -> str:
    host, sep, port = hostport.rpartition(":") if not hostport.startswith("[") else (
        hostport, "", "")
    if not sep:
        host, port = hostport, ""
    if port and not port.isdigit():  # `tgram://bot123:secret/…`: not a port at all
        port = MASK
    if "." not in host and host not in ("localhost", "") and _looks_like_token(host):
        host = MASK  # `pover://user@apptoken`: the "host" is a token
    return f"{host}{sep}{port}"


def _mask_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if eq and value and (_SECRET_KEY.search(key) or _looks_like_token(value)):
            value = MASK
        parts.append(f"{key}{eq}{value}")
    return "&".join(parts)


def mask_url(url: str, *, tokens: bool = True) -> str:
    """`url` with its user info, secret query values and token-like parts replaced by ***.

    `json://user:pw@host/hook?token=abc` → `json://user:***@host/hook?token=***`; a user
    alone (often a token) is masked whole: `ntfy://***@host/topic`. `tokens=False` keeps
    the host and path as they are (a broker's or a database's URL, where they are names).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return MASK if url else url
    rest, hash_, fragment = rest.partition("#")
    rest, qmark, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        userinfo = f"{user}:{MASK}" if colon and user else MASK
    if tokens:
        hostport = _mask_host(hostport)
        path = "/".join(MASK if _looks_like_token(seg) else seg for seg in path.split("/"))
    return (
        f"{scheme}://{userinfo}{at}{hostport}{slash}{path}"
        f"{qmark}{_mask_query(query)}{hash_}{MASK if _looks_like_token(fragment) else fragment}"
    )


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of each secret (of 4+ characters) replaced by ***."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
