"""The ESPHome reference device keeps to the contract, as the gateway's own code states it.

cuff.yaml's topics, QoS and retain flags are checked against core.topics.Topics and
gateway.decode.decode_status; the JSON fields its C++ writes against gateway.decode's
ReadingIn; and what the C++ really prints (compiled with g++ from
tests/data/esphome/harness.cpp) goes through gateway.decode, so the device cannot drift from
the gateway unnoticed. ESPHome itself validates the file in
tests/integration/test_esphome_config.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from core.config import AlertSettings
from core.model import PLAUSIBLE_MAX_MMHG, PLAUSIBLE_MIN_MMHG
from core.seq import SEQ_MODULUS
from gateway.decode import (
    MAX_PAYLOAD_BYTES,
    MAX_READINGS_PER_MESSAGE,
    FastReadingIn,
    RawReading,
    ReadingIn,
    decode_readings,
    decode_readings_strict,
)
from tests.support.esphome_device import (
    CONFIG,
    HEADER,
    SECRETS_EXAMPLE,
    DeviceContract,
    Lambda,
    Secret,
    build_harness,
    check_device_topics,
    lambdas,
    load_config,
    load_yaml,
)
from tests.support.paths import REPO

EPOCH_MS = 1_795_000_000_000  # the harness's SNTP clock


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_config()


@pytest.fixture(scope="module")
def contract(config: dict[str, Any]) -> DeviceContract:
    return DeviceContract.of(config, HEADER.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    return build_harness(tmp_path_factory.mktemp("esphome-harness"))


def test_topics_qos_and_retain_are_the_contracts(contract: DeviceContract) -> None:
    check_device_topics(contract)


def test_topic_ids_are_valid_and_the_root_is_the_default(contract: DeviceContract) -> None:
    assert contract.root == "bfr"  # docs/contract.md: the default topic_root
    for name in (contract.team, contract.cuff):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)


def test_json_fields_are_the_decoders(contract: DeviceContract) -> None:
    fields = contract.json_fields
    assert len(fields) == len(set(fields))
    known = set(ReadingIn.model_fields)
    assert set(fields) <= known, f"fields the gateway does not know: {set(fields) - known}"
    assert set(fields) <= set(FastReadingIn.__struct_fields__)
    required = {name for name, f in ReadingIn.model_fields.items() if f.is_required()}
    assert required <= set(fields), f"required fields not sent: {required - set(fields)}"
    assert fields == [
        "ts", "seq", "pressure_mmhg", "elapsed_s", "inflated", "battery_pct", "target_mmhg",
    ]


def test_header_constants_are_the_gateways() -> None:
    header = HEADER.read_text(encoding="utf-8")

    def constant(name: str) -> float:
        m = re.search(rf"constexpr \w+ {name} = (-?[\d.]+)f?;", header)
        assert m is not None, name
        return float(m.group(1))

    assert constant("MAX_BATCH") == MAX_READINGS_PER_MESSAGE
    assert constant("PLAUSIBLE_MIN_MMHG") == PLAUSIBLE_MIN_MMHG
    assert constant("PLAUSIBLE_MAX_MMHG") == PLAUSIBLE_MAX_MMHG


def test_device_cutoffs_are_within_the_gateways_limits(config: dict[str, Any]) -> None:
    """The device's own cut-offs never sit above the gateway's highest default limits: the
    device deflates no later than the gateway would call it critical."""
    subs = config["substitutions"]
    alerts = AlertSettings()
    ceilings = (alerts.arm.hard_max_mmhg, alerts.leg.hard_max_mmhg, alerts.ipc.hard_max_mmhg)
    bouts = (alerts.arm.max_bout_s, alerts.leg.max_bout_s, alerts.ipc.max_bout_s)
    assert 0 < float(subs["device_max_mmhg"]) <= max(ceilings)
    assert 0 < float(subs["device_max_bout_s"]) <= max(bouts)
    assert 0 <= float(subs["default_target_mmhg"]) < float(subs["device_max_mmhg"])


def test_no_reboots_for_want_of_a_network(config: dict[str, Any]) -> None:
    """ESPHome reboots after 15 min without Wi-Fi or MQTT by default: mid-bout that loses
    the buffered readings; the cuff buffers instead."""
    assert config["wifi"]["reboot_timeout"] == "0s"
    assert config["mqtt"]["reboot_timeout"] == "0s"


def test_publishing_never_blocks_the_safety_loop(config: dict[str, Any]) -> None:
    """The pressure readings and the cut-offs run in ESPHome's main loop; a blocking publish
    (ESPHome's default on ESP-IDF) could hold it for seconds with the pump running."""
    assert config["mqtt"]["idf_send_async"] is True


def test_outputs_start_safe(config: dict[str, Any]) -> None:
    """On boot the pump is off and the (normally open) valve de-energised, before anything
    else; the inflate switch never comes back on by itself after a restart."""
    boot = config["esphome"]["on_boot"]
    assert boot["priority"] >= 600
    first = boot["then"][:2]
    assert {"output.turn_off": "pump_out"} in first
    assert {"output.turn_off": "valve_out"} in first
    (inflate,) = [s for s in config["switch"] if s["id"] == "inflate"]
    assert inflate["restore_mode"] == "ALWAYS_OFF"


def test_secrets_example_covers_every_secret() -> None:
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Secret):
            used.add(str(node))
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(load_yaml(CONFIG.read_text(encoding="utf-8")))
    example = load_yaml(SECRETS_EXAMPLE.read_text(encoding="utf-8"))
    assert used == set(example)


def test_lambdas_are_found(config: dict[str, Any]) -> None:
    code = lambdas(config)
    assert len(code) >= 4
    assert all(isinstance(c, str) for c in code)
    assert isinstance(Lambda("x"), str)
    # each lambda calls into the tested header, not code of its own
    assert all("cuffwatch::" in c for c in code)


def test_secrets_yaml_is_ignored_by_git() -> None:
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "deploy/devices/esphome/secrets.yaml" in ignored
    assert ".venv-esphome/" in ignored


# --- what the device's C++ really sends, judged by the gateway's decoder ------------------


def decode(payload: str) -> list[RawReading]:
    """Both decoders must accept it, alike."""
    data = payload.encode()
    fast = decode_readings(data)
    strict = decode_readings_strict(data)
    assert [(r.seq, r.ts_ms(), r.pressure_mmhg) for r in fast] == [
        (r.seq, r.ts_ms(), r.pressure_mmhg) for r in strict
    ]
    return fast


def test_live_readings_go_one_object_each(harness: dict[str, list[str]]) -> None:
    payloads = harness["live"]
    assert len(payloads) == 5
    readings = []
    for p in payloads:
        assert p.startswith("{")
        (r,) = decode(p)
        readings.append(r)
    assert [r.seq for r in readings] == [0, 1, 2, 3, 4]
    assert [r.ts_ms() for r in readings] == [EPOCH_MS + 500 * i for i in range(5)]
    assert all(r.is_inflated() and r.target_mmhg == 180.0 for r in readings)
    assert [r.elapsed_s for r in readings] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_offline_readings_go_as_one_array_of_the_newest_256(
    harness: dict[str, list[str]],
) -> None:
    (payload,) = harness["offline"]
    assert payload.startswith("[")
    readings = decode(payload)
    assert len(readings) == MAX_READINGS_PER_MESSAGE
    assert [r.seq for r in readings] == list(range(300 - 256, 300))
    assert harness["offline_dropped"] == [str(300 - 256)]
    # each ts is the sample's own time: 500 ms apart, the newest now
    assert [r.ts_ms() for r in readings] == [EPOCH_MS - 500 * (255 - i) for i in range(256)]
    assert all(r.target_mmhg is None for r in readings)  # not regulating: left out
    assert all(r.battery_pct == 50.0 for r in readings)


def test_seq_wraps_at_2_pow_32(harness: dict[str, list[str]]) -> None:
    (payload,) = harness["wrap"]
    assert [r.seq for r in decode(payload)] == [SEQ_MODULUS - 2, SEQ_MODULUS - 1, 0, 1]


def test_ts_is_right_across_the_uptime_clock_wrapping(harness: dict[str, list[str]]) -> None:
    (payload,) = harness["millis_wrap"]
    assert [r.ts_ms() for r in decode(payload)] == [EPOCH_MS - 500 * i for i in (3, 2, 1, 0)]


def test_elapsed_resets_at_deflation(harness: dict[str, list[str]]) -> None:
    (payload,) = harness["bout"]
    readings = decode(payload)
    inflated = [r.is_inflated() for r in readings]
    assert inflated == [False, True, True, True, True, True, False, True]
    assert all(r.inflated is not None for r in readings)  # always sent explicitly
    elapsed = [r.elapsed_s for r in readings]
    assert elapsed[0] == elapsed[6] == 0.0  # deflated: 0
    assert elapsed[1:6] == sorted(elapsed[1:6])  # counts up ...
    assert elapsed[1] < 0.5  # ... from 0
    assert 0 < elapsed[7] < 0.5  # a new bout starts from 0 again
    # target only while told to inflate (regulating)
    assert [r.target_mmhg for r in readings] == [None, 180.0, 180.0, 180.0] + [None] * 4


def test_a_silent_sensor_sends_nothing_rather_than_nan(harness: dict[str, list[str]]) -> None:
    assert harness["sensor_silent"] == ["false"]
    assert harness["sensor_silent_size"] == ["0"]


def test_edge_values_still_make_an_accepted_message(harness: dict[str, list[str]]) -> None:
    (payload,) = harness["edges"]
    readings = decode(payload)
    # implausible pressures go as sent (the gateway stores them and raises sensor_fault)
    assert [r.pressure_mmhg for r in readings[:2]] == [-35.0, 700.0]
    assert [r.pressure_mmhg for r in readings[2:4]] == [1e9, -1e9]  # capped, finite
    assert [r.pressure_mmhg for r in readings[4:6]] == [0.0, 0.0]
    # out-of-range optional fields are clamped or left out, never rejected
    assert all(r.battery_pct == 100.0 for r in readings[:6])
    assert readings[6].battery_pct == 0.0
    assert readings[7].battery_pct is None
    assert all(r.target_mmhg is None for r in readings)  # never commanded in this case
    raw = json.loads(payload)
    assert all(set(obj) <= set(ReadingIn.model_fields) for obj in raw)


def test_the_biggest_message_fits_the_contract(harness: dict[str, list[str]]) -> None:
    (payload,) = harness["biggest"]
    assert len(payload.encode()) <= MAX_PAYLOAD_BYTES
    readings = decode(payload)
    assert len(readings) == MAX_READINGS_PER_MESSAGE
    assert {r.seq for r in readings} >= {SEQ_MODULUS - 1, 0}  # wrapped inside the batch


@pytest.mark.parametrize(
    ("case", "pump_on", "valve_closed", "trip"),
    [
        ("safety_idle", False, False, None),
        ("safety_pump_below_band", True, True, None),
        ("safety_pump_in_band_off", False, True, None),
        ("safety_pump_in_band_on", True, True, None),
        ("safety_pump_at_target", False, True, None),
        ("safety_no_target", False, True, None),
        ("safety_over_pressure", False, False, "over pressure"),
        ("safety_target_capped", False, True, None),
        ("safety_over_time", False, False, "over time"),
        ("safety_sensor_nan", False, False, "sensor fault"),
        ("safety_sensor_high", False, False, "sensor fault"),
        ("safety_sensor_low", False, False, "sensor fault"),
        ("safety_cuff_trip", False, False, "over pressure"),
    ],
)
def test_device_safety(
    harness: dict[str, list[str]], case: str, pump_on: bool, valve_closed: bool,
    trip: str | None,
) -> None:
    (text,) = harness[case]
    assert json.loads(text) == {"pump_on": pump_on, "valve_closed": valve_closed, "trip": trip}


@pytest.mark.parametrize(
    ("case", "target"),
    [
        ("assign_target", 150.0),
        ("assign_pct", 132.0),  # 60 % of 220
        ("assign_none", None),
        ("assign_cleared", None),
        ("assign_key_as_value", 140.5),
        ("assign_garbage", None),
    ],
)
def test_assignment_target(harness: dict[str, list[str]], case: str, target: float | None) -> None:
    assert harness[case] == [json.dumps(target) if target is None else f"{target:.1f}"]


def test_every_harness_case_is_judged(harness: dict[str, list[str]]) -> None:
    """A case added to the harness gets a test here too."""
    here = Path(__file__).read_text(encoding="utf-8")
    missing = [name for name in harness if f'"{name}"' not in here]
    assert not missing, f"harness cases no test looks at: {missing}"
