"""ESPHome itself validates the reference device: `esphome config deploy/devices/esphome/cuff.yaml`.

ESPHome (pinned in deploy/devices/esphome/requirements.txt) lives in `.venv-esphome`, which
`make esphome-venv` installs from PyPI (about a minute, once). `esphome config` needs no
network: it runs here in a network namespace with none (`unshare --net`), and must under
CI. What it cannot do here is compile (`esphome compile` downloads the ESP-IDF toolchain
through PlatformIO, from outside PyPI): the device's C++ is compiled and run by g++ in
tests/unit/test_esphome_device.py instead. A missing ESPHome fails these tests, never skips
them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.esphome_device import (
    CONFIG,
    DEVICE_DIR,
    HEADER,
    SECRETS_EXAMPLE,
    DeviceContract,
    Lambda,
    Secret,
    check_device_topics,
    esphome_bin,
    load_yaml,
    pinned_esphome_version,
)

# Installing ESPHome takes about a minute here; allow for a slow mirror.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def esphome() -> Path:
    return esphome_bin()


def _offline_prefix() -> list[str]:
    """`unshare --net` where it works (as root): ESPHome then runs with no network at all."""
    unshare = shutil.which("unshare")
    if unshare is not None:
        probe = subprocess.run(
            [unshare, "--net", "true"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [unshare, "--net"]
    assert not os.environ.get("CI"), "CI must prove `esphome config` offline: unshare --net failed"
    return []


@pytest.fixture
def device_dir(tmp_path: Path) -> Path:
    """A copy of deploy/devices/esphome with the example secrets as secrets.yaml."""
    out = tmp_path / "esphome"
    out.mkdir()
    for src in (CONFIG, HEADER):
        shutil.copy(src, out / src.name)
    shutil.copy(SECRETS_EXAMPLE, out / "secrets.yaml")
    return out


def run_config(esphome: Path, directory: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPHOME")}
    env["HOME"] = str(directory)  # anything ESPHome might cache stays in the test's folder
    return subprocess.run(
        [*_offline_prefix(), str(esphome), "config", "cuff.yaml"],
        cwd=directory, capture_output=True, text=True, timeout=300, env=env, check=False,
    )


def test_esphome_is_the_pinned_version(esphome: Path) -> None:
    out = subprocess.run(
        [str(esphome), "version"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"Version: {pinned_esphome_version()}"


def test_esphome_config_validates_the_device_offline(esphome: Path, device_dir: Path) -> None:
    done = run_config(esphome, device_dir)
    assert done.returncode == 0, f"esphome config failed:\n{done.stderr}\n{done.stdout}"
    assert "Configuration is valid!" in done.stderr
    assert "WARNING" not in done.stderr, done.stderr

    # ESPHome's own reading of the file (its substitutions, its defaults) keeps the contract
    validated: dict[str, Any] = load_yaml(done.stdout)
    contract = DeviceContract.of(validated, HEADER.read_text(encoding="utf-8"))
    check_device_topics(contract)
    assert validated["mqtt"]["clean_session"] is False
    # secrets stay secrets in the output; lambdas are code ESPHome passes through
    assert isinstance(validated["mqtt"]["password"], Secret)
    assert all(isinstance(code, Lambda) for code in _lambda_values(validated))
    assert validated["esphome"]["includes"] == [str(device_dir / HEADER.name)]


def _lambda_values(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "lambda"] + [
            x for v in node.values() for x in _lambda_values(v)
        ]
    if isinstance(node, list):
        return [x for v in node for x in _lambda_values(v)]
    return []


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        # the last will with QoS 3: no such QoS
        ("  will_message:\n    topic: ${status_topic}\n    payload: offline\n    qos: 1\n",
         "  will_message:\n    topic: ${status_topic}\n    payload: offline\n    qos: 3\n",
         "qos"),
        # a pin that is no GPIO of an ESP32
        ("pressure_pin: GPIO34", "pressure_pin: GPIO99", "GPIO99"),
        # the C++ the lambdas call, missing
        ("    - cuff_telemetry.h\n", "    - no_such_file.h\n", "no_such_file.h"),
        # a secret that secrets.yaml does not have
        ("password: !secret mqtt_password", "password: !secret mqtt_pasword", "mqtt_pasword"),
    ],
    ids=["will-qos-3", "no-such-pin", "missing-include", "missing-secret"],
)
def test_esphome_config_really_validates(
    esphome: Path, device_dir: Path, old: str, new: str, complaint: str,
) -> None:
    """A broken copy fails: the validation above is no formality."""
    path = device_dir / "cuff.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")
    done = run_config(esphome, device_dir)
    assert done.returncode != 0
    assert complaint in done.stderr + done.stdout


def test_the_device_folder_holds_what_the_readme_says() -> None:
    names = {p.name for p in DEVICE_DIR.iterdir()}
    assert {"cuff.yaml", "cuff_telemetry.h", "secrets.example.yaml", "README.md",
            "requirements.txt"} <= names
    assert "secrets.yaml" not in names or not _tracked(DEVICE_DIR / "secrets.yaml")


def _tracked(path: Path) -> bool:
    git = shutil.which("git")
    if git is None:
        return False
    out = subprocess.run([git, "ls-files", "--error-unmatch", str(path)], cwd=DEVICE_DIR,
                         capture_output=True, timeout=30, check=False)
    return out.returncode == 0
