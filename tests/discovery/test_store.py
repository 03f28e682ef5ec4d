"""
Tests for L{lattice.discovery._store}: one contract, run against SQLite and
against a real PostgreSQL server started for the test (skipped with the
reason when PostgreSQL's server binaries are not installed).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lattice.discovery._records import make_peer_record
from lattice.discovery._store import SQLStore, open_store
from lattice.identity import NodeIdentity

NOW = 1_800_000_000_000  # beyond 2**31: epoch milliseconds need 64 bits
TABLES = ("meta", "peers", "key_events", "outbound", "inbound")


def peer(seq: int = 1, name: str = "p") -> dict[str, Any]:
    identity = NodeIdentity.generate()
    return make_peer_record(
        identity, identity.public_key, identity.node_id, name, ["http://p.test"], seq, NOW
    )


def envelope(message_id: str) -> dict[str, Any]:
    return {"kind": "message", "message_id": message_id, "content": "x"}


class StoreContract:
    """
    What every store engine must do.
    """

    store: SQLStore

    def assertEqual(self, a: object, b: object, msg: object = None) -> None: ...
    def assertIsNone(self, a: object, msg: object = None) -> None: ...
    def assertTrue(self, a: object, msg: object = None) -> None: ...

    def test_meta(self) -> None:
        """
        Meta values are stored and replaced.
        """
        self.assertIsNone(self.store.get_meta("a"))
        self.store.set_meta("a", "1")
        self.store.set_meta("a", "2")
        self.assertEqual(self.store.get_meta("a"), "2")

    def test_peers_upsert(self) -> None:
        """
        Saving a peer again updates its record and keeps the latest last_seen.
        """
        record = peer()
        self.store.save_peers([(record, "verified", NOW)])
        newer = dict(record, seq=2)
        self.store.save_peers([(newer, "verified", NOW - 10)])
        (row,) = self.store.load_peers()
        self.assertEqual(row.record["seq"], 2)
        self.assertEqual(row.last_seen, NOW)
        self.assertEqual(row.first_seen, NOW)
        self.store.touch_peers([(record["server_uuid"], NOW + 5, True)])
        self.store.set_neighbors([record["server_uuid"]])
        (row,) = self.store.load_peers()
        self.assertEqual((row.last_seen, row.probe_ok, row.is_neighbor), (NOW + 5, True, True))
        self.assertTrue(isinstance(row.last_seen, int))

    def test_queue_lifecycle(self) -> None:
        """
        Messages are due by time and priority, retried, delivered, failed and expired.
        """
        self.store.enqueue(envelope("a" * 32), "d", 1, NOW, NOW + 1000)
        self.store.enqueue(envelope("b" * 32), "d", 2, NOW, NOW + 1000)
        self.store.enqueue(envelope("c" * 32), "d", 0, NOW, NOW + 10)
        due = self.store.due_messages(NOW, 10)
        self.assertEqual([row.message_id for row in due], ["b" * 32, "a" * 32, "c" * 32])
        self.store.mark_delivered([("b" * 32, {"kind": "ack"})], NOW)
        self.store.mark_failed_attempts([("a" * 32, 1, NOW + 500, "down")], 5)
        self.assertEqual([r.message_id for r in self.store.due_messages(NOW, 10)], ["c" * 32])
        self.assertEqual(
            [r.message_id for r in self.store.due_messages(NOW + 9, 10)], ["a" * 32, "c" * 32][1:]
        )
        self.assertEqual([r.message_id for r in self.store.due_messages(NOW + 500, 10)], ["a" * 32])
        self.store.mark_failed_attempts([("a" * 32, 5, NOW + 900, "down")], 5)
        counts, _ = self.store.cleanup(NOW + 20, 1, 10**12, 10**12)
        self.assertEqual(counts["expired_messages"], 1)
        totals = self.store.queue_counts(NOW)
        self.assertEqual((totals["pending"], totals["failed"], totals["delivered"]), (0, 1, 1))
        delivered = self.store.get_message("b" * 32)
        assert delivered is not None
        self.assertEqual((delivered.status, delivered.ack), ("delivered", {"kind": "ack"}))

    def test_inbound_idempotent(self) -> None:
        """
        A received id is recorded once; recording it again keeps the first ack.
        """
        self.assertIsNone(self.store.inbound_ack("m"))
        self.store.record_inbound([("m", "o", {"n": 1}, NOW)])
        self.store.record_inbound([("m", "o", {"n": 2}, NOW)])
        self.assertEqual(self.store.inbound_ack("m"), {"n": 1})

    def test_cleanup_thresholds(self) -> None:
        """
        Received ids, neighbors and peers age out at their thresholds.
        """
        old, recent = peer(name="old"), peer(name="recent")
        self.store.save_peers([(old, "verified", NOW - 100), (recent, "verified", NOW - 10)])
        self.store.set_neighbors([old["server_uuid"], recent["server_uuid"]])
        self.store.record_inbound([("m", "o", {}, NOW - 50)])
        counts, deleted = self.store.cleanup(NOW, 40, 20, 90)
        self.assertEqual(counts["forgotten_message_ids"], 1)
        self.assertEqual(deleted, [old["server_uuid"]])
        (row,) = self.store.load_peers()
        self.assertEqual((row.server_uuid, row.is_neighbor), (recent["server_uuid"], True))


class SQLiteStoreTests(StoreContract, SynchronousTestCase):
    """
    The contract on SQLite.
    """

    def setUp(self) -> None:
        self.store = SQLStore(sqlite3.connect(":memory:", isolation_level=None), "sqlite")
        self.store.create()

    def test_open_store_file(self) -> None:
        """
        The default database is a WAL SQLite file under the state directory.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        from pathlib import Path

        store = open_store("", Path(directory))
        store.set_meta("x", "y")
        store.close()
        self.assertEqual(open_store("", Path(directory)).get_meta("x"), "y")
        self.assertTrue(os.path.exists(os.path.join(directory, "discovery.sqlite3")))


def _pg_bin() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return os.path.dirname(candidates[-1])
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


class _Server:
    """
    One PostgreSQL server for the whole test run, started on first use and
    stopped when the process exits.
    """

    url: str | None = None
    skip: str | None = None
    started = False

    @classmethod
    def get(cls) -> str:
        if not cls.started:
            cls.started = True
            cls._start()
        if cls.skip is not None:
            raise SkipTest(cls.skip)
        assert cls.url is not None
        return cls.url

    @classmethod
    def _start(cls) -> None:
        binaries = _pg_bin()
        if binaries is None:
            cls.skip = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
            return
        try:
            import psycopg  # noqa: F401
        except ImportError:
            cls.skip = "psycopg is not installed"
            return
        directory = tempfile.mkdtemp(prefix="lattice-pg-")
        prefix: list[str] = []
        if os.geteuid() == 0:
            # the server refuses to run as root
            prefix = ["runuser", "-u", "nobody", "--"]
            shutil.chown(directory, "nobody")
        data = os.path.join(directory, "data")
        env = dict(os.environ, LC_ALL="C")
        stop = [*prefix, f"{binaries}/pg_ctl", "-D", data, "-m", "immediate", "stop"]
        try:
            subprocess.run(
                [
                    *prefix,
                    f"{binaries}/initdb",
                    "-E",
                    "UTF8",
                    "-D",
                    data,
                    "-A",
                    "trust",
                    "-U",
                    "lattice",
                ],
                check=True,
                capture_output=True,
                env=env,
                cwd=directory,
            )
            subprocess.run(
                [
                    *prefix,
                    f"{binaries}/pg_ctl",
                    "-D",
                    data,
                    "-w",
                    "-l",
                    os.path.join(directory, "log"),
                    "-o",
                    f"-c listen_addresses='' -k {directory}",
                    "start",
                ],
                check=True,
                capture_output=True,
                env=env,
                cwd=directory,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            output = getattr(e, "stderr", b"") or b""
            cls.skip = f"cannot start PostgreSQL: {e} {output.decode(errors='replace')[-300:]}"
            shutil.rmtree(directory, ignore_errors=True)
            return

        def cleanup() -> None:
            subprocess.run(stop, check=False, capture_output=True, cwd=directory)
            shutil.rmtree(directory, ignore_errors=True)

        atexit.register(cleanup)
        cls.url = f"postgresql://lattice@/postgres?host={directory}"


class PostgreSQLStoreTests(StoreContract, SynchronousTestCase):
    """
    The contract on a real PostgreSQL server (unix socket only, in a temporary
    directory, run as C{nobody} when the tests run as root).
    """

    def setUp(self) -> None:
        self.url = _Server.get()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            for table in TABLES:
                connection.execute(f"DROP TABLE IF EXISTS {table}")
        from pathlib import Path

        self.store = open_store(self.url, Path(self.mktemp()))
        self.addCleanup(self.store.close)

    def test_core_on_postgresql(self) -> None:
        """
        A discovery core whose store is PostgreSQL gossips, receives a
        message exactly once and keeps its peers across a restart.
        """
        from tests.discovery._helpers import Cluster, run

        cluster = Cluster(2)
        node = cluster.add("pg", store=self.store)
        cluster.rounds(self, 2)
        sender = cluster.nodes[0]
        answer = run(
            self, sender.send({"to_address": "bob@pg", "from_address": "a@s0", "content": "x"})
        )
        state = run(self, sender.message_status(answer["message_id"]))
        self.assertEqual(state["status"], "delivered")
        self.assertEqual(len(cluster.webhooks[2].delivered), 1)
        self.assertIsNotNone(self.store.inbound_ack(answer["message_id"]))
        restarted = cluster.add("pg2", identity=cluster.identities[2], store=self.store)
        self.assertEqual(set(restarted.table.records), set(node.table.records))

    def test_bigint_times(self) -> None:
        """
        Times are 64-bit integer columns in PostgreSQL.
        """
        import psycopg

        with psycopg.connect(self.url) as connection:
            row = connection.execute(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'outbound' AND column_name = 'next_attempt_at'"
            ).fetchone()
        assert row is not None
        self.assertEqual(row[0], "bigint")
