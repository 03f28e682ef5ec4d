"""
Child process for the watchdog test: the node's watchdog on the real reactor,
which blocks the reactor thread for many ping intervals after the third ping.

Protocol with the test (all through NOTIFY_SOCKET, so ordering is exact):
three WATCHDOG=1 pings, STATUS=blocking, (the reactor thread sleeps),
STATUS=unblocked, and one more ping before the child exits.
"""

import time
from typing import Any

from twisted.internet import reactor as _reactor

from lattice.systemd import Notifier, WatchdogService, watchdog_interval

reactor: Any = _reactor
configured = watchdog_interval()
assert configured is not None
interval: float = configured


class CountingNotifier(Notifier):
    pings = 0

    def watchdog(self) -> None:
        super().watchdog()
        self.pings += 1
        if self.pings == 3:
            reactor.callLater(0, block)
        elif self.pings == 4:
            reactor.stop()


def block() -> None:
    notifier.status("blocking")
    # Deliberately block the reactor thread for 25 ping intervals.
    time.sleep(interval * 25)
    notifier.status("unblocked")


notifier = CountingNotifier()
WatchdogService(reactor, notifier, interval).startService()
reactor.run()
