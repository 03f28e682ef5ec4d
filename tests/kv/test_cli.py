"""Tests for the text of C{lattice kv status}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lattice.kv._cli import format_status


class FormatStatusTests(SynchronousTestCase):
    """Each backend's own facts."""

    def test_embedded(self) -> None:
        """The embedded store: its database, revisions and counts."""
        text = format_status(
            {
                "path": "/var/lib/lattice/kv.sqlite3",
                "db_size": 8192,
                "durability": "sync",
                "listening": "127.0.0.1:2379",
                "revision": 42,
                "compact_revision": 7,
                "keys": 3,
                "leases": 1,
                "watchers": 2,
                "auth_enabled": True,
            }
        )
        self.assertIn("database:           /var/lib/lattice/kv.sqlite3 (8192 bytes)", text)
        self.assertIn("compacted revision: 7", text)
        self.assertIn("auth enabled:       yes", text)
        self.assertNotIn("member", text)

    def test_cluster(self) -> None:
        """In front of an etcd cluster: the members and whether they serve linearizably."""
        text = format_status(
            {
                "backend": "etcd",
                "endpoints": ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
                "current": "https://10.0.0.2:2379",
                "can_linearize": False,
                "reachable": True,
                "listening": "127.0.0.1:2379",
                "revision": 99,
                "upstream_watches": 4,
            }
        )
        self.assertIn("members:            https://10.0.0.1:2379, https://10.0.0.2:2379", text)
        self.assertIn("current member:     https://10.0.0.2:2379", text)
        self.assertIn("reachable:          yes", text)
        self.assertIn("linearizable:       no", text)
        self.assertIn("upstream watches:   4", text)
        self.assertNotIn("database", text)

    def test_cluster_before_any_call(self) -> None:
        """Before the first call, the node does not claim to know."""
        text = format_status({"backend": "etcd", "can_linearize": None, "reachable": None})
        self.assertIn("linearizable:       unknown (no call yet)", text)
