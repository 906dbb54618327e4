"""Caddy (deploy/caddy/) as a test server: TLS from its own local CA, in front of an upstream.

The site is deploy/caddy/cuffwatch-ack.caddy itself, imported by a Caddyfile whose global
options keep Caddy to this test: free ports, no admin endpoint, certificates from its local
CA for `localhost` (trusted through `ca_file`, never installed into the system's store).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.paths import REPO
from tests.support.servers import ServerProcess, find_binary, free_port

SITE = REPO / "deploy" / "caddy" / "cuffwatch-ack.caddy"
CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"


class CaddyServer(ServerProcess):
    """`caddy run` serving deploy/caddy's ack site at https://localhost:{port}."""

    name = "caddy"
    env_prefixes = ("CUFFWATCH_", "XDG_", "CADDY")

    def __init__(self, tmpdir: Path | str | None = None, *, upstream: str) -> None:
        """A proxy to `upstream` (host:port of the ack endpoint); not started."""
        super().__init__(tmpdir)
        self.upstream = upstream
        self.port = 0
        self.http_port = 0
        self.config_path = self.tmpdir / "Caddyfile"
        self._binary = find_binary("caddy")

    @property
    def public_url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The root certificate of Caddy's local CA, which signs its certificate."""
        return self.tmpdir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def _allocate_ports(self) -> None:
        self.port, self.http_port = free_port(), free_port()

    def _prepare(self) -> None:
        self.config_path.write_text(
            "{\n\tadmin off\n\tlocal_certs\n\tskip_install_trust\n"
            f"\thttp_port {self.http_port}\n\thttps_port {self.port}\n}}\n"
            f"import {SITE}\n"
        )

    def _env(self) -> dict[str, str]:
        return {"CUFFWATCH_ACK_DOMAIN": "localhost", "CUFFWATCH_ACK_UPSTREAM": self.upstream,
                "XDG_DATA_HOME": str(self.tmpdir / "data"),
                "XDG_CONFIG_HOME": str(self.tmpdir / "config")}

    def _command(self) -> list[str]:
        return [self._binary, "run", "--config", str(self.config_path), "--adapter", "caddyfile"]

    def _listen_ports(self) -> list[int]:
        return [self.port]

    def _is_ready(self) -> bool:
        return self.ca_file.exists()
