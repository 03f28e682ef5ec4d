"""
Contract tests for the KV storage interface, run against the SQLite engine and its fake.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.trial.unittest import SynchronousTestCase

from lattice.kv import Batch, Change, KeyValue, LeaseRecord, SQLiteStorage, StorageCorrupt
from lattice.kv.testing import MemoryStorage


def kv(key: bytes, rev: int, version: int = 1, value: bytes = b"v", create: int = 0) -> KeyValue:
    return KeyValue(key, create or rev, rev, version, value, 0)


if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object


class StorageContractMixin(_Base):
    """What every Storage implementation must do; mixed into a SynchronousTestCase."""

    def make(self) -> Any:
        """A fresh, loaded storage."""
        raise NotImplementedError

    def reopen(self, storage: Any) -> Any:
        """The same durable data, as a new process would find it (loaded)."""
        raise NotImplementedError

    def commit(self, storage: Any, batch: Batch) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        storage.submit(batch, results.append)
        self.settle(storage)
        return results

    def settle(self, storage: Any) -> None:
        """Make sure every submitted batch has been reported."""

    def test_empty(self) -> None:
        """A new database is at revision 1 with nothing in it."""
        _, state = self.reopen(self.make())
        self.assertEqual((state.revision, state.compact_revision), (1, 0))
        self.assertEqual(list(state.history), [])

    def test_batches_survive_reopen(self) -> None:
        """Committed changes, leases, metadata and revision come back after a reopen."""
        storage = self.make()
        changes = [Change(2, 0, b"a", kv(b"a", 2)), Change(2, 1, b"b", kv(b"b", 2))]
        results = self.commit(
            storage,
            Batch(
                2,
                changes=changes,
                leases_granted=[LeaseRecord(7, 30, "t")],
                meta={"auth": b"{}"},
            ),
        )
        self.assertEqual(results, [None])
        self.commit(storage, Batch(3, changes=[Change(3, 0, b"a", None)], leases_revoked=[7]))
        _, state = self.reopen(storage)
        self.assertEqual(state.revision, 3)
        self.assertEqual(list(state.history), [*changes, Change(3, 0, b"a", None)])
        self.assertEqual(list(state.leases), [])
        self.assertEqual(state.meta, {"auth": b"{}"})

    def test_compaction_survives_reopen(self) -> None:
        """Compacted history positions are gone after a reopen."""
        storage = self.make()
        self.commit(storage, Batch(2, changes=[Change(2, 0, b"a", kv(b"a", 2))]))
        self.commit(storage, Batch(3, changes=[Change(3, 0, b"a", kv(b"a", 3, 2, create=2))]))
        self.commit(storage, Batch(3, compact_revision=3, compacted=[(2, 0)]))
        _, state = self.reopen(storage)
        self.assertEqual(state.compact_revision, 3)
        self.assertEqual([(c.main, c.sub) for c in state.history], [(3, 0)])

    def test_callbacks_in_order(self) -> None:
        """Every batch is reported once, in submission order."""
        storage = self.make()
        seen: list[int] = []
        for revision in range(2, 12):
            change = Change(revision, 0, b"k%d" % revision, kv(b"k%d" % revision, revision))
            storage.submit(
                Batch(revision, changes=[change]),
                lambda error, revision=revision: seen.append(revision),
            )
        self.settle(storage)
        self.assertEqual(seen, list(range(2, 12)))
        _, state = self.reopen(storage)
        self.assertEqual(state.revision, 11)

    def test_snapshot(self) -> None:
        """A snapshot is delivered as bytes."""
        storage = self.make()
        self.commit(storage, Batch(2, changes=[Change(2, 0, b"a", kv(b"a", 2))]))
        results: list[object] = []
        storage.snapshot(results.append)
        self.settle(storage)
        self.assertIsInstance(results[0], bytes)


class MemoryStorageTests(StorageContractMixin, SynchronousTestCase):
    """The contract, for the in-memory fake."""

    def make(self) -> MemoryStorage:
        storage = MemoryStorage()
        storage.load()
        return storage

    def reopen(self, storage: MemoryStorage) -> Any:
        survivor = storage.crash()
        return survivor, survivor.load()

    def test_crash_loses_uncommitted(self) -> None:
        """Batches not yet committed are lost by a crash."""
        storage = MemoryStorage(auto_commit=False)
        results: list[object] = []
        storage.submit(Batch(2, changes=[Change(2, 0, b"a", kv(b"a", 2))]), results.append)
        self.assertEqual(results, [])
        self.assertEqual(storage.crash().load().revision, 1)


class SQLiteStorageTests(StorageContractMixin, SynchronousTestCase):
    """The contract, for SQLite committing synchronously in submit."""

    def path(self) -> Path:
        return Path(self.mktemp()) / "kv.sqlite"

    def make(self) -> SQLiteStorage:
        storage = SQLiteStorage(self.path(), lambda f: f(), threaded=False)
        storage.load()
        self.addCleanup(storage.close, lambda: None)
        return storage

    def reopen(self, storage: SQLiteStorage) -> Any:
        storage.close(lambda: None)
        again = SQLiteStorage(storage.path, lambda f: f(), threaded=False)
        state = again.load()
        self.addCleanup(again.close, lambda: None)
        return again, state

    def test_not_a_database(self) -> None:
        """A file that is not SQLite makes loading fail with a clear message."""
        path = self.path()
        path.parent.mkdir(parents=True)
        path.write_bytes(b"this is not a database" * 100)
        error = self.assertRaises(
            StorageCorrupt, SQLiteStorage(path, lambda f: f(), threaded=False).load
        )
        self.assertIn(str(path), str(error))
        self.assertIn("refusing to start", str(error))

    def test_foreign_database(self) -> None:
        """Another application's SQLite file is refused."""
        path = self.path()
        path.parent.mkdir(parents=True)
        sqlite3.connect(path).execute("CREATE TABLE x (y)").connection.commit()
        error = self.assertRaises(
            StorageCorrupt, SQLiteStorage(path, lambda f: f(), threaded=False).load
        )
        self.assertIn("not a Lattice KV database", str(error))

    def test_corrupted_pages(self) -> None:
        """A database with damaged pages makes loading fail instead of serving partial data."""
        storage = self.make()
        for revision in range(2, 300):
            key = b"key-%05d" % revision
            self.commit(
                storage,
                Batch(
                    revision,
                    changes=[Change(revision, 0, key, kv(key, revision, value=b"x" * 200))],
                ),
            )
        storage.close(lambda: None)
        data = bytearray(storage.path.read_bytes())
        for offset in range(8192, min(len(data), 40960), 7):
            data[offset] = 0xA5
        storage.path.write_bytes(bytes(data))
        error = self.assertRaises(
            StorageCorrupt, SQLiteStorage(storage.path, lambda f: f(), threaded=False).load
        )
        self.assertIn("refusing to start", str(error))

    def test_current_table_checked(self) -> None:
        """A current-value table that disagrees with history is reported as corruption."""
        storage = self.make()
        self.commit(storage, Batch(2, changes=[Change(2, 0, b"a", kv(b"a", 2))]))
        storage.close(lambda: None)
        connection = sqlite3.connect(storage.path)
        connection.execute("UPDATE current SET value = x'00'")
        connection.commit()
        connection.close()
        error = self.assertRaises(
            StorageCorrupt, SQLiteStorage(storage.path, lambda f: f(), threaded=False).load
        )
        self.assertIn("disagrees with history", str(error))

    def test_snapshot_is_a_database(self) -> None:
        """The snapshot is a complete SQLite database holding the committed keys."""
        storage = self.make()
        self.commit(storage, Batch(2, changes=[Change(2, 0, b"a", kv(b"a", 2))]))
        results: list[Any] = []
        storage.snapshot(results.append)
        copy = Path(self.mktemp())
        copy.write_bytes(results[0])
        rows = sqlite3.connect(copy).execute("SELECT key FROM current").fetchall()
        self.assertEqual(rows, [(b"a",)])

    def test_size(self) -> None:
        """The size on disk is reported and covers the part in use."""
        storage = self.make()
        total, in_use = storage.size()
        self.assertGreater(total, 0)
        self.assertLessEqual(in_use, total)


class ThreadedSQLiteStorageTests(StorageContractMixin, SynchronousTestCase):
    """The contract, for SQLite with its writer thread and group commit."""

    def setUp(self) -> None:
        self.delivered: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.outstanding = 0

    def deliver(self, function: Any) -> None:
        self.delivered.put(function)

    def make(self) -> SQLiteStorage:
        storage = SQLiteStorage(Path(self.mktemp()) / "kv.sqlite", self.deliver)
        storage.load()
        self.addCleanup(self.close, storage)
        return storage

    def close(self, storage: SQLiteStorage) -> None:
        closed: list[bool] = []
        storage.close(lambda: closed.append(True))
        while not closed:
            self.delivered.get(timeout=30)()

    def settle(self, storage: Any) -> None:
        marker: list[object] = []
        storage.snapshot(marker.append)
        while not marker:
            self.delivered.get(timeout=30)()

    def reopen(self, storage: SQLiteStorage) -> Any:
        self.close(storage)
        again = SQLiteStorage(storage.path, self.deliver)
        state = again.load()
        self.addCleanup(self.close, again)
        return again, state

    def test_group_commit(self) -> None:
        """Batches queued while the writer is busy are committed together, in order."""
        storage = self.make()
        entered, release = threading.Event(), threading.Event()

        def busy() -> bool:
            entered.set()
            return release.wait(30)

        self.patch(storage, "_snapshot", busy)
        storage.snapshot(lambda result: None)
        self.assertTrue(entered.wait(30))
        seen: list[int] = []

        def committed(revision: int) -> Any:
            return lambda error: seen.append(revision)

        for revision in range(2, 502):
            key = b"k%d" % revision
            storage.submit(
                Batch(revision, changes=[Change(revision, 0, key, kv(key, revision))]),
                committed(revision),
            )
        release.set()
        self.settle(storage)
        self.assertEqual(seen, list(range(2, 502)))
        self.assertEqual(storage.transactions, 1)
        _, state = self.reopen(storage)
        self.assertEqual(len(state.history), 500)

    def test_build_does_not_hold_writes(self) -> None:
        """
        A snapshot being built does not stop the writer: batches submitted after it commit
        while the builder runs, and the builder sees the state as of its request only.
        """
        storage = self.make()
        storage.submit(Batch(2, changes=[Change(2, 0, b"a", kv(b"a", 2))]), lambda e: None)
        entered, release = threading.Event(), threading.Event()
        seen: list[Any] = []

        def build(state: Any) -> bytes:
            seen.append(state)
            entered.set()
            release.wait(30)
            return b"built"

        results: list[object] = []
        storage.snapshot(results.append, build)
        self.assertTrue(entered.wait(30))
        committed: list[BaseException | None] = []
        storage.submit(Batch(3, changes=[Change(3, 0, b"b", kv(b"b", 3))]), committed.append)
        while not committed:
            self.delivered.get(timeout=30)()
        self.assertEqual(committed, [None])
        self.assertEqual(results, [])
        release.set()
        while not results:
            self.delivered.get(timeout=30)()
        self.assertEqual(results, [b"built"])
        self.assertEqual(seen[0].revision, 2)
        self.assertEqual([change.key for change in seen[0].history], [b"a"])
