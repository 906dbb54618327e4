"""The single-window rolling mean: the model `alerts.window.PairedMeans` must equal.

The gateway once kept one of these per window; PairedMeans keeps both windows in one pass
and the property tests compare it with two of these, bit for bit.
"""

from __future__ import annotations

from collections import deque

from alerts.window import MAX_WINDOW_SAMPLES, RESUM_EVERY


class RollingMean:
    """Mean of the samples in the last `window_ms` of device time, counted once they span it."""

    __slots__ = ("_adds", "_anchor_ms", "_last_ms", "_sum", "_ts", "_values", "window_ms")

    def __init__(self, window_s: float) -> None:
        self.window_ms = round(window_s * 1000)
        self._ts: deque[int] = deque()
        self._values: deque[float] = deque()
        self._sum = 0.0
        self._anchor_ms: int | None = None  # first sample of the current unbroken run
        self._last_ms: int | None = None
        self._adds = 0

    def reset(self) -> None:
        """Forget every sample: the mean waits for a whole window again."""
        self._ts.clear()
        self._values.clear()
        self._sum = 0.0
        self._anchor_ms = None
        self._last_ms = None

    def add(self, ts_ms: int, value: float, hold_ms: float = 0.0) -> float | None:
        """Add a sample (`ts_ms` must not go backwards: callers clamp it); return `mean()`."""
        last = self._last_ms
        if last is not None and ts_ms - last > self.window_ms and ts_ms - last > hold_ms:
            self.reset()  # a gap longer than the window and the cuff's cadence: start over
        anchor = self._anchor_ms
        if anchor is None:
            anchor = self._anchor_ms = ts_ms
        self._last_ms = ts_ms
        ts, values = self._ts, self._values
        ts.append(ts_ms)
        values.append(value)
        total = self._sum + value
        horizon = ts_ms - self.window_ms
        while ts[0] < horizon or len(ts) > MAX_WINDOW_SAMPLES:
            ts.popleft()
            total -= values.popleft()
        self._adds += 1
        if self._adds >= RESUM_EVERY:
            self._adds = 0
            total = sum(values)
        self._sum = total
        # the mean, inlined (one call per sample on the hot path instead of three)
        return total / len(values) if ts_ms - anchor >= self.window_ms else None

    @property
    def spans(self) -> bool:
        """True once the unbroken run of samples covers the whole window."""
        anchor, last = self._anchor_ms, self._last_ms
        return anchor is not None and last is not None and last - anchor >= self.window_ms

    def mean(self) -> float | None:
        """The mean over the window, or None while the samples do not span it yet."""
        if not self.spans:
            return None
        return self._sum / len(self._values)

    def __len__(self) -> int:
        return len(self._values)
