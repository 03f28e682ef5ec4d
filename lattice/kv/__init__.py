"""
The KV store: the etcd v3 API on an embedded MVCC store.

See ``docs/kv.rst``.
"""

from lattice.kv._errors import KVError
from lattice.kv._lease import Lease, Lessor
from lattice.kv._mvcc import DELETE, MVCC, PUT, Change, Event, KeyRange, KeyValue, prefix_end
from lattice.kv._sqlite import SQLiteStorage
from lattice.kv._storage import Batch, LeaseRecord, Storage, StorageCorrupt, StoredState
from lattice.kv._store import MAX_TXN_OPS, KVStore, check_txn
from lattice.kv._watch import WatchCompacted, Watcher, WatchHub
from lattice.kv.service import KVService

__all__ = [
    "DELETE",
    "MAX_TXN_OPS",
    "MVCC",
    "PUT",
    "Batch",
    "Change",
    "Event",
    "KVError",
    "KVService",
    "KVStore",
    "KeyRange",
    "KeyValue",
    "Lease",
    "LeaseRecord",
    "Lessor",
    "SQLiteStorage",
    "Storage",
    "StorageCorrupt",
    "StoredState",
    "WatchCompacted",
    "WatchHub",
    "Watcher",
    "check_txn",
    "prefix_end",
]
