"""Tests for the reconciler: consent firewall, diffing, restarts, port conflicts, reporting."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lattice.registry import Consent, LocalState, ProcessSupervisor, Reconciler
from lattice.registry.testing import FakeProcessReactor
from tests.registry._helpers import DESCRIPTORS, entry

ECHO = ("local", "test.echo")
OTHER = ("local", "test.other")


class ReconcilerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.local = LocalState()
        self.supervisor = ProcessSupervisor(self.reactor, kill_timeout=5)
        self.launched: list[tuple[tuple[str, str], int | None]] = []
        self.released: list[tuple[str, str]] = []
        self.reconciler = Reconciler(
            DESCRIPTORS, self.local, {"gw"}, self.supervisor, self.launch, self.released.append
        )

    def launch(self, key, service_entry, port):
        self.launched.append((key, port))
        return ["daemon", key[1]], {"PORT": str(port)}

    def put(self, key: tuple[str, str], raw: bytes | None) -> None:
        self.reconciler.entry_changed(key[0], key[1], raw)
        self.reconciler.reconcile()

    def row(self, key: tuple[str, str]) -> dict[str, object]:
        return next(r for r in self.reconciler.status() if (r["store"], r["service"]) == key)

    def test_no_consent_starts_nothing(self) -> None:
        """A registry entry without local consent starts nothing, and says why."""
        self.put(ECHO, entry(policy="Global"))
        self.assertEqual(self.reactor.processes, [])
        row = self.row(ECHO)
        self.assertFalse(row["desired"])
        self.assertIn("Manual", str(row["why"]))

    def test_block_beats_policy(self) -> None:
        """Block stops a running service whatever the policy says."""
        self.local.set_consent("test.echo", Consent.FOLLOW_MESH)
        self.put(ECHO, entry(policy="TaggedNodes(gw)"))
        self.assertEqual(len(self.reactor.alive()), 1)
        self.local.set_consent("test.echo", Consent.BLOCK)
        self.reconciler.reconcile()
        self.assertEqual(self.reactor.alive(), [])
        self.assertEqual(self.released, [ECHO])
        self.assertIn("Block", str(self.row(ECHO)["why"]))

    def test_start_and_remove(self) -> None:
        """Consent plus a matching policy starts the daemon; deleting the entry stops it."""
        self.local.set_consent("test.echo", Consent.FOLLOW_MESH)
        self.put(ECHO, entry(policy="Global", port=7001))
        self.assertEqual(self.launched, [(ECHO, 7001)])
        self.reactor.processes[0].output(b"LATTICE-READY port=7001\n")
        row = self.row(ECHO)
        self.assertEqual((row["state"], row["desired"], row["running"]), ("ready", True, True))
        self.put(ECHO, None)
        self.assertEqual(self.reactor.alive(), [])
        self.assertEqual(self.reconciler.status(), [])

    def test_config_change_restarts(self) -> None:
        """A new valid configuration restarts the daemon with it."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(ECHO, entry(greeting="a"))
        first = self.reactor.processes[0]
        self.put(ECHO, entry(greeting="b"))
        self.assertEqual(first.signals, ["TERM"])
        self.assertEqual(len(self.reactor.alive()), 1)
        self.assertEqual(len(self.launched), 2)

    def test_restart_waits_for_slow_stop(self) -> None:
        """The new daemon starts only after the old one has exited."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(ECHO, entry(greeting="a"))
        self.reactor.processes[0].ignore_term = True
        self.put(ECHO, entry(greeting="b"))
        self.assertEqual(len(self.reactor.processes), 1)
        self.reactor.advance(5)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_invalid_never_half_applied(self) -> None:
        """An invalid update is reported and the running configuration is kept."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(ECHO, entry(greeting="a"))
        self.put(ECHO, entry(greeting=5, port=99999))
        self.assertEqual(self.reactor.processes[0].signals, [])
        self.assertEqual(len(self.launched), 1)
        row = self.row(ECHO)
        self.assertEqual(len(row["errors"]), 2)  # type: ignore[arg-type]
        self.assertTrue(row["running"])
        self.flushLoggedErrors()

    def test_invalid_first_starts_nothing(self) -> None:
        """An invalid or unknown entry starts nothing and is listed with its errors."""
        self.local.set_consent("evil", Consent.ALWAYS_ALLOW)
        self.put(("local", "evil"), entry())
        self.assertEqual(self.reactor.processes, [])
        self.assertIn("unknown service", str(self.row(("local", "evil"))["errors"]))

    def test_crash_is_restarted(self) -> None:
        """A crashed daemon is restarted by the supervisor, not re-launched by the reconciler."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(ECHO, entry())
        self.reactor.processes[0].exit(1)
        self.reconciler.reconcile()
        self.assertEqual(self.row(ECHO)["state"], "backoff")
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.alive()), 1)
        self.assertEqual(self.row(ECHO)["restarts"], 1)
        self.assertEqual(len(self.launched), 1)

    def test_two_meshes_one_port_conflict(self) -> None:
        """Two instances wanting one port: one starts, the other is refused with a clear reason."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(("mesh-a", "test.echo"), entry(port=6667))
        self.put(("mesh-b", "test.echo"), entry(port=6667))
        self.assertEqual(len(self.reactor.alive()), 1)
        row = self.row(("mesh-b", "test.echo"))
        self.assertFalse(row["desired"])
        self.assertIn("port conflict: 6667 is taken by mesh-a/test.echo", str(row["why"]))

    def test_running_instance_keeps_its_port(self) -> None:
        """On a conflict, the instance already running keeps the port."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(("mesh-b", "test.echo"), entry(port=6667))
        self.put(("mesh-a", "test.echo"), entry(port=6667))
        self.assertTrue(self.row(("mesh-b", "test.echo"))["running"])
        self.assertFalse(self.row(("mesh-a", "test.echo"))["desired"])

    def test_conflict_resolved_by_override(self) -> None:
        """A local port override per (store, service) resolves a conflict."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(("mesh-a", "test.echo"), entry(port=6667))
        self.put(("mesh-b", "test.echo"), entry(port=6667))
        self.local.set_port("mesh-b", "test.echo", 6668)
        self.reconciler.reconcile()
        self.assertEqual(len(self.reactor.alive()), 2)
        self.assertIn((("mesh-b", "test.echo"), 6668), self.launched)

    def test_conflict_resolved_by_dynamic_ports(self) -> None:
        """Port 0 never conflicts: both instances start and report what they bound."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.put(("mesh-a", "test.echo"), entry(port=0))
        self.put(("mesh-b", "test.echo"), entry(port=0))
        self.assertEqual(len(self.reactor.alive()), 2)
        for process, port in zip(self.reactor.processes, (41001, 41002), strict=True):
            process.output(f"LATTICE-READY port={port}\n".encode())
        self.assertEqual(self.row(("mesh-b", "test.echo"))["bound_port"], 41002)

    def test_store_reset(self) -> None:
        """A full re-read of a store's registry replaces what was known about it."""
        self.local.set_consent("test.echo", Consent.ALWAYS_ALLOW)
        self.local.set_consent("test.other", Consent.ALWAYS_ALLOW)
        self.put(ECHO, entry(port=1))
        self.reconciler.store_reset("local", {"test.other": entry(port=2)})
        self.reconciler.reconcile()
        self.assertEqual([p.argv[1] for p in self.reactor.alive()], ["test.other"])
