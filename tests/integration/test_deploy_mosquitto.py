"""The deployments' broker configurations on a real Mosquitto: locked down, TLS for cuffs.

The compose file, the Dockerfile, the systemd unit and the laptop script themselves:
tests/unit/test_deploy.py.
"""

from __future__ import annotations

import getpass
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from gmqtt.mqtt.constants import MQTTv50

from core.config import Settings, load_settings
from ops.brokerauth import BrokerFiles, load_credentials, write_broker_files
from tests.support.broker_auth import NOT_AUTHORIZED, connected, refused
from tests.support.paths import REPO
from tests.support.pki import Pki
from tests.support.servers import MosquittoServer

DEPLOY = REPO / "deploy"
EXAMPLE = DEPLOY / "cuffwatch.example.toml"
SETUP = DEPLOY / "setup-laptop.sh"
BROKER_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"

_LISTENER_RE = re.compile(r"^listener (\d+)(?: \S+)?$")


def _heredocs(text: str, tag: str) -> list[str]:
    """The bodies of the script's `<<'TAG'` here-documents, in order."""
    return re.findall(rf"<<'{tag}'\n(.*?)\n{tag}\n", text, re.S)


# -- broker configurations on a real Mosquitto ---------------------------------------------------


class ConfMosquitto(MosquittoServer):
    """Mosquitto running a deployment's config, its paths and listener ports mapped to ours."""

    def __init__(
        self,
        tmpdir: Path,
        conf: str,
        *,
        paths: Mapping[str, str],
        listeners: Mapping[int, str],
    ) -> None:
        """`paths` rewrites path prefixes; `listeners` names each listener port (`default`…)."""
        extra: dict[str, list[str]] = {name: [] for name in listeners.values() if name != "default"}
        super().__init__(tmpdir, extra_listeners=extra, allow_anonymous=False)
        self._conf = conf
        self._paths = {"/mosquitto/data/": f"{self.persistence_dir}/", **paths}
        self._listeners = listeners

    def _config_lines(self) -> list[str]:
        """The deployment's lines with our paths and ports, and our user when root."""
        lines = []
        for raw in self._conf.splitlines():
            line = raw
            for old, new in self._paths.items():
                line = line.replace(old, new)
            match = _LISTENER_RE.match(line)
            if match:
                line = f"listener {self.ports[self._listeners[int(match[1])]]} {self.host}"
            lines.append(line)
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")
        return lines


@pytest.fixture
def run_conf(tmp_path: Path) -> Iterator[Callable[..., ConfMosquitto]]:
    """Start ConfMosquitto brokers for this test; stop them after."""
    started: list[ConfMosquitto] = []

    def start(conf: str, **kwargs: Any) -> ConfMosquitto:
        server = ConfMosquitto(tmp_path / f"conf-broker{len(started)}", conf, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()




@pytest.fixture
def auth(tmp_path: Path) -> tuple[Settings, BrokerFiles, dict[str, str]]:
    """Broker files for the example roster."""
    settings = load_settings(EXAMPLE)
    files = write_broker_files(settings, tmp_path / "auth", credentials=tmp_path / "creds.toml")
    return settings, files, load_credentials(files.credentials)


async def _check_locked_down_tls_broker(
    server: ConfMosquitto, passwords: dict[str, str], pki: Pki, root: str
) -> None:
    """Gateway on the plain listener, a cuff over TLS, anonymous and untrusting refused."""
    topic = f"{root}/first/cuffs/cw-0007/telemetry"
    async with (
        connected(server, "gateway", passwords["gateway"]) as gateway,
        connected(server, "cw-0007", passwords["cw-0007"], port=server.ports["tls"],
                  tls=pki.client_context(with_cert=False)) as cuff,
    ):
        await gateway.subscribe(f"{root}/#")
        cuff.publish(topic, b"{}")
        assert await gateway.receive_until(topic) == [topic]
    assert (await refused(server, None, None, version=MQTTv50))._code == NOT_AUTHORIZED
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connected(server, "gateway", passwords["gateway"], port=server.ports["tls"],
                             tls=ssl.create_default_context()):
            pass


async def test_compose_broker_config_runs_locked_down(
    run_conf: Callable[..., ConfMosquitto],
    auth: tuple[Settings, BrokerFiles, dict[str, str]],
    pki: Pki,
) -> None:
    settings, files, passwords = auth
    server = run_conf(
        BROKER_CONF.read_text(),
        paths={"/mosquitto/auth/": f"{files.passwd.parent}/",
               "/mosquitto/certs/": f"{pki.ca_cert.parent}/"},
        listeners={1883: "default", 8883: "tls"},
    )
    await _check_locked_down_tls_broker(server, passwords, pki, settings.topic_root)


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_laptop_broker_config_runs_locked_down(
    run_conf: Callable[..., ConfMosquitto],
    auth: tuple[Settings, BrokerFiles, dict[str, str]],
    pki: Pki,
    tls: bool,
) -> None:
    settings, files, passwords = auth
    limits, tls_listeners, plain_listener = _heredocs(SETUP.read_text(), "CONF")
    conf = "\n".join([files.conf.read_text(), limits, tls_listeners if tls else plain_listener])
    server = run_conf(
        conf,
        paths={"/etc/mosquitto/certs/cuffwatch/": f"{pki.ca_cert.parent}/"},
        listeners={1883: "default", 8883: "tls"} if tls else {1883: "default"},
    )
    if tls:
        await _check_locked_down_tls_broker(server, passwords, pki, settings.topic_root)
    else:
        assert (await refused(server, None, None, version=MQTTv50))._code == NOT_AUTHORIZED
        async with connected(server, "cw-0011", passwords["cw-0011"]):
            pass
