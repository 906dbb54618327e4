"""Device-time windows the rules judge by: rolling means and the 60 min occlusion window.

Both are amortised O(1) per reading: running sums, evicted from the left. PairedMeans is
specified as two single-window means fed the same samples; that model, RollingMean, lives
in tests/support/window_model.py, where the property tests hold the two together.
"""

from __future__ import annotations

from collections import deque

# A device whose clock is stuck never ages samples out; this many samples bounds the deque
# anyway (a 5 s window at 100 Hz, four times over).
MAX_WINDOW_SAMPLES = 2048
# Running sums drift by float rounding; re-add the window from scratch this often
# (amortised O(1), and it keeps the error far below a tenth of a mmHg forever).
RESUM_EVERY = 4096
# OcclusionWindow.surely_below answers from its running total while it keeps at most this
# many bouts; beyond, the exact path prunes them (so memory stays bounded either way).
SURE_BELOW_MAX_BOUTS = 64
# PairedMeans drops samples that left both windows once this many have piled up.
COMPACT_AFTER = 256


class PairedMeans:
    """Two rolling means over one sample stream (short ⊆ long window), kept in one pass.

    Exactly what two single-window means (tests/support/window_model.py) fed the same samples
    give (same resets, same sums in the same order, same caps), at about half the cost:
    one append per sample and the short window's start kept as an index into the long
    window's lists. The rules' 2 s LOP mean and 5 s band mean are such a pair.
    """

    __slots__ = (
        "_adds", "_anchor_l", "_anchor_s", "_head_l", "_head_s", "_last_ms", "_sum_l",
        "_sum_s", "_ts", "_values", "long_ms", "short_ms",
    )

    def __init__(self, short_s: float, long_s: float) -> None:
        self.short_ms = round(short_s * 1000)
        self.long_ms = round(long_s * 1000)
        if self.short_ms > self.long_ms:
            raise ValueError("the short window must not exceed the long one")
        self._ts: list[int] = []
        self._values: list[float] = []
        self._head_s = 0  # first sample of the short window
        self._head_l = 0  # first sample of the long window (older ones await compaction)
        self._sum_s = 0.0
        self._sum_l = 0.0
        self._anchor_s: int | None = None
        self._anchor_l: int | None = None
        self._last_ms: int | None = None
        self._adds = 0

    def reset(self) -> None:
        """Forget every sample: both means wait for a whole window again."""
        self._ts.clear()
        self._values.clear()
        self._head_s = self._head_l = 0
        self._sum_s = self._sum_l = 0.0
        self._anchor_s = self._anchor_l = None
        self._last_ms = None

    def add(
        self, ts_ms: int, value: float, hold_ms: float = 0.0
    ) -> tuple[float | None, float | None]:
        """Add a sample (`ts_ms` must not go backwards); return (short mean, long mean).

        A silence longer than a window and than `hold_ms` (the cuff's own spacing of readings,
        twice over) starts that window over; a shorter one does not, so a cuff that reports
        every 2.5 s still has a 2 s mean: its latest reading.
        """
        ts, values = self._ts, self._values
        last = self._last_ms
        if last is not None:
            gap = ts_ms - last
            if gap > self.long_ms and gap > hold_ms:
                self.reset()  # both windows start over
            elif gap > self.short_ms and gap > hold_ms:  # only the short one starts over
                self._head_s = len(ts)
                self._sum_s = 0.0
                self._anchor_s = None
        anchor_s = self._anchor_s
        if anchor_s is None:
            anchor_s = self._anchor_s = ts_ms
        anchor_l = self._anchor_l
        if anchor_l is None:
            anchor_l = self._anchor_l = ts_ms
        self._last_ms = ts_ms
        ts.append(ts_ms)
        values.append(value)
        n = len(ts)
        sum_s = self._sum_s + value
        sum_l = self._sum_l + value
        horizon = ts_ms - self.short_ms
        head = self._head_s
        while ts[head] < horizon or n - head > MAX_WINDOW_SAMPLES:
            sum_s -= values[head]
            head += 1
        self._head_s = head
        horizon = ts_ms - self.long_ms
        head = self._head_l
        while ts[head] < horizon or n - head > MAX_WINDOW_SAMPLES:
            sum_l -= values[head]
            head += 1
        self._adds += 1
        if self._adds >= RESUM_EVERY:
            self._adds = 0
            sum_s = sum(values[self._head_s :])
            sum_l = sum(values[head:])
        self._sum_s = sum_s
        self._sum_l = sum_l
        means = (
            sum_s / (n - self._head_s) if ts_ms - anchor_s >= self.short_ms else None,
            sum_l / (n - head) if ts_ms - anchor_l >= self.long_ms else None,
        )
        if head >= COMPACT_AFTER:  # drop what left both windows (amortised O(1))
            del ts[:head]
            del values[:head]
            self._head_s -= head
            head = 0
        self._head_l = head
        return means

    def means(self) -> tuple[float | None, float | None]:
        """(short mean, long mean), each None while its samples do not span its window."""
        last = self._last_ms
        if last is None:
            return None, None
        n = len(self._ts)
        a_s, a_l = self._anchor_s, self._anchor_l
        short = (
            self._sum_s / (n - self._head_s)
            if a_s is not None and last - a_s >= self.short_ms and n > self._head_s
            else None
        )
        long = (
            self._sum_l / (n - self._head_l)
            if a_l is not None and last - a_l >= self.long_ms
            else None
        )
        return short, long


class OcclusionWindow:
    """Bouts by device time: occluded time and bout starts within a trailing window."""

    __slots__ = ("_closed", "_closed_ms", "_floor_ms", "_open_start_ms", "_starts", "window_ms")

    def __init__(self, window_s: float) -> None:
        self.window_ms = round(window_s * 1000)
        self._closed: deque[tuple[int, int]] = deque()  # finished bouts (start, end), in order
        self._closed_ms = 0  # sum of their whole durations
        self._starts: deque[int] = deque()  # every bout start, the open bout's included
        self._open_start_ms: int | None = None
        self._floor_ms: int | None = None  # the last end: bouts never overlap

    def start(self, start_ms: int) -> None:
        """A bout began at `start_ms`, clamped to the last end (call `end` first)."""
        if self._floor_ms is not None and start_ms < self._floor_ms:
            start_ms = self._floor_ms
        self._open_start_ms = start_ms
        self._starts.append(start_ms)

    def end(self, end_ms: int) -> None:
        """The open bout ended at `end_ms`; no-op without an open bout."""
        start = self._open_start_ms
        if start is None:
            return
        self._open_start_ms = None
        end_ms = max(end_ms, start)
        self._closed.append((start, end_ms))
        self._closed_ms += end_ms - start
        self._floor_ms = end_ms

    def _prune(self, horizon_ms: int) -> None:
        closed = self._closed
        while closed and closed[0][1] <= horizon_ms:
            start, end = closed.popleft()
            self._closed_ms -= end - start
        starts = self._starts
        while starts and starts[0] < horizon_ms:
            starts.popleft()

    def occluded_ms(self, now_ms: int, open_until_ms: int) -> int:
        """Occluded time in (now − window, now]; the open bout counts until `open_until_ms`."""
        horizon = now_ms - self.window_ms
        self._prune(horizon)
        total = self._closed_ms
        if self._closed:
            first_start = self._closed[0][0]
            if first_start < horizon:  # only the oldest bout can straddle the horizon
                total -= horizon - first_start
        start = self._open_start_ms
        if start is not None:
            total += max(0, min(open_until_ms, now_ms) - max(start, horizon))
        return total

    def surely_below(self, limit_ms: float, open_until_ms: int) -> bool:
        """True if occluded time is below `limit_ms` at any `now` (an upper bound, no pruning).

        Every bout not yet pruned, plus the open one to `open_until_ms`, bounds what
        `occluded_ms` can return. Far below the limit this answers without touching the
        deques; a long history (many bouts kept) always takes the exact path, which prunes.
        """
        if len(self._starts) > SURE_BELOW_MAX_BOUTS:
            return False
        total = self._closed_ms
        start = self._open_start_ms
        if start is not None and open_until_ms > start:
            total += open_until_ms - start
        return total < limit_ms

    def starts_within(self, now_ms: int) -> int:
        """How many bouts started in [now − window, now]."""
        self._prune(now_ms - self.window_ms)
        return len(self._starts)
