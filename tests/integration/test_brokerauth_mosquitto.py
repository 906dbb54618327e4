"""Broker lock-down on a real Mosquitto: our hashes are mosquitto_passwd's, the generated
ACL confines every principal, the conf snippet turns authentication on, TLS listeners.

The files themselves, offline: tests/unit/test_brokerauth.py.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import os
import re
import ssl
import subprocess
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from ops.brokerauth import BrokerFiles, hash_password, load_credentials, verify_password
from tests.support.broker_auth import (
    NOT_AUTHORIZED,
    PUBLISH_ACCEPTED,
    broker_files,
    connected,
    publish,
    refused,
    two_team_settings,
)
from tests.support.gateway_process import run_cuffwatch, write_config
from tests.support.pki import Pki
from tests.support.servers import MosquittoServer, find_binary

MakeBroker = Callable[..., MosquittoServer]


@pytest.fixture
def files(topic_root: str, tmp_path: Path) -> BrokerFiles:
    """Broker files for the two-team roster under this test's topic topic_root."""
    return broker_files(two_team_settings(topic_root), tmp_path)


@pytest.fixture
def passwords(files: BrokerFiles) -> dict[str, str]:
    """The generated passwords, by username."""
    return load_credentials(files.credentials)


@pytest.fixture
def broker(make_mosquitto: MakeBroker, files: BrokerFiles) -> MosquittoServer:
    """A real Mosquitto using the generated password file and ACL."""
    return make_mosquitto(password_file=files.passwd, acl_file=files.acl)


# -- mosquitto_passwd -----------------------------------------------------------------------------


def test_hash_is_mosquitto_passwd_format(tmp_path: Path) -> None:
    passwd = tmp_path / "pw"
    subprocess.run(
        [find_binary("mosquitto_passwd"), "-c", "-b", str(passwd), "alice", "s3cret ü"],
        check=True, capture_output=True,
    )
    user, encoded = passwd.read_text().strip().split(":", 1)
    assert user == "alice"
    assert verify_password("s3cret ü", encoded)
    assert not verify_password("s3cret", encoded)
    salt = base64.b64decode(encoded.split("$")[3])
    assert hash_password("s3cret ü", salt=salt) == encoded
    ours = hash_password("s3cret ü")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", ours)
    assert ours != hash_password("s3cret ü")  # a fresh salt each time


# -- against a real Mosquitto ------------------------------------------------------------------
# Denied publishes go through `publish` (mosquitto_pub); a gmqtt peer with full read access
# then waits for an allowed marker published after them, so "never received" needs no timer.


@pytest.mark.parametrize("version", [MQTTv50, MQTTv311], ids=["mqtt5", "mqtt311"])
async def test_cuff_cannot_spoof_another_cuff_or_team(
    broker: MosquittoServer, passwords: dict[str, str], topic_root: str, version: int
) -> None:
    own = f"{topic_root}/t1/cuffs/c7/telemetry"
    spoofs = [
        f"{topic_root}/t1/cuffs/c8/telemetry",  # another cuff of its team
        f"{topic_root}/t2/cuffs/c7/telemetry",  # its own id under another team
        f"{topic_root}/t2/cuffs/c9/status",
        f"{topic_root}/t1/alerts/c7/over_pressure",  # forging an alert
        f"{topic_root}/t1/cuffs/c7/assignment",  # assigning itself
        f"{topic_root}/_gateway/gw-1/status",
    ]
    async with connected(broker, "gateway", passwords["gateway"]) as gateway:
        assert await gateway.subscribe(f"{topic_root}/#") == (1,)
        for topic in spoofs:
            reason = await publish(broker, "c7", passwords, topic, version=version)
            assert reason == (NOT_AUTHORIZED if version == MQTTv50 else 0), topic
        assert await publish(broker, "c7", passwords, own, version=version) in PUBLISH_ACCEPTED
        assert await gateway.receive_until(own) == [own]


async def test_cuff_reads_only_its_own_assignment(
    broker: MosquittoServer, passwords: dict[str, str], topic_root: str
) -> None:
    mine = f"{topic_root}/t1/cuffs/c7/assignment"
    async with connected(broker, "c7", passwords["c7"]) as cuff:
        await cuff.subscribe(f"{topic_root}/t1/cuffs/+/assignment")
        await cuff.subscribe(f"{topic_root}/t1/cuffs/c8/telemetry")
        await cuff.subscribe(f"{topic_root}/t1/alerts/#")
        for user, topic in [("staff-t1", f"{topic_root}/t1/cuffs/c8/assignment"),
                            ("c8", f"{topic_root}/t1/cuffs/c8/telemetry"),
                            ("gateway", f"{topic_root}/t1/alerts/c8/over_time"),
                            ("staff-t1", mine)]:
            assert await publish(broker, user, passwords, topic, retain=True) in PUBLISH_ACCEPTED
        assert await cuff.receive_until(mine) == [mine]
    for topic in (f"{topic_root}/t2/cuffs/c9/assignment", f"{topic_root}/t1/cuffs/c7/telemetry",
                  f"{topic_root}/t1/alerts/c7/over_time"):
        assert await publish(broker, "staff-t1", passwords, topic) == NOT_AUTHORIZED, topic


async def test_staff_see_and_ack_only_their_team(
    broker: MosquittoServer, passwords: dict[str, str], topic_root: str
) -> None:
    t1_alert = f"{topic_root}/t1/alerts/c7/over_pressure"
    t2_alert = f"{topic_root}/t2/alerts/c9/over_pressure"
    async with (
        connected(broker, "gateway", passwords["gateway"]) as gateway,
        connected(broker, "staff-t1", passwords["staff-t1"]) as staff,
    ):
        await gateway.subscribe(f"{topic_root}/+/alerts/+/+/ack")
        await staff.subscribe(f"{topic_root}/#")
        await staff.subscribe(f"{topic_root}/t2/alerts/#")  # Mosquitto grants it, then filters
        for user, topic in [("gateway", t2_alert), ("c9", f"{topic_root}/t2/cuffs/c9/telemetry"),
                            ("staff-t2", f"{topic_root}/t2/cuffs/c9/assignment"),
                            ("c7", f"{topic_root}/t1/cuffs/c7/telemetry"), ("gateway", t1_alert)]:
            assert await publish(broker, user, passwords, topic) in PUBLISH_ACCEPTED
        expected = [f"{topic_root}/t1/cuffs/c7/telemetry", t1_alert]
        assert await staff.receive_until(t1_alert) == expected

        assert await publish(broker, "staff-t1", passwords, f"{t2_alert}/ack") == NOT_AUTHORIZED
        assert await publish(broker, "staff-t1", passwords, f"{t1_alert}/ack") in PUBLISH_ACCEPTED
        assert await gateway.receive_until(f"{t1_alert}/ack") == [f"{t1_alert}/ack"]


async def test_gateway_reads_everything_and_publishes_alerts(
    broker: MosquittoServer, passwords: dict[str, str], topic_root: str
) -> None:
    alert = f"{topic_root}/t2/alerts/c9/over_time"
    telemetry = [f"{topic_root}/t1/cuffs/c7/telemetry", f"{topic_root}/t2/cuffs/c9/telemetry"]
    async with (
        connected(broker, "gateway", passwords["gateway"]) as gateway,
        connected(broker, "staff-t2", passwords["staff-t2"]) as staff,
    ):
        await gateway.subscribe(f"{topic_root}/+/cuffs/+/telemetry")
        await staff.subscribe(f"{topic_root}/t2/alerts/#")
        for cuff, topic in zip(("c7", "c9"), telemetry, strict=True):
            assert await publish(broker, cuff, passwords, topic) in PUBLISH_ACCEPTED
        assert await gateway.receive_until(telemetry[1]) == telemetry
        gateway.publish(alert, b'{"state": "firing"}', retain=True)
        assert await staff.receive_until(alert) == [alert]
    for topic in (f"{topic_root}/t1/cuffs/c7/rejected", f"{topic_root}/_gateway/gw-1/status",
                  alert):
        assert await publish(broker, "gateway", passwords, topic) in PUBLISH_ACCEPTED, topic
    for topic in (f"{alert}/ack", f"{topic_root}/t1/cuffs/c7/assignment",
                  f"{topic_root}/t1/cuffs/c7/status", f"{topic_root}/t1/cuffs/c7/telemetry",
                  "elsewhere/topic"):
        assert await publish(broker, "gateway", passwords, topic) == NOT_AUTHORIZED, topic


@pytest.mark.parametrize("version", [MQTTv50, MQTTv311], ids=["mqtt5", "mqtt311"])
async def test_anonymous_and_wrong_passwords_are_refused(
    broker: MosquittoServer, passwords: dict[str, str], version: int
) -> None:
    # MQTT 5: 0x87 Not authorized (Mosquitto's answer to both) or 0x86 Bad user name or
    # password; MQTT 3.1.1: 5 not authorised or 4 bad user name or password.
    expected = {NOT_AUTHORIZED, 0x86} if version == MQTTv50 else {4, 5}
    for user, password in [(None, None), ("c7", passwords["c8"]), ("c7", ""),
                           ("nobody", "x"), ("gateway", passwords["gateway"] + "x")]:
        error = await refused(broker, user, password, version=version)
        assert error._code in expected, (user, error)
    async with connected(broker, "c7", passwords["c7"], version=version):
        pass


async def test_shared_subscription_respects_the_acl(
    broker: MosquittoServer, passwords: dict[str, str], topic_root: str
) -> None:
    c7_topic = f"{topic_root}/t1/cuffs/c7/telemetry"
    c9_topic = f"{topic_root}/t2/cuffs/c9/telemetry"
    async with (
        connected(broker, "gateway", passwords["gateway"]) as gateway,
        connected(broker, "staff-t2", passwords["staff-t2"]) as other,
    ):
        await gateway.subscribe(f"$share/gw/{topic_root}/+/cuffs/+/telemetry")
        await other.subscribe(f"$share/sneak/{topic_root}/+/cuffs/+/telemetry")
        assert await publish(broker, "c7", passwords, c7_topic) in PUBLISH_ACCEPTED
        assert await publish(broker, "c9", passwords, c9_topic) in PUBLISH_ACCEPTED
        assert await gateway.receive_until(c9_topic) == [c7_topic, c9_topic]
        assert await other.receive_until(c9_topic) == [c9_topic]


async def test_conf_snippet_turns_authentication_on(
    make_mosquitto: MakeBroker, files: BrokerFiles, passwords: dict[str, str]
) -> None:
    snippet = [line for line in files.conf.read_text().splitlines() if not line.startswith("#")]
    server = make_mosquitto(allow_anonymous=False, extra_config=snippet)
    error = await refused(server, None, None, version=MQTTv50)
    assert error._code == NOT_AUTHORIZED
    async with connected(server, "c9", passwords["c9"]):
        pass


@pytest.fixture
def tls_broker(make_mosquitto: MakeBroker, files: BrokerFiles, pki: Pki) -> MosquittoServer:
    """The locked-down broker with a TLS listener and a mutual-TLS listener."""
    return make_mosquitto(
        password_file=files.passwd,
        acl_file=files.acl,
        extra_listeners={
            "tls": pki.listener_options(require_certificate=False),
            "mtls": pki.listener_options(require_certificate=True),
        },
    )


async def test_tls_listener_accepts_a_client_trusting_the_ca(
    tls_broker: MosquittoServer, passwords: dict[str, str], pki: Pki, topic_root: str
) -> None:
    topic = f"{topic_root}/t1/cuffs/c7/telemetry"
    async with (
        connected(tls_broker, "gateway", passwords["gateway"], port=tls_broker.ports["tls"],
                  tls=pki.client_context(with_cert=False)) as gateway,
        connected(tls_broker, "c7", passwords["c7"], port=tls_broker.ports["mtls"],
                  tls=pki.client_context()) as cuff,
    ):
        await gateway.subscribe(f"{topic_root}/#")
        cuff.publish(topic, b"{}")
        assert await gateway.receive_until(topic) == [topic]


async def test_tls_client_without_the_ca_refuses_the_broker(
    tls_broker: MosquittoServer, passwords: dict[str, str]
) -> None:
    untrusting = ssl.create_default_context()  # the system CAs only, not our test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connected(tls_broker, "gateway", passwords["gateway"],
                             port=tls_broker.ports["tls"], tls=untrusting):
            pass


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    tls_broker: MosquittoServer, pki: Pki
) -> None:
    reader, writer = await asyncio.open_connection(
        tls_broker.host, tls_broker.ports["mtls"], ssl=pki.client_context(with_cert=False)
    )
    # A minimal MQTT 3.1.1 CONNECT (client id "x"); the broker must never answer CONNACK.
    writer.write(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x")
    try:
        await writer.drain()
        answer = await reader.read(4)
    except (ssl.SSLError, ConnectionError) as exc:
        answer = repr(exc).encode()
    finally:
        writer.close()
        with suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    # The client sees an alert, a reset or EOF depending on timing; never a CONNACK (0x20).
    assert not answer.startswith(b"\x20"), answer
    assert "peer did not return a certificate" in tls_broker.log_tail()


# -- files a packaged Mosquitto can open ---------------------------------------------------------


async def test_broker_auth_files_open_for_a_broker_that_drops_root(
    make_mosquitto: MakeBroker, topic_root: str, tmp_path: Path,
) -> None:
    """Issue 15: root-owned 0640 files were "Unable to open pwfile" for a Mosquitto that,
    as packaged, starts as root and reads them as user mosquitto."""
    config = write_config(tmp_path / "cuffwatch.toml", two_team_settings(topic_root))
    out = tmp_path / "auth"
    done = await asyncio.to_thread(
        run_cuffwatch, "broker-auth", "-c", str(config), "--out", str(out),
        "--credentials", str(tmp_path / "secret" / "creds.toml"), timeout=60.0)
    assert done.returncode == 0, done.stderr
    if os.geteuid() != 0:  # a user cannot give files away: it prints the one command
        assert f"sudo chgrp mosquitto {out} {out}/passwd {out}/acl" in done.stdout, done.stdout
        return
    gid = grp.getgrnam("mosquitto").gr_gid
    for path in (out, out / "passwd", out / "acl", out / "cuffwatch-auth.conf"):
        assert path.stat().st_gid == gid, path
    assert "chgrp" not in done.stdout  # nothing left for the operator to do
    broker = make_mosquitto(password_file=out / "passwd", acl_file=out / "acl",
                            run_as="mosquitto")
    passwords = load_credentials(tmp_path / "secret" / "creds.toml")
    async with connected(broker, "c7", passwords["c7"]):
        pass  # the broker read the password file: it let the cuff in
