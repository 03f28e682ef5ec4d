"""
Tests for L{lattice.discovery._limits}: rate limits and the circuit breaker.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._limits import CircuitBreaker, RateLimiter


class RateLimiterTests(SynchronousTestCase):
    """
    Token buckets per key.
    """

    def test_limit_and_refill(self) -> None:
        """
        C{rate} requests pass, the next is refused, and tokens come back over time.
        """
        limiter = RateLimiter(100, per_ms=60_000)
        self.assertTrue(all(limiter.allow("p", 0) for _ in range(100)))
        self.assertFalse(limiter.allow("p", 0))
        self.assertTrue(limiter.exhausted("p", 0))
        self.assertTrue(limiter.allow("p", 600))
        self.assertTrue(limiter.allow("q", 0))

    def test_keys_bounded(self) -> None:
        """
        At most C{max_keys} keys are tracked.
        """
        limiter = RateLimiter(1, max_keys=10)
        for i in range(100):
            limiter.allow(str(i), 0)
        self.assertEqual(len(limiter._buckets), 10)


class CircuitBreakerTests(SynchronousTestCase):
    """
    The breaker opens, half-opens and closes (predecessor flaw 3: it never closed).
    """

    def test_cycle(self) -> None:
        """
        Five failures open it for 15 minutes; then one probe passes; success closes it.
        """
        breaker = CircuitBreaker()
        for _ in range(4):
            breaker.failure("p", 0)
        self.assertEqual(breaker.state("p", 0), "closed")
        breaker.failure("p", 0)
        self.assertEqual(breaker.state("p", 1), "open")
        self.assertFalse(breaker.allow("p", 15 * 60_000 - 1))
        self.assertTrue(breaker.allow("p", 15 * 60_000))
        self.assertFalse(breaker.allow("p", 15 * 60_000), "only one half-open probe")
        breaker.success("p")
        self.assertEqual(breaker.state("p", 15 * 60_000), "closed")
        self.assertTrue(breaker.allow("p", 15 * 60_000))

    def test_failed_probe_reopens(self) -> None:
        """
        A failed half-open probe opens the breaker for another period.
        """
        breaker = CircuitBreaker(threshold=1, open_ms=100)
        breaker.failure("p", 0)
        self.assertTrue(breaker.allow("p", 100))
        breaker.failure("p", 100)
        self.assertEqual(breaker.state("p", 150), "open")
        self.assertEqual(breaker.counts(150), (1, 1))
