"""Broker lock-down offline: the generated passwd/ACL/conf files, credentials, the command.

The same files on a real Mosquitto: tests/integration/test_brokerauth_mosquitto.py.
"""

from __future__ import annotations

import argparse
import stat
import uuid
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from ops import brokerauth
from ops.brokerauth import (
    BrokerAuthError,
    BrokerFiles,
    load_credentials,
    principals,
    render_acl,
    staff_user,
    verify_password,
    write_broker_files,
)
from tests.support.broker_auth import CUFF, broker_files, two_team_settings


@pytest.fixture
def root() -> str:
    """A unique topic root, so a test's topics are its own."""
    return f"t{uuid.uuid4().hex}"


@pytest.fixture
def settings(root: str) -> Settings:
    """The two-team roster under this test's root."""
    return two_team_settings(root)


@pytest.fixture
def files(settings: Settings, tmp_path: Path) -> BrokerFiles:
    """Broker files for the roster, credentials beside the output directory."""
    return broker_files(settings, tmp_path)


def test_acl_confines_each_principal(settings: Settings, root: str) -> None:
    acl = render_acl(principals(settings))
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in acl.splitlines():
        if line.startswith("user "):
            current = blocks.setdefault(line.removeprefix("user "), [])
        elif line.startswith(("topic ", "pattern ")):
            assert current is not None, f"{line!r} would apply to anonymous clients"
            current.append(line)
    assert set(blocks) == {"gateway", staff_user("t1"), staff_user("t2"), "c7", "c8", "c9"}
    assert blocks["c7"] == [
        f"topic write {root}/t1/cuffs/c7/telemetry",
        f"topic write {root}/t1/cuffs/c7/status",
        f"topic read {root}/t1/cuffs/c7/assignment",
    ]
    assert f"topic read {root}/#" in blocks["gateway"]
    assert not any("assignment" in line for line in blocks["gateway"])
    assert all("/t2/" not in line for line in blocks["staff-t1"])
    assert f"topic write {root}/t1/alerts/+/+/ack" in blocks["staff-t1"]
    assert not any(line.startswith("pattern") for line in acl.splitlines())


def test_username_collisions_are_refused(root: str) -> None:
    clash = load_settings(
        None, topic_root=root, teams={"t1": {"cuffs": {"gateway": CUFF}}, "t2": {}}
    )
    with pytest.raises(BrokerAuthError, match="'gateway' is both the gateway user"):
        principals(clash)
    clash = load_settings(None, topic_root=root, teams={"t1": {"cuffs": {"staff-t2": CUFF}},
                                                        "t2": {}})
    with pytest.raises(BrokerAuthError, match="staff user of team t2"):
        principals(clash)
    bad_user = load_settings(None, topic_root=root, broker={"username": "gate way"})
    with pytest.raises(BrokerAuthError, match="gate way"):
        principals(bad_user)


def test_files_and_passwords(settings: Settings, files: BrokerFiles, root: str) -> None:
    creds = load_credentials(files.credentials)
    assert set(creds) == {"gateway", "staff-t1", "staff-t2", "c7", "c8", "c9"}
    assert len(set(creds.values())) == len(creds)
    assert all(len(pw) >= 32 for pw in creds.values())
    assert stat.S_IMODE(files.credentials.stat().st_mode) == 0o600
    for path in (files.passwd, files.acl, files.conf):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    hashes = dict(line.split(":", 1) for line in files.passwd.read_text().splitlines())
    assert set(hashes) == set(creds)
    assert all(verify_password(creds[user], hashes[user]) for user in creds)
    conf = files.conf.read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert f"password_file {files.passwd.resolve()}" in conf
    assert f"acl_file {files.acl.resolve()}" in conf
    assert not any(pw in files.passwd.read_text() + files.acl.read_text() for pw in creds.values())

    # A second run keeps every password; a new cuff gets one, the others stay.
    bigger = load_settings(
        None, topic_root=root, broker={"username": "gateway"},
        teams={"t1": {"cuffs": {"c7": CUFF, "c8": CUFF, "c10": CUFF}},
               "t2": {"cuffs": {"c9": CUFF}}},
    )
    again = write_broker_files(bigger, files.passwd.parent, credentials=files.credentials)
    after = load_credentials(again.credentials)
    assert {k: v for k, v in after.items() if k != "c10"} == creds
    assert "c10" in after
    assert stat.S_IMODE(again.credentials.stat().st_mode) == 0o600


def test_credentials_round_trip_any_text(settings: Settings, tmp_path: Path) -> None:
    odd = 'q"uo\\te\nline\ttab ü 🔑 \x7f'
    creds = tmp_path / "creds.toml"
    creds.write_text("")
    creds.chmod(0o600)
    creds.write_text(brokerauth.render_credentials({"gateway": odd, "weird key": "x"}))
    assert load_credentials(creds) == {"gateway": odd, "weird key": "x"}
    files = write_broker_files(settings, tmp_path / "out", credentials=creds)
    assert load_credentials(files.credentials)["gateway"] == odd
    line = next(ln for ln in files.passwd.read_text().splitlines() if ln.startswith("gateway:"))
    assert verify_password(odd, line.split(":", 1)[1])


def test_refuses_unsafe_credentials(settings: Settings, tmp_path: Path) -> None:
    creds = tmp_path / "creds.toml"
    creds.write_text('[passwords]\ngateway = "x"\n')
    creds.chmod(0o644)
    with pytest.raises(BrokerAuthError, match="chmod 600"):
        write_broker_files(settings, tmp_path / "out", credentials=creds)
    with pytest.raises(BrokerAuthError, match="keep the credentials out of"):
        write_broker_files(settings, tmp_path / "out", credentials=tmp_path / "out" / "c.toml")
    creds.chmod(0o600)
    creds.write_text("[passwords]\ngateway = 3\n")
    with pytest.raises(BrokerAuthError, match="non-empty strings"):
        write_broker_files(settings, tmp_path / "out", credentials=creds)
    assert not (tmp_path / "out" / "passwd").exists()


def test_configured_gateway_password_wins(root: str, tmp_path: Path) -> None:
    secret = tmp_path / "gw.password"
    secret.write_text("from-the-config\n")
    configured = two_team_settings(root, password_file=str(secret))
    files = write_broker_files(
        configured, tmp_path / "out", credentials=tmp_path / "creds.toml",
        broker_dir="/mosquitto/auth/", gateway_password_file=tmp_path / "gw.copy",
    )
    assert load_credentials(files.credentials)["gateway"] == "from-the-config"
    assert files.gateway_password is not None
    assert files.gateway_password.read_text() == "from-the-config\n"
    assert stat.S_IMODE(files.gateway_password.stat().st_mode) == 0o600
    assert "password_file /mosquitto/auth/passwd" in files.conf.read_text()
    secret.write_text("changed")
    with pytest.raises(BrokerAuthError, match="differs from the configured"):
        write_broker_files(configured, tmp_path / "out", credentials=files.credentials)


def test_first_run_writes_the_configured_password_file(root: str, tmp_path: Path) -> None:
    target = tmp_path / "secrets" / "gateway.password"
    configured = two_team_settings(root, password_file=str(target))  # not there yet
    creds = tmp_path / "creds.toml"
    files = write_broker_files(
        configured, tmp_path / "out", credentials=creds, gateway_password_file=target
    )
    password = load_credentials(files.credentials)["gateway"]
    assert target.read_text() == password + "\n"
    write_broker_files(
        configured, tmp_path / "out", credentials=creds, gateway_password_file=target
    )
    assert load_credentials(creds)["gateway"] == password
    assert configured.broker.secret_password() == password


def test_command_prints_paths_never_passwords(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    brokerauth.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "auth")])
    assert brokerauth.run_command(args, settings) == 0
    out = capsys.readouterr().out
    default_creds = tmp_path / "broker-credentials.toml"
    assert str(default_creds) in out
    assert str(tmp_path / "auth" / "passwd") in out
    for password in load_credentials(default_creds).values():
        assert password not in out
    default_creds.chmod(0o644)
    assert brokerauth.run_command(args, settings) == 1
    assert "chmod 600" in capsys.readouterr().err
