"""In-process rate limits: a sliding window per key (analyses per user per minute) and the
per-IP login backoff. Per-account lockout lives in the database (see :mod:`auth.service`) so
every replica sees it; these per-process windows are a first line that needs no shared store."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most ``limit`` events per ``window_s`` per key."""

    def __init__(self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Count one event; None when allowed, else the seconds until the next is allowed."""
        if self.limit <= 0:
            return None
        now = self._clock()
        with self._lock:
            q = self._events.setdefault(key, deque())
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return q[0] + self.window_s - now
            q.append(now)
            if len(self._events) > 100_000:  # bound memory against key floods
                self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window_s}
            return None


def backoff_s(failures: int, threshold: int, base_s: float, max_s: float) -> float:
    """Lockout length after ``failures`` consecutive failures: 0 below ``threshold``, then
    ``base_s`` doubling with each further failure, capped at ``max_s``."""
    if failures < threshold:
        return 0.0
    return float(min(max_s, base_s * 2 ** min(failures - threshold, 30)))


class FailureTracker:
    """Consecutive login failures per key (client IP) with exponential lockout."""

    def __init__(
        self, threshold: int, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold, self.base_s, self.max_s = threshold, base_s, max_s
        self._clock = clock
        self._state: dict[str, tuple[int, float]] = {}  # key -> (failures, locked_until)
        self._lock = threading.Lock()

    def locked_for(self, key: str) -> float:
        with self._lock:
            _, until = self._state.get(key, (0, 0.0))
        return max(0.0, until - self._clock())

    def failure(self, key: str) -> float:
        """Record a failure; returns the lockout now in force (0 if none)."""
        with self._lock:
            n, _ = self._state.get(key, (0, 0.0))
            n += 1
            wait = backoff_s(n, self.threshold, self.base_s, self.max_s)
            self._state[key] = (n, self._clock() + wait)
            if len(self._state) > 100_000:
                now = self._clock()
                self._state = {k: v for k, v in self._state.items() if v[1] > now}
            return wait

    def success(self, key: str) -> None:
        with self._lock:
            self._state.pop(key, None)
