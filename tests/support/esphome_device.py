"""The ESPHome reference device (deploy/devices/esphome/) as the tests see it.

- `load_config` reads cuff.yaml as ESPHome would before validating it: its tags (`!secret`,
  `!lambda`) kept as marked strings, its `${substitutions}` applied;
- `DeviceContract` is what the configuration promises the gateway: its topics, QoS and
  retain flags, what its lambdas publish, the JSON fields its C++ writes;
- `build_harness` compiles tests/data/esphome/harness.cpp with the device's C++ and runs it;
- `esphome_bin` brings up `.venv-esphome` (`make esphome-venv`) and returns `esphome`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

from core.topics import TopicKind, Topics
from gateway.decode import decode_status
from tests.support.paths import DATA, REPO

DEVICE_DIR = REPO / "deploy" / "devices" / "esphome"
CONFIG = DEVICE_DIR / "cuff.yaml"
HEADER = DEVICE_DIR / "cuff_telemetry.h"
SECRETS_EXAMPLE = DEVICE_DIR / "secrets.example.yaml"
REQUIREMENTS = DEVICE_DIR / "requirements.txt"
HARNESS = DATA / "esphome" / "harness.cpp"
ESPHOME_VENV = REPO / ".venv-esphome"


class Secret(str):
    """A `!secret NAME` value: the name of the secret."""

    __slots__ = ()


class Lambda(str):
    """A `!lambda` value: its C++ code."""

    __slots__ = ()


class _Loader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    """YAML with ESPHome's tags; a tag it does not know is an error, never silently a string."""


def _secret(loader: yaml.SafeLoader, node: yaml.Node) -> Secret:
    assert isinstance(node, yaml.ScalarNode)
    return Secret(loader.construct_scalar(node))


def _lambda(loader: yaml.SafeLoader, node: yaml.Node) -> Lambda:
    assert isinstance(node, yaml.ScalarNode)
    return Lambda(loader.construct_scalar(node))


_Loader.add_constructor("!secret", _secret)
_Loader.add_constructor("!lambda", _lambda)


def load_yaml(text: str) -> Any:
    """YAML text with ESPHome's `!secret` and `!lambda` tags (as `Secret` and `Lambda`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader with two tags)


_SUBST = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _substitute(value: Any, subs: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name not in subs:
                raise KeyError(f"substitution {name!r} is not defined")
            return subs[name]

        text = _SUBST.sub(one, value)
        return type(value)(text) if isinstance(value, (Secret, Lambda)) else text
    if isinstance(value, list):
        return [_substitute(v, subs) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, subs) for k, v in value.items()}
    return value


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    """cuff.yaml with its substitutions applied (they may use the ones above them)."""
    raw = load_yaml(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    subs: dict[str, str] = {}
    for name, value in (raw.get("substitutions") or {}).items():
        subs[name] = _substitute(str(value), subs)
    out = _substitute({k: v for k, v in raw.items() if k != "substitutions"}, subs)
    out["substitutions"] = subs
    return dict(out)


def lambdas(node: Any) -> list[Lambda]:
    """Every lambda's code in a (loaded) configuration, in document order.

    An action `- lambda: |-` is a plain string before ESPHome validates it, a `Lambda`
    after: both count.
    """
    found: list[Lambda] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "lambda" and isinstance(value, str):
                found.append(Lambda(value))
            else:
                found += lambdas(value)
    elif isinstance(node, list):
        for value in node:
            found += lambdas(value)
    return found


# `id(mqtt_client).publish("topic", payload, qos, retain)` in a lambda
_PUBLISH = re.compile(
    r"\.publish\(\s*\"(?P<topic>[^\"]+)\"\s*,\s*(?P<payload>\w+)\s*,\s*(?P<qos>\d)\s*,"
    r"\s*(?P<retain>true|false)\s*\)"
)
_ANY_PUBLISH = re.compile(r"\.publish(?:_json)?\s*\(")
# `out += ",\"seq\":";` in the C++: the JSON keys it writes
_JSON_KEY = re.compile(r'\\"(\w+)\\":')


@dataclass(frozen=True)
class Publish:
    topic: str
    qos: int
    retain: bool


@dataclass(frozen=True)
class DeviceContract:
    """What cuff.yaml (and its C++) promise the gateway."""

    root: str
    team: str
    cuff: str
    mqtt: dict[str, Any]
    lambda_publishes: list[Publish]
    publish_calls: int  # every `.publish(` in a lambda, parsed or not
    subscriptions: list[Publish]
    json_fields: list[str]

    @classmethod
    def of(cls, config: Mapping[str, Any], header: str) -> DeviceContract:
        subs = config["substitutions"]
        mqtt = config["mqtt"]
        code = "\n".join(lambdas(config))
        publishes = [
            Publish(m["topic"], int(m["qos"]), m["retain"] == "true")
            for m in _PUBLISH.finditer(code)
        ]
        subscriptions = [
            Publish(entry["topic"], int(entry.get("qos", 0)), False)
            for entry in mqtt.get("on_message", []) + mqtt.get("on_json_message", [])
        ]
        to_json = header[header.index("inline void to_json(") :]
        to_json = to_json[: to_json.index("\n}\n")]
        return cls(
            root=subs["topic_root"],
            team=subs["team"],
            cuff=subs["cuff"],
            mqtt=dict(mqtt),
            lambda_publishes=publishes,
            publish_calls=len(_ANY_PUBLISH.findall(code)),
            subscriptions=subscriptions,
            json_fields=_JSON_KEY.findall(to_json),
        )


def check_device_topics(contract: DeviceContract) -> None:
    """Topics, QoS and retain flags as core.topics and gateway.decode have them: run on
    cuff.yaml as written (unit tier) and on ESPHome's own validated output (integration)."""
    topics = Topics(contract.root)
    team, cuff = contract.team, contract.cuff
    telemetry = topics.parse(topics.telemetry(team, cuff))
    assert telemetry is not None
    assert (telemetry.kind, telemetry.team, telemetry.cuff) == (TopicKind.TELEMETRY, team, cuff)

    mqtt = contract.mqtt
    status = topics.status(team, cuff)
    for key, payload, online in (
        ("birth_message", "online", True),
        ("will_message", "offline", False),
        ("shutdown_message", "offline", False),
    ):
        message = mqtt[key]
        assert message["topic"] == status, key
        parsed = topics.parse(message["topic"])
        assert parsed is not None
        assert parsed.kind is TopicKind.STATUS
        assert message["payload"] == payload, key
        assert decode_status(message["payload"].encode()) is online, key
        assert int(message["qos"]) == 1, f"{key}: QoS 1 (docs/contract.md, Topics)"
        assert message["retain"] is True, f"{key}: status is retained"

    # The one publish of the lambdas: telemetry, QoS 1, never retained (a retained reading
    # is rejected as `retained`).
    assert contract.publish_calls == len(contract.lambda_publishes) == 1
    (publish,) = contract.lambda_publishes
    assert publish.topic == topics.telemetry(team, cuff)
    assert publish.qos == 1
    assert publish.retain is False

    # The only subscription: its own assignment, QoS 1.
    assert [(s.topic, s.qos) for s in contract.subscriptions] == [
        (topics.assignment(team, cuff), 1)
    ]
    # Nothing else goes to the broker: no discovery, state or log topics (and the broker's
    # ACL for a cuff allows only its telemetry and status).
    assert mqtt["discovery"] is False
    assert mqtt["topic_prefix"] in (None, "")
    assert mqtt["log_topic"] is None
    # cuffwatch broker-auth: username = client id = cuff id
    assert mqtt["client_id"] == cuff
    assert mqtt["username"] == cuff


def build_harness(out_dir: Path) -> dict[str, list[str]]:
    """Compile the harness with the device's C++ (warnings are errors), run it, and return
    its lines by case name."""
    gxx = shutil.which("g++")
    assert gxx is not None, "g++ is needed to test the device's C++ (Debian: g++)"
    exe = out_dir / "harness"
    subprocess.run(
        [gxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Wconversion", "-Wshadow", "-Werror",
         f"-I{DEVICE_DIR}", str(HARNESS), "-o", str(exe)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    run = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30)
    cases: dict[str, list[str]] = {}
    for line in run.stdout.splitlines():
        name, _, text = line.partition("\t")
        cases.setdefault(name, []).append(text)
    return cases


def esphome_bin() -> Path:
    """`esphome` from `.venv-esphome`, installed first if needed (`make esphome-venv`: the
    pinned deploy/devices/esphome/requirements.txt from PyPI, about a minute)."""
    make = shutil.which("make")
    assert make is not None, "make is needed to install .venv-esphome"
    done = subprocess.run(
        [make, "-s", "esphome-venv"], cwd=REPO, capture_output=True, text=True, timeout=900,
        check=False,
    )
    assert done.returncode == 0, (
        f"make esphome-venv failed (exit {done.returncode}): ESPHome could not be installed "
        f"from PyPI\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    exe = ESPHOME_VENV / "bin" / "esphome"
    assert exe.exists(), f"{exe} missing after make esphome-venv"
    return exe


def pinned_esphome_version() -> str:
    """The `esphome==X` pin of requirements.txt."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        if line.startswith("esphome=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{REQUIREMENTS} pins no esphome==")
