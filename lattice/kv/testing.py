"""
Test doubles for the KV store.

:class:`MemoryStorage` is a verified fake of :class:`~lattice.kv._storage.Storage`: the same
contract tests (``tests/kv/test_storage.py``) run against it and against
:class:`~lattice.kv.SQLiteStorage`.  It commits when told to (or at once with
``auto_commit``), and :meth:`MemoryStorage.crash` forgets what was not committed, as a killed
process would.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from lattice.kv._mvcc import Change
from lattice.kv._storage import (
    Batch,
    CommitCallback,
    LeaseRecord,
    SnapshotBuilder,
    StoredState,
)

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """
    Storage in a Python dictionary.

    :param auto_commit: commit each batch as soon as it is submitted.
    """

    def __init__(self, *, auto_commit: bool = True) -> None:
        self.auto_commit = auto_commit
        self.pending: list[tuple[Batch, CommitCallback]] = []
        self.commits = 0
        self.closed = False
        self._revision = 1
        self._compact_revision = 0
        self._history: dict[tuple[int, int], Change] = {}
        self._leases: dict[int, LeaseRecord] = {}
        self._meta: dict[str, bytes] = {}

    def load(self) -> StoredState:
        """The committed state."""
        history = [self._history[position] for position in sorted(self._history)]
        return StoredState(
            self._revision,
            self._compact_revision,
            history,
            list(self._leases.values()),
            dict(self._meta),
        )

    def submit(self, batch: Batch, done: CommitCallback) -> None:
        """Queue ``batch`` (and commit it at once with ``auto_commit``)."""
        self.pending.append((batch, done))
        if self.auto_commit:
            self.commit()

    def commit(self, count: int | None = None) -> None:
        """Commit the first ``count`` pending batches (default: all) as one group."""
        if count is None:
            count = len(self.pending)
        group, self.pending = self.pending[:count], self.pending[count:]
        for batch, _ in group:
            self._apply(batch)
        if group:
            self.commits += 1
        for _, done in group:
            done(None)

    def fail(self, error: BaseException) -> None:
        """Fail every pending batch with ``error``."""
        group, self.pending = self.pending, []
        for _, done in group:
            done(error)

    def crash(self) -> MemoryStorage:
        """A new storage holding only what was committed here."""
        survivor = MemoryStorage(auto_commit=self.auto_commit)
        survivor._revision = self._revision
        survivor._compact_revision = self._compact_revision
        survivor._history = dict(self._history)
        survivor._leases = dict(self._leases)
        survivor._meta = dict(self._meta)
        return survivor

    def _apply(self, batch: Batch) -> None:
        for change in batch.changes:
            self._history[(change.main, change.sub)] = change
        for position in batch.compacted:
            del self._history[position]
        if batch.compact_revision is not None:
            self._compact_revision = batch.compact_revision
        for lease in batch.leases_granted:
            self._leases[lease.id] = lease
        for lease_id in batch.leases_revoked:
            self._leases.pop(lease_id, None)
        self._meta.update(batch.meta)
        self._revision = batch.revision

    def snapshot(
        self,
        done: Callable[[bytes | BaseException], None],
        build: SnapshotBuilder | None = None,
    ) -> None:
        """
        ``build`` applied to the committed state (after committing what is pending, with
        ``auto_commit``), at once; without ``build``, a JSON summary of that state.
        """
        if self.auto_commit:
            self.commit()
        if build is not None:
            try:
                result: bytes | BaseException = build(self.load())
            except Exception as e:
                result = e
            done(result)
            return
        state = {
            "revision": self._revision,
            "compact_revision": self._compact_revision,
            "keys": len(self._history),
        }
        done(json.dumps(state).encode())

    def size(self) -> tuple[int, int]:
        """A rough size: the bytes of keys and values held."""
        total = sum(
            len(change.key) + (len(change.kv.value) if change.kv else 0)
            for change in self._history.values()
        )
        return total, total

    def defragment(self, done: CommitCallback) -> None:
        """Nothing to give back."""
        done(None)

    def close(self, done: Callable[[], None]) -> None:
        """Commit what is pending and close."""
        self.commit()
        self.closed = True
        done()
