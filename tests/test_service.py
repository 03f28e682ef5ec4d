"""
Tests for L{lattice.service}: composition, start-up, failure and shutdown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lattice._logging import LogControl
from lattice.config import config_from_string
from lattice.node import NodeService
from lattice.service import make_lattice_service
from lattice.systemd import Notifier


class RecordingNotifier(Notifier):
    """
    A notifier that records what it would send.
    """

    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[str] = []

    def notify(self, *assignments: str) -> None:
        self.sent.extend(assignments)


class _RefusingReactor(MemoryReactorClock):
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


def _config(test: SynchronousTestCase, extra: str = "") -> Any:
    state = Path(test.mktemp()).absolute()
    return config_from_string(f"[node]\nstate_dir = {state}\n{extra}")


class CompositionTests(SynchronousTestCase):
    """
    make_lattice_service wires named children and does no I/O.
    """

    def test_children(self) -> None:
        """
        The root holds named node and telemetry services.
        """
        config = _config(self)
        root = make_lattice_service(config, MemoryReactorClock(), environ={})
        self.assertEqual([child.name for child in root], ["node", "telemetry"])
        self.assertIsInstance(root.getServiceNamed("node"), NodeService)
        self.assertFalse(config.node.state_dir.exists())

    def test_switch_off(self) -> None:
        """
        enabled = false leaves a subsystem out.
        """
        root = make_lattice_service(
            _config(self, "[telemetry]\nenabled = false\n"), MemoryReactorClock(), environ={}
        )
        self.assertEqual([child.name for child in root], ["node"])

    def test_watchdog_only_when_asked(self) -> None:
        """
        The node pings the watchdog only when systemd set WATCHDOG_USEC.
        """
        config = _config(self)
        root = make_lattice_service(config, MemoryReactorClock(), environ={})
        self.assertIsNone(root.getServiceNamed("node").watchdog)
        root = make_lattice_service(
            config, MemoryReactorClock(), environ={"WATCHDOG_USEC": "4000000"}
        )
        self.assertIsNotNone(root.getServiceNamed("node").watchdog)


class StartupTests(SynchronousTestCase):
    """
    Start-up creates the identity, binds listeners, then reports READY=1.
    """

    def test_ready_after_listeners(self) -> None:
        """
        READY=1 is sent once, after every listener is bound, with a status line.
        """
        config = _config(self)
        reactor = MemoryReactorClock()
        notifier = RecordingNotifier()
        root = make_lattice_service(config, reactor, environ={}, notifier=notifier)
        root.startService()
        self.assertEqual(notifier.sent.count("READY=1"), 1)
        [status] = [
            line
            for line in notifier.sent[notifier.sent.index("READY=1") :]
            if line.startswith("STATUS=")
        ][:1]
        self.assertIn("telemetry: listening on", status)
        self.assertEqual(reactor.tcpServers[0][0], 9090)
        self.assertTrue(config.node.identity_key_path.exists())
        self.assertTrue(root.readiness.ready)
        self.assertEqual(len(reactor.unixServers), 1)

    def test_status_follows_details(self) -> None:
        """
        After READY=1, a subsystem's new detail is sent as a STATUS= line.
        """
        config = _config(self)
        notifier = RecordingNotifier()
        root = make_lattice_service(config, MemoryReactorClock(), environ={}, notifier=notifier)
        extra = root.readiness.register("usb")
        root.startService()
        self.assertNotIn("READY=1", notifier.sent)
        extra.set_ready("2 devices exported")
        self.assertIn("READY=1", notifier.sent)
        notifier.sent.clear()
        extra.set_ready("2 devices exported, 1 client")
        [status] = notifier.sent
        self.assertTrue(status.startswith("STATUS=Ready ("), status)
        self.assertIn("usb: 2 devices exported, 1 client", status)
        notifier.sent.clear()
        extra.set_not_ready("backend lost")
        [status] = notifier.sent
        self.assertTrue(status.startswith("STATUS=Degraded: usb not ready"), status)

    def test_not_ready_before_bind(self) -> None:
        """
        Nothing is announced while a listener is still binding.
        """
        config = _config(self)
        reactor = MemoryReactorClock()
        notifier = RecordingNotifier()
        root = make_lattice_service(config, reactor, environ={}, notifier=notifier)
        telemetry = root.getServiceNamed("telemetry")
        # Start everything but the telemetry listener.
        root.getServiceNamed("node").startService()
        self.assertNotIn("READY=1", notifier.sent)
        self.assertFalse(root.readiness.ready)
        telemetry.startService()
        self.assertIn("READY=1", notifier.sent)

    def test_bad_identity_stops_start(self) -> None:
        """
        An unusable key fails start-up: exit status 1, no listener started.
        """
        config = _config(self)
        key = config.node.identity_key_path
        key.parent.mkdir(parents=True)
        key.write_text("junk")
        key.chmod(0o644)
        reactor = MemoryReactorClock()
        reactor.running = True
        notifier = RecordingNotifier()
        root = make_lattice_service(config, reactor, environ={}, notifier=notifier)
        root.startService()
        self.assertEqual(root.exit_code, 1)
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(reactor.tcpServers, [])
        self.assertNotIn("READY=1", notifier.sent)
        self.assertTrue(any("accessible by group or others" in line for line in notifier.sent))

    def test_bind_failure_is_fatal(self) -> None:
        """
        A listener that cannot bind stops the node with a message naming the key.
        """
        config = _config(self)
        reactor = _RefusingReactor()
        reactor.running = True
        notifier = RecordingNotifier()
        root = make_lattice_service(config, reactor, environ={}, notifier=notifier)
        root.startService()
        self.assertEqual(root.exit_code, 1)
        self.assertTrue(reactor.hasStopped)
        [status] = [line for line in notifier.sent if line.startswith("STATUS=Failed")]
        self.assertIn("[telemetry] listen = tcp:9090:interface=127.0.0.1: cannot listen", status)
        self.assertIn("Address already in use", status)

    def test_missing_systemd_socket(self) -> None:
        """
        A systemd: endpoint without a passed socket fails start-up with a hint.
        """
        config = _config(self, "[telemetry]\nlisten = systemd:domain=INET:index=7\n")
        reactor = MemoryReactorClock()
        reactor.running = True
        notifier = RecordingNotifier()
        root = make_lattice_service(config, reactor, environ={}, notifier=notifier)
        root.startService()
        self.assertEqual(root.exit_code, 1)
        [status] = [line for line in notifier.sent if line.startswith("STATUS=Failed")]
        self.assertIn(
            "[telemetry] listen = systemd:domain=INET:index=7: cannot use endpoint", status
        )
        self.assertIn("no such socket passed by systemd", status)


class ShutdownTests(SynchronousTestCase):
    """
    Stopping says STOPPING=1 first and closes the listeners.
    """

    def test_stopping(self) -> None:
        """
        STOPPING=1 is sent and every port stops listening.
        """
        config = _config(self)
        reactor = MemoryReactorClock()
        notifier = RecordingNotifier()
        root = make_lattice_service(config, reactor, environ={}, notifier=notifier)
        root.startService()
        notifier.sent.clear()
        self.successResultOf(root.stopService())
        self.assertEqual(notifier.sent, ["STOPPING=1", "STATUS=Shutting down"])
        self.assertFalse(root.readiness.ready)

    def test_reverse_order_one_at_a_time(self) -> None:
        """
        A subsystem stops only after the one started after it finished stopping.
        """
        from twisted.application.service import Service
        from twisted.internet.defer import Deferred

        events: list[str] = []
        pending: dict[str, Deferred[None]] = {}

        class Slow(Service):
            def stopService(self) -> Deferred[None]:
                super().stopService()
                name = str(self.name)
                events.append(f"stop {name}")
                pending[name] = Deferred()
                return pending[name]

        config = _config(self, "[telemetry]\nenabled = false\n")
        root = make_lattice_service(
            config, MemoryReactorClock(), environ={}, notifier=RecordingNotifier()
        )
        for name in ("first", "second"):
            child = Slow()
            child.setName(name)
            child.setServiceParent(root)
        root.startService()
        stopping = root.stopService()
        self.assertEqual(events, ["stop second"])
        pending["second"].callback(None)
        self.assertEqual(events, ["stop second", "stop first"])
        self.assertNoResult(stopping)
        pending["first"].callback(None)
        self.successResultOf(stopping)

    def test_shutdown_timeout(self) -> None:
        """
        A subsystem that never finishes stopping is abandoned after the timeout.
        """
        from twisted.application.service import Service
        from twisted.internet.defer import Deferred

        class Stuck(Service):
            def stopService(self) -> Deferred[None]:
                super().stopService()
                return Deferred()

        config = _config(self, "shutdown_timeout = 5s\n[telemetry]\nenabled = false\n")
        reactor = MemoryReactorClock()
        root = make_lattice_service(config, reactor, environ={}, notifier=RecordingNotifier())
        Stuck().setServiceParent(root)
        root.startService()
        stopping = root.stopService()
        self.assertNoResult(stopping)
        reactor.advance(5)
        self.successResultOf(stopping)


class ReloadTests(SynchronousTestCase):
    """
    SIGHUP re-reads the file and applies the log level.
    """

    def test_level_change(self) -> None:
        """
        A new level in the file takes effect; a bad file keeps the old config.
        """
        path = Path(self.mktemp()).absolute()
        state = path.parent / "state"
        path.write_text(f"[node]\nstate_dir = {state}\n[log]\nlevel = info\n")
        from lattice.config import load_config

        config = load_config(path, environ={})
        control = LogControl("info")
        notifier = RecordingNotifier()
        root = make_lattice_service(
            config, MemoryReactorClock(), environ={}, notifier=notifier, log_control=control
        )
        path.write_text(f"[node]\nstate_dir = {state}\n[log]\nlevel = debug\n")
        root.reload()
        self.assertEqual(control.level, "debug")
        self.assertIn("RELOADING=1", notifier.sent)
        path.write_text("[log]\nlevel = loud\n")
        root.reload()
        self.assertEqual(control.level, "debug")

    def test_environment_level_wins(self) -> None:
        """
        LATTICE_LOG_LEVEL still beats the file after a reload.
        """
        path = Path(self.mktemp()).absolute()
        path.write_text("[log]\nlevel = error\n")
        from lattice.config import load_config

        environ = {"LATTICE_LOG_LEVEL": "warn"}
        config = load_config(path, environ=environ)
        control = LogControl("warn")
        root = make_lattice_service(
            config,
            MemoryReactorClock(),
            environ=environ,
            log_control=control,
            notifier=RecordingNotifier(),
        )
        root.reload()
        self.assertEqual(control.level, "warn")
