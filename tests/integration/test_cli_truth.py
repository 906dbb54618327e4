"""Commands tell the truth (issue 15): `simulate`, `ack` and `assign` report what the broker
and the gateway really did, and fail in one line with a non-zero exit otherwise.

Each runs the real `cuffwatch` child process against a real Mosquitto (with the ACLs that
`cuffwatch broker-auth` writes) and, for ack and assign, a real gateway.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ops.brokerauth import BrokerFiles, load_credentials
from tests.integration.test_cli_processes import acli, assert_no_traceback, broker_config
from tests.support.broker_auth import broker_files, two_team_settings
from tests.support.gateway_process import GatewayProcess
from tests.support.harness import MqttProbe, settings_against, wait_for
from tests.support.roster import prescribed, roster
from tests.support.servers import InfluxDB1Server, MosquittoServer

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


# -- ack and assign: what the gateway did ---------------------------------------------------------

TEAMS = roster({"t1": {"c7": "a-17", "c8": "a-18"}}, athletes={"t1": prescribed("a-17")})


@pytest.fixture
async def gateway(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, topic_root: str, tmp_path: Path,
) -> AsyncIterator[Path]:
    """A real gateway process for the t1 roster; yields the config file it runs with."""
    settings = settings_against(mosquitto, influxdb, f"truth_{uuid.uuid4().hex[:8]}",
                                topic_root, tmp_path / "spool", teams=TEAMS)
    process = GatewayProcess.for_settings(settings, tmp_path)
    await process.started()
    try:
        yield process.config
    finally:
        process.terminate()


async def test_ack_says_what_the_gateway_did(
    gateway: Path, mosquitto: MosquittoServer, topic_root: str,
) -> None:
    config = str(gateway)
    alert_topic = f"{topic_root}/t1/alerts/c7/over_pressure"
    async with MqttProbe(mosquitto.host, mosquitto.port) as probe:
        await probe.subscribe(f"{topic_root}/t1/alerts/#")
        # nothing open yet: the gateway says so, and the command fails
        none_open = await acli("ack", "-c", config, "--team", "t1", "--cuff", "c7",
                               "--kind", "over_pressure", "--by", "Sam")
        assert none_open.returncode == 1, none_open.stdout
        assert_no_traceback(none_open)
        assert none_open.stdout == ""
        assert none_open.stderr == ("ack: the gateway refused: no_open_alert: no open "
                                    "over_pressure alert on t1/c7\n")

        # a reading over the leg's hard ceiling opens a critical; the ack acknowledges it
        now_ms = int(time.time() * 1000)
        probe.publish(f"{topic_root}/t1/cuffs/c7/telemetry",
                      {"ts": now_ms, "seq": 1, "pressure_mmhg": 320.0, "elapsed_s": 5.0})
        await wait_for(lambda: any(a.get("state") == "firing" for a in probe.json(alert_topic)),
                       what="the critical alert")
        acked = await acli("ack", "-c", config, "--team", "t1", "--cuff", "c7",
                           "--kind", "over_pressure", "--by", "Sam")
        assert acked.returncode == 0, acked.stderr
        assert acked.stderr == ""
        said = acked.stdout
        assert said.startswith("acknowledged: over_pressure on t1/c7 by Sam ("), said
        assert "320" in acked.stdout  # the alert's own message: what was acknowledged
        await wait_for(lambda: any(a.get("state") == "acknowledged" and
                                   a.get("acknowledged_by") == "Sam"
                                   for a in probe.json(alert_topic)),
                       what="the acknowledged alert state")


async def test_ack_refuses_what_cannot_be_an_alert_before_sending(
    gateway: Path, mosquitto: MosquittoServer, topic_root: str,
) -> None:
    config = str(gateway)
    async with MqttProbe(mosquitto.host, mosquitto.port) as probe:
        await probe.subscribe(f"{topic_root}/#")
        for args, line in [
            (("--team", "t1", "--cuff", "c7", "--kind", "over_presure"),
             "ack: no alert kind 'over_presure' (kinds: over_pressure, "),
            (("--team", "senoirs", "--cuff", "c7", "--kind", "over_pressure"),
             "ack: no team 'senoirs' in the configuration (teams: t1)"),
            (("--team", "t1", "--cuff", "c9", "--kind", "over_pressure"),
             "ack: no cuff 'c9' in team t1's roster (cuffs: c7, c8)"),
        ]:
            result = await acli("ack", "-c", config, *args)
            assert result.returncode == 2, (args, result.stdout)
            assert_no_traceback(result)
            [said] = result.stderr.splitlines()
            assert said.startswith(line), said
        assert not [t for t in probe.messages if t.endswith("/ack")]  # nothing was sent


async def test_assign_says_what_the_gateway_did(
    gateway: Path, mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    result = await acli("assign", "-c", str(gateway), "--team", "t1", "--cuff", "c7",
                        "--athlete", "a-18", "--limb", "right_leg")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "assigned: t1/c7: assigned to a-18 right_leg\n"

    # a name the roster does not know: refused before sending when the config knows the team
    local = await acli("assign", "-c", str(gateway), "--team", "t1", "--cuff", "c7",
                       "--athlete", "nobody-here")
    assert local.returncode == 2
    assert local.stderr == ("assign: no athlete 'nobody-here' in team t1's roster "
                            "(athletes: a-17, a-18)\n")
    # ... and by the gateway when the sender's config does not (another staff laptop)
    bare = broker_config(tmp_path / "bare.toml", mosquitto.url, topic_root)
    refused = await acli("assign", "-c", str(bare), "--team", "t1", "--cuff", "c7",
                         "--athlete", "nobody-here")
    assert refused.returncode == 1, refused.stdout
    assert_no_traceback(refused)
    assert refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith("assign: the gateway refused: unknown_athlete: athlete "
                           "'nobody-here' is not in team t1's roster"), line
    assert "--clear" in line  # the refused message is still retained: how to get rid of it


async def test_without_a_gateway_ack_and_assign_fail_saying_so(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    config = str(broker_config(tmp_path / "cuffwatch.toml", mosquitto.url, topic_root))
    for command in (("ack", "--kind", "over_pressure"), ("assign", "--athlete", "a-17")):
        result = await acli(command[0], "-c", config, "--team", "t1", "--cuff", "c7",
                            *command[1:])
        assert result.returncode == 1, result.stdout
        assert_no_traceback(result)
        assert result.stdout == ""
        assert result.stderr == (f"{command[0]}: no answer from the gateway within 5 s: is "
                                 "`cuffwatch run` up for team t1?\n")
