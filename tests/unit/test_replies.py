"""Answers to staff requests (MQTT 5 Response Topic): only ever on the team's reply topics."""

from __future__ import annotations

import pytest

from core.topics import Topics

T = Topics("bfr")


def test_a_reply_topic_is_built_under_the_team() -> None:
    assert T.reply("t1", "cuffwatch-cli-1a2b") == "bfr/t1/replies/cuffwatch-cli-1a2b"
    assert T.is_reply_topic("t1", T.reply("t1", "cuffwatch-cli-1a2b"))


@pytest.mark.parametrize("topic", [
    "bfr/t1/alerts/c7/over_pressure",  # a request must not make the gateway publish an alert
    "bfr/t1/cuffs/c7/assignment",
    "bfr/t2/replies/x",  # another team's
    "bfr/t1/replies/",  # no client
    "bfr/t1/replies/a/b",  # deeper
    "bfr/t1/replies/+",  # a wildcard is no topic
    "bfr/t1/replies/#",
    "other/t1/replies/x",
    "bfr/t1/replies/" + "x" * 65,
])
def test_anything_else_is_no_reply_topic(topic: str) -> None:
    assert not T.is_reply_topic("t1", topic)
