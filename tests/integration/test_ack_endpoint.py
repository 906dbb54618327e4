"""One-tap acknowledgement (SPEC §3, issue 16) through a running gateway's ack endpoint.

Real Mosquitto and InfluxDB 1.x, real HTTP on loopback, links signed as the push side signs
them (`core.acktoken.sign`). A tap is what the ntfy app's view action or a mail client does:
GET the page, then POST its form. Then the retained alert says acknowledged, the `alert`
point is stored, and the alert does not escalate when escalate_after_s (60 s) has passed,
while an unacknowledged one beside it does: the gateway's clock is moved on, not waited for.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import gmqtt
import pytest

from core.acktoken import ack_url, sign
from core.config import Settings
from tests.support.alert_flow import arm_team, now_ms, published, reading, states
from tests.support.caddy import CADDYFILE, CaddyServer
from tests.support.gateway_process import GatewayProcess, run_cuffwatch, write_config
from tests.support.harness import MqttProbe, gateway_settings, influx_v1, running_gateway, wait_for
from tests.support.servers import InfluxDB1Server, MosquittoServer, free_port, start_or_fail

SECRET = "integration-test-ack-secret-0123456789abcdef"
PERSON = "Sam (physio)"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# a tap, end to end on this machine's own parts: the bound
TAP_WITHIN_S = 1.0


class ShiftedClock:
    """The gateway's clock: the wall clock, moved on by `offset` seconds when a test says."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def settings_with_ack(mosquitto: MosquittoServer, root: str, tmp_path: Path, *,
                      port: int = 0, public_url: str = "", influx: dict[str, Any] | None = None,
                      alerts: dict[str, Any] | None = None,
                      teams: dict[str, Any] | None = None) -> Settings:
    port = port or free_port()
    return gateway_settings(
        broker_url=mosquitto.url, topic_root=root, spool_dir=tmp_path / "spool",
        teams=teams or {"t1": arm_team("c1", "c2", name="First team",
                                       athletes={"a-1": {"name": "Jo <Example>"}, "a-2": {}}),
                        "t2": arm_team("c9")},
        influx=influx, alerts={"stale_after_s": 600, **(alerts or {})},
        ack={"public_url": public_url or f"http://127.0.0.1:{port}", "host": "127.0.0.1",
             "port": port, "secret": SECRET},
    )


def phone(n: int) -> dict[str, str]:
    """The headers of a form POST from the n-th phone, as the proxy passes it on."""
    return {"X-Forwarded-For": f"198.51.100.{n % 250 + 1}", **FORM}


def link(alert: dict[str, Any], *, person: str = PERSON, ttl_s: int = 3600, **over: Any) -> str:
    """The token the push side signs for this alert object (from MQTT)."""
    claims: dict[str, Any] = {"alert_id": alert["id"], "team": alert["team"],
                              "cuff": alert["cuff"], "kind": alert["kind"], "person": person,
                              "expires_at": int(time.time()) + ttl_s, **over}
    return sign(SECRET.encode(), **claims)


def page_url(settings: Settings, token: str, *, pushover: bool = False) -> str:
    return ack_url(settings.ack.public_url, token, pushover=pushover)


async def watch(probe: MqttProbe, root: str) -> None:
    """Every alert topic, retain flags as published, live once the gateway status arrives."""
    probe.client.subscribe([
        gmqtt.Subscription(f"{root}/+/alerts/#", qos=1, retain_as_published=True),
        gmqtt.Subscription(f"{root}/_gateway/+/status", qos=1),
    ])
    await wait_for(lambda: any("/_gateway/" in t for t in probe.messages), what="status")


async def retained(mosquitto: MosquittoServer, topic: str) -> dict[str, Any]:
    """The alert a new subscriber gets on `topic`."""
    async with MqttProbe(mosquitto.host, mosquitto.port) as late:
        await late.subscribe(topic)
        await wait_for(lambda: late.messages.get(topic), what=f"retained {topic}")
        payload, was_retained = late.messages[topic][-1]
        assert was_retained
        return dict(json.loads(payload))


async def raise_alert(dev: MqttProbe, probe: MqttProbe, root: str, cuff: str,
                      team: str = "t1") -> dict[str, Any]:
    topic = f"{root}/{team}/alerts/{cuff}/over_pressure"
    dev.publish(f"{root}/{team}/cuffs/{cuff}/telemetry", reading(0, now_ms(), 262.0, 10.0))
    await wait_for(lambda: states(probe, topic) == ["firing"], what=f"{cuff} raised")
    alert = published(probe, topic)[0][0]
    assert alert is not None
    return alert


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    procs: list[GatewayProcess] = []
    yield procs
    for p in procs:
        p.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- the tap, as a phone does it -----------------------------------------------------------------


async def test_a_tap_acknowledges_stores_and_stops_the_escalation(
    *, mosquitto: MosquittoServer, influxdb: InfluxDB1Server, influx_db: str, topic_root: str,
    tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    settings = settings_with_ack(mosquitto, topic_root, tmp_path,
                                 influx=influx_v1(influxdb, influx_db),
                                 alerts={"escalate_after_s": 60, "ack_silence_s": 60})
    clock = ShiftedClock()
    c1 = f"{topic_root}/t1/alerts/c1/over_pressure"
    c2 = f"{topic_root}/t1/alerts/c2/over_pressure"
    async with running_gateway(settings, clock=clock) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as probe:
        await watch(probe, topic_root)
        alert = await raise_alert(dev, probe, topic_root, "c1")
        await raise_alert(dev, probe, topic_root, "c2")  # left alone: it escalates
        url = page_url(settings, link(alert))

        async with http.get(url) as page:  # the app opens the link: the page, nothing else
            assert page.status == 200
            html = await page.text()
            headers = page.headers
        assert "Jo &lt;Example&gt;" in html
        assert "First team" in html
        assert "262 mmHg" in html
        assert f"Acknowledge as {PERSON}" in html
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        await asyncio.sleep(0.3)
        assert states(probe, c1) == ["firing"]

        tapped = time.monotonic()
        async with http.post(url, data=b"", headers=FORM) as done:
            assert done.status == 200
            assert f"Acknowledged by {PERSON}" in await done.text()
        await wait_for(lambda: states(probe, c1) == ["firing", "acknowledged"], what="acked")
        took = time.monotonic() - tapped
        assert took < TAP_WITHIN_S, f"the tap took {took:.3f} s"

        now = await retained(mosquitto, c1)
        assert (now["state"], now["acknowledged_by"], now["id"]) == (
            "acknowledged", PERSON, alert["id"])
        rows = await wait_for(lambda: asyncio.to_thread(
            influxdb.query, influx_db,
            "SELECT * FROM \"alert\" WHERE \"state\" = 'acknowledged' GROUP BY *"),
            what="the stored acknowledgement")
        [row] = rows
        assert (row["alert_id"], row["acknowledged_by"], row["cuff"]) == (alert["id"], PERSON,
                                                                         "c1")
        assert gw.counters.ack_links_acknowledged == 1

        clock.offset = 61.0  # escalate_after_s has passed since both were raised
        await wait_for(lambda: any(a and a["escalated"] for a, _ in published(probe, c2)),
                       what="the unacknowledged alert escalated")
        await asyncio.sleep(0.5)  # a few more ticks
        assert not any(a and a["escalated"] for a, _ in published(probe, c1))
        assert (await retained(mosquitto, c1))["escalated"] is False


async def test_a_link_without_a_person_asks_for_a_name_on_the_page(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    settings = settings_with_ack(mosquitto, topic_root, tmp_path)
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    async with running_gateway(settings), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as probe:
        await watch(probe, topic_root)
        alert = await raise_alert(dev, probe, topic_root, "c1")
        url = page_url(settings, link(alert, person=""))
        async with http.get(url) as page:
            assert "name=\"by\"" in await page.text()
        async with http.post(url, data={"by": ""}) as unnamed:
            assert unnamed.status == 400
        async with http.post(url, data={"by": "Kim <coach>"}) as named:
            assert named.status == 200
        await wait_for(lambda: states(probe, topic)[-1:] == ["acknowledged"], what="acked")
        assert (await retained(mosquitto, topic))["acknowledged_by"] == "Kim <coach>"


async def test_pushover_s_callback_acknowledges(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    """As Pushover documents its callback: a POST of form fields once the emergency
    receipt is acknowledged in the app."""
    settings = settings_with_ack(mosquitto, topic_root, tmp_path)
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    async with running_gateway(settings), \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as probe:
        await watch(probe, topic_root)
        alert = await raise_alert(dev, probe, topic_root, "c1")
        url = page_url(settings, link(alert, person=""), pushover=True)
        fields = {"receipt": "rLqVuqTRh62UzxtmqiaLzQmVcPgiCy", "acknowledged": "1",
                  "acknowledged_at": str(int(time.time())),
                  "acknowledged_by": "uQiRzpo4DXghDmr9QzzfQu27cmVRsG",
                  "acknowledged_by_device": "sams-iphone"}
        async with http.get(url) as get:
            assert get.status == 404  # the callback is a POST
        async with http.post(url, data=fields) as resp:
            assert resp.status == 200
        await wait_for(lambda: states(probe, topic)[-1:] == ["acknowledged"], what="acked")
        assert (await retained(mosquitto, topic))["acknowledged_by"] == "sams-iphone (Pushover)"
        async with http.post(url, data=fields) as again:  # a retried callback: used
            assert (again.status, await again.read()) == (403, b"")


# -- refused --------------------------------------------------------------------------------------


async def test_what_is_refused_leaves_the_alert_firing(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    settings = settings_with_ack(mosquitto, topic_root, tmp_path)
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    async with running_gateway(settings) as gw, \
            MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as probe:
        await watch(probe, topic_root)
        alert = await raise_alert(dev, probe, topic_root, "c1")
        t2_alert = await raise_alert(dev, probe, topic_root, "c9", team="t2")
        good = link(alert)
        body, mac = good.split(".")
        refused = {
            "tampered": f"{body}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
            "expired": link(alert, ttl_s=-1),
            "other secret": sign(b"another-secret-that-is-long-enough!!", alert_id=alert["id"],
                                 team="t1", cuff="c1", kind="over_pressure", person="x",
                                 expires_at=int(time.time()) + 60),
            # t2's staff link, edited to name t1's cuff and alert: signed, so only by forgery;
            # and a genuine t2 link whose ids are made to point at t1's alert
            "other team": link(t2_alert, cuff="c1", alert_id=alert["id"]),
            "wrong kind": link(alert, kind="under_pressure"),
        }
        # each phone its own address (through the proxy), so the per-client limit is not what
        # refuses them here (tests/integration/test_ack_limits.py is about that)
        phones = (phone(n) for n in range(1, 200))
        for why, token in refused.items():
            for method in ("GET", "POST"):
                async with http.request(method, page_url(settings, token), data=b"",
                                        headers=next(phones)) as resp:
                    answer = await resp.read()
                    if why == "wrong kind":  # a link of ours, to an alert that is not open
                        assert resp.status == 410, method
                        assert b"no longer open" in answer
                    else:
                        assert (resp.status, answer) == (403, b""), (why, method)
        for path in ("/", "/ack/", "/metrics", "/readyz", f"/ack/{good}/x", "/ack/../metrics"):
            async with http.get(settings.ack.public_url + path, headers=next(phones)) as resp:
                assert (resp.status, await resp.read()) == (404, b""), path
        async with http.put(page_url(settings, good), headers=next(phones)) as resp:
            assert resp.status == 404
        # a mail scanner and a chat preview: GET (and HEAD) as often as they like
        for _ in range(5):
            async with http.get(page_url(settings, good), headers=next(phones)) as resp:
                assert resp.status == 200
            async with http.head(page_url(settings, good), headers=next(phones)) as resp:
                assert resp.status == 404
        await asyncio.sleep(0.3)
        assert states(probe, topic) == ["firing"]
        assert (await retained(mosquitto, topic))["state"] == "firing"

        async with http.post(page_url(settings, good), data=b"", headers=FORM) as resp:
            assert resp.status == 200
        await wait_for(lambda: states(probe, topic) == ["firing", "acknowledged"], what="acked")
        for method in ("POST", "GET"):  # replayed: used
            async with http.request(method, page_url(settings, good), data=b"",
                                    headers=next(phones)) as resp:
                assert (resp.status, await resp.read()) == (403, b"")
        await asyncio.sleep(0.3)
        assert states(probe, topic) == ["firing", "acknowledged"]
        assert states(probe, f"{topic_root}/t2/alerts/c9/over_pressure") == ["firing"]
        assert gw.counters.ack_links_acknowledged == 1


async def test_a_used_link_stays_used_after_a_restart(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    """The alert comes back from its retained message with the same id; the link that
    acknowledged it does not work again."""
    settings = settings_with_ack(mosquitto, topic_root, tmp_path)
    topic = f"{topic_root}/t1/alerts/c1/over_pressure"
    async with MqttProbe(mosquitto.host, mosquitto.port) as dev, \
            MqttProbe(mosquitto.host, mosquitto.port) as probe:
        async with running_gateway(settings):
            await watch(probe, topic_root)
            alert = await raise_alert(dev, probe, topic_root, "c1")
            url = page_url(settings, link(alert))
            async with http.post(url, data=b"", headers=FORM) as resp:
                assert resp.status == 200
            await wait_for(lambda: states(probe, topic)[-1:] == ["acknowledged"], what="acked")
        async with running_gateway(settings) as gw:
            await wait_for(gw.engine.open_alerts, what="alert restored")
            for method in ("POST", "GET"):
                async with http.request(method, url, data=b"", headers=FORM) as resp:
                    assert resp.status == 403
            fresh = page_url(settings, link(alert))  # a new link to the same alert works
            async with http.get(fresh) as resp:
                assert resp.status == 200


# -- the real process, check, and the deploy's proxy ----------------------------------------------


async def test_a_tap_on_the_real_gateway_through_caddy_acknowledges_within_a_second(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
    processes: list[GatewayProcess],
) -> None:
    """`cuffwatch run` with its secret from the environment, behind deploy/caddy's site
    (TLS from Caddy's local CA); `cuffwatch check` proves public_url reaches it."""
    port = free_port()
    upstream = f"127.0.0.1:{port}"
    caddy = start_or_fail(lambda: CaddyServer(tmp_path / "caddy", upstream=upstream))
    try:
        settings = settings_with_ack(mosquitto, topic_root, tmp_path, port=port,
                                     public_url=caddy.public_url)
        data = settings.model_dump(mode="json", exclude_none=True)
        del data["ack"]["secret"]  # from the environment, as deployed
        data["health"]["port"] = free_port()
        config = write_config(tmp_path / "cuffwatch.toml", data)
        env = {"CUFFWATCH_ACK__SECRET": SECRET, "SSL_CERT_FILE": str(caddy.ca_file)}
        gw = GatewayProcess(config, data["health"]["port"], tmp_path / "gw.log", env=env)
        processes.append(gw)
        await gw.started()
        tls = ssl.create_default_context(cafile=str(caddy.ca_file))
        topic = f"{topic_root}/t1/alerts/c1/over_pressure"
        async with MqttProbe(mosquitto.host, mosquitto.port) as dev, \
                MqttProbe(mosquitto.host, mosquitto.port) as probe, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
            await watch(probe, topic_root)
            alert = await raise_alert(dev, probe, topic_root, "c1")
            url = page_url(settings, link(alert))
            assert url.startswith("https://localhost:")
            async with http.get(url) as page:
                assert page.status == 200
                assert "Jo &lt;Example&gt;" in await page.text()
                assert "Server" not in page.headers
            tapped = time.monotonic()
            async with http.post(url, data=b"", headers=FORM) as done:
                assert done.status == 200
            await wait_for(lambda: states(probe, topic)[-1:] == ["acknowledged"],
                           what="acknowledged")
            took = time.monotonic() - tapped
            assert took < TAP_WITHIN_S, f"the tap took {took:.3f} s"
            for path in ("/", "/metrics", "/readyz"):  # only /ack/ is proxied
                async with http.get(caddy.public_url + path) as other:
                    assert other.status == 404

            checked = await asyncio.to_thread(run_cuffwatch, "check", "-c", str(config),
                                              "--timeout", "5", env=env)
            line = next(x for x in checked.stdout.splitlines() if "ack endpoint" in x)
            assert line == (f"ok   ack endpoint: {caddy.public_url} reaches this gateway's "
                            "endpoint (links signed with this secret work)"), checked.stdout
            assert SECRET not in checked.stdout + checked.stderr

            # another secret in check's environment: the running gateway refuses its probe
            refused = await asyncio.to_thread(
                run_cuffwatch, "check", "-c", str(config), "--timeout", "5",
                env={**env, "CUFFWATCH_ACK__SECRET": "x" * 40})
            assert re.search(r"^FAIL ack endpoint: .*another one$", refused.stdout, re.M), (
                refused.stdout)
        await gw.terminated()
        stopped = await asyncio.to_thread(run_cuffwatch, "check", "-c", str(config),
                                          "--timeout", "5", env=env)
        assert re.search(rf"^warn ack endpoint: {re.escape(caddy.public_url)}/ack/ answered "
                         r"502, and no gateway answers on 127\.0\.0\.1:\d+: start",
                         stopped.stdout, re.M), stopped.stdout
    finally:
        caddy.close()


def test_the_deployed_caddyfile_is_valid(tmp_path: Path) -> None:
    """deploy/caddy/Caddyfile as shipped (global options, the site), as Caddy reads it."""
    caddy = CaddyServer(tmp_path, upstream="127.0.0.1:9109")
    env = {"CUFFWATCH_ACK_DOMAIN": "ack.club.example", "HOME": str(tmp_path),
           "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([caddy._binary, "adapt", "--config", str(CADDYFILE),
                           "--adapter", "caddyfile"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    server = next(iter(config["apps"]["http"]["servers"].values()))
    assert server["listen"] == [":443"]
    text = json.dumps(server)
    assert '"dial": "127.0.0.1:9109"' in text
    assert '"path": ["/ack/*"]' in text
    assert "ack.club.example" in text
    assert "logs" not in text  # no access log: links are credentials until they expire


async def test_without_public_url_nothing_listens(
    mosquitto: MosquittoServer, topic_root: str, tmp_path: Path,
) -> None:
    port = free_port()
    settings = gateway_settings(broker_url=mosquitto.url, topic_root=topic_root,
                                spool_dir=tmp_path / "spool", teams={"t1": arm_team("c1")},
                                ack={"port": port, "secret": SECRET})
    async with running_gateway(settings) as gw:
        assert gw.ack_server is None
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
