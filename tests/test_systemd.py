"""
Tests for L{lattice.systemd}.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lattice.systemd import Notifier, WatchdogService, watchdog_interval


def _receiver(test: SynchronousTestCase, abstract: bool) -> tuple[socket.socket, str]:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    test.addCleanup(receiver.close)
    if abstract:
        name = f"lattice-test-{os.getpid()}-{id(test)}"
        receiver.bind(b"\0" + name.encode())
        address = "@" + name
    else:
        directory = Path(test.mktemp()).absolute()
        directory.mkdir()
        address = str(directory / "notify")
        receiver.bind(address)
    receiver.settimeout(5)
    return receiver, address


class NotifierTests(SynchronousTestCase):
    """
    The notifier sends sd_notify datagrams where NOTIFY_SOCKET says.
    """

    def test_path_socket(self) -> None:
        """
        READY=1 with STATUS and MAINPID arrives in one datagram on a path socket.
        """
        receiver, address = _receiver(self, abstract=False)
        notifier = Notifier({"NOTIFY_SOCKET": address})
        self.addCleanup(notifier.close)
        notifier.ready("all good")
        message = receiver.recv(4096).decode()
        self.assertEqual(
            message.split("\n"), ["READY=1", "STATUS=all good", f"MAINPID={os.getpid()}"]
        )

    def test_abstract_socket(self) -> None:
        """
        A leading @ addresses the abstract namespace.
        """
        receiver, address = _receiver(self, abstract=True)
        notifier = Notifier({"NOTIFY_SOCKET": address})
        self.addCleanup(notifier.close)
        notifier.stopping()
        self.assertEqual(receiver.recv(4096), b"STOPPING=1\nSTATUS=Shutting down")

    def test_disabled(self) -> None:
        """
        Without NOTIFY_SOCKET nothing is sent and nothing fails.
        """
        notifier = Notifier({})
        self.assertFalse(notifier.enabled)
        notifier.ready("x")
        notifier.watchdog()

    def test_gone_manager(self) -> None:
        """
        A socket that no longer exists is logged, not raised.
        """
        notifier = Notifier({"NOTIFY_SOCKET": str(Path(self.mktemp()).absolute() / "gone")})
        self.addCleanup(notifier.close)
        with capturedLogs() as events:
            notifier.status("still running")
        [event] = events
        self.assertIn("sd_notify to", formatEvent(event))


class WatchdogIntervalTests(SynchronousTestCase):
    """
    The ping interval is half of WATCHDOG_USEC, for this process only.
    """

    def test_half(self) -> None:
        """
        WATCHDOG_USEC=30s means a ping every 15 s.
        """
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}), 15.0)

    def test_other_pid(self) -> None:
        """
        A watchdog meant for another process is ignored.
        """
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}))
        self.assertEqual(
            watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}),
            1.0,
        )

    def test_absent_or_bad(self) -> None:
        """
        No, empty, zero or garbage values mean no watchdog.
        """
        for environ in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "x"}):
            self.assertIsNone(watchdog_interval(environ))


class _Recorder(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *assignments: str) -> None:
        self.sent.append(assignments)


class WatchdogServiceTests(SynchronousTestCase):
    """
    The watchdog pings on the reactor's clock.
    """

    def test_pings_on_schedule(self) -> None:
        """
        One ping at start, then one per interval, none after stopping.
        """
        clock = Clock()
        notifier = _Recorder()
        service = WatchdogService(clock, notifier, 5.0)
        service.startService()
        self.assertEqual(notifier.sent, [("WATCHDOG=1",)])
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(len(notifier.sent), 3)
        service.stopService()
        clock.advance(50)
        self.assertEqual(len(notifier.sent), 3)
