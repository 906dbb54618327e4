"""Used links (single use, bounded, across restarts), rate limits and whom a request is from."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.ack_guard import COMPACT_SLACK, Rate, RateLimiter, UsedLinks, client_of

NOW = 1_900_000_000.0


def test_a_used_link_is_remembered_until_it_expires() -> None:
    used = UsedLinks(None)
    assert not used.seen("n1")
    assert used.use("n1", int(NOW) + 10, NOW)
    assert used.seen("n1")
    used.use("n2", int(NOW) + 100, NOW + 11)  # the next use forgets what has expired
    assert not used.seen("n1")
    assert used.seen("n2")


def test_used_links_outlive_a_restart_and_expire_there_too(tmp_path: Path) -> None:
    path = tmp_path / "ack-links.used"
    before = UsedLinks(path)
    before.load(NOW)
    before.use("short", int(NOW) + 10, NOW)
    before.use("long", int(NOW) + 3600, NOW)
    before.writer()()
    after = UsedLinks(path)
    after.load(NOW + 60)
    assert after.seen("long")
    assert not after.seen("short")
    assert "long" not in path.read_text()  # nonces are kept hashed, one fixed-size line each
    assert len(path.read_text().splitlines()) == 2  # header + the live one: rewritten at load


def test_the_file_is_compacted_once_mostly_expired(tmp_path: Path) -> None:
    path = tmp_path / "used"
    used = UsedLinks(path)
    used.load(NOW)
    n = COMPACT_SLACK + 10
    for i in range(n):
        used.use(f"n{i}", int(NOW) + 1, NOW)
        used.writer()()
    assert len(path.read_text().splitlines()) == n + 1
    used.use("late", int(NOW) + 3600, NOW + 5)  # the others have expired
    used.writer()()
    assert len(path.read_text().splitlines()) == 2
    again = UsedLinks(path)
    again.load(NOW + 5)
    assert again.seen("late")


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"not our header\n1 2\n", b""])
def test_an_unreadable_file_is_started_afresh(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "used"
    path.write_bytes(content)
    used = UsedLinks(path)
    used.load(NOW)
    assert len(used) == 0
    assert path.read_text().startswith("cuffwatch-ack-used 1\n")


def test_a_failing_disk_costs_durability_not_the_ack(tmp_path: Path) -> None:
    used = UsedLinks(tmp_path / "missing-dir" / "used")
    used.load(NOW)  # logs, does not raise
    assert used.use("n", int(NOW) + 60, NOW)
    used.writer()()  # logs, does not raise
    assert used.seen("n")


def test_full_means_refused_until_something_expires() -> None:
    used = UsedLinks(None, cap=2)
    assert used.use("a", int(NOW) + 50, NOW)
    assert used.use("b", int(NOW) + 10, NOW)  # expires first, though used later
    assert not used.use("c", int(NOW) + 60, NOW)
    assert not used.seen("c")
    assert used.use("c", int(NOW) + 60, NOW + 20)
    assert used.seen("a")


def test_a_client_gets_its_burst_then_its_rate() -> None:
    limiter = RateLimiter(Rate(burst=3, per_s=1.0), Rate(burst=100, per_s=100), max_clients=10)
    assert [limiter.allow("a", NOW) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", NOW)  # another client has its own bucket
    assert not limiter.allow("a", NOW + 0.5)
    assert limiter.allow("a", NOW + 1.0)
    assert not limiter.allow("a", NOW + 1.0)


def test_all_clients_together_share_one_bucket() -> None:
    limiter = RateLimiter(Rate(burst=5, per_s=1.0), Rate(burst=10, per_s=2.0), max_clients=100)
    allowed = sum(limiter.allow(f"c{i}", NOW) for i in range(50))
    assert allowed == 10
    assert sum(limiter.allow(f"d{i}", NOW + 1.0) for i in range(50)) == 2


def test_clients_are_remembered_up_to_a_bound() -> None:
    limiter = RateLimiter(Rate(burst=1, per_s=0.001), Rate(burst=10**6, per_s=10**6),
                          max_clients=3)
    for c in ("a", "b", "c", "d"):
        assert limiter.allow(c, NOW)
    assert len(limiter._clients) == 3
    assert limiter.allow("a", NOW)  # forgotten, so a fresh bucket: memory bounded, not rate


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("93.184.216.34", None, "93.184.216.34"),
    ("93.184.216.34", "198.51.100.1", "93.184.216.34"),  # a public peer's header is not trusted
    ("127.0.0.1", "198.51.100.1", "198.51.100.1"),  # the proxy on this host names the client
    ("127.0.0.1", "10.0.0.1, 198.51.100.1", "198.51.100.1"),  # the proxy's own entry is last
    ("172.18.0.5", "198.51.100.1", "198.51.100.1"),  # a proxy container on the compose network
    ("127.0.0.1", "garbage", "127.0.0.1"),
    ("::1", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::9", None, "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.1", None, "192.0.2.1"),
    (None, "198.51.100.1", "?"),
])
def test_whom_a_request_is_from(peer: str | None, forwarded: str | None, client: str) -> None:
    assert client_of(peer, forwarded) == client
