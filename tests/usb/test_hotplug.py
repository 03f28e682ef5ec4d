"""Tests for ``lattice.usb._hotplug``: udev events on the reactor, debounced into rescans."""

from __future__ import annotations

from pathlib import Path

import pyudev
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lattice.usb._hotplug import HotplugService, Monitor
from lattice.usb.testing import FakeMonitor


class Counter:
    """Counts rescans."""

    def __init__(self) -> None:
        self.rescans = 0

    def rescan(self) -> None:
        self.rescans += 1


class HotplugTests(SynchronousTestCase):
    """Events from a (fake) monitor become one rescan after they settle."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.monitor = FakeMonitor()
        self.addCleanup(self.monitor.close)
        self.registry = Counter()
        self.service = HotplugService(
            self.reactor,
            self.registry,
            poll_interval=5.0,
            debounce=0.5,
            monitor_factory=lambda: self.monitor,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def read(self) -> None:
        [reader] = self.reactor.getReaders()
        reader.doRead()

    def test_reader_added(self) -> None:
        """The monitor's descriptor is read by the reactor."""
        [reader] = self.reactor.getReaders()
        self.assertEqual(reader.fileno(), self.monitor.fileno())
        self.assertEqual(self.service.mode, "netlink")

    def test_debounced(self) -> None:
        """A burst of events gives one rescan, debounce seconds after the last."""
        self.monitor.emit("add", "1-2")
        self.monitor.emit("bind", "1-2")
        self.read()
        self.reactor.advance(0.4)
        self.monitor.emit("add", "1-3")
        self.read()
        self.reactor.advance(0.4)
        self.assertEqual(self.registry.rescans, 0)
        self.reactor.advance(0.1)
        self.assertEqual(self.registry.rescans, 1)
        self.assertEqual(self.service.events, 3)

    def test_remove(self) -> None:
        """A remove event also rescans (which drops the device and fails its URBs)."""
        self.monitor.emit("remove", "1-2")
        self.read()
        self.reactor.advance(0.5)
        self.assertEqual(self.registry.rescans, 1)

    def test_stop_removes_reader(self) -> None:
        """Stopping removes the reader and any pending rescan."""
        self.monitor.emit("add", "1-2")
        self.read()
        self.service.stopService()
        self.reactor.advance(1)
        self.assertEqual((self.reactor.getReaders(), self.registry.rescans), ([], 0))


class PollingFallbackTests(SynchronousTestCase):
    """Without netlink the devices are polled."""

    def test_polls(self) -> None:
        """A monitor that cannot be created switches to a rescan every poll_interval."""
        clock = MemoryReactorClock()
        registry = Counter()

        def unavailable() -> Monitor:
            raise OSError("netlink not permitted")

        service = HotplugService(
            clock, registry, poll_interval=5.0, debounce=0.5, monitor_factory=unavailable
        )
        service.startService()
        self.assertEqual(service.mode, "polling")
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(registry.rescans, 2)
        service.stopService()
        clock.advance(5)
        self.assertEqual(registry.rescans, 2)


class KernelNetlinkTests(TestCase):
    """A real kernel uevent reaches the reactor through pyudev (no USB bus here)."""

    async def test_kernel_uevent(self) -> None:
        """Writing to a uevent file produces an event the reactor reads."""
        trigger = Path("/sys/class/mem/null/uevent")
        try:
            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
            monitor.start()
        except Exception as e:
            raise SkipTest(f"netlink unavailable: {e}") from e
        seen: list[tuple[str, str]] = []
        registry = Counter()
        service = HotplugService(
            reactor, registry, poll_interval=5.0, debounce=0.0, monitor_factory=lambda: monitor
        )
        service._event = lambda action, busid: seen.append((action, busid))  # type: ignore[method-assign]
        service.startService()
        self.addCleanup(service.stopService)
        try:
            trigger.write_text("change")  # noqa: ASYNC240 - a sysfs write, instant
        except OSError as e:
            raise SkipTest(f"cannot trigger a uevent: {e}") from e
        for _ in range(200):
            if seen:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertIn(("change", "null"), seen)
