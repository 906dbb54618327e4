"""A throw-away PKI for TLS tests: a CA, a server certificate for 127.0.0.1, a client certificate.

Made with the `openssl` command (the venv has no `cryptography`); EC P-256 keys so that
making one takes milliseconds. The certificates carry the extensions strict verifiers
want (SAN, key identifiers, key usage), so they pass Python's and Mosquitto's checks.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CURVE = "prime256v1"  # EC keys generate instantly; every TLS stack we use speaks P-256
VALID_DAYS = 2  # long enough for any test run, short enough to be obviously throw-away


class PkiError(RuntimeError):
    """The openssl command is missing or failed; the message says which step."""


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of a test CA and the server and client certificates it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn: str

    def client_context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        """A client SSLContext trusting only this CA, presenting the client cert if asked."""
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def listener_options(self, *, require_certificate: bool) -> list[str]:
        """Mosquitto listener lines serving this PKI's server certificate."""
        return [
            f"cafile {self.ca_cert}",
            f"certfile {self.server_cert}",
            f"keyfile {self.server_key}",
            f"require_certificate {'true' if require_certificate else 'false'}",
        ]


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise PkiError("the openssl command is not installed (apt-get install openssl)")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, check=False)
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", "replace").strip()
        raise PkiError(f"openssl {args[0]} failed ({done.returncode}): {stderr}")


def _new_key(path: Path, cwd: Path) -> None:
    _openssl(*f"genpkey -algorithm EC -pkeyopt ec_paramgen_curve:{CURVE}".split(), "-out",
             str(path), cwd=cwd)


def _issue(
    directory: Path, name: str, cn: str, extensions: Sequence[str], *, ca: tuple[Path, Path]
) -> tuple[Path, Path]:
    """Make a key and a certificate for `cn`, signed by `ca` (cert, key), with `extensions`."""
    key, csr, cert, ext = (directory / f"{name}.{sfx}" for sfx in ("key", "csr", "crt", "ext"))
    ext.write_text("\n".join(extensions) + "\n")
    _new_key(key, directory)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr), cwd=directory)
    signing = ["-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"]
    _openssl("x509", "-req", "-in", str(csr), *signing, "-days", str(VALID_DAYS), "-sha256",
             "-extfile", str(ext), "-out", str(cert), cwd=directory)
    return cert, key


def make_pki(
    directory: Path,
    *,
    server_ips: Sequence[str] = ("127.0.0.1",),
    server_dns: Sequence[str] = ("localhost",),
    client_cn: str = "gateway",
) -> Pki:
    """Create a CA, a server certificate (SAN: `server_ips`, `server_dns`) and a client one."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / "ca.key"
    ca_cert = directory / "ca.crt"
    _new_key(ca_key, directory)
    ca_extensions = [
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,keyCertSign,cRLSign",
        "subjectKeyIdentifier=hash",
    ]
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=cuffwatch test CA",
             "-days", str(VALID_DAYS), "-sha256",
             *(arg for extension in ca_extensions for arg in ("-addext", extension)),
             "-out", str(ca_cert), cwd=directory)
    common = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid,issuer",
    ]
    sans = ",".join([f"IP:{ip}" for ip in server_ips] + [f"DNS:{dns}" for dns in server_dns])
    server_cn = server_ips[0] if server_ips else server_dns[0]
    server_extensions = [*common, "extendedKeyUsage=serverAuth", f"subjectAltName={sans}"]
    client_extensions = [*common, "extendedKeyUsage=clientAuth"]
    ca = (ca_cert, ca_key)
    server_cert, server_key = _issue(directory, "server", server_cn, server_extensions, ca=ca)
    client_cert, client_key = _issue(directory, "client", client_cn, client_extensions, ca=ca)
    return Pki(ca_cert, ca_key, server_cert, server_key, client_cert, client_key, client_cn)
