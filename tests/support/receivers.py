"""Real local receivers for push tests: a JSON/ntfy HTTP server, a hanging server, SMTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    """One POST the HTTP receiver recorded."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class HttpReceiver:
    """An aiohttp server recording JSON posts; `fail_first[path]` answers 500 that many times.

    Apprise's `json://127.0.0.1:PORT/path` routes post to `path`; `ntfy://127.0.0.1:PORT/topic`
    routes post to `/` with the topic in the body.
    """

    def __init__(self) -> None:
        self.port = 0
        self.received: list[Received] = []
        self.hits: Counter[str] = Counter()
        self.fail_first: dict[str, int] = {}
        # requests that are not posts (`cuffwatch check`'s probes): (method, path, headers)
        self.probes: list[tuple[str, str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.method != "POST":  # a webhook takes posts only, as real ones do
            self.probes.append((request.method, request.path, dict(request.headers)))
            return web.Response(status=405, headers={"Allow": "POST"})
        self.hits[request.path] += 1
        if self.fail_first.get(request.path, 0) > 0:
            self.fail_first[request.path] -= 1
            return web.Response(status=500, text="boom")
        body = await request.json()
        self.received.append(Received(request.path, dict(request.headers), body))
        return web.Response(text="ok")

    def url(self, path: str, *, auth: str = "") -> str:
        return f"json://{auth}127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def titles(self, path: str) -> list[str]:
        return [str(r.body["title"]) for r in self.at(path)]

    def ntfy(self, topic: str) -> list[Received]:
        return [r for r in self.received if r.body.get("topic") == topic]


@contextlib.asynccontextmanager
async def http_receiver() -> AsyncIterator[HttpReceiver]:
    """An HttpReceiver listening on a free loopback port for the block's duration."""
    receiver = HttpReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.port = runner.addresses[0][1]
    try:
        yield receiver
    finally:
        await runner.cleanup()


class HangingServer:
    """Accepts connections and reads the request, never answers; counts open connections."""

    def __init__(self) -> None:
        self.port = 0
        self.requests = 0
        self.open = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(writer)
        self.open += 1
        try:
            if await reader.read(1024):
                self.requests += 1
            await reader.read()  # until the client gives up or we close
        finally:
            self.open -= 1

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def hanging_server() -> AsyncIterator[HangingServer]:
    """A HangingServer for the block's duration."""
    server = HangingServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class MailBox:
    """aiosmtpd handler: keeps every message; accepts one login over plain SMTP."""

    def __init__(self, login: str, password: str) -> None:
        self.envelopes: list[Envelope] = []
        self.logins: list[str] = []
        self.port = 0
        self.login = login
        self.password = password

    async def handle_DATA(  # noqa: N802 (the hook name aiosmtpd calls)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.login.encode(),
            self.password.encode(),
        )
        if ok:
            self.logins.append(data.login.decode())
        # handled=False: aiosmtpd answers a refusal with 535 itself (True would leave the
        # client waiting for an answer nobody sends)
        return AuthResult(success=ok, handled=False)

    def messages(self) -> list[EmailMessage]:
        """Every mail received, parsed (headers decoded: `msg["Subject"]` is the text)."""
        return [message_from_bytes(e.original_content or b"", policy=policy.default)
                for e in self.envelopes]

    def texts(self) -> list[tuple[str, str]]:
        """(subject, plain-text body with `\\n` line ends) of every mail received, in order."""
        out: list[tuple[str, str]] = []
        for msg in self.messages():
            body = msg.get_body(preferencelist=("plain",))
            text = body.get_content() if isinstance(body, EmailMessage) else ""
            out.append((str(msg["Subject"]), text.replace("\r\n", "\n")))
        return out

    def url(self) -> str:
        return (f"mailto://{self.login}:{self.password}@127.0.0.1:{self.port}"
                "?from=cuffwatch@example.org&to=staff@example.org")


@contextlib.asynccontextmanager
async def smtp_server(login: str, password: str) -> AsyncIterator[MailBox]:
    """An SMTP server (plain, with login) on a free loopback port; waits for its sessions."""
    box = MailBox(login, password)
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(box, hostname="localhost", authenticator=box.authenticate,
                     auth_require_tls=False),  # loopback test server
        "127.0.0.1", 0,
    )
    box.port = server.sockets[0].getsockname()[1]
    try:
        yield box
    finally:
        server.close()
        await server.wait_closed()
        sessions = [t for t in asyncio.all_tasks()
                    if getattr(t.get_coro(), "__qualname__", "") == "SMTP._handle_client"]
        async with asyncio.timeout(20):  # each ends once the client has sent QUIT
            await asyncio.gather(*sessions, return_exceptions=True)
