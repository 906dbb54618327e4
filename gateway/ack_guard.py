"""What keeps the ack endpoint's links single-use and its clients within bounds.

`UsedLinks` remembers the links that acknowledged (by their nonce) until they expire, in
memory and in a small file beside the spool, so that a link works once across restarts too.
`RateLimiter` holds each client, and all of them together, to a token bucket. `client_of`
names the client of a request, through the reverse proxy in front of the endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("cuffwatch.gateway.ack")

# Links remembered at once. Only a link we signed is ever remembered (a forged one fails its
# signature first), one per tap, and each for link_ttl_s (1 h): a club's worst hour is tens of
# acks. Past this, with none expired, a tap is refused rather than a used link forgotten (which
# would let it work again): a bound that only a leaked secret could reach.
MAX_USED_LINKS = 10_000
# The file is rewritten without the expired entries once it holds this many lines more than
# are live (and at start-up): appends otherwise, each fsynced before the tap is answered.
COMPACT_SLACK = 256
_FILE_HEADER = "cuffwatch-ack-used 1\n"


def _key(nonce: str) -> str:
    """What the file and the memory hold of a nonce: fixed length, safe on one line."""
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class UsedLinks:
    """The nonces of links that acknowledged, each until its expiry; bounded; on disk.

    `path` None keeps them in memory only. Everything runs on the event loop but the writes:
    `writer()` takes what is to be written and returns the blocking write, for a thread.
    """

    def __init__(self, path: Path | None, *, cap: int = MAX_USED_LINKS) -> None:
        self.path = path
        self.cap = cap
        self._expiry: dict[str, int] = {}  # key -> expires_at, roughly in expiry order
        self._pending: list[str] = []  # lines not yet in the file
        self._file_lines = 0  # lines in the file (after its header)
        self._io = threading.Lock()  # one write at a time, in the order they were taken

    def __len__(self) -> int:
        return len(self._expiry)

    def load(self, now: float) -> None:
        """Read the file (blocking, at start-up), keep what has not expired, rewrite it."""
        if self.path is None:
            return
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("ack links: cannot read %s (%s): used links of the last run may work "
                        "again until they expire", self.path, exc)
            text = ""
        for line in text.splitlines()[1:] if text.startswith(_FILE_HEADER) else []:
            expires, _, key = line.partition(" ")
            with contextlib.suppress(ValueError):
                if int(expires) > now and len(key) == 32:
                    self._expiry[key] = int(expires)
        self._prune(now, everything=True)
        self._pending.clear()
        write = self._replace_with(list(self._expiry.items()))
        write()

    def seen(self, nonce: str) -> bool:
        """Whether a link with this nonce has already acknowledged."""
        return _key(nonce) in self._expiry

    def use(self, nonce: str, expires_at: int, now: float) -> bool:
        """Remember the nonce until `expires_at`; False (remember nothing) when full."""
        self._prune(now)
        if len(self._expiry) >= self.cap:
            self._prune(now, everything=True)
            if len(self._expiry) >= self.cap:
                return False
        key = _key(nonce)
        self._expiry[key] = expires_at
        self._pending.append(f"{expires_at} {key}\n")
        return True

    def writer(self) -> Callable[[], None]:
        """The blocking write that makes the nonces used so far durable (run it in a thread).
        It never raises: a disk that fails costs single use across a restart, not the ack."""
        lines, self._pending = self._pending, []
        if self.path is None or not lines:
            return _nothing
        if self._file_lines > len(self._expiry) + COMPACT_SLACK:
            return self._replace_with(list(self._expiry.items()))
        self._file_lines += len(lines)
        return lambda: self._append(lines)

    def _append(self, lines: list[str]) -> None:
        assert self.path is not None
        with self._io:
            try:
                with self.path.open("a", encoding="ascii") as fh:
                    fh.writelines(lines)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                log.warning("ack links: cannot write %s (%s): a used link may work again "
                            "after a restart", self.path, exc)

    def _replace_with(self, entries: list[tuple[str, int]]) -> Callable[[], None]:
        """The write replacing the file with `entries` (the live ones, taken now)."""
        path = self.path
        if path is None:
            return _nothing
        self._file_lines = len(entries)

        def write() -> None:
            tmp = path.with_name(path.name + ".new")  # not .tmp: the spool clears those
            with self._io:
                try:
                    with tmp.open("w", encoding="ascii") as fh:
                        fh.write(_FILE_HEADER)
                        fh.writelines(f"{at} {key}\n" for key, at in entries)
                        fh.flush()
                        os.fsync(fh.fileno())
                    tmp.replace(path)
                except OSError as exc:
                    log.warning("ack links: cannot write %s (%s): a used link may work again "
                                "after a restart", path, exc)

        return write

    def _prune(self, now: float, *, everything: bool = False) -> None:
        """Forget expired nonces: the oldest first, or (everything) wherever they are."""
        expiry = self._expiry
        if everything:
            for key in [k for k, at in expiry.items() if at <= now]:
                del expiry[key]
            return
        while expiry:
            key = next(iter(expiry))
            if expiry[key] > now:
                return
            del expiry[key]


def _nothing() -> None:
    return None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: `burst` requests at once, then `per_s` a second."""

    burst: float
    per_s: float


class RateLimiter:
    """Each client's requests, and all clients' together, within their token buckets.

    Clients are remembered up to `max_clients` (the least recently seen forgotten first): a
    flood from many addresses then costs memory bounded by that, and the overall bucket
    bounds the work it causes.
    """

    def __init__(self, per_client: Rate, overall: Rate, *, max_clients: int) -> None:
        self.per_client = per_client
        self.overall = overall
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()
        self._all = _Bucket(overall.burst, 0.0)

    def allow(self, client: str, now: float) -> bool:
        """Take one request from the client's bucket and the overall one; False if either is
        empty (then neither is charged)."""
        bucket = self._clients.get(client)
        if bucket is None:
            bucket = self._clients[client] = _Bucket(self.per_client.burst, now)
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        _refill(bucket, self.per_client, now)
        _refill(self._all, self.overall, now)
        if bucket.tokens < 1.0 or self._all.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        self._all.tokens -= 1.0
        return True


def _refill(bucket: _Bucket, rate: Rate, now: float) -> None:
    if now > bucket.at:
        bucket.tokens = min(rate.burst, bucket.tokens + (now - bucket.at) * rate.per_s)
    bucket.at = now


def client_of(peer: str | None, forwarded_for: str | None) -> str:
    """Whom a request is from, for the rate limits: the peer's address, or, when the peer is
    our reverse proxy (a loopback or private address), the client it names last in
    X-Forwarded-For (Caddy and nginx put the address they saw there). An IPv6 client is
    its /64, the block one host usually has to itself."""
    address = _ip(peer)
    if forwarded_for and address is not None and (address.is_loopback or address.is_private):
        named = _ip(forwarded_for.rsplit(",", 1)[-1].strip())
        if named is not None:
            address = named
    if address is None:
        return peer or "?"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
