"""
End-to-end: a real C{twistd -n lattice} with a notify socket bound by the test.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import treq
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.integration._daemon import (
    Daemon,
    child_environment,
    reactor,
    short_directory,
    twistd,
)


def _write_config(directory: Path, extra: str = "") -> Path:
    config = directory / "lattice.ini"
    config.write_text(
        "[node]\nstate_dir = state\n"
        "[telemetry]\nlisten = tcp:0:interface=127.0.0.1\n"
        "[log]\nlevel = info\n" + extra
    )
    return config


class DaemonLifecycleTests(TestCase):
    """
    twistd starts, reports readiness, serves telemetry, reloads and stops cleanly.
    """

    timeout = 60

    async def _lifecycle(self) -> None:
        directory = short_directory(self)
        config = _write_config(directory)
        daemon = Daemon(directory, config)
        self.addCleanup(daemon.cleanup)

        status = await daemon.ready()
        port = daemon.port_of(status, "telemetry")
        self.assertEqual((directory / "state" / "private_key.pem").stat().st_mode & 0o777, 0o600)

        response = await treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False)
        self.assertEqual(response.code, 200)
        metrics = (await response.text()).splitlines()
        self.assertIn('lattice_subsystem_ready{subsystem="telemetry"} 1.0', metrics)
        self.assertTrue(any(line.startswith("process_resident_memory_bytes") for line in metrics))

        response = await treq.get(f"http://127.0.0.1:{port}/readyz", persistent=False)
        self.assertEqual(response.code, 200)
        report = json.loads(await response.content())
        self.assertTrue(report["ready"])
        self.assertEqual(sorted(report["subsystems"]), ["admin", "node", "telemetry"])

        # The CLI reads the same state through the admin-free telemetry port.
        cli = str(Path(sys.executable).parent / "lattice")
        out, err, code = await getProcessOutputAndValue(
            cli,
            ["--config", str(config), "status"],
            env=child_environment(LATTICE_TELEMETRY_LISTEN=f"tcp:{port}:interface=127.0.0.1"),
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b": ready", out)
        self.assertIn(b"telemetry", out)

        # SIGHUP applies a new log level from the file.
        config.write_text(config.read_text().replace("level = info", "level = debug"))
        reloaded = daemon.protocol.wait_for_output(b"Reload: log level info -> debug")
        daemon.signal(signal.SIGHUP)
        await reloaded

        code = await daemon.stop()
        self.assertEqual(code, 0, daemon.protocol.output.decode())
        self.assertIn("STOPPING=1", daemon.receiver.lines())
        self.assertNotIn(b"Traceback", daemon.protocol.output)

    def test_lifecycle(self) -> Deferred[None]:
        """
        READY=1 after binding; /metrics, /readyz and `lattice status` work;
        SIGHUP reloads the level; SIGTERM sends STOPPING=1 and exits 0.
        """
        return Deferred.fromCoroutine(self._lifecycle())


class StartupFailureTests(TestCase):
    """
    Bad input stops the daemon with clear lines and no traceback.
    """

    timeout = 60

    async def _twistd(self, config: Path, directory: Path) -> tuple[bytes, bytes, int]:
        result: tuple[bytes, bytes, int] = await getProcessOutputAndValue(
            twistd(),
            ["-n", "--pidfile=", "lattice", "--config", str(config)],
            env=child_environment(),
            path=str(directory),
        )
        return result

    async def _bad_config(self) -> None:
        directory = short_directory(self)
        config = directory / "bad.ini"
        config.write_text("[node]\nstate_dirr = x\n[telemetry]\nlisten = tcp:http\n[bogus]\n")
        out, err, code = await self._twistd(config, directory)
        self.assertEqual(code, 1)
        lines = err.decode().splitlines()
        self.assertIn(f"{config}: [node] state_dirr: unknown key", lines[0])
        self.assertTrue(any("[telemetry] listen" in line for line in lines), lines)
        self.assertTrue(any("[bogus]: unknown section" in line for line in lines), lines)
        self.assertNotIn(b"Traceback", out + err)

    def test_bad_config(self) -> Deferred[None]:
        """
        A bad file exits 1 listing every error as 'file: [section] key: reason'.
        """
        return Deferred.fromCoroutine(self._bad_config())

    async def _bad_key(self) -> None:
        directory = short_directory(self)
        (directory / "state").mkdir(mode=0o700)
        key = directory / "state" / "private_key.pem"
        key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
        key.chmod(0o644)
        config = _write_config(directory)
        out, err, code = await self._twistd(config, directory)
        self.assertEqual(code, 1, out + err)
        self.assertIn(b"accessible by group or others (mode 0644)", out + err)
        self.assertNotIn(b"Traceback", out + err)
        key.chmod(0o600)
        out, err, code = await self._twistd(config, directory)
        self.assertEqual(code, 1, out + err)
        self.assertIn(b"not an unencrypted PEM private key", out + err)
        self.assertNotIn(b"Traceback", out + err)

    def test_bad_key(self) -> Deferred[None]:
        """
        An open or corrupt identity key stops start-up with a message naming it.
        """
        return Deferred.fromCoroutine(self._bad_key())

    async def _port_taken(self) -> None:
        directory = short_directory(self)
        from twisted.internet.protocol import Factory

        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        config = _write_config(directory)
        config.write_text(
            config.read_text().replace(
                "tcp:0:interface=127.0.0.1", f"tcp:{taken.getHost().port}:interface=127.0.0.1"
            )
        )
        out, err, code = await self._twistd(config, directory)
        self.assertEqual(code, 1, out + err)
        self.assertIn(b"[telemetry] listen = tcp:", out + err)
        self.assertIn(b"cannot listen", out + err)
        self.assertNotIn(b"Traceback", out + err)

    def test_port_taken(self) -> Deferred[None]:
        """
        A listener that cannot bind fails start-up loudly with exit status 1.
        """
        return Deferred.fromCoroutine(self._port_taken())


class WatchdogTests(TestCase):
    """
    The watchdog is fed by the reactor thread, so a blocked reactor starves it.
    """

    timeout = 60

    async def _blocked(self) -> None:
        directory = short_directory(self)
        daemon_script = Path(__file__).with_name("_watchdog_child.py")
        from tests.integration._daemon import NotifyReceiver

        receiver = NotifyReceiver()
        path = str(directory / "notify.sock")
        port = reactor.listenUNIXDatagram(path, receiver)
        self.addCleanup(port.stopListening)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [str(daemon_script)],
            env=child_environment(NOTIFY_SOCKET=path, WATCHDOG_USEC="40000"),
        )
        self.assertEqual(code, 0, out + err)
        await receiver.wait_for("STATUS=unblocked")
        lines = [line for line in receiver.lines() if line.startswith(("WATCHDOG", "STATUS"))]
        start = lines.index("STATUS=blocking")
        end = lines.index("STATUS=unblocked")
        self.assertGreaterEqual(lines[:start].count("WATCHDOG=1"), 3, lines)
        self.assertEqual(lines[start + 1 : end], [], lines)
        self.assertGreaterEqual(lines[end:].count("WATCHDOG=1"), 1, lines)

    def test_blocked_reactor_stops_pings(self) -> Deferred[None]:
        """
        No WATCHDOG=1 is sent while the reactor thread is blocked.
        """
        return Deferred.fromCoroutine(self._blocked())


class SocketActivationTests(TestCase):
    """
    Listeners accept systemd: endpoints, as under socket activation.
    """

    timeout = 60

    async def _activated(self) -> None:
        import socket

        directory = short_directory(self)
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        config = _write_config(directory)
        config.write_text(
            config.read_text().replace(
                "tcp:0:interface=127.0.0.1", "systemd:domain=INET:name=telemetry"
            )
        )
        # What systemd does: the socket as fd 3, LISTEN_FDS=1, its name in
        # LISTEN_FDNAMES (systemd 227 and later), and LISTEN_PID
        # set to the daemon's own pid (kept across exec by this shim).
        shim = (
            "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        daemon = Daemon(
            directory,
            config,
            argv=[sys.executable, "-c", shim, twistd()],
            child_fds={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
            LISTEN_FDS="1",
            LISTEN_FDNAMES="telemetry",
        )
        self.addCleanup(daemon.cleanup)
        await daemon.ready()
        response = await treq.get(f"http://127.0.0.1:{port}/healthz", persistent=False)
        self.assertEqual(response.code, 200)
        await response.content()
        self.assertEqual(await daemon.stop(), 0)

    def test_systemd_endpoint(self) -> Deferred[None]:
        """
        The telemetry listener serves on a socket inherited from systemd.
        """
        return Deferred.fromCoroutine(self._activated())
