"""
Run a real C{twistd -n lattice} for integration tests, with a notify socket
bound by the test, as systemd would provide it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, ProcessProtocol
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent.parent
reactor: Any = _reactor


def short_directory(test: Any) -> Path:
    """
    A fresh directory with a path short enough for AF_UNIX sockets (108
    bytes), removed when C{test} ends.
    """
    import shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="lattice-"))
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


def twistd() -> str:
    """
    The twistd script of the Python running the tests.
    """
    return str(Path(sys.executable).parent / "twistd")


def child_environment(**extra: str) -> dict[str, str]:
    """
    The environment for a child: this one without systemd or LATTICE_ variables.
    """
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LATTICE_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY"))
    }
    environ["PYTHONPATH"] = str(ROOT)
    environ.update(extra)
    return environ


def start_twistd(
    config: Path,
    ready: re.Pattern[bytes],
    output: list[bytes],
    environ: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[subprocess.Popen[bytes], re.Match[bytes]]:
    """
    Start C{twistd -n lattice --config config}, its output collected into C{output}
    line by line (also after this returns); return the process and the match of the
    first line that matches C{ready}.

    @raise AssertionError: the daemon exited, or printed no such line within
        C{timeout} seconds, with its output so far.
    """
    process = subprocess.Popen(
        [twistd(), "-n", "--pidfile=", "lattice", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_environment() if environ is None else environ,
    )
    lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            process.wait()
            raise AssertionError(f"daemon not ready: {b''.join(output).decode()}") from None
        if line is None:
            process.wait()
            raise AssertionError(f"daemon exited: {b''.join(output).decode()}")
        match = ready.search(line)
        if match:
            return process, match


class NotifyReceiver(DatagramProtocol):
    """
    Collects sd_notify datagrams and fires Deferreds when a line arrives.
    """

    def __init__(self) -> None:
        self.messages: list[list[str]] = []
        self._waiters: list[tuple[str, Deferred[list[str]]]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        message = data.decode("utf-8").split("\n")
        self.messages.append(message)
        for waiter in list(self._waiters):
            line, deferred = waiter
            if line in message:
                self._waiters.remove(waiter)
                deferred.callback(message)

    def wait_for(self, line: str) -> Deferred[list[str]]:
        """
        Fire with the first message (past or future) that contains C{line}.
        """
        for message in self.messages:
            if line in message:
                return Deferred.fromCoroutine(_value(message))
        deferred: Deferred[list[str]] = Deferred()
        self._waiters.append((line, deferred))
        return deferred

    def lines(self) -> list[str]:
        """
        Every line received, in order.
        """
        return [line for message in self.messages for line in message]


async def _value(value: list[str]) -> list[str]:
    return value


class DaemonProtocol(ProcessProtocol):
    """
    Collects a child's output and its exit status.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self._line_waiters: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for waiter in list(self._line_waiters):
            if waiter[0] in self.output:
                self._line_waiters.remove(waiter)
                waiter[1].callback(None)

    errReceived = outReceived

    def wait_for_output(self, text: bytes) -> Deferred[None]:
        """
        Fire once C{text} appeared in the child's output.
        """
        deferred: Deferred[None] = Deferred()
        if text in self.output:
            deferred.callback(None)
        else:
            self._line_waiters.append((text, deferred))
        return deferred

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else code)


class Daemon:
    """
    One twistd process under test.
    """

    def __init__(
        self,
        directory: Path,
        config: Path,
        argv: list[str] | None = None,
        child_fds: dict[int, Any] | None = None,
        **environ: str,
    ):
        self.directory = directory
        self.config = config
        self.receiver = NotifyReceiver()
        self.notify_path = str(directory / "notify.sock")
        self._port = reactor.listenUNIXDatagram(self.notify_path, self.receiver)
        self.protocol = DaemonProtocol()
        argv = (argv or [twistd()]) + ["-n", "--pidfile=", "lattice", "--config", str(config)]
        self.process = reactor.spawnProcess(
            self.protocol,
            argv[0],
            argv,
            env=child_environment(NOTIFY_SOCKET=self.notify_path, **environ),
            path=str(directory),
            childFDs=child_fds,
        )

    async def ready(self) -> str:
        """
        Wait for READY=1 and return its STATUS line.
        """
        message = await self.receiver.wait_for("READY=1")
        [status] = [line for line in message if line.startswith("STATUS=")]
        return status

    def port_of(self, status: str, subsystem: str) -> int:
        """
        The TCP port a subsystem reported in the READY status line.
        """
        match = re.search(rf"{subsystem}: listening on [^;]*:(\d+)", status)
        assert match is not None, status
        return int(match.group(1))

    def signal(self, number: int) -> None:
        """
        Send a signal to the daemon.
        """
        names: dict[int, str] = {signal.SIGTERM: "TERM", signal.SIGHUP: "HUP"}
        self.process.signalProcess(names.get(number, "KILL"))

    async def stop(self) -> int:
        """
        SIGTERM, then the exit status.
        """
        if self.process.pid is not None:
            self.signal(signal.SIGTERM)
        return await self.protocol.ended

    def cleanup(self) -> Deferred[None]:
        """
        Kill the process if it still runs, and close the notify socket.
        """
        if self.process.pid is not None:
            self.process.signalProcess("KILL")
        result: Deferred[None] = self.protocol.ended.addBoth(lambda _: None)
        result.addBoth(lambda _: self._port.stopListening())
        return result
