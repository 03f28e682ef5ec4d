"""
USB hot-plug: a pyudev netlink monitor read on the reactor (its file
descriptor is added as a reader), debounced into registry rescans; polling
where netlink is unavailable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import pyudev
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["HotplugService", "Monitor", "udev_monitor"]


class Monitor(Protocol):
    """
    The part of C{pyudev.Monitor} used here.
    """

    def fileno(self) -> int: ...

    def poll(self, timeout: float | None = None) -> Any: ...


class _Rescanner(Protocol):
    def rescan(self) -> Any: ...


def udev_monitor() -> Monitor:
    """
    A started netlink monitor for USB devices: udev's events when udevd
    runs (device nodes then have their permissions), else the kernel's.

    @raise Exception: when netlink or libudev is unavailable.
    """
    context = pyudev.Context()
    source = "udev" if os.path.exists("/run/udev/control") else "kernel"
    monitor = pyudev.Monitor.from_netlink(context, source=source)
    monitor.filter_by("usb", device_type="usb_device")
    monitor.start()
    return monitor  # type: ignore[no-any-return]


@implementer(IReadDescriptor)
class _MonitorReader:
    def __init__(self, monitor: Monitor, event: Callable[[str, str], None]):
        self._monitor = monitor
        self._event = event

    def fileno(self) -> int:
        return self._monitor.fileno()

    def doRead(self) -> None:
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                return
            self._event(str(device.action), str(device.sys_name))

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "usb-hotplug"


class HotplugService(Service):
    """
    Rescans the registry after USB add/remove events settle for
    C{debounce} seconds, or every C{poll_interval} seconds without netlink.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        registry: _Rescanner,
        *,
        poll_interval: float,
        debounce: float,
        monitor_factory: Callable[[], Monitor] = udev_monitor,
    ):
        self._reactor = reactor
        self._registry = registry
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._monitor_factory = monitor_factory
        self._reader: _MonitorReader | None = None
        self._poll: LoopingCall | None = None
        self._pending: IDelayedCall | None = None
        self.events = 0

    @property
    def mode(self) -> str:
        """
        C{netlink}, C{polling} or C{stopped}.
        """
        if self._reader is not None:
            return "netlink"
        if self._poll is not None:
            return "polling"
        return "stopped"

    def startService(self) -> None:
        super().startService()
        try:
            monitor = self._monitor_factory()
        except Exception as e:
            self._log.warn(
                "USB hot-plug events unavailable ({error}); rescanning every {interval}s",
                error=e,
                interval=self._poll_interval,
            )
            self._poll = LoopingCall(self._registry.rescan)
            self._poll.clock = self._reactor
            self._poll.start(self._poll_interval, now=False)
            return
        self._reader = _MonitorReader(monitor, self._event)
        self._reactor.addReader(self._reader)

    def stopService(self) -> None:
        super().stopService()
        if self._reader is not None:
            self._reactor.removeReader(self._reader)
            self._reader = None
        if self._poll is not None:
            if self._poll.running:
                self._poll.stop()
            self._poll = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _event(self, action: str, busid: str) -> None:
        self.events += 1
        self._log.debug("USB {action} {busid}", action=action, busid=busid)
        if action not in ("add", "remove", "bind", "unbind", "change"):
            return
        if self._pending is not None and self._pending.active():
            self._pending.reset(self._debounce)
            return
        self._pending = self._reactor.callLater(self._debounce, self._settled)

    def _settled(self) -> None:
        self._pending = None
        self._registry.rescan()
