"""
A small sd_notify client and the watchdog that feeds it.

systemd passes C{NOTIFY_SOCKET} (a datagram socket path; a leading C{@} means
the Linux abstract namespace) and, with C{WatchdogSec=}, C{WATCHDOG_USEC} and
C{WATCHDOG_PID}.  Without C{NOTIFY_SOCKET} every call is a no-op, so the node
behaves the same under systemd, under a test harness and in a terminal.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["Notifier", "WatchdogService", "watchdog_interval"]


class Notifier:
    """
    Sends state strings to the service manager.
    """

    _log = Logger()

    def __init__(self, environ: Mapping[str, str] | None = None):
        if environ is None:
            environ = os.environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode("utf-8")
        elif address.startswith("/"):
            self._address = address
        self._socket: socket.socket | None = None
        self._stopping = False

    @property
    def enabled(self) -> bool:
        """
        Whether a notification socket was given.
        """
        return self._address is not None

    def notify(self, *assignments: str) -> None:
        """
        Send C{VAR=value} assignments in one datagram.  Failures are logged,
        never raised: the node keeps running if the manager went away.
        """
        if self._address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        message = "\n".join(assignments).encode("utf-8")
        try:
            self._socket.sendto(message, self._address)
        except OSError as e:
            self._log.warn(
                "sd_notify to {address!r} failed: {error}", address=self._address, error=e
            )

    def ready(self, status: str) -> None:
        """
        Tell the manager that start-up finished.
        """
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        """
        Set the one-line status shown by C{systemctl status}.  Ignored once
        shutdown began, so that subsystems closing down do not overwrite
        "Shutting down".
        """
        if not self._stopping:
            self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        """
        Tell the manager a reload is under way.
        """
        self.notify("RELOADING=1")

    def reloaded(self, status: str) -> None:
        """
        Tell the manager a reload finished.
        """
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        """
        Tell the manager a clean shutdown began.
        """
        self._stopping = True
        self.notify("STOPPING=1", "STATUS=Shutting down")

    def watchdog(self) -> None:
        """
        Keep the watchdog from firing.
        """
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        """
        Release the socket.
        """
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """
    Half the watchdog timeout requested by systemd, in seconds, or C{None}
    when no watchdog is asked of this process.
    """
    if environ is None:
        environ = os.environ
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


class WatchdogService(Service):
    """
    Sends C{WATCHDOG=1} from the reactor thread every C{interval} seconds.

    The pings are timed by the reactor, so a reactor that is blocked (an
    accidental blocking call, a livelock) stops them and systemd restarts the
    node; that is the point.
    """

    def __init__(self, clock: IReactorTime, notifier: Notifier, interval: float):
        self._notifier = notifier
        self._interval = interval
        self._loop = LoopingCall(notifier.watchdog)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
