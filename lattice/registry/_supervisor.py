"""
Supervision of the daemons, in the manner of ``twisted.runner.procmon.ProcessMonitor``:
injected reactor, restart with exponential backoff, SIGTERM then SIGKILL after a timeout,
every line of the children's output logged.

A daemon reports readiness by writing one line to its standard output::

    LATTICE-READY port=6667 endpoint=tcp://127.0.0.1:6667

(``port`` and ``endpoint`` are optional; ``endpoint`` may repeat.)
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "READY_MARKER",
    "Child",
    "ProcessReactor",
    "ProcessSupervisor",
    "parse_ready_line",
]

READY_MARKER = b"LATTICE-READY"
MAX_LINE = 16384

InstanceKey = tuple[str, str]


class ProcessReactor(Protocol):
    """What the supervisor needs from the reactor: ``IReactorProcess`` and ``IReactorTime``."""

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
    ) -> IProcessTransport: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any
    ) -> IDelayedCall: ...

    def seconds(self) -> float: ...


def parse_ready_line(line: bytes) -> tuple[int | None, list[str]] | None:
    """``(port, endpoints)`` from a readiness line, or ``None`` if it is not one."""
    if not line.startswith(READY_MARKER):
        return None
    port: int | None = None
    endpoints: list[str] = []
    for word in line[len(READY_MARKER) :].decode("utf-8", "replace").split():
        name, _, value = word.partition("=")
        if name == "port" and value.isdigit() and int(value) <= 65535:
            port = int(value)
        elif name == "endpoint" and value:
            endpoints.append(value)
    return port, endpoints


@dataclass
class Child:
    """One supervised instance, as the status report shows it."""

    key: InstanceKey
    argv: list[str]
    env: dict[str, str]
    state: str = "starting"  # starting, ready, backoff, stopping, stopped
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    ready_at: float | None = None
    port: int | None = None
    endpoints: list[str] = field(default_factory=list)
    last_exit: str | None = None
    delay: float = 0.0
    wanted: bool = True
    transport: IProcessTransport | None = None
    restart_call: IDelayedCall | None = None
    kill_call: IDelayedCall | None = None
    stopped: list[Deferred[None]] = field(default_factory=list)


class _LineLogger:
    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._buffer = b""
        self._emit = emit

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._emit(line.rstrip(b"\r"))
        if len(self._buffer) > MAX_LINE:
            line, self._buffer = self._buffer, b""
            self._emit(line)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self._emit(line)


class _ChildProtocol(ProcessProtocol):
    def __init__(self, supervisor: ProcessSupervisor, child: Child) -> None:
        self._supervisor = supervisor
        self._child = child
        self._out = _LineLogger(lambda line: supervisor._line(child, "stdout", line))
        self._err = _LineLogger(lambda line: supervisor._line(child, "stderr", line))

    def outReceived(self, data: bytes) -> None:
        self._out.feed(data)

    def errReceived(self, data: bytes) -> None:
        self._err.feed(data)

    def processEnded(self, reason: Failure) -> None:
        self._out.flush()
        self._err.flush()
        self._supervisor._ended(self._child, reason)


def describe_exit(reason: Failure) -> str:
    """``exit status 3``, ``killed by SIGKILL``..."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = str(value.signal)
            return f"killed by {name}"
        return f"exit status {value.exitCode}"
    return reason.getErrorMessage()


class ProcessSupervisor:
    """
    Starts, restarts and stops the daemons.

    :param kill_timeout: seconds between SIGTERM and SIGKILL when stopping.
    :param restart_min: first restart delay; doubled after each quick crash.
    :param restart_max: longest restart delay; a daemon that ran this long counts as healthy
        again and its next restart is after ``restart_min``.
    :param on_change: called with the key after every state change.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: ProcessReactor,
        *,
        kill_timeout: float = 10.0,
        restart_min: float = 1.0,
        restart_max: float = 60.0,
        on_change: Callable[[InstanceKey], None] = lambda key: None,
    ) -> None:
        self._reactor = reactor
        self.kill_timeout = kill_timeout
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.on_change = on_change
        self.children: dict[InstanceKey, Child] = {}

    def get(self, key: InstanceKey) -> Child | None:
        """The child for ``key``, if supervised (in any state but forgotten)."""
        return self.children.get(key)

    def start(self, key: InstanceKey, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start supervising a daemon (it must not be supervised already)."""
        if key in self.children:
            raise ValueError(f"{key} is already supervised")
        child = Child(key, list(argv), dict(env), delay=self.restart_min)
        self.children[key] = child
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        child.restart_call = None
        child.state = "starting"
        child.ready_at = None
        child.port = None
        child.endpoints = []
        protocol = _ChildProtocol(self, child)
        try:
            transport = self._reactor.spawnProcess(
                protocol, child.argv[0], child.argv, env=child.env
            )
        except OSError as e:
            self._log.error(
                "Cannot start {store}/{service}: {error}",
                store=child.key[0],
                service=child.key[1],
                error=e,
            )
            child.last_exit = f"cannot start: {e}"
            self._schedule_restart(child, ran_for=0.0)
            return
        child.transport = transport
        child.pid = transport.pid
        child.started_at = self._reactor.seconds()
        self._log.info(
            "Started {store}/{service} (pid {pid}): {argv}",
            store=child.key[0],
            service=child.key[1],
            pid=child.pid,
            argv=" ".join(child.argv),
        )
        self.on_change(child.key)

    def _line(self, child: Child, stream: str, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self._log.info(
            "[{store}/{service} {stream}] {line}",
            store=child.key[0],
            service=child.key[1],
            stream=stream,
            line=text,
            pid=child.pid,
        )
        if stream != "stdout" or child.state != "starting":
            return
        ready = parse_ready_line(line)
        if ready is not None:
            child.port, child.endpoints = ready
            child.state = "ready"
            child.ready_at = self._reactor.seconds()
            self.on_change(child.key)

    def _ended(self, child: Child, reason: Failure) -> None:
        now = self._reactor.seconds()
        ran_for = now - child.started_at if child.started_at is not None else 0.0
        child.transport = None
        child.pid = None
        child.last_exit = describe_exit(reason)
        if child.kill_call is not None and child.kill_call.active():
            child.kill_call.cancel()
        child.kill_call = None
        if not child.wanted:
            self._log.info(
                "Stopped {store}/{service}: {exit}",
                store=child.key[0],
                service=child.key[1],
                exit=child.last_exit,
            )
            self._forget(child)
            return
        self._log.warn(
            "{store}/{service} ended unexpectedly ({exit}) after {ran_for:.1f}s",
            store=child.key[0],
            service=child.key[1],
            exit=child.last_exit,
            ran_for=ran_for,
        )
        self._schedule_restart(child, ran_for)

    def _schedule_restart(self, child: Child, ran_for: float) -> None:
        if ran_for >= self.restart_max:
            child.delay = self.restart_min
        delay = child.delay
        child.delay = min(child.delay * 2, self.restart_max)
        child.state = "backoff"
        child.restarts += 1
        self._log.info(
            "Restarting {store}/{service} in {delay:.1f}s (restart {restarts})",
            store=child.key[0],
            service=child.key[1],
            delay=delay,
            restarts=child.restarts,
        )
        child.restart_call = self._reactor.callLater(delay, self._spawn, child)
        self.on_change(child.key)

    def stop(self, key: InstanceKey) -> Deferred[None]:
        """
        Stop a daemon: SIGTERM, and SIGKILL after ``kill_timeout``.  Fires once it has
        exited and is forgotten.
        """
        child = self.children.get(key)
        if child is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        child.stopped.append(done)
        if not child.wanted:
            return done
        child.wanted = False
        if child.restart_call is not None and child.restart_call.active():
            child.restart_call.cancel()
            child.restart_call = None
        if child.transport is None:
            self._forget(child)
            return done
        child.state = "stopping"
        child.kill_call = self._reactor.callLater(self.kill_timeout, self._kill, child)
        self.on_change(key)
        self._signal(child, "TERM")
        return done

    def stop_all(self) -> Deferred[list[None]]:
        """Stop every daemon."""
        from twisted.internet.defer import gatherResults  # noqa: PLC0415

        return gatherResults([self.stop(key) for key in list(self.children)])

    def _kill(self, child: Child) -> None:
        child.kill_call = None
        self._log.warn(
            "{store}/{service} did not exit {timeout}s after SIGTERM; sending SIGKILL",
            store=child.key[0],
            service=child.key[1],
            timeout=self.kill_timeout,
        )
        self._signal(child, "KILL")

    def _signal(self, child: Child, name: str) -> None:
        if child.transport is None:
            return
        with contextlib.suppress(ProcessExitedAlready):
            child.transport.signalProcess(name)

    def _forget(self, child: Child) -> None:
        child.state = "stopped"
        if self.children.get(child.key) is child:
            del self.children[child.key]
        waiters, child.stopped = child.stopped, []
        self.on_change(child.key)
        for waiter in waiters:
            waiter.callback(None)
