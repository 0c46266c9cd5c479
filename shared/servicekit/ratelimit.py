"""A small per-client limiter for failed authentication (401) on the apis.

Why: a client that keeps presenting bad tokens is guessing or replaying; after
``limit`` failures inside ``window_s`` seconds its address is answered 429 with
``Retry-After`` until the oldest failure leaves the window. Only failures count, so a
valid token cannot reset the count, and the operational routes stay open.

The state is in process memory (per gunicorn worker): it slows a guesser down, it is not
a distributed quota. Behind a reverse proxy every client shares the proxy's address, so
the proxy should enforce its own limit (or the apis run behind ProxyFix).
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from prometheus_client import Counter

REJECTED = Counter("http_auth_rate_limited_total", "Requests refused after repeated 401s",
                   ["service"])


class AuthFailureLimiter:
    """Sliding-window count of 401s per client key, bounded in memory."""

    def __init__(self, limit: int, window_s: float, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.window_s > 0

    def _trim(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again; 0 when it is not limited."""
        if not self.enabled:
            return 0
        with self._lock:
            now = self._clock()
            times = self._trim(key, now)
            if times is None or len(times) < self.limit:
                return 0
            return max(1, math.ceil(self.window_s - (now - times[0])))

    def record_failure(self, key: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            times = self._trim(key, now)
            if times is None:
                times = self._failures[key] = deque(maxlen=self.limit)
            times.append(now)
            self._failures.move_to_end(key)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)  # forget the stalest client
