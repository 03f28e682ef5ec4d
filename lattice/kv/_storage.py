"""
The storage interface of the KV store.

The in-memory :class:`~lattice.kv._mvcc.MVCC` decides everything; storage only makes its
decisions durable, in order, and gives them back at start-up.  Each write becomes one
:class:`Batch`; storage commits batches in submission order, many per transaction, and reports
each commit through the callback given with it.  ``lattice.kv._sqlite`` is the default engine;
``lattice.kv.testing.MemoryStorage`` is its verified fake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lattice.kv._mvcc import Change

__all__ = [
    "Batch",
    "CommitCallback",
    "LeaseRecord",
    "SnapshotBuilder",
    "Storage",
    "StorageCorrupt",
    "StoredState",
]


class StorageCorrupt(Exception):
    """
    The database cannot be trusted; the message says which file and why.  The node refuses to
    start rather than serve partial data.
    """


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease as persisted: its ID, granted TTL in seconds and owning tenant."""

    id: int
    ttl: int
    tenant: str


@dataclass(slots=True)
class Batch:
    """
    Everything one write persists, atomically.

    ``revision`` is the store's revision after the write; ``changes`` the key versions
    written; ``compacted`` the history positions a compaction removed; ``meta`` named values
    to store (for example the authentication state).
    """

    revision: int
    changes: Sequence[Change] = ()
    compact_revision: int | None = None
    compacted: Sequence[tuple[int, int]] = ()
    leases_granted: Sequence[LeaseRecord] = ()
    leases_revoked: Sequence[int] = ()
    meta: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredState:
    """What storage gives back at start-up."""

    revision: int
    compact_revision: int
    history: Sequence[Change]
    leases: Sequence[LeaseRecord]
    meta: dict[str, bytes]


# Called once per batch after its commit (with None) or after it failed (with the error).
CommitCallback = Callable[[BaseException | None], None]

# Turns one consistent read of the committed state into a snapshot's bytes; run by the
# storage on its own thread.
SnapshotBuilder = Callable[[StoredState], bytes]


class Storage(Protocol):
    """A durable home for the KV store's batches."""

    def load(self) -> StoredState:
        """
        Open (creating if needed) and read everything back.  Blocking: call it from a thread,
        before any :meth:`submit`.

        :raises StorageCorrupt: the data cannot be trusted.
        """

    def submit(self, batch: Batch, done: CommitCallback) -> None:
        """
        Queue ``batch`` for commit after every batch submitted before it; ``done`` is called
        (through the delivery function the storage was built with) once it is durable.
        """

    def snapshot(
        self,
        done: Callable[[bytes | BaseException], None],
        build: SnapshotBuilder | None = None,
    ) -> None:
        """
        Take a consistent snapshot, in the order of submitted batches, and hand it (or the
        error) to ``done``.  With ``build``, the committed state (everything :meth:`load`
        would return) is read once and ``build`` turns it into bytes, both off the caller's
        thread; without, the bytes are the engine's own copy of its whole database.
        """

    def size(self) -> tuple[int, int]:
        """The database's size on disk and the part of it in use, in bytes."""

    def defragment(self, done: CommitCallback) -> None:
        """Give unused space back to the file system, in order with submitted batches."""

    def close(self, done: Callable[[], None]) -> None:
        """Commit what is queued, then stop; ``done`` is called when closed."""
