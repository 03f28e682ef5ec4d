"""
Test doubles for the registry: a reactor that records spawned processes instead of starting
them, and helpers to build an in-memory KV store (the real engine over
``lattice.kv.testing.MemoryStorage``).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from lattice.kv import KVStore
from lattice.kv.testing import MemoryStorage
from lattice.registry._store import KVStoreAdapter

__all__ = [
    "FakeNodeReactor",
    "FakeProcess",
    "FakeProcessReactor",
    "SynchronousThreadPool",
    "memory_store",
]

_SIGNALS = {"TERM": 15, "KILL": 9, "INT": 2, "HUP": 1}


@implementer(IProcessTransport)
class FakeProcess:
    """A spawned process that does whatever the test says."""

    def __init__(
        self,
        reactor: FakeProcessReactor,
        protocol: Any,
        argv: list[str],
        env: dict[str, str],
        pid: int,
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.argv = argv
        self.env = env
        self.pid: int | None = pid
        self.signals: list[str] = []
        self.ignore_term = False
        protocol.makeConnection(self)

    def output(self, data: bytes, stream: str = "stdout") -> None:
        """The process writes ``data``."""
        if stream == "stdout":
            self.protocol.outReceived(data)
        else:
            self.protocol.errReceived(data)

    def exit(self, status: int = 0, signal: int | None = None) -> None:
        """The process ends."""
        self.pid = None
        if status == 0 and signal is None:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(status if signal is None else None, signal))
        self.reactor.processes_alive.discard(self)
        self.protocol.processEnded(reason)

    # IProcessTransport
    def signalProcess(self, signalID: str | int) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        name = str(signalID)
        self.signals.append(name)
        if name == "KILL" or (name == "TERM" and not self.ignore_term):
            self.exit(signal=_SIGNALS.get(name, 15))

    def closeStdin(self) -> None:
        pass

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Any) -> None:
        pass

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None


class FakeProcessReactor(Clock):
    """A ``Clock`` whose ``spawnProcess`` records :class:`FakeProcess` objects."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self.processes_alive: set[FakeProcess] = set()
        self._pids = itertools.count(1000)
        self.fail_spawn: OSError | None = None

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: Any,
        args: Any = (),
        env: Any = None,
        path: Any = None,
        uid: Any = None,
        gid: Any = None,
        usePTY: Any = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        if self.fail_spawn is not None:
            raise self.fail_spawn
        process = FakeProcess(self, processProtocol, list(args), dict(env or {}), next(self._pids))
        self.processes.append(process)
        self.processes_alive.add(process)
        return process

    def alive(self, argv0: str | None = None) -> list[FakeProcess]:
        """The processes still running."""
        return [p for p in self.processes if p in self.processes_alive]


def memory_store(clock: Clock | None = None) -> KVStoreAdapter:
    """An embedded KV store in memory (commits at once), behind the registry's adapter."""
    clock = clock or Clock()
    store = KVStore(MemoryStorage(), clock.seconds)
    store.restore(store.storage.load())
    return KVStoreAdapter(store)


class SynchronousThreadPool:
    """A thread pool that runs work at once, on the calling thread (for ``deferToThreadPool``)."""

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kw: Any) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class FakeNodeReactor(FakeProcessReactor):
    """
    A ``MemoryReactorClock`` that also spawns :class:`FakeProcess` objects: enough for the
    whole registry service (listeners are recorded, not bound).
    """

    def __init__(self) -> None:
        from twisted.internet.testing import MemoryReactor  # noqa: PLC0415

        super().__init__()
        self._memory = MemoryReactor()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        """Run ``f`` at once (there are no threads here)."""
        f(*args, **kw)
