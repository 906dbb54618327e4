"""URLs as check prints them: user info, secret query values and token-like parts masked."""

from __future__ import annotations

import pytest

from core.redact import mask_url, scrub


@pytest.mark.parametrize(("url", "shown"), [
    ("json://user:s3cret@127.0.0.1:8080/hook?token=abc&x=1",
     "json://user:***@127.0.0.1:8080/hook?token=***&x=1"),
    ("ntfy://tk_AbCdEf123456@ntfy.club.example/t1-staff",
     "ntfy://***@ntfy.club.example/t1-staff"),
    ("mailto://cuffwatch:smtpSecret77@smtp.example.org:587?to=staff@example.org",
     "mailto://cuffwatch:***@smtp.example.org:587?to=staff@example.org"),
    ("pover://uQiRzpo4DXghDmr9QzzfQu27cmVRsG@azGDORePK8gMaC0QOYAMyEEuzJnyUi",
     "pover://***@***"),
    ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general",
     "slack://***/A1BRTD4JD/***/#general"),  # a heuristic: the secret, C, is masked
    ("tgram://123456789:AAHbcdefghijkl/123", "tgram://123456789:***/123"),
    ("json://hooks.example.org/api/webhook/9f8e7d6c5b4a3f2e1d0c",
     "json://hooks.example.org/api/webhook/***"),
    ("json://127.0.0.1:9/hook?+X-Api=abc", "json://127.0.0.1:9/hook?+X-Api=***"),
    ("ntfys://ntfy.club.example/first-staff", "ntfys://ntfy.club.example/first-staff"),
    ("http://[::1]:8086", "http://[::1]:8086"),
    ("not a url", "***"),
    ("", ""),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_service_urls_keep_their_names() -> None:
    assert mask_url("mqtt://gateway:pw@broker01:1883", tokens=False) \
        == "mqtt://gateway:***@broker01:1883"
    assert mask_url("http://influx2:8086/x?token=t", tokens=False) == "http://influx2:8086/x?token=***"


def test_scrub_replaces_every_known_secret_longest_first() -> None:
    text = "refused pw-abcd and pw-abcdef at pw-abcdef"
    assert scrub(text, ["pw-abcd", "pw-abcdef", "", "x"]) == "refused *** and *** at ***"
