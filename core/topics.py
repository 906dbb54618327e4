"""MQTT topic names (SPEC §2): building them and parsing what arrives."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from core.errors import CoreError

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TopicKind(enum.Enum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    ASSIGNMENT = "assignment"
    ALERT = "alert"  # a (retained) alert of ours, read back at start-up
    ACK = "ack"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    team: str
    cuff: str
    alert_kind: str | None = None


class BadTopic(CoreError, ValueError):
    """A topic under our root that does not name a valid team and cuff.

    `team` and `cuff` are those of its ids that are valid (None for an invalid one): only a
    valid id may go into a topic built in answer (SPEC §2's grammar; `+`, `#` and the like
    cannot).
    """

    def __init__(self, message: str, *, team: str | None = None, cuff: str | None = None) -> None:
        super().__init__(message)
        self.team = team
        self.cuff = cuff


# Parsed topics are remembered (a fleet reuses the same few thousand topic names); past this
# many the memo starts over, so a flood of distinct topic names cannot grow memory.
PARSE_CACHE_SIZE = 16_384


class Topics:
    """Topic names under one root; `parse` is on the hot path and memoised."""

    __slots__ = ("_parsed", "_prefix", "root")

    def __init__(self, root: str) -> None:
        self.root = root
        self._prefix = root + "/"
        self._parsed: dict[str, ParsedTopic] = {}

    def telemetry(self, team: str, cuff: str) -> str:
        return f"{self.root}/{team}/cuffs/{cuff}/telemetry"

    def status(self, team: str, cuff: str) -> str:
        return f"{self.root}/{team}/cuffs/{cuff}/status"

    def assignment(self, team: str, cuff: str) -> str:
        return f"{self.root}/{team}/cuffs/{cuff}/assignment"

    def rejected(self, team: str, cuff: str) -> str:
        return f"{self.root}/{team}/cuffs/{cuff}/rejected"

    def alert(self, team: str, cuff: str, kind: str) -> str:
        return f"{self.root}/{team}/alerts/{cuff}/{kind}"

    def ack(self, team: str, cuff: str, kind: str) -> str:
        return f"{self.root}/{team}/alerts/{cuff}/{kind}/ack"

    def reply(self, team: str, client: str) -> str:
        """Where the gateway answers a staff client's MQTT 5 request (an ack, an assignment)."""
        return f"{self.root}/{team}/replies/{client}"

    def is_reply_topic(self, team: str, topic: str) -> bool:
        """Whether `topic` is one of `team`'s reply topics: the only Response Topics the
        gateway answers on (a request must not make it publish anywhere else)."""
        prefix = f"{self.root}/{team}/replies/"
        return topic.startswith(prefix) and _ID_RE.fullmatch(topic[len(prefix):]) is not None

    def gateway_status(self, instance: str) -> str:
        return f"{self.root}/_gateway/{instance}/status"

    def subscriptions(self, teams: tuple[str, ...] = ()) -> list[str]:
        """Filters the gateway subscribes to: every team, or only `teams` (partitioning)."""
        scopes = list(teams) or ["+"]
        out = []
        for team in scopes:
            base = f"{self.root}/{team}"
            out += [
                f"{base}/cuffs/+/telemetry",
                f"{base}/cuffs/+/status",
                f"{base}/cuffs/+/assignment",
                f"{base}/alerts/+/+/ack",
                f"{base}/alerts/+/+",
            ]
        return out

    def parse(self, topic: str) -> ParsedTopic | None:
        """Classify a topic; None if it is not one we consume; BadTopic if ids are invalid."""
        try:
            return self._parsed[topic]
        except KeyError:
            pass
        parsed = self._parse(topic)
        if parsed is not None:  # only valid names (ids ≤ 64 chars): every entry is small
            cache = self._parsed
            if len(cache) >= PARSE_CACHE_SIZE:
                cache.clear()
            cache[topic] = parsed
        return parsed

    def _parse(self, topic: str) -> ParsedTopic | None:
        if not topic.startswith(self._prefix):
            return None
        parts = topic[len(self._prefix) :].split("/")
        n = len(parts)
        if n == 4 and parts[1] == "cuffs":
            try:
                kind = _CUFF_KINDS[parts[3]]
            except KeyError:
                return None
            return ParsedTopic(kind, *_check_ids(parts[0], parts[2]))
        if parts[0] == "_gateway":
            return None
        if n == 4 and parts[1] == "alerts":
            return ParsedTopic(TopicKind.ALERT, *_check_ids(parts[0], parts[2]), parts[3])
        if n == 5 and parts[1] == "alerts" and parts[4] == "ack":
            return ParsedTopic(TopicKind.ACK, *_check_ids(parts[0], parts[2]), parts[3])
        return None


_CUFF_KINDS = {
    "telemetry": TopicKind.TELEMETRY,
    "status": TopicKind.STATUS,
    "assignment": TopicKind.ASSIGNMENT,
}


def _check_ids(team: str, cuff: str) -> tuple[str, str]:
    """(team, cuff) if both are valid ids; else BadTopic naming the first invalid one."""
    team_ok = _ID_RE.fullmatch(team) is not None
    cuff_ok = _ID_RE.fullmatch(cuff) is not None
    if team_ok and cuff_ok:
        return team, cuff
    bad = cuff if team_ok else team
    raise BadTopic(
        f"invalid id {bad[:80]!r} in topic",
        team=team if team_ok else None,
        cuff=cuff if cuff_ok else None,
    )
