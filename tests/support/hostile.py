"""The committed hostile-payload corpus: tests/data/hostile/payloads.jsonl.

make_corpus.py beside the corpus writes it; the unit tier checks the file against its
generator and every verdict, the integration tier fires the payloads at a live gateway.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from tests.support.paths import DATA
from tests.support.roster import roster

HOSTILE_DIR = DATA / "hostile"
CORPUS_PATH = HOSTILE_DIR / "payloads.jsonl"


@dataclass(frozen=True, slots=True)
class Hostile:
    """One corpus entry (see make_corpus.py for the fields)."""

    name: str
    kind: str
    expect: str
    reason: str | None
    payload: bytes


def load_corpus() -> list[Hostile]:
    """Every entry of the corpus, its payload reassembled from its parts."""
    out: list[Hostile] = []
    for text in CORPUS_PATH.read_text(encoding="ascii").splitlines():
        entry = json.loads(text)
        payload = b"".join(
            (part["text"].encode("utf-8") if "text" in part else base64.b64decode(part["b64"]))
            * part["times"]
            for part in entry["parts"]
        )
        out.append(Hostile(entry["name"], entry["kind"], entry["expect"], entry["reason"],
                           payload))
    return out


# The roster the payloads are aimed at: TARGET takes every payload, accepted ones too; the
# VALID_CUFFS get valid readings, and only those hostile payloads the contract rejects.
TEAMS = roster({"t1": {"c1": "a-1", "c2": ("a-2", "left_arm")},
                "t2": {"c3": ("b-1", "right_arm"), "c4": ("b-2", "right_leg")}})
TARGET = ("t1", "c1")
VALID_CUFFS = (("t1", "c2"), ("t2", "c3"), ("t2", "c4"))
