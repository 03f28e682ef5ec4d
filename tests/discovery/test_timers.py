"""
Tests for the daemon's own timers (L{lattice.discovery.service._Timer}).
"""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery.service import _Timer


class TimerTests(SynchronousTestCase):
    """
    Jittered, non-overlapping periodic jobs.
    """

    def test_interval_and_jitter(self) -> None:
        """
        The job runs after the interval stretched by at most the jitter, then again.
        """
        clock = Clock()
        runs: list[float] = []

        async def job() -> None:
            runs.append(clock.seconds())

        timer = _Timer(clock, "t", 600.0, 10, random.Random(1), job)
        timer.start()
        (call,) = clock.getDelayedCalls()
        self.assertTrue(600 <= call.getTime() <= 660)
        clock.advance(599.9)
        self.assertEqual(runs, [])
        clock.advance(60.2)
        self.assertEqual(len(runs), 1)
        clock.advance(660)
        self.assertEqual(len(runs), 2)
        timer.stop()
        clock.advance(10_000)
        self.assertEqual(len(runs), 2)

    def test_no_overlap(self) -> None:
        """
        A job still running is not started again; the next run is scheduled
        after it ends, and a failing job does not stop the timer.
        """
        clock = Clock()
        pending: list[Deferred[None]] = []
        calls = []

        async def job() -> None:
            calls.append(1)
            waiter: Deferred[None] = Deferred()
            pending.append(waiter)
            await waiter
            raise RuntimeError("job failed")

        timer = _Timer(clock, "t", 10.0, 0, random.Random(1), job)
        timer.start()
        clock.advance(10)
        clock.advance(100)
        self.assertEqual(len(calls), 1)
        pending[0].callback(None)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(10)
        self.assertEqual(len(calls), 2)
        timer.stop()
