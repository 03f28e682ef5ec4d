"""
Rate limits and the circuit breaker (no Twisted here; time is passed in, in ms).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["CircuitBreaker", "RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    updated: int


class RateLimiter:
    """
    Token buckets per key: C{rate} requests per C{per_ms}, bursting to C{rate}.
    At most C{max_keys} keys are tracked; the least recently used is dropped.
    """

    def __init__(self, rate: int, per_ms: int = 60_000, max_keys: int = 100_000):
        self.rate = rate
        self.per_ms = per_ms
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str, now: int) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.rate), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0, now - bucket.updated)
            bucket.tokens = min(float(self.rate), bucket.tokens + elapsed * self.rate / self.per_ms)
            bucket.updated = now
        return bucket

    def allow(self, key: str, now: int) -> bool:
        """
        Charge one request to C{key}; whether it is within the limit.
        """
        bucket = self._bucket(key, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def exhausted(self, key: str, now: int) -> bool:
        """
        Whether C{key} is over its limit, without charging it.
        """
        return self._bucket(key, now).tokens < 1.0


class CircuitBreaker:
    """
    Per-peer breaker: opens after C{threshold} consecutive failures for
    C{open_ms}; then lets one probe through (half-open); success closes it,
    failure opens it again.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def __init__(self, threshold: int = 5, open_ms: int = 15 * 60 * 1000):
        self.threshold = threshold
        self.open_ms = open_ms
        self._failures: dict[str, int] = {}
        self._opened_until: dict[str, int] = {}
        self._probing: set[str] = set()

    def state(self, peer: str, now: int) -> str:
        until = self._opened_until.get(peer)
        if until is None:
            return self.CLOSED
        if now < until:
            return self.OPEN
        return self.HALF_OPEN

    def allow(self, peer: str, now: int) -> bool:
        """
        Whether a request to C{peer} may be sent now (takes the half-open probe slot).
        """
        state = self.state(peer, now)
        if state == self.CLOSED:
            return True
        if state == self.OPEN or peer in self._probing:
            return False
        self._probing.add(peer)
        return True

    def success(self, peer: str) -> None:
        self._failures.pop(peer, None)
        self._opened_until.pop(peer, None)
        self._probing.discard(peer)

    def failure(self, peer: str, now: int) -> None:
        count = self._failures.get(peer, 0) + 1
        self._failures[peer] = count
        if peer in self._probing or count >= self.threshold:
            self._opened_until[peer] = now + self.open_ms
        self._probing.discard(peer)

    def counts(self, now: int) -> tuple[int, int]:
        """
        How many breakers are open (or half-open), and how many peers are tracked.
        """
        opened = sum(1 for peer in self._opened_until if self.state(peer, now) != self.CLOSED)
        return opened, len(set(self._failures) | set(self._opened_until))
