"""
Per-tenant token buckets for requests per second and bytes per second.
"""

from __future__ import annotations

from collections.abc import Callable

from lattice.kv._errors import KVError

__all__ = ["Quotas", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self, amount: float) -> bool:
        """Take ``amount`` tokens if there are enough."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False


class Quotas:
    """
    The request and byte rate limits of every tenant; 0 disables a limit.
    """

    def __init__(self, qps: int, bytes_per_second: int, clock: Callable[[], float]) -> None:
        self.qps = qps
        self.bytes_per_second = bytes_per_second
        self._clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._bytes: dict[str, TokenBucket] = {}

    def charge(self, tenant: str, size: int) -> None:
        """
        Account one request of ``size`` bytes to ``tenant``, or raise RESOURCE_EXHAUSTED.
        """
        if self.qps:
            bucket = self._requests.get(tenant)
            if bucket is None:
                bucket = self._requests[tenant] = TokenBucket(self.qps, self.qps, self._clock)
            if not bucket.take(1):
                raise KVError(
                    "RESOURCE_EXHAUSTED",
                    f"lattice: tenant {tenant!r} is over its limit of {self.qps} requests/s; "
                    f"retry later",
                )
        if self.bytes_per_second and size:
            rate = self.bytes_per_second
            bucket = self._bytes.get(tenant)
            if bucket is None:
                bucket = self._bytes[tenant] = TokenBucket(rate, rate, self._clock)
            if not bucket.take(min(size, rate)):
                raise KVError(
                    "RESOURCE_EXHAUSTED",
                    f"lattice: tenant {tenant!r} is over its limit of {rate} bytes/s; retry later",
                )
