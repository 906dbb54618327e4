"""TLS to the broker and to InfluxDB, and secrets that never reach a log (SPEC §2, §7).

Real Mosquitto TLS listeners and a real influxd serving https with a throw-away PKI
(tests/pki.py); the gateway runs in-process where its state is asserted, and as the
`cuffwatch` command where only its output and behaviour count.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings, load_settings
from gateway.app import Gateway
from tests.support.gateway_process import GatewayProcess, run_cuffwatch, write_config
from tests.support.harness import MqttProbe, gateway_settings, running_gateway, wait_for
from tests.support.pki import Pki, make_pki
from tests.support.receivers import HttpReceiver
from tests.support.roster import roster
from tests.support.servers import (
    HTTPResponse,
    InfluxDB1Server,
    MosquittoServer,
    ServerError,
    free_port,
    http_request,
    start_or_fail,
)

TEAMS = roster({"t1": {"c1": "a-1"}})
STOP_BOUND_S = 15.0  # a stopping gateway drains in well under this; beyond it, it is stuck
REFUSED_ATTEMPTS = 2  # connection attempts the broker must have refused before we judge
CHECK_TIMEOUT_S = 60.0  # `cuffwatch check` subprocess: start-up plus its own 5 s per check


def reading(seq: int, ts: int, pressure: float = 130.0) -> dict[str, Any]:
    return {"ts": ts, "seq": seq, "pressure_mmhg": pressure, "elapsed_s": 5.0 + seq}


# -- servers --------------------------------------------------------------------------------------


class HttpsInfluxDB(InfluxDB1Server):
    """influxd serving its HTTP API over https only, with a certificate from `pki`.

    With `admin` set, authentication is on and the first user is created on start; queries
    then authenticate as that user.
    """

    def __init__(self, tmpdir: Path, pki: Pki | None, admin: tuple[str, str] | None = None
                 ) -> None:
        super().__init__(tmpdir)
        self.pki = pki
        self.admin = admin
        self._ctx = ssl.create_default_context(cafile=str(pki.ca_cert)) if pki else None

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.host}:{self.port}"

    def _rewrite(self, config: dict[str, Any]) -> dict[str, Any]:
        config = super()._rewrite(config)
        if self.pki is not None:
            config["http"] |= {
                "https-enabled": True,
                "https-certificate": str(self.pki.server_cert),
                "https-private-key": str(self.pki.server_key),
            }
        if self.admin is not None:
            config["http"] |= {"auth-enabled": True}
        return config

    def _request(self, method: str, url: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> HTTPResponse:
        if self._ctx is None:
            return http_request(method, url, body=body, headers=headers)
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._ctx) as resp:  # noqa: S310
                return HTTPResponse(resp.status, resp.read())
        except urllib.error.HTTPError as error:
            with error:
                return HTTPResponse(error.code, error.read())

    def _is_ready(self) -> bool:
        try:
            return self._request("GET", f"{self.url}/ping").status == 204
        except OSError:
            return False

    def start(self) -> HttpsInfluxDB:
        super().start()
        if self.admin is not None:
            user, password = self.admin
            # with no user yet, influxd accepts exactly this statement unauthenticated
            self._query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES",
                        "", auth=False)
        return self

    def _query(self, influxql: str, db: str, *, auth: bool = True) -> dict[str, Any]:
        params = {"q": influxql, "epoch": "ms"} | ({"db": db} if db else {})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if auth and self.admin is not None:
            token = base64.b64encode(":".join(self.admin).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        response = self._request("POST", f"{self.url}/query",
                                 urllib.parse.urlencode(params).encode(), headers)
        if response.status != 200:
            raise ServerError(f"{influxql!r} answered {response.status}: {response.body[:300]!r}")
        decoded: dict[str, Any] = response.json()
        for result in decoded.get("results", []):
            if "error" in result:
                raise ServerError(f"InfluxQL {influxql!r} failed: {result['error']}")
        return decoded

    def query_raw(self, db: str, influxql: str, *, epoch: str | None = "ms") -> dict[str, Any]:
        return self._query(influxql, db)


@pytest.fixture(scope="module")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA: its server certificate is valid, for a CA nobody told the gateway about."""
    return make_pki(tmp_path_factory.mktemp("rogue-pki"))


@pytest.fixture(scope="module")
def https_influx(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[HttpsInfluxDB]:
    server = start_or_fail(lambda: HttpsInfluxDB(tmp_path_factory.mktemp("influx-https"), pki))
    yield server
    server.close()


@pytest.fixture
def https_db(https_influx: HttpsInfluxDB) -> Iterator[str]:
    name = f"t_{os.urandom(8).hex()}"
    https_influx.create_database(name)
    yield name
    https_influx.drop_database(name)


def tls_settings(broker: dict[str, Any], *, topic_root: str, spool_dir: Path,
                 influx: dict[str, Any] | None = None) -> Settings:
    """`gateway_settings` with TLS options for the broker (its url, ca/cert/key files)."""
    base = gateway_settings(broker_url=broker["url"], topic_root=topic_root,
                            spool_dir=spool_dir, teams=TEAMS, influx=influx)
    return load_settings(**(base.model_dump(exclude_none=True)
                            | {"broker": base.broker.model_dump(exclude_none=True) | broker}))


def tls_broker(make_mosquitto: Callable[..., MosquittoServer], pki: Pki, *,
               require_certificate: bool) -> MosquittoServer:
    """A broker with its plain listener (for test clients) and a TLS one for the gateway."""
    return make_mosquitto(
        extra_listeners={"tls": pki.listener_options(require_certificate=require_certificate)}
    )


def mqtts(broker: MosquittoServer) -> str:
    return f"mqtts://127.0.0.1:{broker.ports['tls']}"


def broker_log(broker: MosquittoServer) -> str:
    return broker.log_path.read_text("utf-8", "replace")


def tls_attempts(broker: MosquittoServer) -> int:
    return broker_log(broker).count(f" on port {broker.ports['tls']}.")


async def count_points(server: InfluxDB1Server, db: str) -> int:
    rows = await asyncio.to_thread(server.query, db, "SELECT count(seq) FROM cuff_telemetry")
    return int(rows[0]["count"]) if rows else 0


async def _eq(value: Any, expected: Any) -> bool:
    return bool((await value) == expected)


@contextlib.asynccontextmanager
async def refused_gateway(settings: Settings, broker: MosquittoServer) -> AsyncIterator[Gateway]:
    """A gateway the broker refuses: yields once it has tried and failed; must stop cleanly."""
    before = tls_attempts(broker)
    gw = Gateway(settings)
    task = asyncio.create_task(gw.run(), name="test.refused_gateway")
    try:
        await wait_for(lambda: tls_attempts(broker) >= before + REFUSED_ATTEMPTS or task.done(),
                       what=f"{REFUSED_ATTEMPTS} TLS connection attempts at the broker")
        if task.done():
            task.result()  # it must keep retrying, not give up
        yield gw
    finally:
        gw.stop()
        done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            pytest.fail("stop() did not stop a gateway that was retrying its broker "
                        f"(still running after {STOP_BOUND_S:.0f} s; SIGTERM would hang too)")
        task.result()


# -- TLS to the broker ----------------------------------------------------------------------------


async def test_gateway_over_mqtts_and_https_influx_stores_readings(
    *, make_mosquitto: Callable[..., MosquittoServer], pki: Pki, https_influx: HttpsInfluxDB,
    https_db: str, topic_root: str, tmp_path: Path,
) -> None:
    broker = tls_broker(make_mosquitto, pki, require_certificate=False)
    settings = tls_settings(
        {"url": mqtts(broker), "ca_file": str(pki.ca_cert)},
        topic_root=topic_root, spool_dir=tmp_path / "spool",
        influx={"api": "v1", "url": https_influx.url, "database": https_db,
                "ca_file": str(pki.ca_cert)},
    )
    assert settings.broker.tls
    assert https_influx.url.startswith("https://")
    now = int(time.time() * 1000)
    async with running_gateway(settings) as gw, MqttProbe(broker.host, broker.port) as dev:
        for seq in range(5):
            dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(seq, now - 5000 + seq))
        await wait_for(lambda: _eq(count_points(https_influx, https_db), 5),
                       what="5 readings stored over https")
        assert gw.counters.internal_errors == 0
        assert gw.pipeline.snapshot().failed_batches == 0
    log = broker_log(broker)
    assert f"as {settings.client_id} " in log
    # the gateway's session came in on the TLS listener, not the plain one
    port_of = {line.split(" from ")[1].split(" ")[0]: line.rsplit(" ", 1)[1].rstrip(".")
               for line in log.splitlines() if "New connection from" in line}
    peers = [line.split(" from ")[1].split(" ")[0] for line in log.splitlines()
             if f"as {settings.client_id} " in line]
    assert {port_of[peer] for peer in peers} == {str(broker.ports["tls"])}
    rows = await asyncio.to_thread(https_influx.query, https_db,
                                   "SELECT pressure_mmhg, seq FROM cuff_telemetry")
    assert [(r["time"], r["seq"]) for r in rows] == [(now - 5000 + s, s) for s in range(5)]


async def test_client_certificate_required_gateway_connects_with_it(
    make_mosquitto: Callable[..., MosquittoServer], pki: Pki, topic_root: str, tmp_path: Path,
) -> None:
    broker = tls_broker(make_mosquitto, pki, require_certificate=True)
    settings = tls_settings(
        {"url": mqtts(broker), "ca_file": str(pki.ca_cert),
         "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)},
        topic_root=topic_root, spool_dir=tmp_path,
    )
    now = int(time.time() * 1000)
    async with running_gateway(settings) as gw, MqttProbe(broker.host, broker.port) as dev:
        dev.publish(f"{topic_root}/t1/cuffs/c1/telemetry", reading(1, now))
        await wait_for(lambda: gw.counters.accepted == 1, what="the reading accepted")
        assert gw.mqtt.connections == 1


async def test_client_certificate_required_gateway_without_it_is_refused_and_stops(
    make_mosquitto: Callable[..., MosquittoServer], pki: Pki, topic_root: str, tmp_path: Path,
) -> None:
    broker = tls_broker(make_mosquitto, pki, require_certificate=True)
    settings = tls_settings({"url": mqtts(broker), "ca_file": str(pki.ca_cert)},
                            topic_root=topic_root, spool_dir=tmp_path)
    async with refused_gateway(settings, broker) as gw:
        assert not gw.ready.is_set()
        assert not gw.mqtt.connected.is_set()
        assert gw.mqtt.connections == 0
    assert f"as {settings.client_id} " not in broker_log(broker)
    assert "peer did not return a certificate" in broker_log(broker)


async def test_server_certificate_from_an_unknown_ca_is_refused(
    make_mosquitto: Callable[..., MosquittoServer], pki: Pki, rogue_pki: Pki, topic_root: str,
    tmp_path: Path,
) -> None:
    broker = tls_broker(make_mosquitto, rogue_pki, require_certificate=False)
    settings = tls_settings({"url": mqtts(broker), "ca_file": str(pki.ca_cert)},
                            topic_root=topic_root, spool_dir=tmp_path)
    async with refused_gateway(settings, broker) as gw:
        assert not gw.ready.is_set()
        assert gw.mqtt.connections == 0
    assert f"as {settings.client_id} " not in broker_log(broker)


# -- `cuffwatch check` over TLS -------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cuffwatch(*args, env=env, timeout=CHECK_TIMEOUT_S)


async def test_cuffwatch_check_reports_ok_for_mqtts_and_https(
    *, make_mosquitto: Callable[..., MosquittoServer], pki: Pki, rogue_pki: Pki,
    https_influx: HttpsInfluxDB, https_db: str, topic_root: str, tmp_path: Path,
) -> None:
    broker = tls_broker(make_mosquitto, pki, require_certificate=True)
    settings = tls_settings(
        {"url": mqtts(broker), "ca_file": str(pki.ca_cert),
         "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)},
        topic_root=topic_root, spool_dir=tmp_path / "spool",
        influx={"api": "v1", "url": https_influx.url, "database": https_db,
                "ca_file": str(pki.ca_cert)},
    )
    config = write_config(tmp_path / "cuffwatch.toml", settings)
    done = await asyncio.to_thread(run_cli, "check", "-c", str(config))
    out = done.stdout + done.stderr
    assert f"ok   broker: {mqtts(broker)}" in out, out
    assert f"ok   influx: {https_influx.url}" in out, out
    assert done.returncode == 0, out
    # and the same file with the other CA fails both, one clear line each
    rogue = settings.model_copy(update={
        "broker": settings.broker.model_copy(update={"ca_file": str(rogue_pki.ca_cert)}),
        "influx": settings.influx.model_copy(update={"ca_file": str(rogue_pki.ca_cert)}),
    })
    config = write_config(tmp_path / "rogue.toml", rogue)
    done = await asyncio.to_thread(run_cli, "check", "-c", str(config))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "FAIL broker" in out, out
    assert "FAIL influx" in out, out


# -- secrets never logged ------------------------------------------------------------------------

BROKER_PW = "brk-Pw-3b1f9c7e2d"
PROBE_PW = "probe-Pw-0a9e"
INFLUX_USER = "writer"
INFLUX_PW = "ifx-Pw-84c2e1d07a"
INFLUX_TOKEN = "ifx-Tok-5d3e9b0c1f77"
HOOK_USER = "hookuser"
HOOK_PW = "hook-Pw-6f0e2a91"
HOOK_TOKEN = "hook-Tok-c47b0d2e8a"
DEAD_PW = "dead-Pw-19af7c"
DEAD_TOKEN = "dead-Tok-e25b9d31"


def secret_forms() -> dict[str, str]:
    """Every secret, and the encodings a careless log line would carry it in."""
    forms = {s: s for s in (BROKER_PW, INFLUX_PW, INFLUX_TOKEN, HOOK_PW, HOOK_TOKEN, DEAD_PW,
                            DEAD_TOKEN, PROBE_PW)}
    for user, pw in (("gateway", BROKER_PW), (INFLUX_USER, INFLUX_PW), (HOOK_USER, HOOK_PW),
                     ("u", DEAD_PW)):
        forms[f"base64({user}:…)"] = base64.b64encode(f"{user}:{pw}".encode()).decode()
    for secret in (BROKER_PW, INFLUX_PW, INFLUX_TOKEN):
        forms[f"base64({secret[:6]}…)"] = base64.b64encode(secret.encode()).decode().rstrip("=")
    return forms


def leaked(text: str) -> list[str]:
    return [name for name, form in secret_forms().items() if form in text]


@pytest.fixture
def auth_influx(tmp_path: Path) -> Iterator[HttpsInfluxDB]:
    """A private influxd with authentication on; its only user is the gateway's writer."""
    server = start_or_fail(
        lambda: HttpsInfluxDB(tmp_path / "influx-auth", None, (INFLUX_USER, INFLUX_PW)))
    server.create_database("bfr")
    yield server
    server.close()


async def test_secrets_from_the_environment_never_reach_the_logs_at_debug(
    make_mosquitto: Callable[..., MosquittoServer], auth_influx: HttpsInfluxDB,
    receiver: HttpReceiver, topic_root: str, tmp_path: Path,
) -> None:
    broker = make_mosquitto(users={"gateway": BROKER_PW, "probe": PROBE_PW})
    (tmp_path / "hook.url").write_text(
        f"json://{HOOK_USER}:{HOOK_PW}@127.0.0.1:{receiver.port}/hooks/{HOOK_TOKEN}\n")
    (tmp_path / "dead.url").write_text(f"json://u:{DEAD_PW}@127.0.0.1:{free_port()}/{DEAD_TOKEN}")
    health = free_port()
    teams = {"t1": {**TEAMS["t1"], "routes": [
        {"url_file": str(tmp_path / "hook.url"), "min_severity": "warning"},
        {"url_file": str(tmp_path / "dead.url"), "min_severity": "warning"},
    ]}}
    settings = gateway_settings(
        broker_url=broker.url, topic_root=topic_root, spool_dir=tmp_path / "spool", teams=teams,
        influx={"api": "v1", "url": auth_influx.url, "database": "bfr", "username": INFLUX_USER},
        health={"host": "127.0.0.1", "port": health}, instance="gw-secrets",
    )
    config = write_config(tmp_path / "cuffwatch.toml", settings)
    assert leaked(config.read_text()) == []  # the file itself holds no secret
    env = {
        "CUFFWATCH_BROKER__PASSWORD": BROKER_PW,
        "CUFFWATCH_INFLUX__PASSWORD": INFLUX_PW,
        "CUFFWATCH_INFLUX__TOKEN": INFLUX_TOKEN,
    }
    gw = GatewayProcess(config, health, tmp_path / "gateway.log", options=("-v",), env=env)
    now = int(time.time() * 1000)
    try:
        await gw.started()
        async with MqttProbe(broker.host, broker.port, username="probe",
                             password=PROBE_PW) as dev:
            await dev.subscribe(f"{topic_root}/#")
            telemetry = f"{topic_root}/t1/cuffs/c1/telemetry"
            dev.publish(telemetry, reading(1, now - 1000))
            dev.publish(telemetry, b'{"ts": NaN}')
            dev.publish(telemetry, reading(2, now, pressure=340.0))  # critical over_pressure
            await wait_for(lambda: _eq(count_points(auth_influx, "bfr"), 2),
                           what="both readings written with the password")
            await wait_for(lambda: dev.messages.get(f"{topic_root}/t1/cuffs/c1/rejected"),
                           what="the rejection published")
            await wait_for(lambda: dev.json(f"{topic_root}/t1/alerts/c1/over_pressure"),
                           what="the alert published")
            await wait_for(lambda: receiver.received, what="the alert pushed to the webhook")
        assert receiver.received[0].path == f"/hooks/{HOOK_TOKEN}"  # the secret URL was used...
        expected_auth = base64.b64encode(f"{HOOK_USER}:{HOOK_PW}".encode()).decode()
        assert receiver.received[0].headers["Authorization"] == f"Basic {expected_auth}"
        assert await gw.terminated(STOP_BOUND_S) == 0  # SIGTERM
    finally:
        gw.kill()
    text = gw.log_path.read_text("utf-8", "replace")
    assert " DEBUG " in text  # -v really logged at DEBUG
    assert "rejected" in text
    assert "over_pressure" in text
    assert leaked(text) == [], "secrets in the gateway log"  # ...and never logged

    for extra in ({}, {"CUFFWATCH_BROKER__PASSWORD": "wrong-" + BROKER_PW,
                       "CUFFWATCH_INFLUX__PASSWORD": "wrong-" + INFLUX_PW}):
        done = await asyncio.to_thread(run_cli, "-v", "check", "-c", str(config),
                                       env=env | extra)
        out = done.stdout + done.stderr
        # the dead route fails too: check tries each route's server (issue 15)
        failed = {line[5:].split(": ", 1)[0] for line in done.stdout.splitlines()
                  if line.startswith("FAIL ")}
        assert failed == {"route t1/1-json"} | ({"broker", "influx"} if extra else set()), out
        assert leaked(out) == [], f"secrets in `cuffwatch check` output:\n{out}"
