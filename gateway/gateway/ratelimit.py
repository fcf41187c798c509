"""In-process token buckets, one per client key (an IP or a caller's subject).

The limits are **per gateway replica**: with N replicas behind a load
balancer a client may get up to N times the configured rate. They protect the
services from a single noisy client, not a global quota (that would need a
shared store, which the gateway deliberately does not depend on).

The map of buckets stays bounded: buckets are kept in least-recently-used
order, idle ones (refilled to full, so indistinguishable from a new bucket)
are dropped as calls come in, and past ``max_keys`` the least recently used is
dropped whatever its state.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``, per key; rate 0 disables."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate
        self.burst = max(1, burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, updated]
        self._idle_seconds = self.burst / rate if rate > 0 else 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Spend one token of ``key``: 0.0 if allowed, else seconds until one is available."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [float(self.burst), now]
            self._buckets[key] = bucket
        else:
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            self._buckets.move_to_end(key)
        self._evict(now)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        # The front is the least recently used; drop it while it has been idle
        # long enough to be full again (a few per call keeps this O(1)).
        for _ in range(4):
            key, (_, updated) = next(iter(buckets.items()))
            if len(buckets) <= 1 or now - updated < self._idle_seconds:
                break
            del buckets[key]
