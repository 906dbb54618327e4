"""Signed ack links (core.acktoken): what verifies, and everything that must not."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.acktoken import (
    MAX_TOKEN_CHARS,
    PROBE_KIND,
    AckClaims,
    BadToken,
    ack_url,
    probe_token,
    sign,
    verify,
)

SECRET = b"s" * 32
NOW = 1_900_000_000.0
CLAIMS = {"alert_id": "01JD0000000000000000000000", "team": "t1", "cuff": "c1",
          "kind": "over_pressure", "person": "Sam (physio)"}


def token(**over: object) -> str:
    args: dict[str, object] = {**CLAIMS, "expires_at": int(NOW) + 3600, **over}
    return sign(SECRET, **args)  # type: ignore[arg-type]


def test_a_signed_token_verifies_to_its_claims() -> None:
    claims = verify(SECRET, token(nonce="n0nce"), now=NOW)
    assert claims == AckClaims("01JD0000000000000000000000", "t1", "c1", "over_pressure",
                               "Sam (physio)", int(NOW) + 3600, "n0nce")


def test_each_link_gets_its_own_nonce() -> None:
    assert verify(SECRET, token(), now=NOW).nonce != verify(SECRET, token(), now=NOW).nonce


def test_a_short_secret_signs_nothing() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        sign(b"short", **CLAIMS, expires_at=int(NOW) + 60)


@pytest.mark.parametrize("why", ["expired", "other secret", "body edited", "mac edited",
                                 "padded mac", "stray character", "no dot", "two dots",
                                 "too long", "signed non-claims"])
def test_what_does_not_verify(why: str) -> None:
    good = token()
    body, mac = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    other_team = base64.urlsafe_b64encode(
        json.dumps({**claims, "t": "t2"}).encode()).rstrip(b"=").decode()
    cases = {
        "expired": (SECRET, token(expires_at=int(NOW))),
        "other secret": (b"o" * 32, good),
        "body edited": (SECRET, f"{other_team}.{mac}"),
        "mac edited": (SECRET, f"{body}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}"),
        "padded mac": (SECRET, f"{good}="),
        "stray character": (SECRET, f"{body}.{mac[:5]}!{mac[5:]}"),
        "no dot": (SECRET, body + mac),
        "two dots": (SECRET, f"{good}.x"),
        "too long": (SECRET, "a" * (MAX_TOKEN_CHARS - 10) + "." + mac),
        "signed non-claims": (SECRET, _signed(b"[1, 2, 3]")),
    }
    secret, text = cases[why]
    with pytest.raises(BadToken):
        verify(secret, text, now=NOW)


def _signed(payload: bytes) -> str:
    import hashlib
    import hmac

    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = hmac.new(SECRET, body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


@given(st.text(max_size=300))
def test_random_text_never_verifies(text: str) -> None:
    with pytest.raises(BadToken):
        verify(SECRET, text, now=NOW)


@given(st.integers(min_value=0), st.characters(codec="ascii"))
def test_a_token_with_one_character_changed_never_verifies(where: int, char: str) -> None:
    good = token()
    i = where % len(good)
    changed = good[:i] + char + good[i + 1:]
    if changed == good:
        return
    with pytest.raises(BadToken):
        verify(SECRET, changed, now=NOW)


def test_links_and_the_probe() -> None:
    assert ack_url("https://club.example/cw/", "T.K") == "https://club.example/cw/ack/T.K"
    assert ack_url("https://club.example", "T.K", pushover=True) == (
        "https://club.example/ack/T.K/pushover")
    probe = verify(SECRET, probe_token(SECRET, now=NOW), now=NOW)
    assert (probe.kind, probe.alert_id, probe.team) == (PROBE_KIND, "", "")
    assert NOW < probe.expires_at <= NOW + 60
