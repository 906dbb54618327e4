"""Commands tell the truth (issue 15): `simulate`, `ack` and `assign` report what the broker
and the gateway really did, and fail in one line with a non-zero exit otherwise.

Each runs the real `cuffwatch` child process against a real Mosquitto (with the ACLs that
`cuffwatch broker-auth` writes) and, for ack and assign, a real gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ops.brokerauth import BrokerFiles, load_credentials
from tests.integration.test_cli_processes import acli, assert_no_traceback
from tests.support.broker_auth import broker_files, two_team_settings
from tests.support.harness import MqttProbe, wait_for
from tests.support.servers import MosquittoServer

MakeBroker = Callable[..., MosquittoServer]


@pytest.fixture
def files(topic_root: str, tmp_path: Path) -> BrokerFiles:
    """Broker files for the two-team roster (t1: c7, c8; t2: c9) under this test's root."""
    return broker_files(two_team_settings(topic_root), tmp_path)


@pytest.fixture
def locked_broker(make_mosquitto: MakeBroker, files: BrokerFiles) -> MosquittoServer:
    """A real Mosquitto with the generated password file and ACL."""
    return make_mosquitto(password_file=files.passwd, acl_file=files.acl)


def roster_config(path: Path, broker: MosquittoServer, topic_root: str, password: Path) -> Path:
    """The two-team roster's config, connecting as the `gateway` user."""
    path.write_text(
        f'topic_root = "{topic_root}"\n'
        f'[broker]\nurl = "{broker.url}"\nusername = "gateway"\npassword_file = "{password}"\n'
        '[teams.t1.cuffs.c7]\nlimb = "left_leg"\n[teams.t1.cuffs.c8]\nlimb = "left_leg"\n'
        '[teams.t2.cuffs.c9]\nlimb = "left_leg"\n'
    )
    return path


# -- simulate ----------------------------------------------------------------------------------


async def test_simulate_reports_publishes_the_broker_refused(
    locked_broker: MosquittoServer, files: BrokerFiles, topic_root: str, tmp_path: Path,
) -> None:
    passwords = load_credentials(files.credentials)
    secret = tmp_path / "gateway.pw"
    secret.write_text(passwords["gateway"])
    config = roster_config(tmp_path / "cuffwatch.toml", locked_broker, topic_root, secret)
    telemetry = {f"{topic_root}/{t}/cuffs/{c}/telemetry" for t, c in
                 (("t1", "c7"), ("t1", "c8"), ("t2", "c9"))}
    async with MqttProbe(locked_broker.host, locked_broker.port, username="gateway",
                         password=passwords["gateway"]) as probe:
        await probe.subscribe(f"{topic_root}/#")

        # every cuff as the config's user: the ACL lets the gateway user write no telemetry
        denied = await acli("simulate", "-c", str(config), "--duration", "2")
        assert denied.returncode == 1, denied.stderr
        assert_no_traceback(denied)
        last = denied.stderr.splitlines()[-1]
        assert last.startswith("simulate: the broker refused "), last
        assert "--credentials" in last
        assert not telemetry & set(probe.messages)

        # each cuff as itself, with the credentials broker-auth wrote: all of it arrives
        allowed = await acli("simulate", "-c", str(config), "--duration", "2",
                             "--credentials", str(files.credentials))
        assert allowed.returncode == 0, allowed.stderr
        assert_no_traceback(allowed)
        assert "the broker refused" not in allowed.stderr
        await wait_for(lambda: telemetry <= set(probe.messages), what="every cuff's telemetry")


async def test_simulate_refuses_credentials_without_a_cuffs_password(
    files: BrokerFiles, topic_root: str, tmp_path: Path, locked_broker: MosquittoServer,
) -> None:
    secret = tmp_path / "gateway.pw"
    secret.write_text("unused")
    config = roster_config(tmp_path / "cuffwatch.toml", locked_broker, topic_root, secret)
    result = await acli("simulate", "-c", str(config), "--duration", "1", "--cuffs", "2",
                        "--credentials", str(files.credentials))
    assert result.returncode == 2
    assert_no_traceback(result)
    [line] = result.stderr.splitlines()
    assert line.startswith("simulate: no password for cuff(s) c001, c002"), line
