"""What the end-to-end alert tests share: quiet timers, readings, arm-worn teams, the
gateway's settings, and alerts read back off MQTT.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from core.config import Settings
from tests.support.harness import MqttProbe, gateway_settings
from tests.support.servers import MosquittoServer

# Timers the tests do not exercise stay far beyond a test's length.
QUIET: dict[str, Any] = {"stale_after_s": 120, "escalate_after_s": 120, "ack_silence_s": 120}


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return int(time.time() * 1000)


def reading(seq: int, ts: int, pressure: float, elapsed: float, *, inflated: bool = True,
            **extra: Any) -> dict[str, Any]:
    """A reading's JSON object (inflated unless told otherwise)."""
    return {"ts": ts, "seq": seq, "pressure_mmhg": pressure, "elapsed_s": elapsed,
            "inflated": inflated, **extra}


def arm_team(*cuffs: str, **team: Any) -> dict[str, Any]:
    """A team whose cuffs c1, c2, … are worn on the left arm by a-1, a-2, … (hard max 250)."""
    return {"cuffs": {c: {"athlete": f"a-{c[1:]}", "limb": "left_arm"} for c in cuffs}, **team}


def settings_for(mosquitto: MosquittoServer, root: str, tmp_path: Path, teams: dict[str, Any],
                 *, alerts: dict[str, Any] | None = None, influx: dict[str, Any] | None = None,
                 health: dict[str, Any] | None = None) -> Settings:
    """A test gateway for `teams` with QUIET timers (`alerts` overrides them)."""
    return gateway_settings(broker_url=mosquitto.url, topic_root=root,
                            spool_dir=tmp_path / "spool", teams=teams,
                            alerts={**QUIET, **(alerts or {})}, influx=influx, health=health)


def published(probe: MqttProbe, topic: str) -> list[tuple[dict[str, Any] | None, bool]]:
    """(alert object or None for an empty payload, retain flag as published), in order."""
    return [(json.loads(p) if p else None, r) for p, r in probe.messages.get(topic, [])]


def states(probe: MqttProbe, topic: str) -> list[str | None]:
    """The `state` of each alert published on the topic (None for an empty payload)."""
    return [a["state"] if a else None for a, _ in published(probe, topic)]
