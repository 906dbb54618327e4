"""The ack endpoint's listener (`[ack]`, SPEC §3): `AckDesk`'s decisions, served.

It listens on its own address (ack.host:ack.port, 127.0.0.1:9109), apart from health, behind
the TLS reverse proxy phones reach as `ack.public_url` (deploy/Caddyfile). It runs on the
gateway's event loop, so each request is cheap and bounded: the rate limits are checked
before anything else, a request head and body are small and due within IDLE_TIMEOUT_S, at
most MAX_CONNECTIONS are held (`gateway.lowhttp`), and the one blocking step (the used
link's fsync) runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlsplit

from aiohttp import hdrs, web

from core.config import Settings
from gateway import lowhttp
from gateway.ack_desk import NOT_FOUND, AckDesk, AckTarget, Reply
from gateway.ack_guard import Rate, RateLimiter, UsedLinks, client_of
from gateway.ack_page import CSP, AckPages
from gateway.metrics import Counters

log = logging.getLogger("cuffwatch.gateway.ack")

# Connections held at once: a tap is one short request (two with its page), through the
# proxy; the health server's 32 is ample here too.
MAX_CONNECTIONS = 32
# The deadline for a whole request head after connecting or after the last answer, and for a
# POST's body after its head: a phone sends its request at once; a slow client is closed.
IDLE_TIMEOUT_S = 5.0
# Heads: `/ack/<token>/pushover` with a token of at most 1,024 characters (plus a query a mail
# tracker may add); a browser's headers, each well under 4 KiB, about 15 of them.
MAX_LINE_SIZE = 2048
MAX_FIELD_SIZE = 4096
MAX_HEADERS = 40
# A POST's body: the page's one name field, or Pushover's five callback fields (~200 bytes).
MAX_BODY_BYTES = 2048
MAX_FORM_FIELDS = 16
# One client (an address; an IPv6 /64) may send 20 requests at once, then one a second: a
# squad's staff behind one club Wi-Fi address tapping together fit, a flood does not. All
# clients together: 100 at once, then 20 a second, which costs the loop ~1 % (a request is
# ~0.5 ms) and leaves the alerts their latency. Past a bucket, a bare 429, and the connection
# is closed so a flood must pay for a new one. Clients are remembered up to MAX_CLIENTS.
PER_CLIENT = Rate(burst=20, per_s=1.0)
OVERALL = Rate(burst=100, per_s=20.0)
MAX_CLIENTS = 4096

_CLOSING = frozenset({400, 408, 413, 429, 500})
_SECURITY_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
}


class AckServer:
    """Serves `/ack/<token>` (GET, POST) and `/ack/<token>/pushover` (POST) for `target`.

    `port` is the bound port once started; `idle_timeout_s` and the rates are the module's
    but for tests.
    """

    def __init__(
        self,
        settings: Settings,
        target: AckTarget,
        *,
        secret: bytes,
        used: UsedLinks,
        counters: Counters,
        clock: Callable[[], float] = time.time,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        per_client: Rate = PER_CLIENT,
        overall: Rate = OVERALL,
    ) -> None:
        ack = settings.ack
        self._host = ack.host
        self.port = ack.port
        self._clock = clock
        self._idle_timeout_s = idle_timeout_s
        self.counters = counters
        self.desk = AckDesk(
            secret=secret, link_ttl_s=ack.link_ttl_s, prefix=urlsplit(ack.public_url).path,
            target=target, used=used, pages=AckPages(settings), counters=counters,
        )
        self.limiter = RateLimiter(per_client, overall, max_clients=MAX_CLIENTS)
        self._runner: web.ServerRunner | None = None
        # the used links' file, written off the loop and not behind the pushes' threads
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cuffwatch-ack")

    async def start(self) -> None:
        limits = lowhttp.Limits(
            cap=MAX_CONNECTIONS, idle_timeout_s=self._idle_timeout_s,
            max_line_size=MAX_LINE_SIZE, max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS,
        )
        self._runner, self.port = await lowhttp.serve(self._handle, self._host, self.port, limits)
        log.info("ack endpoint on http://%s:%s/ack/", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._disk.shutdown(wait=False)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            reply = await self._decide(request)
        except Exception:
            log.exception("ack endpoint: internal error")  # a bug: the request gets a bare 500
            reply = Reply(500)
        if reply.persist:
            # the used link durable before the answer: a restart cannot make it work again
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._disk, self.desk.used.writer())
        # a POST's connection is closed after its answer (whether its body was read or not:
        # a tap is one request), and so is one refused for its size, time or rate
        close = request.method == "POST" or reply.status in _CLOSING
        return _response(reply, close=close)

    async def _decide(self, request: web.BaseRequest) -> Reply:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client = client_of(peer[0] if peer else None, request.headers.get(hdrs.X_FORWARDED_FOR))
        now = self._clock()
        if not self.limiter.allow(client, now):
            self.counters.ack_links_limited += 1
            return Reply(429, headers={"Retry-After": "1"})
        route = self.desk.route(request.method, request.rel_url.raw_path)
        if route is None:
            self.counters.ack_links_refused += 1
            return NOT_FOUND
        if request.method == "GET":
            if request.body_exists:
                return Reply(413)
            admitted = self.desk.admit(route, now)
            return admitted if isinstance(admitted, Reply) else self.desk.visit(admitted)
        admitted = self.desk.admit(route, now)  # refuse before reading a body we do not want
        if isinstance(admitted, Reply):
            return Reply(admitted.status) if route.pushover else admitted
        form = await self._form(request)
        if isinstance(form, Reply):
            return form
        if route.pushover:
            return self.desk.pushover(route, form, self._clock())
        return self.desk.tap(route, form, self._clock())

    async def _form(self, request: web.BaseRequest) -> dict[str, str] | Reply:
        """A POST's urlencoded fields (empty for a body of another type or none); 413 for a
        body too big or of no stated length, 408 for one not there within the deadline."""
        if not request.body_exists:
            return {}
        length = request.content_length
        if length is None or length > MAX_BODY_BYTES:
            return Reply(413)
        try:
            async with asyncio.timeout(self._idle_timeout_s):
                body = await request.content.readexactly(length)
        except TimeoutError:
            return Reply(408)
        except asyncio.IncompleteReadError:
            return Reply(400)
        if request.content_type != "application/x-www-form-urlencoded":
            return {}
        try:
            fields = parse_qsl(body.decode("utf-8"), max_num_fields=MAX_FORM_FIELDS)
        except ValueError:  # not UTF-8, or too many fields
            return {}
        return dict(fields)


def _response(reply: Reply, *, close: bool) -> web.Response:
    """A reply as aiohttp's response: a bare status, or its body, with the security headers."""
    headers = {**_SECURITY_HEADERS, **reply.headers}
    resp = web.Response(status=reply.status, body=reply.body or None, headers=headers,
                        content_type=reply.content_type if reply.body else None,
                        charset="utf-8" if reply.body else None)
    if close:
        resp.force_close()
    return resp
