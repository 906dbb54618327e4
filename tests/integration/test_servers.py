"""The test servers and fixtures work: real brokers and databases, exact values back."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gmqtt
import pytest

from tests.support.paths import REPO
from tests.support.pki import make_pki
from tests.support.servers import (
    LOOPBACK,
    InfluxDB1Server,
    MissingBinaryError,
    MosquittoServer,
    ServerError,
    VictoriaMetricsServer,
    find_binary,
    http_request,
)

MQTT_WAIT_S = 30.0  # a deadline for a message on loopback, not a latency claim
CLI_TIMEOUT_S = 30.0  # mosquitto_pub/sub exit well before this on loopback

# A fixed point in the past keeps expected values literal; VictoriaMetrics keeps 100 years.
T0_MS = 1_763_892_123_456


def _pub(
    server: MosquittoServer, topic: str, payload: str, *args: str, port: int | None = None
) -> None:
    """Publish one message with mosquitto_pub (QoS 1), failing the test on a non-zero exit."""
    subprocess.run(
        [find_binary("mosquitto_pub"), "-h", server.host, "-p", str(port or server.port),
         "-q", "1", "-t", topic, "-m", payload, *args],
        check=True, capture_output=True, timeout=CLI_TIMEOUT_S,
    )  # fmt: skip


def _sub_one(server: MosquittoServer, topic: str, *args: str) -> str:
    """Receive one message (a retained one, typically) with mosquitto_sub; return the payload."""
    done = subprocess.run(
        [find_binary("mosquitto_sub"), "-h", server.host, "-p", str(server.port),
         "-q", "1", "-t", topic, "-C", "1", "-W", str(int(CLI_TIMEOUT_S)), *args],
        check=True, capture_output=True, timeout=CLI_TIMEOUT_S + 5, text=True,
    )  # fmt: skip
    return done.stdout.rstrip("\n")


class _Subscriber:
    """A gmqtt client that queues every message it receives."""

    def __init__(self) -> None:
        """Create the client; connect with start()."""
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.subscribed = asyncio.Event()
        self.client = gmqtt.Client(f"test-{uuid.uuid4().hex}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        """Queue the message; 0 = success reason code for the PUBACK."""
        self.messages.put_nowait((topic, payload))
        return 0

    def _on_subscribe(self, _client: Any, _mid: int, _qos: Any, _props: Any) -> None:
        """Note the SUBACK."""
        self.subscribed.set()

    async def start(self, server: MosquittoServer, topic: str) -> None:
        """Connect and subscribe with QoS 1, returning once the broker acknowledged."""
        await self.client.connect(server.host, server.port)
        self.client.subscribe(topic, qos=1)
        async with asyncio.timeout(MQTT_WAIT_S):
            await self.subscribed.wait()

    async def next(self) -> tuple[str, bytes]:
        """The next message received."""
        async with asyncio.timeout(MQTT_WAIT_S):
            return await self.messages.get()


async def test_mosquitto_delivers_between_cli_and_gmqtt(
    mosquitto: MosquittoServer, topic_root: str
) -> None:
    """A QoS 1 message from mosquitto_pub reaches a gmqtt subscriber, oversize payloads too."""
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    subscriber = _Subscriber()
    await subscriber.start(mosquitto, f"{topic_root}/#")
    try:
        await asyncio.to_thread(_pub, mosquitto, f"{topic_root}/a", "hello")
        assert await subscriber.next() == (f"{topic_root}/a", b"hello")
        oversize = b"x" * (64 * 1024 + 1)  # SPEC: the gateway, not the broker, rejects these
        subscriber.client.publish(f"{topic_root}/big", oversize, qos=1)
        assert await subscriber.next() == (f"{topic_root}/big", oversize)
    finally:
        await subscriber.client.disconnect()


def test_mosquitto_retained_message_round_trip(mosquitto: MosquittoServer, topic_root: str) -> None:
    """mosquitto_sub reads back what mosquitto_pub retained; an empty retained publish clears it."""
    topic = f"{topic_root}/cuffs/c7/status"
    _pub(mosquitto, topic, "online", "-r")
    assert _sub_one(mosquitto, topic) == "online"
    _pub(mosquitto, topic, "", "-r")


def test_mosquitto_restart_keeps_retained_messages(
    make_mosquitto: Callable[..., MosquittoServer], topic_root: str
) -> None:
    """stop() then start() brings the broker back on the same port with its persisted state."""
    broker = make_mosquitto()
    port = broker.port
    _pub(broker, f"{topic_root}/status", "online", "-r")
    broker.stop()
    assert not broker.running
    broker.start()
    assert broker.port == port
    assert _sub_one(broker, f"{topic_root}/status") == "online"


def test_mosquitto_kill_and_start_again(make_mosquitto: Callable[..., MosquittoServer]) -> None:
    """kill() ends the broker at once; start() serves again on the same port."""
    broker = make_mosquitto()
    pid, port = broker.pid, broker.port
    broker.kill()
    assert not broker.running
    broker.start()
    assert (broker.port, broker.running) == (port, True)
    assert broker.pid != pid


def test_mosquitto_password_and_acl(
    make_mosquitto: Callable[..., MosquittoServer], topic_root: str
) -> None:
    """With users and an ACL, anonymous clients are refused and a user is held to its topics."""
    acl = f"user gw\ntopic readwrite {topic_root}/#\n"
    broker = make_mosquitto(users={"gw": "s3cret"}, acl=acl)
    with pytest.raises(subprocess.CalledProcessError):
        _pub(broker, f"{topic_root}/x", "anonymous")
    with pytest.raises(subprocess.CalledProcessError):
        _pub(broker, f"{topic_root}/x", "wrong password", "-u", "gw", "-P", "nope")
    creds = ("-u", "gw", "-P", "s3cret")
    _pub(broker, f"{topic_root}/x", "allowed", "-r", *creds)
    assert _sub_one(broker, f"{topic_root}/x", *creds) == "allowed"


def test_mosquitto_tls_listener(
    make_mosquitto: Callable[..., MosquittoServer], tmp_path: Path, topic_root: str
) -> None:
    """An extra TLS listener that requires client certificates serves mosquitto_pub over TLS."""
    pki = make_pki(tmp_path / "pki")
    broker = make_mosquitto(extra_listeners={"tls": pki.listener_options(require_certificate=True)})
    assert broker.ports["tls"] != broker.port
    tls = ("--cafile", str(pki.ca_cert))
    client = ("--cert", str(pki.client_cert), "--key", str(pki.client_key))
    with pytest.raises(subprocess.CalledProcessError):
        _pub(broker, f"{topic_root}/t", "no client cert", *tls, port=broker.ports["tls"])
    _pub(broker, f"{topic_root}/t", "over tls", "-r", *tls, *client, port=broker.ports["tls"])
    assert _sub_one(broker, f"{topic_root}/t") == "over tls"


def test_influxdb_write_and_query_exact(influxdb: InfluxDB1Server, influx_db: str) -> None:
    """Points written in ms come back with exact values, types, tags and ms timestamps."""
    influxdb.write(
        influx_db,
        f"cuff_telemetry,team=t1,cuff=c7 pressure_mmhg=180.5,seq=41i,inflated=true {T0_MS}\n"
        f"cuff_telemetry,team=t1,cuff=c8 pressure_mmhg=0,seq=7i,inflated=false {T0_MS + 1}\n",
        precision="ms",
    )
    rows = influxdb.query(
        influx_db, "SELECT pressure_mmhg, seq, inflated FROM cuff_telemetry GROUP BY cuff"
    )
    assert rows == [
        {"cuff": "c7", "time": T0_MS, "pressure_mmhg": 180.5, "seq": 41, "inflated": True},
        {"cuff": "c8", "time": T0_MS + 1, "pressure_mmhg": 0, "seq": 7, "inflated": False},
    ]
    assert influxdb.query(influx_db, "SHOW MEASUREMENTS") == [{"name": "cuff_telemetry"}]


def test_influxdb_rejects_bad_line_protocol(influxdb: InfluxDB1Server, influx_db: str) -> None:
    """A write InfluxDB refuses raises with its status and message."""
    with pytest.raises(ServerError, match="400"):
        influxdb.write(influx_db, "no fields here\n")


def test_influxdb_pause_and_resume(influxdb: InfluxDB1Server, influx_db: str) -> None:
    """A paused server accepts connections but answers nothing; resume() brings it back."""
    influxdb.pause()
    try:
        assert influxdb.paused
        with pytest.raises(TimeoutError):
            http_request("GET", f"{influxdb.url}/ping", timeout=0.5)
    finally:
        influxdb.resume()
    influxdb.write(influx_db, f"m v=1 {T0_MS}", precision="ms")
    assert influxdb.query(influx_db, "SELECT v FROM m") == [{"time": T0_MS, "v": 1.0}]


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_influxdb_restart_keeps_data(
    make_influxdb: Callable[[], InfluxDB1Server], how: str
) -> None:
    """Acknowledged writes survive a clean stop and a SIGKILL; the port stays the same."""
    server = make_influxdb()
    url = server.url
    server.create_database("bfr")
    server.write("bfr", f"m,cuff=c1 v=2.25 {T0_MS}", precision="ms")
    server.stop() if how == "stop" else server.kill()
    assert not server.running
    server.start()
    assert server.url == url
    assert server.query("bfr", "SELECT * FROM m") == [{"time": T0_MS, "cuff": "c1", "v": 2.25}]


def test_victoria_metrics_accepts_influx_v2_writes(victoria: VictoriaMetricsServer) -> None:
    """Line protocol POSTed to /api/v2/write comes back from export with exact values and ms."""
    measurement = f"m{uuid.uuid4().hex}"
    lines = (
        f"{measurement},team=t1,cuff=c7 pressure_mmhg=181.25,inflated=true {T0_MS}\n"
        f"{measurement},team=t1,cuff=c7 pressure_mmhg=182.5,inflated=false {T0_MS + 250}\n"
    )
    response = http_request(
        "POST",
        f"{victoria.url}/api/v2/write?org=club&bucket=bfr&precision=ms",
        body=lines.encode(),
        headers={"Authorization": "Token any-token", "Content-Type": "text/plain"},
    )
    assert response.status == 204, response.body
    assert victoria.export(f'{{__name__=~"{measurement}_.*"}}') == [
        {
            "metric": {"__name__": f"{measurement}_inflated", "team": "t1", "cuff": "c7"},
            "values": [1, 0],
            "timestamps": [T0_MS, T0_MS + 250],
        },
        {
            "metric": {"__name__": f"{measurement}_pressure_mmhg", "team": "t1", "cuff": "c7"},
            "values": [181.25, 182.5],
            "timestamps": [T0_MS, T0_MS + 250],
        },
    ]


def test_victoria_metrics_restart_keeps_data(
    make_victoria: Callable[[], VictoriaMetricsServer],
) -> None:
    """A restarted VictoriaMetrics serves what it had accepted, on the same port."""
    server = make_victoria()
    url = server.url
    body = f"m,cuff=c1 v=3 {T0_MS}".encode()
    assert http_request("POST", f"{url}/api/v2/write?precision=ms", body=body).status == 204
    server.flush()
    server.stop()
    server.start()
    assert server.url == url
    assert [s["values"] for s in server.export('{__name__="m_v"}')] == [[3]]


def test_missing_binary_names_the_fix() -> None:
    """A server binary that is not installed fails with a message naming scripts/ensure-services."""
    with pytest.raises(MissingBinaryError, match="scripts/ensure-services"):
        find_binary(f"no-such-server-{uuid.uuid4().hex}")


def test_start_failure_shows_the_log(tmp_path: Path) -> None:
    """A server that cannot start raises with the tail of its own log."""
    broker = MosquittoServer(tmp_path, extra_config=["no_such_option 1"])
    with pytest.raises(ServerError, match="no_such_option"):
        broker.start()
    assert not broker.running


class _FirstPortTaken(MosquittoServer):
    """A broker whose first port pick is one that another socket already listens on."""

    def __init__(self, tmpdir: Path, taken: int) -> None:
        """Remember the taken port."""
        super().__init__(tmpdir)
        self.taken = taken
        self.picks = 0

    def _allocate_ports(self) -> None:
        """Pick the taken port the first time, free ones after."""
        super()._allocate_ports()
        self.picks += 1
        if self.picks == 1:
            self.port = self.ports["default"] = self.taken


def test_start_retries_when_a_port_is_taken(tmp_path: Path) -> None:
    """Losing the race for a probed port makes start() pick new ports and try again."""
    with socket.socket() as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        broker = _FirstPortTaken(tmp_path, holder.getsockname()[1])
        try:
            broker.start()
            assert (broker.picks, broker.running) == (2, True)
            assert broker.port != broker.taken
        finally:
            broker.close()


def test_ports_are_distinct_per_server(
    mosquitto: MosquittoServer, influxdb: InfluxDB1Server, victoria: VictoriaMetricsServer
) -> None:
    """The session servers listen on distinct loopback ports, none of them the defaults."""
    ports = {mosquitto.port, influxdb.port, influxdb.rpc_port, victoria.port}
    assert len(ports) == 4
    assert ports.isdisjoint({1883, 8086, 8088, 8428})


LEAKY_TESTS = textwrap.dedent(
    """
    import asyncio
    import pytest

    @pytest.fixture
    async def tidy_task():
        task = asyncio.create_task(asyncio.sleep(3600), name="tidy")
        yield task
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def test_clean(tidy_task):
        await asyncio.sleep(0)

    async def test_leaks():
        asyncio.create_task(asyncio.sleep(3600), name="forgotten")

    def test_sync():
        pass
    """
)


def test_lingering_task_fails_the_test(pytester: pytest.Pytester) -> None:
    """The autouse leak check fails only the test that left a task, and names the task."""
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())  # the leak check's home
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*test_leaks*", "*left 1 asyncio task(s) running: forgotten*"])
