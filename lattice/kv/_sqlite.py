"""
SQLite storage for the KV store: WAL, one writer thread, group commit.

Every SQLite call runs on one dedicated writer thread.  Batches queue up while a commit is in
progress and the next commit takes all of them (up to ``max_group``) in one transaction, so a
burst of concurrent writes costs one ``fsync``.  Each batch's callback is delivered back (through
the injected ``deliver``, ``reactor.callFromThread`` in the node) only after its transaction's
``COMMIT`` has returned.  ``durability = sync`` uses ``synchronous=FULL`` (the commit is on disk
when ``COMMIT`` returns); ``async`` uses ``synchronous=NORMAL`` (WAL: an operating system crash or
power loss may lose the last commits, a process crash loses nothing that was committed).

Tables: ``history`` (every retained version, keyed by revision), ``current`` (the live value of
each key, so that reading the current state never scans history), ``leases`` and ``meta``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lattice.kv._mvcc import Change, KeyValue
from lattice.kv._storage import (
    Batch,
    CommitCallback,
    LeaseRecord,
    SnapshotBuilder,
    StorageCorrupt,
    StoredState,
)

__all__ = ["Deliver", "SQLiteStorage"]

# How results get back to the caller's thread: reactor.callFromThread in the node.
Deliver = Callable[[Callable[[], None]], None]

APPLICATION_ID = 0x4C4B5631  # "LKV1"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    rev INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    key BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    value BLOB,
    lease INTEGER NOT NULL,
    PRIMARY KEY (rev, sub)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS current (
    key BLOB PRIMARY KEY,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    value BLOB NOT NULL,
    lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    ttl INTEGER NOT NULL,
    tenant TEXT NOT NULL
);
"""

_CLOSE = object()


class SQLiteStorage:
    """
    The default :class:`~lattice.kv._storage.Storage`.

    :param deliver: runs a callable on the caller's thread (``reactor.callFromThread``).
    :param threaded: ``False`` commits each batch synchronously in :meth:`submit`, for tests.
    """

    def __init__(
        self,
        path: Path,
        deliver: Deliver,
        *,
        durability: str = "sync",
        max_group: int = 2000,
        threaded: bool = True,
    ) -> None:
        if durability not in ("sync", "async"):
            raise ValueError(f"unknown durability mode {durability!r}")
        self.path = path
        self._deliver = deliver
        self._durability = durability
        self._max_group = max_group
        self._threaded = threaded
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._free_bytes = 0
        self._closing = False
        # Transactions committed so far (a group of batches counts once).
        self.transactions = 0

    # -- loading -------------------------------------------------------------------------

    def load(self) -> StoredState:
        """Open or create the database, check it, and read everything back."""
        try:
            return self._load()
        except sqlite3.DatabaseError as e:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None
            raise StorageCorrupt(
                f"{self.path}: the KV database is unreadable ({e}); refusing to start "
                f"rather than serve partial data. Restore it from a snapshot or move it away."
            ) from e

    def _load(self) -> StoredState:
        exists = self.path.exists() and self.path.stat().st_size > 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn = conn
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if exists and application_id != APPLICATION_ID:
            raise StorageCorrupt(
                f"{self.path}: not a Lattice KV database (application id {application_id:#x})"
            )
        check = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise StorageCorrupt(
                f"{self.path}: the KV database is corrupt ({'; '.join(check[:3])}); refusing "
                f"to start rather than serve partial data. Restore it from a snapshot."
            )
        conn.execute("PRAGMA journal_mode=WAL")
        synchronous = "FULL" if self._durability == "sync" else "NORMAL"
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if not exists:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise StorageCorrupt(f"{self.path}: unknown schema version {version}")
        conn.executescript(_SCHEMA)
        meta = {name: bytes(value) for name, value in conn.execute("SELECT name, value FROM meta")}
        revision = int(meta.pop("revision", b"1"))
        compact_revision = int(meta.pop("compact_revision", b"0"))
        history = [
            Change(
                rev,
                sub,
                bytes(key),
                None if version == 0 else KeyValue(bytes(key), create, rev, version, value, lease),
            )
            for rev, sub, key, create, version, value, lease in conn.execute(
                "SELECT rev, sub, key, create_rev, version, value, lease FROM history "
                "ORDER BY rev, sub"
            )
        ]
        self._check_current(conn, history)
        leases = [
            LeaseRecord(id, ttl, tenant)
            for id, ttl, tenant in conn.execute("SELECT id, ttl, tenant FROM leases")
        ]
        self._free_bytes = self._freelist_bytes(conn)
        if self._threaded:
            self._thread = threading.Thread(target=self._run, name="lattice-kv-writer", daemon=True)
            self._thread.start()
        return StoredState(revision, compact_revision, history, leases, meta)

    def _check_current(self, conn: sqlite3.Connection, history: list[Change]) -> None:
        live: dict[bytes, KeyValue] = {}
        for change in history:
            if change.kv is None:
                live.pop(change.key, None)
            else:
                live[change.key] = change.kv
        count = 0
        for key, create, mod, version, value, lease in conn.execute(
            "SELECT key, create_rev, mod_rev, version, value, lease FROM current"
        ):
            count += 1
            expected = live.get(bytes(key))
            if expected != KeyValue(bytes(key), create, mod, version, bytes(value), lease):
                raise StorageCorrupt(
                    f"{self.path}: the current-value table disagrees with history at key "
                    f"{bytes(key)!r}; refusing to start rather than serve inconsistent data"
                )
        if count != len(live):
            raise StorageCorrupt(
                f"{self.path}: the current-value table is missing {len(live) - count} key(s) "
                f"found in history; refusing to start rather than serve inconsistent data"
            )

    @staticmethod
    def _freelist_bytes(conn: sqlite3.Connection) -> int:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(free) * int(page)

    # -- the writer ----------------------------------------------------------------------

    def submit(self, batch: Batch, done: CommitCallback) -> None:
        """Queue ``batch``; ``done`` is delivered after its commit."""
        self._enqueue(("batch", batch, done))

    def snapshot(
        self,
        done: Callable[[bytes | BaseException], None],
        build: SnapshotBuilder | None = None,
    ) -> None:
        """
        Deliver ``build`` applied to the committed state; without ``build``, a copy of the
        database file's content (taken on the writer thread between two commits).

        With ``build``, the writer thread only opens a read transaction on a second
        connection between two commits, which pins that point in WAL; the state is read and
        built on a thread of its own, so writes keep committing meanwhile.
        """
        if build is None:
            self._enqueue(("call", self._snapshot, done))
        else:
            self._enqueue(("read", build, done))

    def defragment(self, done: CommitCallback) -> None:
        """``VACUUM`` the database, in order with the writes."""
        self._enqueue(("call", self._vacuum, done))

    def close(self, done: Callable[[], None]) -> None:
        """Commit what is queued, close the database and stop the writer thread."""
        if self._closing:
            self._deliver(done)
            return
        self._closing = True
        if self._threaded and self._thread is None:
            self._close_now()
            self._deliver(done)
            return
        self._enqueue((_CLOSE, None, done))

    def size(self) -> tuple[int, int]:
        """The database's size (with its WAL) and the part in use."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total, max(total - self._free_bytes, 0)

    def _enqueue(self, item: tuple[Any, Any, Any]) -> None:
        if self._threaded:
            self._queue.put(item)
        else:
            self._process([item])

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self._max_group:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not self._process(items):
                return

    def _process(self, items: list[tuple[Any, Any, Any]]) -> bool:
        """Run ``items`` in order, consecutive batches in one transaction; False after close."""
        group: list[tuple[Batch, CommitCallback]] = []
        for kind, payload, done in items:
            if kind == "batch":
                group.append((payload, done))
                continue
            self._commit(group)
            group = []
            if kind is _CLOSE:
                self._close_now()
                self._deliver(done)
                return False
            if kind == "read":
                self._start_read(payload, done)
            else:
                self._call(payload, done)
        self._commit(group)
        return True

    def _commit(self, group: list[tuple[Batch, CommitCallback]]) -> None:
        if not group:
            return
        error = self._failure
        if error is None:
            try:
                self._write([batch for batch, _ in group])
            except BaseException as e:
                # The in-memory store is now ahead of the disk: nothing can be
                # acknowledged any more.
                self._failure = error = e
        callbacks = [done for _, done in group]
        self._deliver(lambda: _fire(callbacks, error))

    def _write(self, batches: list[Batch]) -> None:
        conn = self._conn
        assert conn is not None, "load() first"
        history: list[tuple[int, int, bytes, int, int, bytes | None, int]] = []
        current: dict[bytes, KeyValue | None] = {}
        compacted: list[tuple[int, int]] = []
        granted: dict[int, LeaseRecord | None] = {}
        meta: dict[str, bytes] = {}
        for batch in batches:
            for change in batch.changes:
                kv = change.kv
                if kv is None:
                    history.append((change.main, change.sub, change.key, 0, 0, None, 0))
                else:
                    history.append(
                        (change.main, change.sub, kv.key, kv.create_revision, kv.version,
                         kv.value, kv.lease)
                    )  # fmt: skip
                current[change.key] = kv
            compacted.extend(batch.compacted)
            if batch.compact_revision is not None:
                meta["compact_revision"] = b"%d" % batch.compact_revision
            for lease in batch.leases_granted:
                granted[lease.id] = lease
            for lease_id in batch.leases_revoked:
                granted[lease_id] = None
            meta.update(batch.meta)
            meta["revision"] = b"%d" % batch.revision
        conn.execute("BEGIN IMMEDIATE")
        try:
            if history:
                conn.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?)", history)
            puts = [
                (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)
                for kv in current.values()
                if kv is not None
            ]
            if puts:
                conn.executemany("INSERT OR REPLACE INTO current VALUES (?, ?, ?, ?, ?, ?)", puts)
            deletes = [(key,) for key, kv in current.items() if kv is None]
            if deletes:
                conn.executemany("DELETE FROM current WHERE key = ?", deletes)
            if compacted:
                conn.executemany("DELETE FROM history WHERE rev = ? AND sub = ?", compacted)
            for lease_id, record in granted.items():
                if record is None:
                    conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                        (record.id, record.ttl, record.tenant),
                    )
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", sorted(meta.items()))
            conn.execute("COMMIT")
            self.transactions += 1
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _call(self, function: Callable[[], Any], done: Callable[[Any], None]) -> None:
        try:
            result = function()
        except Exception as e:
            result = e
        self._deliver(lambda: done(result))

    def _snapshot(self) -> bytes:
        conn = self._conn
        assert conn is not None, "load() first"
        copy = sqlite3.connect(":memory:")
        try:
            conn.backup(copy)
            return copy.serialize()
        finally:
            copy.close()

    def _start_read(
        self, build: SnapshotBuilder, done: Callable[[bytes | BaseException], None]
    ) -> None:
        """
        Pin the committed state in a read transaction of a new connection (on the writer
        thread, so after every batch submitted before), then read and build it elsewhere.
        """
        reader: sqlite3.Connection | None = None
        try:
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # WAL: the transaction's view is fixed by its first read, not by BEGIN.
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.Error as e:
            if reader is not None:
                reader.close()
            error = e
            self._deliver(lambda: done(error))
            return
        pinned = reader

        def finish() -> None:
            try:
                result: bytes | BaseException = build(self._snapshot_state(pinned))
            except Exception as e:
                result = e
            finally:
                pinned.close()
            self._deliver(lambda: done(result))

        if self._threaded:
            threading.Thread(target=finish, name="kv-snapshot", daemon=True).start()
        else:
            finish()

    @staticmethod
    def _snapshot_state(conn: sqlite3.Connection) -> StoredState:
        """Everything committed, as seen by ``conn``'s open read transaction."""
        try:
            meta = {name: bytes(value) for name, value in conn.execute("SELECT * FROM meta")}
            history = [
                Change(
                    rev,
                    sub,
                    bytes(key),
                    None
                    if version == 0
                    else KeyValue(bytes(key), create, rev, version, bytes(value), lease),
                )
                for rev, sub, key, create, version, value, lease in conn.execute(
                    "SELECT rev, sub, key, create_rev, version, value, lease FROM history "
                    "ORDER BY rev, sub"
                )
            ]
            rows = conn.execute("SELECT id, ttl, tenant FROM leases ORDER BY id")
            leases = [LeaseRecord(id, ttl, tenant) for id, ttl, tenant in rows]
        finally:
            conn.execute("COMMIT")
        revision = int(meta.pop("revision", b"1"))
        compact_revision = int(meta.pop("compact_revision", b"0"))
        return StoredState(revision, compact_revision, history, leases, meta)

    def _vacuum(self) -> None:
        conn = self._conn
        assert conn is not None, "load() first"
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._free_bytes = self._freelist_bytes(conn)

    def _close_now(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


def _fire(callbacks: list[CommitCallback], error: BaseException | None) -> None:
    for done in callbacks:
        done(error)
