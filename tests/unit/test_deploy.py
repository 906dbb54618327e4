"""Deployment files, checked offline: compose, Dockerfile, systemd unit, setup-laptop.sh.

Docker cannot run here, so the compose file and the Dockerfile are checked for structure
and for every path they reference. The Mosquitto configs (the compose one and the ones
setup-laptop.sh writes) run for real in tests/integration/test_deploy_mosquitto.py.
"""

from __future__ import annotations

import argparse
import re
import shlex
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from core.config import HealthSettings, load_settings
from ops import brokerauth
from ops.brokerauth import load_credentials, write_broker_files
from tests.support.paths import REPO

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
EXAMPLE = DEPLOY / "cuffwatch.example.toml"
UNIT = DEPLOY / "systemd" / "cuffwatch.service"
SETUP = DEPLOY / "setup-laptop.sh"
BROKER_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"

_VAR_RE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` with `env` (default: unset)."""
    env = env or {}

    def value(m: re.Match[str]) -> str:
        if m["name"] in env:
            return env[m["name"]]
        if m["op"] == ":-":
            return m["arg"]
        if m["op"] == ":?":
            return f"<{m['name']}>"  # required: compose refuses to start without it
        return ""

    return _VAR_RE.sub(value, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml with its variables at their defaults."""
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text()))
    return data


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """A service's short-syntax volumes as (source, target)."""
    out = []
    for entry in service.get("volumes", []):
        source, target, *_mode = entry.split(":")
        out.append((source, target))
    return out


def _under(path: str, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


# -- docker-compose.yml ---------------------------------------------------------------------


def test_compose_services_images_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"mosquitto", "influxdb", "grafana", "gateway", "caddy"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2.")
    assert services["influxdb"]["image"].startswith("influxdb:2.")
    assert services["grafana"]["image"].startswith("grafana/grafana:11.6")
    gateway = services["gateway"]
    assert (REPO / gateway["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert (DEPLOY / gateway["build"]["context"]).resolve() == REPO
    assert gateway["depends_on"]["mosquitto"]["condition"] == "service_started"
    assert gateway["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert "healthcheck" in services["influxdb"]
    for service in services.values():
        assert service["restart"] == "unless-stopped"
    # Only TLS MQTT reaches the host; 1883 stays on the compose network.
    assert services["mosquitto"]["ports"] == ["8883:8883"]
    assert all(p.startswith("127.0.0.1:") for p in services["influxdb"]["ports"])
    # The ack endpoint is reached through Caddy's TLS only, and Caddy runs only with acks on.
    assert "ports" not in gateway
    caddy = services["caddy"]
    assert caddy["image"].startswith("caddy:2")
    assert caddy["profiles"] == ["ack"]
    assert caddy["ports"] == ["80:80", "443:443"]
    assert caddy["environment"]["CUFFWATCH_ACK_UPSTREAM"] == "gateway:9109"
    assert ("./caddy", "/etc/caddy") in _mounts(caddy)  # the official image's Caddyfile path
    assert (DEPLOY / "caddy" / "Caddyfile").is_file()


def test_compose_references_only_files_that_exist(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for source, target in _mounts(service):
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} not declared"
            assert target.startswith("/"), (name, target)
    for name in declared:
        assert any(name == src for s in compose["services"].values() for src, _ in _mounts(s))
    for script in (DEPLOY / "influxdb" / "init").iterdir():
        if script.suffix == ".sh":
            assert script.stat().st_mode & stat.S_IXUSR, f"{script} must be executable"
            subprocess.run(["bash", "-n", str(script)], check=True)


def test_compose_keeps_secrets_out(compose: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, service in raw["services"].items():
        for key, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET", key) and key != "DOCKER_INFLUXDB_INIT_USERNAME":
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}.{key}: {value}"
    influx = compose["services"]["influxdb"]["environment"]
    assert influx["DOCKER_INFLUXDB_INIT_ORG"] == "club"
    assert influx["DOCKER_INFLUXDB_INIT_BUCKET"] == "bfr"
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    example = (DEPLOY / ".env.example").read_text()
    for var in set(_VAR_RE.findall(COMPOSE.read_text())):
        if var[1] == ":?":
            assert re.search(rf"^{var[0]}=", example, re.M), f"{var[0]} not in .env.example"
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    assert {".env", "secrets/*", "mosquitto/auth/*", "mosquitto/certs/*"} <= set(ignored)


def test_compose_broker_paths_are_mounted(compose: dict[str, Any]) -> None:
    mounts = _mounts(compose["services"]["mosquitto"])
    targets = [target for _source, target in mounts]
    assert ("./mosquitto/mosquitto.conf", "/mosquitto/config/mosquitto.conf") in mounts
    options = dict(
        line.split(" ", 1) for line in BROKER_CONF.read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key in ("password_file", "acl_file", "cafile", "certfile", "keyfile",
                "persistence_location"):
        assert any(_under(options[key], t) for t in targets), f"{key} {options[key]} unmounted"
    data_mount = next(src for src, target in mounts if target == "/mosquitto/data")
    assert data_mount in compose["volumes"]  # persistence on a named volume


def test_compose_gateway_environment_configures_the_example(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = compose["services"]["gateway"]
    for key, value in gateway["environment"].items():
        monkeypatch.setenv(key, str(value))
    # required from deploy/.env; a placeholder of a real secret's length stands in for it
    assert gateway["environment"]["CUFFWATCH_ACK__SECRET"] == "<ACK_SECRET>"
    monkeypatch.setenv("CUFFWATCH_ACK__SECRET", "<ACK_SECRET>" * 4)
    config = next(src for src, target in _mounts(gateway)
                  if target == "/etc/cuffwatch/cuffwatch.toml")
    settings = load_settings(DEPLOY / config)
    assert settings.broker.url == "mqtt://mosquitto:1883"
    assert settings.influx.api == "v2"
    assert settings.influx.url == "http://influxdb:8086"
    assert settings.influx.secret_token() == "<INFLUX_TOKEN>"
    assert settings.health.host == "0.0.0.0"
    assert settings.ack.host == "0.0.0.0"  # for the caddy service, on the compose network
    assert not settings.ack.enabled  # until ACK_PUBLIC_URL is set
    assert settings.ack.port == 9109
    spool = next(target for src, target in _mounts(gateway) if src == "cuffwatch-spool")
    assert _under(settings.spool.dir, spool)
    secrets = next(target for src, target in _mounts(gateway) if src == "./secrets")
    assert settings.broker.password_file is not None
    assert _under(settings.broker.password_file, secrets)
    for team in settings.teams.values():
        for route in team.routes:
            assert route.url_file is not None
            assert _under(route.url_file, secrets)
    assert int(gateway["stop_grace_period"].removesuffix("s")) >= 30


def test_compose_grafana_provisioning_fits(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {target: DEPLOY / source for source, target in _mounts(grafana)
                  if source.startswith(".")}
    provisioning = mounts["/etc/grafana/provisioning"]
    for datasource_file in (provisioning / "datasources").glob("*.yaml"):
        for ds in yaml.safe_load(datasource_file.read_text())["datasources"]:
            assert re.match(r"http://influxdb:8086/?$", ds["url"]), ds["url"]
            for ref in re.findall(r"\$__env\{(\w+)\}", yaml.safe_dump(ds)):
                assert ref in grafana["environment"], f"Grafana needs {ref} in its environment"
    dashboards_target, dashboards_dir = next(
        (t, p) for t, p in mounts.items() if t.startswith("/var/lib/grafana/dashboards")
    )
    providers = [
        p for f in (provisioning / "dashboards").glob("*.yaml")
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert providers, "no dashboard providers provisioned"
    for provider in providers:
        path = PurePosixPath(provider["options"]["path"])
        assert path.is_relative_to(dashboards_target), path
        local = dashboards_dir / path.relative_to(dashboards_target)
        assert list(local.glob("*.json")), f"{local} has no dashboards"


# -- Dockerfile -------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_stages_user_and_healthcheck() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    froms = [args for word, args in steps if word == "FROM"]
    assert [f.split()[-1] for f in froms] == ["builder", "runtime"]
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    runs = " ".join(a for word, a in steps if word == "RUN")
    assert "--require-hashes" in runs
    assert "-r requirements.lock" in runs
    runtime = steps[[i for i, (w, _a) in enumerate(steps) if w == "FROM"][1]:]
    assert any(w == "COPY" and a.startswith("--from=builder") for w, a in runtime)
    users = [a for w, a in runtime if w == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    health = next(a for w, a in runtime if w == "HEALTHCHECK")
    exec_form = health[health.index("CMD") + 3:].strip()
    command = yaml.safe_load(exec_form)  # a JSON array
    assert command[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{HealthSettings().port}/readyz" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")
    assert "curl" not in health
    cmd = yaml.safe_load(next(a for w, a in runtime if w == "CMD"))
    assert cmd == ["run", "-c", "/etc/cuffwatch/cuffwatch.toml"]
    assert yaml.safe_load(next(a for w, a in runtime if w == "ENTRYPOINT")) == ["cuffwatch"]


def test_dockerfile_copies_only_what_exists() -> None:
    for word, arguments in _instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not arguments.startswith("--from"):
            *sources, _destination = shlex.split(arguments)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


# -- the example configuration ----------------------------------------------------------------


def test_example_config_is_complete_and_secret_free() -> None:
    settings = load_settings(EXAMPLE)
    assert len(settings.teams) >= 2
    for team_id, team in settings.teams.items():
        assert team.routes, team_id
        assert team.cuffs, team_id
        assert any(a.prescriptions for a in team.athletes.values()), team_id
        for cuff_id, cuff in team.cuffs.items():
            assert cuff.athlete is None or cuff.athlete in team.athletes, (team_id, cuff_id)
        for route in team.routes:
            assert route.url is None
            assert route.url_file is not None
    assert settings.broker.password is None
    assert settings.influx.token is None
    assert settings.influx.password is None
    text = EXAMPLE.read_text()
    assert settings.ack.secret is None
    assert not settings.ack.enabled
    for key in ("instance", "topic_root", "[broker]", "[influx]", "[spool]", "[health]",
                "[ack]", "[alerts]", "[alerts.arm]", "[alerts.leg]", "[alerts.ipc]"):
        assert key in text, f"example lacks {key}"
    protocols = {rx.protocol.value for t in settings.teams.values()
                 for a in t.athletes.values() for rx in a.prescriptions.values()}
    assert protocols == {"bfr", "ipc"}


def test_example_config_makes_broker_files(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE)
    files = write_broker_files(settings, tmp_path / "auth", credentials=tmp_path / "c.toml")
    cuffs = {c for team in settings.teams.values() for c in team.cuffs}
    staff = {brokerauth.staff_user(t) for t in settings.teams}
    assert set(load_credentials(files.credentials)) == {"gateway"} | cuffs | staff


# -- systemd ------------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_is_hardened_and_drains() -> None:
    unit = _unit(UNIT)
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["ExecStart"] == (
        "/opt/cuffwatch/.venv/bin/cuffwatch run -c /etc/cuffwatch/cuffwatch.toml"
    )
    assert service["Restart"] == "always"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "true"
    assert service["StateDirectory"] == "cuffwatch"
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/cuffwatch/")
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"].removesuffix("s")) >= 30
    assert service.get("DynamicUser") == "yes" or service.get("User") == "cuffwatch"
    assert service["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    # The example's spool is in the unit's state directory.
    spool = load_settings(EXAMPLE).spool.dir
    assert _under(spool, f"/var/lib/{service['StateDirectory']}")


# -- setup-laptop.sh --------------------------------------------------------------------------


def test_setup_script_parses_and_fits_the_other_files() -> None:
    subprocess.run(["bash", "-n", str(SETUP)], check=True)
    assert SETUP.stat().st_mode & stat.S_IXUSR
    text = SETUP.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "Grafana is not in Debian's archive" in text
    assert 'VENV="${PREFIX}/.venv"' in text
    assert "PREFIX=/opt/cuffwatch" in text
    assert "deploy/systemd/cuffwatch.service" in text
    assert re.search(r"apt-get install .*\bmosquitto\b.*\binfluxdb\b", text.replace("\\\n", ""))
    assert 'CREATE DATABASE ${INFLUX_DB}' in text
    assert "CUFFWATCH_ACK__SECRET=" in text  # the ack links' secret, made once
    # The broker-auth options it passes are ones the command accepts.
    call = re.search(r'cuffwatch" broker-auth (.*?)\n(?!\s)', text, re.S)
    assert call is not None
    words = shlex.split(call[1].replace("\\\n", " "))
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", required=True)
    brokerauth.add_arguments(parser)
    parsed = parser.parse_args(words)
    assert parsed.out
    assert parsed.credentials
    assert parsed.gateway_password_file
