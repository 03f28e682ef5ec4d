"""Tests for the process supervisor (procmon style) with a fake process reactor."""

from __future__ import annotations

from typing import cast

from twisted.logger import ILogObserver
from twisted.trial.unittest import SynchronousTestCase

from lattice.registry import ProcessSupervisor, parse_ready_line
from lattice.registry.testing import FakeProcessReactor

KEY = ("local", "test.echo")


class ReadyLineTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """The readiness line gives the bound port and endpoints."""
        self.assertEqual(
            parse_ready_line(b"LATTICE-READY port=6667 endpoint=tcp://127.0.0.1:6667"),
            (6667, ["tcp://127.0.0.1:6667"]),
        )
        self.assertEqual(parse_ready_line(b"LATTICE-READY"), (None, []))
        self.assertIsNone(parse_ready_line(b"hello"))


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.changes: list[tuple[str, str]] = []
        self.supervisor = ProcessSupervisor(
            self.reactor,
            kill_timeout=5,
            restart_min=1,
            restart_max=8,
            on_change=self.changes.append,
        )

    def test_start_and_ready(self) -> None:
        """A started daemon is 'starting' until its readiness line, then 'ready' with its port."""
        child = self.supervisor.start(KEY, ["python", "-m", "x"], {"A": "1"})
        [process] = self.reactor.processes
        self.assertEqual(process.argv, ["python", "-m", "x"])
        self.assertEqual(process.env, {"A": "1"})
        self.assertEqual(child.state, "starting")
        process.output(b"some log\nLATTICE-READY port=4")
        self.assertEqual(child.state, "starting")
        process.output(b"1000 endpoint=tcp://127.0.0.1:41000\n")
        self.assertEqual(child.state, "ready")
        self.assertEqual(child.port, 41000)
        self.assertEqual(child.endpoints, ["tcp://127.0.0.1:41000"])

    def test_output_logged_line_by_line(self) -> None:
        """Each line of stdout and stderr becomes one log event."""
        events: list[dict[str, object]] = []
        from twisted.logger import globalLogPublisher

        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.supervisor.start(KEY, ["x"], {})
        process = self.reactor.processes[0]
        process.output(b"one\ntw")
        process.output(b"o\n", "stderr")
        process.output(b"o\n")
        lines = [(e["stream"], e["line"]) for e in events if "line" in e]
        self.assertEqual(lines, [("stdout", "one"), ("stderr", "o"), ("stdout", "two")])

    def test_crash_restarts_with_backoff(self) -> None:
        """A crashing daemon is restarted after 1, 2, 4, 8, 8 seconds."""
        child = self.supervisor.start(KEY, ["x"], {})
        delays = []
        for _ in range(5):
            self.reactor.alive()[0].exit(3)
            self.assertEqual(child.state, "backoff")
            self.assertEqual(child.last_exit, "exit status 3")
            before = len(self.reactor.processes)
            waited = 0
            while len(self.reactor.processes) == before:
                self.reactor.advance(1)
                waited += 1
            delays.append(waited)
        self.assertEqual(delays, [1, 2, 4, 8, 8])
        self.assertEqual(child.restarts, 5)

    def test_backoff_resets_after_a_healthy_run(self) -> None:
        """A daemon that ran at least restart_max seconds restarts after restart_min again."""
        self.supervisor.start(KEY, ["x"], {})
        for _ in range(3):
            self.reactor.alive()[0].exit(1)
            self.reactor.advance(8)
        self.reactor.advance(100)
        self.reactor.alive()[0].exit(1)
        count = len(self.reactor.processes)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), count + 1)

    def test_stop_term(self) -> None:
        """Stopping sends SIGTERM and forgets the daemon once it exited."""
        self.supervisor.start(KEY, ["x"], {})
        process = self.reactor.processes[0]
        done = self.supervisor.stop(KEY)
        self.assertEqual(process.signals, ["TERM"])
        self.successResultOf(done)
        self.assertIsNone(self.supervisor.get(KEY))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_kill_after_timeout(self) -> None:
        """A daemon that ignores SIGTERM gets SIGKILL after the kill timeout."""
        self.supervisor.start(KEY, ["x"], {})
        process = self.reactor.processes[0]
        process.ignore_term = True
        done = self.supervisor.stop(KEY)
        self.assertNoResult(done)
        self.reactor.advance(4.9)
        self.assertEqual(process.signals, ["TERM"])
        self.reactor.advance(0.1)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.successResultOf(done)

    def test_stop_during_backoff(self) -> None:
        """Stopping a daemon waiting to restart cancels the restart."""
        self.supervisor.start(KEY, ["x"], {})
        self.reactor.processes[0].exit(1)
        self.successResultOf(self.supervisor.stop(KEY))
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 1)

    def test_spawn_failure_retried(self) -> None:
        """A daemon that cannot be spawned is retried with backoff."""
        self.reactor.fail_spawn = OSError(2, "No such file")
        child = self.supervisor.start(KEY, ["x"], {})
        self.assertEqual(child.state, "backoff")
        self.assertIn("cannot start", child.last_exit or "")
        self.reactor.fail_spawn = None
        self.reactor.advance(1)
        self.assertEqual(child.state, "starting")
        self.flushLoggedErrors()
