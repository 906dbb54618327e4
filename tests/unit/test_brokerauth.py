"""Broker lock-down: generated passwd/ACL files, checked offline and against a real Mosquitto."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import re
import ssl
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError
from pki import Pki, make_pki
from servers import MosquittoServer, find_binary

from core.config import Settings, load_settings
from ops import brokerauth
from ops.brokerauth import (
    BrokerAuthError,
    BrokerFiles,
    hash_password,
    load_credentials,
    principals,
    render_acl,
    staff_user,
    verify_password,
    write_broker_files,
)

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code in a PUBACK / CONNACK for an ACL or auth denial
# Success reason codes of a QoS 1 PUBACK: 0x00, or 0x10 "no matching subscribers".
PUBLISH_ACCEPTED = {0x00, 0x10}
_PUBACK_RE = re.compile(rb"received PUBACK \(Mid: \d+, RC:(\d+)\)")

MakeBroker = Callable[..., MosquittoServer]
CUFF = {"limb": "left_leg"}  # a roster cuff needs its limb


def roster(root: str, **broker: Any) -> Settings:
    """Two teams: t1 with cuffs c7 and c8, t2 with cuff c9."""
    return load_settings(
        None,
        topic_root=root,
        broker={"username": "gateway", **broker},
        teams={
            "t1": {"cuffs": {"c7": CUFF, "c8": CUFF}},
            "t2": {"cuffs": {"c9": CUFF}},
        },
    )


@pytest.fixture
def root() -> str:
    """A unique topic root, so a test's topics are its own."""
    return f"t{uuid.uuid4().hex}"


@pytest.fixture
def settings(root: str) -> Settings:
    """The two-team roster under this test's root."""
    return roster(root)


@pytest.fixture
def files(settings: Settings, tmp_path: Path) -> BrokerFiles:
    """Broker files for the roster, credentials beside the output directory."""
    return write_broker_files(
        settings, tmp_path / "auth", credentials=tmp_path / "secret" / "creds.toml"
    )


@pytest.fixture
def passwords(files: BrokerFiles) -> dict[str, str]:
    """The generated passwords, by username."""
    return load_credentials(files.credentials)


@pytest.fixture
def broker(make_mosquitto: MakeBroker, files: BrokerFiles) -> MosquittoServer:
    """A real Mosquitto using the generated password file and ACL."""
    return make_mosquitto(password_file=files.passwd, acl_file=files.acl)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate for 127.0.0.1 and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


class Peer:
    """A gmqtt client for one principal that records what it receives."""

    def __init__(self, username: str | None, password: str | None, *, version: int) -> None:
        """Prepare, without connecting, a clean-session client with a unique client id."""
        self.client = gmqtt.Client(f"{username or 'anon'}-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.client.set_auth_credentials(username, password)
        self.version = version
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._subacks: asyncio.Queue[tuple[int, ...]] = asyncio.Queue()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, _c: Any, topic: str, payload: bytes, _qos: int, _p: Any) -> int:
        self.messages.put_nowait((topic, payload))
        return 0

    def _on_subscribe(self, _c: Any, _mid: int, qos: tuple[int, ...], _p: Any) -> None:
        self._subacks.put_nowait(qos)

    async def subscribe(self, topic: str) -> tuple[int, ...]:
        """Subscribe at QoS 1 and return the broker's SUBACK codes."""
        self.client.subscribe(topic, qos=1)
        return await self._subacks.get()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publish."""
        self.client.publish(topic, payload, qos=1, retain=retain)

    async def receive_until(self, topic: str) -> list[str]:
        """Topics received up to and including the first message on `topic` (a barrier)."""
        seen: list[str] = []
        while True:
            got, _payload = await self.messages.get()
            seen.append(got)
            if got == topic:
                return seen


@asynccontextmanager
async def connected(
    server: MosquittoServer,
    username: str | None,
    password: str | None,
    *,
    version: int = MQTTv50,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Peer]:
    """A connected Peer, disconnected on exit."""
    peer = Peer(username, password, version=version)
    await peer.client.connect(
        server.host, port or server.port, ssl=tls or False, version=version, keepalive=30
    )
    try:
        yield peer
    finally:
        peer.client.stop_reconnect()
        # a TLS close can race the broker's last bytes (APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
        # an SSLError, so an OSError): the test is over by then, as MqttLink.disconnect knows
        with contextlib.suppress(OSError):
            await peer.client.disconnect()


async def refused(
    server: MosquittoServer, username: str | None, password: str | None, *, version: int
) -> MQTTConnectError:
    """Connect and return the broker's refusal (fails the test if it accepts)."""
    peer = Peer(username, password, version=version)
    try:
        await peer.client.connect(server.host, server.port, version=version, keepalive=30)
    except MQTTConnectError as exc:
        return exc
    finally:
        peer.client.stop_reconnect()
        # a TLS close can race the broker's last bytes (APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
        # an SSLError, so an OSError): the test is over by then, as MqttLink.disconnect knows
        with contextlib.suppress(OSError):
            await peer.client.disconnect()
    raise AssertionError(f"{username!r} was let in")


async def publish(
    server: MosquittoServer,
    username: str,
    passwords: dict[str, str],
    topic: str,
    *,
    version: int = MQTTv50,
    retain: bool = False,
) -> int:
    """Publish once at QoS 1 with mosquitto_pub and return the PUBACK's reason code.

    Mosquitto 2.0 answers a denied publish and then drops the connection, so each publish
    gets its own short-lived client. When this returns the broker has processed the message:
    anything it allowed is already queued for subscribers ahead of later publishes. MQTT
    3.1.1 has no reason code: a PUBACK there reads 0, allowed or not.
    """
    args = ["-V", "5" if version == MQTTv50 else "mqttv311", "-d", "-q", "1",
            "-h", server.host, "-p", str(server.port), "-u", username, "-P", passwords[username],
            "-i", f"{username}-pub-{uuid.uuid4().hex[:8]}", "-t", topic, "-m", "{}"]
    proc = await asyncio.create_subprocess_exec(
        find_binary("mosquitto_pub"), *args, *(["-r"] if retain else []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    match = _PUBACK_RE.search(out)
    assert match is not None, f"no PUBACK for {username} on {topic}: {out!r} {err!r}"
    return int(match[1])


# -- offline: formats, roster, credentials ---------------------------------------------------


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
    configured = roster(root, password_file=str(secret))
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
    configured = roster(root, password_file=str(target))  # not there yet
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


# -- against a real Mosquitto ------------------------------------------------------------------
# Denied publishes go through `publish` (mosquitto_pub); a gmqtt peer with full read access
# then waits for an allowed marker published after them, so "never received" needs no timer.


@pytest.mark.parametrize("version", [MQTTv50, MQTTv311], ids=["mqtt5", "mqtt311"])
async def test_cuff_cannot_spoof_another_cuff_or_team(
    broker: MosquittoServer, passwords: dict[str, str], root: str, version: int
) -> None:
    own = f"{root}/t1/cuffs/c7/telemetry"
    spoofs = [
        f"{root}/t1/cuffs/c8/telemetry",  # another cuff of its team
        f"{root}/t2/cuffs/c7/telemetry",  # its own id under another team
        f"{root}/t2/cuffs/c9/status",
        f"{root}/t1/alerts/c7/over_pressure",  # forging an alert
        f"{root}/t1/cuffs/c7/assignment",  # assigning itself
        f"{root}/_gateway/gw-1/status",
    ]
    async with connected(broker, "gateway", passwords["gateway"]) as gateway:
        assert await gateway.subscribe(f"{root}/#") == (1,)
        for topic in spoofs:
            reason = await publish(broker, "c7", passwords, topic, version=version)
            assert reason == (NOT_AUTHORIZED if version == MQTTv50 else 0), topic
        assert await publish(broker, "c7", passwords, own, version=version) in PUBLISH_ACCEPTED
        assert await gateway.receive_until(own) == [own]


async def test_cuff_reads_only_its_own_assignment(
    broker: MosquittoServer, passwords: dict[str, str], root: str
) -> None:
    mine = f"{root}/t1/cuffs/c7/assignment"
    async with connected(broker, "c7", passwords["c7"]) as cuff:
        await cuff.subscribe(f"{root}/t1/cuffs/+/assignment")
        await cuff.subscribe(f"{root}/t1/cuffs/c8/telemetry")
        await cuff.subscribe(f"{root}/t1/alerts/#")
        for user, topic in [("staff-t1", f"{root}/t1/cuffs/c8/assignment"),
                            ("c8", f"{root}/t1/cuffs/c8/telemetry"),
                            ("gateway", f"{root}/t1/alerts/c8/over_time"),
                            ("staff-t1", mine)]:
            assert await publish(broker, user, passwords, topic, retain=True) in PUBLISH_ACCEPTED
        assert await cuff.receive_until(mine) == [mine]
    for topic in (f"{root}/t2/cuffs/c9/assignment", f"{root}/t1/cuffs/c7/telemetry",
                  f"{root}/t1/alerts/c7/over_time"):
        assert await publish(broker, "staff-t1", passwords, topic) == NOT_AUTHORIZED, topic


async def test_staff_see_and_ack_only_their_team(
    broker: MosquittoServer, passwords: dict[str, str], root: str
) -> None:
    t1_alert = f"{root}/t1/alerts/c7/over_pressure"
    t2_alert = f"{root}/t2/alerts/c9/over_pressure"
    async with (
        connected(broker, "gateway", passwords["gateway"]) as gateway,
        connected(broker, "staff-t1", passwords["staff-t1"]) as staff,
    ):
        await gateway.subscribe(f"{root}/+/alerts/+/+/ack")
        await staff.subscribe(f"{root}/#")
        await staff.subscribe(f"{root}/t2/alerts/#")  # Mosquitto grants it, then filters
        for user, topic in [("gateway", t2_alert), ("c9", f"{root}/t2/cuffs/c9/telemetry"),
                            ("staff-t2", f"{root}/t2/cuffs/c9/assignment"),
                            ("c7", f"{root}/t1/cuffs/c7/telemetry"), ("gateway", t1_alert)]:
            assert await publish(broker, user, passwords, topic) in PUBLISH_ACCEPTED
        expected = [f"{root}/t1/cuffs/c7/telemetry", t1_alert]
        assert await staff.receive_until(t1_alert) == expected

        assert await publish(broker, "staff-t1", passwords, f"{t2_alert}/ack") == NOT_AUTHORIZED
        assert await publish(broker, "staff-t1", passwords, f"{t1_alert}/ack") in PUBLISH_ACCEPTED
        assert await gateway.receive_until(f"{t1_alert}/ack") == [f"{t1_alert}/ack"]


async def test_gateway_reads_everything_and_publishes_alerts(
    broker: MosquittoServer, passwords: dict[str, str], root: str
) -> None:
    alert = f"{root}/t2/alerts/c9/over_time"
    telemetry = [f"{root}/t1/cuffs/c7/telemetry", f"{root}/t2/cuffs/c9/telemetry"]
    async with (
        connected(broker, "gateway", passwords["gateway"]) as gateway,
        connected(broker, "staff-t2", passwords["staff-t2"]) as staff,
    ):
        await gateway.subscribe(f"{root}/+/cuffs/+/telemetry")
        await staff.subscribe(f"{root}/t2/alerts/#")
        for cuff, topic in zip(("c7", "c9"), telemetry, strict=True):
            assert await publish(broker, cuff, passwords, topic) in PUBLISH_ACCEPTED
        assert await gateway.receive_until(telemetry[1]) == telemetry
        gateway.publish(alert, b'{"state": "firing"}', retain=True)
        assert await staff.receive_until(alert) == [alert]
    for topic in (f"{root}/t1/cuffs/c7/rejected", f"{root}/_gateway/gw-1/status", alert):
        assert await publish(broker, "gateway", passwords, topic) in PUBLISH_ACCEPTED, topic
    for topic in (f"{alert}/ack", f"{root}/t1/cuffs/c7/assignment",
                  f"{root}/t1/cuffs/c7/status", f"{root}/t1/cuffs/c7/telemetry",
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
    broker: MosquittoServer, passwords: dict[str, str], root: str
) -> None:
    c7_topic = f"{root}/t1/cuffs/c7/telemetry"
    c9_topic = f"{root}/t2/cuffs/c9/telemetry"
    async with (
        connected(broker, "gateway", passwords["gateway"]) as gateway,
        connected(broker, "staff-t2", passwords["staff-t2"]) as other,
    ):
        await gateway.subscribe(f"$share/gw/{root}/+/cuffs/+/telemetry")
        await other.subscribe(f"$share/sneak/{root}/+/cuffs/+/telemetry")
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


# -- TLS -------------------------------------------------------------------------------------------


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
    tls_broker: MosquittoServer, passwords: dict[str, str], pki: Pki, root: str
) -> None:
    topic = f"{root}/t1/cuffs/c7/telemetry"
    async with (
        connected(tls_broker, "gateway", passwords["gateway"], port=tls_broker.ports["tls"],
                  tls=pki.client_context(with_cert=False)) as gateway,
        connected(tls_broker, "c7", passwords["c7"], port=tls_broker.ports["mtls"],
                  tls=pki.client_context()) as cuff,
    ):
        await gateway.subscribe(f"{root}/#")
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

