"""
The multi-version key space: revisions, key history, compaction.

Pure and synchronous (etcd's ``mvcc`` package, minus storage): one monotonic revision for the
whole store; each key carries its create and mod revisions, a version (reset by a delete) and a
lease.  Every write of one transaction shares one revision and gets its own sub-revision.  The
whole history since the last compaction stays in memory, indexed per key, so that reads at past
revisions and watch replays never touch storage.  Persisting what changes is the caller's job:
every write transaction hands back its :class:`Change` list.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from lattice.kv._errors import compacted, future_revision

__all__ = [
    "DELETE",
    "MVCC",
    "PUT",
    "Change",
    "Event",
    "KeyRange",
    "KeyValue",
    "WriteTxn",
    "prefix_end",
]

PUT = 0
DELETE = 1


class KeyValue(NamedTuple):
    """One version of one key."""

    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int


class Event(NamedTuple):
    """A put or a delete, as watchers see it; a delete's ``kv`` holds the key and revision."""

    type: int
    kv: KeyValue
    prev_kv: KeyValue | None


class Change(NamedTuple):
    """One write as storage persists it: ``kv`` is ``None`` for a deletion (a tombstone)."""

    main: int
    sub: int
    key: bytes
    kv: KeyValue | None


# (main revision, sub revision, the version written or None for a tombstone)
_Record = tuple[int, int, KeyValue | None]


def prefix_end(prefix: bytes) -> bytes:
    """
    The ``range_end`` that selects every key starting with ``prefix`` (etcd's
    ``GetPrefixRangeEnd``): the prefix with its last byte below 0xff incremented, or ``b"\\0"``
    (every key from ``prefix`` on) when there is none.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        del end[-1]
    return b"\0"


class KeyRange(NamedTuple):
    """
    A key range in etcd's encoding: ``end`` empty means the single key, ``b"\\0"`` means every
    key from ``key`` on, anything else the half-open interval ``[key, end)``.
    """

    key: bytes
    end: bytes = b""

    @property
    def single(self) -> bool:
        """Whether the range names one key."""
        return not self.end

    @property
    def from_key(self) -> bool:
        """Whether the range is open-ended."""
        return self.end == b"\0"

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        if not self.end:
            return key == self.key
        if self.end == b"\0":
            return key >= self.key
        return self.key <= key < self.end


class MVCC:
    """
    The key space and its history.  A fresh store is at revision 1, as etcd's is.
    """

    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = 0
        self._index: dict[bytes, list[_Record]] = {}
        self._live: dict[bytes, KeyValue] = {}
        self._keys: list[bytes] = []

    # -- loading -------------------------------------------------------------------------

    def restore(self, revision: int, compact_revision: int, history: Iterable[Change]) -> None:
        """
        Rebuild the store from persisted history, given in (main, sub) order.
        """
        index: dict[bytes, list[_Record]] = {}
        live: dict[bytes, KeyValue] = {}
        last = (0, 0)
        for change in history:
            position = (change.main, change.sub)
            if position <= last:
                raise ValueError(f"history out of order at revision {change.main}.{change.sub}")
            last = position
            index.setdefault(change.key, []).append((change.main, change.sub, change.kv))
            if change.kv is None:
                live.pop(change.key, None)
            else:
                live[change.key] = change.kv
        if last[0] > revision:
            raise ValueError(f"history reaches revision {last[0]} beyond the store's {revision}")
        self._index = index
        self._live = live
        self._keys = sorted(index)
        self.revision = max(revision, 1)
        self.compact_revision = compact_revision

    def live_items(self) -> Iterator[KeyValue]:
        """Every live key's current version, in key order."""
        for key in self._keys:
            kv = self._live.get(key)
            if kv is not None:
                yield kv

    def __len__(self) -> int:
        return len(self._live)

    # -- reading -------------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        """The current version of ``key``, if it exists."""
        return self._live.get(key)

    def check_revision(self, revision: int) -> int:
        """
        The revision a read at ``revision`` (0 or less: the current one) is served at, or
        raise etcd's compacted or future revision error.
        """
        if revision <= 0:
            return self.revision
        if revision > self.revision:
            raise future_revision()
        if revision < self.compact_revision:
            raise compacted()
        return revision

    def _slice(self, key_range: KeyRange) -> list[bytes]:
        keys = self._keys
        if key_range.single:
            return [key_range.key] if key_range.key in self._index else []
        lo = bisect_left(keys, key_range.key)
        if key_range.from_key:
            return keys[lo:]
        if key_range.end <= key_range.key:
            return []
        return keys[lo : bisect_left(keys, key_range.end, lo)]

    def range(self, key_range: KeyRange, revision: int = 0) -> list[KeyValue]:
        """
        Every key in ``key_range`` as of ``revision`` (0: now), in key order.
        """
        at = self.check_revision(revision)
        if at == self.revision:
            if key_range.single:
                kv = self._live.get(key_range.key)
                return [] if kv is None else [kv]
            live = self._live
            return [kv for kv in map(live.get, self._slice(key_range)) if kv is not None]
        result = []
        for key in self._slice(key_range):
            kv = _version_at(self._index[key], at)
            if kv is not None:
                result.append(kv)
        return result

    def events(self, key_range: KeyRange, start: int, upto: int) -> list[Event]:
        """
        The events in ``key_range`` with revisions in ``[start, upto]``, in revision order,
        each with the previous version of its key when history still has it.
        """
        found: list[tuple[int, int, Event]] = []
        for key in self._slice(key_range):
            records = self._index[key]
            for i, (main, sub, kv) in enumerate(records):
                if main < start or main > upto:
                    continue
                prev = records[i - 1][2] if i else None
                if kv is None:
                    event = Event(DELETE, KeyValue(key, 0, main, 0, b"", 0), prev)
                else:
                    event = Event(PUT, kv, prev)
                found.append((main, sub, event))
        found.sort(key=lambda item: (item[0], item[1]))
        return [event for _, _, event in found]

    def hash(self, revision: int = 0) -> tuple[int, int]:
        """
        A CRC-32 of every retained version up to ``revision`` (0: now) and that revision.
        """
        at = self.check_revision(revision)
        crc = 0
        for key in self._keys:
            for main, sub, kv in self._index[key]:
                if main > at:
                    break
                crc = zlib.crc32(b"%d.%d" % (main, sub), crc)
                crc = zlib.crc32(key, crc)
                if kv is not None:
                    crc = zlib.crc32(kv.value, crc)
        return crc & 0xFFFFFFFF, at

    # -- writing -------------------------------------------------------------------------

    def write(self) -> WriteTxn:
        """
        Begin a write transaction.  Writes are visible to later reads at once; the revision
        moves (by one) when the transaction ends with at least one change.
        """
        return WriteTxn(self)

    def compact(self, revision: int) -> list[tuple[int, int]]:
        """
        Drop history before ``revision``: keep, for each key, its latest version at or below
        ``revision`` unless that is a deletion.  Returns the (main, sub) positions removed.
        """
        # etcd starts as if compacted at -1: compacting at 0 is accepted (and removes
        # nothing) until something has been compacted.
        if revision <= self.compact_revision and not revision == 0 == self.compact_revision:
            raise compacted()
        if revision > self.revision:
            raise future_revision()
        removed: list[tuple[int, int]] = []
        emptied = False
        for key in self._keys:
            records = self._index[key]
            upto = 0
            while upto < len(records) and records[upto][0] <= revision:
                upto += 1
            if upto == 0:
                continue
            keep_from = upto - 1 if records[upto - 1][2] is not None else upto
            if keep_from == 0:
                continue
            removed.extend((main, sub) for main, sub, _ in records[:keep_from])
            del records[:keep_from]
            if not records:
                del self._index[key]
                emptied = True
        if emptied:
            self._keys = [key for key in self._keys if key in self._index]
        self.compact_revision = revision
        return removed

    # -- used by WriteTxn ------------------------------------------------------------------

    def _record(self, key: bytes, record: _Record) -> None:
        records = self._index.get(key)
        if records is None:
            self._index[key] = [record]
            insort(self._keys, key)
        else:
            records.append(record)
        kv = record[2]
        if kv is None:
            del self._live[key]
        else:
            self._live[key] = kv

    def _unrecord(self, key: bytes, previous: KeyValue | None) -> None:
        records = self._index[key]
        records.pop()
        if not records:
            del self._index[key]
            del self._keys[bisect_left(self._keys, key)]
        if previous is None:
            self._live.pop(key, None)
        else:
            self._live[key] = previous


def _version_at(records: list[_Record], revision: int) -> KeyValue | None:
    for main, _, kv in reversed(records):
        if main <= revision:
            return kv
    return None


class WriteTxn:
    """
    The writes of one transaction, all at revision ``revision``.  End it with :meth:`end`
    (keep) or :meth:`abort` (undo every write).
    """

    def __init__(self, store: MVCC) -> None:
        self._store = store
        self.revision = store.revision + 1
        self.changes: list[Change] = []
        self.events: list[Event] = []
        self._undo: list[tuple[bytes, KeyValue | None]] = []

    @property
    def read_revision(self) -> int:
        """The revision reads inside this transaction observe."""
        return self.revision if self.changes else self._store.revision

    def put(self, key: bytes, value: bytes, lease: int) -> KeyValue | None:
        """Write ``key``; return its previous version."""
        store = self._store
        prev = store._live.get(key)
        if prev is None:
            kv = KeyValue(key, self.revision, self.revision, 1, value, lease)
        else:
            kv = KeyValue(key, prev.create_revision, self.revision, prev.version + 1, value, lease)
        sub = len(self.changes)
        store._record(key, (self.revision, sub, kv))
        self._undo.append((key, prev))
        self.changes.append(Change(self.revision, sub, key, kv))
        self.events.append(Event(PUT, kv, prev))
        return prev

    def delete(self, key: bytes) -> KeyValue | None:
        """Delete ``key`` if it exists; return the version deleted."""
        store = self._store
        prev = store._live.get(key)
        if prev is None:
            return None
        sub = len(self.changes)
        store._record(key, (self.revision, sub, None))
        self._undo.append((key, prev))
        self.changes.append(Change(self.revision, sub, key, None))
        self.events.append(Event(DELETE, KeyValue(key, 0, self.revision, 0, b"", 0), prev))
        return prev

    def delete_range(self, key_range: KeyRange) -> list[KeyValue]:
        """Delete every live key in ``key_range``; return the versions deleted."""
        deleted = []
        for kv in self._store.range(key_range):
            self.delete(kv.key)
            deleted.append(kv)
        return deleted

    def end(self) -> None:
        """Keep the writes: the store moves to this transaction's revision if any."""
        if self.changes:
            self._store.revision = self.revision
        self._undo = []

    def abort(self) -> None:
        """Undo every write of this transaction."""
        for key, previous in reversed(self._undo):
            self._store._unrecord(key, previous)
        self._undo = []
        self.changes = []
        self.events = []
