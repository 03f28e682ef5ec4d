"""Tests for lattice.kv._store: etcd's apply semantics over MVCC, leases, watches, durability."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lattice.kv import DELETE, PUT, KeyRange, KVError, KVStore, WatchCompacted
from lattice.kv._proto import rpc_pb2 as pb
from lattice.kv.testing import MemoryStorage

R = pb.RangeRequest
C = pb.Compare


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(auto_commit: bool = True) -> tuple[KVStore, MemoryStorage, Clock]:
    storage = MemoryStorage(auto_commit=auto_commit)
    clock = Clock()
    store = KVStore(storage, clock, cluster_id=11, member_id=22)
    store.restore(storage.load())
    return store, storage, clock


def put(store: KVStore, key: bytes, value: bytes = b"v", **kw: Any) -> pb.PutResponse:
    return store.put(pb.PutRequest(key=key, value=value, **kw), "t")[0]


def keys(response: pb.RangeResponse) -> list[bytes]:
    return [kv.key for kv in response.kvs]


def op_put(key: bytes, value: bytes = b"v", **kw: Any) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


class KVTests(SynchronousTestCase):
    """Range, Put and DeleteRange as etcd answers them."""

    def test_header(self) -> None:
        """Responses carry cluster, member, revision and term."""
        store, _, _ = make()
        header = put(store, b"a").header
        self.assertEqual(
            (header.cluster_id, header.member_id, header.revision, header.raft_term),
            (11, 22, 2, 1),
        )

    def test_put_prev_kv(self) -> None:
        """prev_kv returns the version replaced."""
        store, _, _ = make()
        put(store, b"a", b"1")
        response = put(store, b"a", b"2", prev_kv=True)
        self.assertEqual((response.prev_kv.value, response.prev_kv.version), (b"1", 1))

    def test_ignore_value_and_lease(self) -> None:
        """ignore_value keeps the value; ignore_lease keeps the lease."""
        store, _, _ = make()
        lease, _ = store.lease_grant(0, 60, "t")
        put(store, b"a", b"1", lease=lease.id)
        put(store, b"a", b"", ignore_value=True, ignore_lease=True)
        kv = store.range(R(key=b"a")).kvs[0]
        self.assertEqual((kv.value, kv.lease, kv.version), (b"1", lease.id, 2))

    def test_ignore_value_missing_key(self) -> None:
        """ignore_value on a missing key is etcd's key-not-found error."""
        store, _, _ = make()
        error = self.assertRaises(KVError, put, store, b"a", b"", ignore_value=True)
        self.assertEqual(error.message, "etcdserver: key not found")

    def test_ignore_value_with_value(self) -> None:
        """ignore_value together with a value is refused."""
        store, _, _ = make()
        error = self.assertRaises(KVError, put, store, b"a", b"x", ignore_value=True)
        self.assertEqual(error.message, "etcdserver: value is provided")

    def test_empty_key(self) -> None:
        """An empty key is etcd's key-not-provided error."""
        store, _, _ = make()
        error = self.assertRaises(KVError, put, store, b"")
        self.assertEqual(
            (error.code, error.message), ("INVALID_ARGUMENT", "etcdserver: key is not provided")
        )

    def test_unknown_lease(self) -> None:
        """A put with an unknown lease fails and changes nothing."""
        store, _, _ = make()
        error = self.assertRaises(KVError, put, store, b"a", lease=99)
        self.assertEqual(
            (error.code, error.message), ("NOT_FOUND", "etcdserver: requested lease not found")
        )
        self.assertEqual(store.revision, 1)

    def test_delete_range(self) -> None:
        """A delete bumps the revision once and returns what it deleted."""
        store, _, _ = make()
        for key in (b"a", b"ab", b"b"):
            put(store, key)
        response, _ = store.delete_range(
            pb.DeleteRangeRequest(key=b"a", range_end=b"b", prev_kv=True)
        )
        self.assertEqual(response.deleted, 2)
        self.assertEqual([kv.key for kv in response.prev_kvs], [b"a", b"ab"])
        self.assertEqual(response.header.revision, 5)
        nothing, _ = store.delete_range(pb.DeleteRangeRequest(key=b"zz"))
        self.assertEqual((nothing.deleted, nothing.header.revision), (0, 5))

    def test_range_forms(self) -> None:
        """Single key, prefix, from-key and all-keys ranges select what etcd selects."""
        store, _, _ = make()
        for key in (b"a", b"ab", b"b", b"c"):
            put(store, key)
        self.assertEqual(keys(store.range(R(key=b"a"))), [b"a"])
        self.assertEqual(keys(store.range(R(key=b"a", range_end=b"b"))), [b"a", b"ab"])
        self.assertEqual(keys(store.range(R(key=b"b", range_end=b"\0"))), [b"b", b"c"])
        self.assertEqual(len(store.range(R(key=b"\0", range_end=b"\0")).kvs), 4)

    def test_limit_count_more(self) -> None:
        """limit truncates, more says so, and count is the full count."""
        store, _, _ = make()
        for key in (b"a", b"b", b"c"):
            put(store, key)
        response = store.range(R(key=b"a", range_end=b"\0", limit=2))
        self.assertEqual((keys(response), response.more, response.count), ([b"a", b"b"], True, 3))

    def test_count_and_keys_only(self) -> None:
        """count_only returns no pairs; keys_only returns no values."""
        store, _, _ = make()
        put(store, b"a", b"1")
        counted = store.range(R(key=b"a", range_end=b"\0", count_only=True))
        self.assertEqual((len(counted.kvs), counted.count), (0, 1))
        only = store.range(R(key=b"a", keys_only=True))
        self.assertEqual((only.kvs[0].key, only.kvs[0].value), (b"a", b""))

    def test_sort(self) -> None:
        """Sorting by a target other than the key defaults to ascending."""
        store, _, _ = make()
        put(store, b"a", b"3")
        put(store, b"b", b"1")
        put(store, b"c", b"2")
        every: dict[str, Any] = {"key": b"a", "range_end": b"\0"}
        self.assertEqual(keys(store.range(R(**every, sort_target=R.VALUE))), [b"b", b"c", b"a"])
        self.assertEqual(
            keys(store.range(R(**every, sort_target=R.KEY, sort_order=R.DESCEND))),
            [b"c", b"b", b"a"],
        )
        self.assertEqual(
            keys(store.range(R(**every, sort_target=R.MOD, sort_order=R.DESCEND, limit=1))),
            [b"c"],
        )

    def test_revision_filters(self) -> None:
        """min/max mod and create revision filters prune results."""
        store, _, _ = make()
        put(store, b"a")
        put(store, b"b")
        put(store, b"a")
        every: dict[str, Any] = {"key": b"a", "range_end": b"\0"}
        self.assertEqual(keys(store.range(R(**every, min_mod_revision=4))), [b"a"])
        self.assertEqual(keys(store.range(R(**every, max_create_revision=2))), [b"a"])
        self.assertEqual(keys(store.range(R(**every, min_create_revision=3))), [b"b"])

    def test_range_at_revision(self) -> None:
        """A range at an old revision, and errors for compacted and future revisions."""
        store, _, _ = make()
        put(store, b"a", b"1")
        put(store, b"a", b"2")
        self.assertEqual(store.range(R(key=b"a", revision=2)).kvs[0].value, b"1")
        # the header carries the store's revision, as etcd's does
        self.assertEqual(store.range(R(key=b"a", revision=2)).header.revision, 3)
        store.compact(pb.CompactionRequest(revision=3))
        self.assertRaises(KVError, store.range, R(key=b"a", revision=2))
        error = self.assertRaises(KVError, store.range, R(key=b"a", revision=9))
        self.assertEqual(error.message, "etcdserver: mvcc: required revision is a future revision")


class TxnTests(SynchronousTestCase):
    """Txn as etcd applies it."""

    def txn(self, store: KVStore, **kw: Any) -> pb.TxnResponse:
        return store.txn(pb.TxnRequest(**kw), "t")[0]

    def test_success_branch_shares_revision(self) -> None:
        """A successful txn applies its success ops at one revision."""
        store, _, _ = make()
        put(store, b"a", b"1")
        response = self.txn(
            store,
            compare=[C(key=b"a", target=C.VALUE, result=C.EQUAL, value=b"1")],
            success=[op_put(b"b"), op_put(b"c"), pb.RequestOp(request_range=R(key=b"b"))],
            failure=[op_put(b"x")],
        )
        self.assertTrue(response.succeeded)
        self.assertEqual(response.header.revision, 3)
        self.assertEqual(store.range(R(key=b"c")).kvs[0].mod_revision, 3)
        self.assertEqual(response.responses[2].response_range.kvs[0].key, b"b")

    def test_operation_headers(self) -> None:
        """
        As etcd: each operation's header holds only the revision it saw or wrote, the
        transaction's new one once it changed something; a nested txn's header is empty.
        """
        store, _, _ = make()
        put(store, b"a", b"1")
        nothing = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"none"))
        read = pb.RequestOp(request_range=R(key=b"a"))
        response = self.txn(
            store,
            success=[
                read,
                nothing,
                op_put(b"b"),
                read,
                nothing,
                pb.RequestOp(request_txn=pb.TxnRequest(success=[read])),
            ],
        )
        headers = [getattr(r, r.WhichOneof("response")).header for r in response.responses]
        self.assertEqual([h.revision for h in headers], [2, 2, 3, 3, 3, 0])
        self.assertEqual([h.member_id for h in headers], [0] * 6)
        self.assertTrue(response.responses[5].response_txn.HasField("header"))
        nested = response.responses[5].response_txn.responses[0].response_range.header
        self.assertEqual(nested.revision, 3)
        self.assertEqual((response.header.revision, response.header.member_id > 0), (3, True))

    def test_failure_branch(self) -> None:
        """A failed compare runs the failure ops."""
        store, _, _ = make()
        response = self.txn(
            store,
            compare=[C(key=b"a", target=C.VERSION, result=C.GREATER, version=0)],
            success=[op_put(b"s")],
            failure=[op_put(b"f")],
        )
        self.assertFalse(response.succeeded)
        self.assertEqual(keys(store.range(R(key=b"\0", range_end=b"\0"))), [b"f"])

    def test_missing_key_compares(self) -> None:
        """A missing key has version 0, and a value compare on it always fails."""
        store, _, _ = make()
        self.assertTrue(
            self.txn(
                store, compare=[C(key=b"a", target=C.CREATE, result=C.EQUAL, create_revision=0)]
            ).succeeded
        )
        self.assertFalse(
            self.txn(
                store, compare=[C(key=b"a", target=C.VALUE, result=C.NOT_EQUAL, value=b"x")]
            ).succeeded
        )

    def test_read_only_txn_keeps_revision(self) -> None:
        """A txn without writes does not move the revision."""
        store, _, _ = make()
        put(store, b"a")
        response = self.txn(store, success=[pb.RequestOp(request_range=R(key=b"a"))])
        self.assertEqual((response.header.revision, store.revision), (2, 2))

    def test_nested_txn(self) -> None:
        """Nested txns take their branch from compares made before the outer txn writes."""
        store, _, _ = make()
        inner = pb.TxnRequest(
            compare=[C(key=b"a", target=C.VERSION, result=C.EQUAL, version=0)],
            success=[op_put(b"inner-success")],
            failure=[op_put(b"inner-failure")],
        )
        response = self.txn(store, success=[op_put(b"a"), pb.RequestOp(request_txn=inner)])
        self.assertTrue(response.responses[1].response_txn.succeeded)
        self.assertEqual(keys(store.range(R(key=b"\0", range_end=b"\0"))), [b"a", b"inner-success"])
        self.assertEqual(store.revision, 2)

    def test_duplicate_key(self) -> None:
        """Putting one key twice, or putting inside a deleted range, is refused."""
        store, _, _ = make()
        error = self.assertRaises(KVError, self.txn, store, success=[op_put(b"a"), op_put(b"a")])
        self.assertEqual(error.message, "etcdserver: duplicate key given in txn request")
        delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a", range_end=b"b"))
        self.assertRaises(KVError, self.txn, store, success=[delete, op_put(b"ab")])

    def test_same_key_in_both_nested_branches(self) -> None:
        """A nested txn may put one key in both of its branches."""
        store, _, _ = make()
        inner = pb.TxnRequest(success=[op_put(b"k")], failure=[op_put(b"k")])
        self.txn(store, success=[pb.RequestOp(request_txn=inner)])
        self.assertEqual(keys(store.range(R(key=b"k"))), [b"k"])

    def test_too_many_ops(self) -> None:
        """More than 128 ops is etcd's too-many-operations error."""
        store, _, _ = make()
        ops = [op_put(b"k%d" % i) for i in range(129)]
        error = self.assertRaises(KVError, self.txn, store, success=ops)
        self.assertEqual(error.message, "etcdserver: too many operations in txn request")
        self.txn(store, success=ops[:128])
        self.assertEqual(store.range(R(key=b"k", range_end=b"l", count_only=True)).count, 128)

    def test_nothing_half_applied(self) -> None:
        """A txn whose later op fails applies none of its ops."""
        store, storage, _ = make()
        self.assertRaises(KVError, self.txn, store, success=[op_put(b"a"), op_put(b"b", lease=42)])
        self.assertEqual(store.revision, 1)
        self.assertEqual(store.range(R(key=b"a")).count, 0)
        self.assertEqual(storage.load().history, [])

    def test_txn_range_compacted(self) -> None:
        """A range op at a compacted revision fails the whole txn before anything is written."""
        store, _, _ = make()
        put(store, b"a")
        put(store, b"a")
        store.compact(pb.CompactionRequest(revision=3))
        self.assertRaises(
            KVError,
            self.txn,
            store,
            success=[op_put(b"b"), pb.RequestOp(request_range=R(key=b"a", revision=2))],
        )
        self.assertEqual(store.range(R(key=b"b")).count, 0)


class LeaseTests(SynchronousTestCase):
    """Leases: grant, attach, revoke and expiry."""

    def test_revoke_deletes_keys_in_one_revision(self) -> None:
        """Revoking a lease deletes every attached key at one revision."""
        store, _, _ = make()
        store.lease_grant(5, 60, "t")
        put(store, b"a", lease=5)
        put(store, b"b", lease=5)
        put(store, b"c")
        store.lease_revoke(5, "t")
        self.assertEqual(store.revision, 5)
        self.assertEqual(keys(store.range(R(key=b"\0", range_end=b"\0"))), [b"c"])
        self.assertRaises(KVError, store.lessor.lookup, 5)

    def test_expiry(self) -> None:
        """An expired lease's keys are deleted when leases are expired."""
        store, _, clock = make()
        store.lease_grant(5, 10, "t")
        put(store, b"a", lease=5)
        self.assertEqual(store.expire_leases(), [])
        clock.now += 10
        self.assertEqual(store.expire_leases(), [5])
        self.assertEqual(store.range(R(key=b"a")).count, 0)

    def test_key_moves_between_leases(self) -> None:
        """Re-putting a key under another lease detaches it from the first."""
        store, _, _ = make()
        store.lease_grant(1, 60, "t")
        store.lease_grant(2, 60, "t")
        put(store, b"a", lease=1)
        put(store, b"a", lease=2)
        store.lease_revoke(1, "t")
        self.assertEqual(store.range(R(key=b"a")).count, 1)
        self.assertEqual(store.lessor.lookup(2).keys, {b"a"})

    def test_other_tenant(self) -> None:
        """A tenant cannot use another tenant's lease."""
        store, _, _ = make()
        store.lease_grant(1, 60, "other")
        self.assertRaises(KVError, put, store, b"a", lease=1)
        self.assertRaises(KVError, store.lease_revoke, 1, "t")

    def test_duplicate_id(self) -> None:
        """Granting an ID in use is etcd's lease-exists error."""
        store, _, _ = make()
        store.lease_grant(1, 60, "t")
        error = self.assertRaises(KVError, store.lease_grant, 1, 60, "t")
        self.assertEqual(error.message, "etcdserver: lease already exists")

    def test_restore(self) -> None:
        """Leases and their keys survive a restart, with a fresh TTL."""
        store, storage, clock = make()
        store.lease_grant(1, 60, "t")
        put(store, b"a", lease=1)
        again = KVStore(storage.crash(), clock)
        again.restore(storage.load())
        self.assertEqual(again.lessor.lookup(1, "t").keys, {b"a"})


class WatchTests(SynchronousTestCase):
    """Watches through the store: history, then live, only what is durable."""

    def watch(
        self, store: KVStore, key_range: KeyRange, start: int = 0, **kw: Any
    ) -> list[list[tuple[int, int, bytes]]]:
        received: list[list[tuple[int, int, bytes]]] = []
        store.hub.watch(
            key_range,
            start,
            lambda watcher, events: received.append(
                [(e.type, e.kv.mod_revision, e.kv.key) for e in events]
            ),
            **kw,
        )
        return received

    def test_replay_then_live(self) -> None:
        """History from the start revision arrives first, then live events, no gap, no repeat."""
        store, _, _ = make()
        put(store, b"a")
        put(store, b"b")
        received = self.watch(store, KeyRange(b"a", b"\0"), start=2)
        self.assertEqual(received, [[(PUT, 2, b"a"), (PUT, 3, b"b")]])
        store.delete_range(pb.DeleteRangeRequest(key=b"a"))
        self.assertEqual(received[1:], [[(DELETE, 4, b"a")]])

    def test_only_durable(self) -> None:
        """Events reach watchers only once committed."""
        store, storage, _ = make(auto_commit=False)
        received = self.watch(store, KeyRange(b"a"))
        put(store, b"a")
        self.assertEqual(received, [])
        storage.commit()
        self.assertEqual(received, [[(PUT, 2, b"a")]])

    def test_replay_stops_at_durable(self) -> None:
        """A new watcher replays only committed revisions; the rest arrives when committed."""
        store, storage, _ = make(auto_commit=False)
        put(store, b"a")
        storage.commit()
        put(store, b"a")
        received = self.watch(store, KeyRange(b"a"), start=1)
        self.assertEqual(received, [[(PUT, 2, b"a")]])
        storage.commit()
        self.assertEqual(received, [[(PUT, 2, b"a")], [(PUT, 3, b"a")]])

    def test_txn_events_grouped(self) -> None:
        """A txn's events arrive together, in sub-revision order."""
        store, _, _ = make()
        received = self.watch(store, KeyRange(b"\0", b"\0"))
        store.txn(pb.TxnRequest(success=[op_put(b"b"), op_put(b"a")]), "t")
        self.assertEqual(received, [[(PUT, 2, b"b"), (PUT, 2, b"a")]])

    def test_filters(self) -> None:
        """NOPUT and NODELETE filters drop those events."""
        store, _, _ = make()
        received = self.watch(store, KeyRange(b"a"), no_put=True)
        put(store, b"a")
        store.delete_range(pb.DeleteRangeRequest(key=b"a"))
        self.assertEqual(received, [[(DELETE, 3, b"a")]])

    def test_compacted(self) -> None:
        """Watching from a compacted revision reports the compaction revision."""
        store, _, _ = make()
        put(store, b"a")
        put(store, b"a")
        store.compact(pb.CompactionRequest(revision=3))
        error = self.assertRaises(WatchCompacted, self.watch, store, KeyRange(b"a"), 2)
        self.assertEqual(error.compact_revision, 3)

    def test_lease_expiry_is_one_revision(self) -> None:
        """Watchers see every key of an expired lease deleted at one revision."""
        store, _, clock = make()
        store.lease_grant(1, 5, "t")
        put(store, b"a", lease=1)
        put(store, b"b", lease=1)
        received = self.watch(store, KeyRange(b"\0", b"\0"))
        clock.now += 6
        store.expire_leases()
        self.assertEqual(received, [[(DELETE, 4, b"a"), (DELETE, 4, b"b")]])


class DurabilityTests(SynchronousTestCase):
    """Writes are acknowledged only once durable."""

    def test_write_waits_for_commit(self) -> None:
        """when_durable fires for a write only after storage commits it."""
        store, storage, _ = make(auto_commit=False)
        _, seq = store.put(pb.PutRequest(key=b"a"), "t")
        fired: list[object] = []
        store.when_durable(seq, fired.append)
        self.assertEqual(fired, [])
        storage.commit()
        self.assertEqual(fired, [None])

    def test_read_barrier(self) -> None:
        """A read waits for every write applied before it."""
        store, storage, _ = make(auto_commit=False)
        store.put(pb.PutRequest(key=b"a"), "t")
        fired: list[object] = []
        store.when_durable(store.read_barrier(), fired.append)
        self.assertEqual(fired, [])
        storage.commit()
        self.assertEqual(fired, [None])

    def test_crash_keeps_acknowledged(self) -> None:
        """After a crash, what was committed is back and what was not is gone."""
        store, storage, clock = make(auto_commit=False)
        store.put(pb.PutRequest(key=b"a"), "t")
        storage.commit()
        store.put(pb.PutRequest(key=b"b"), "t")
        again = KVStore(storage.crash(), clock)
        again.restore(storage.crash().load())
        self.assertEqual(keys(again.range(R(key=b"\0", range_end=b"\0"))), [b"a"])
        self.assertEqual(again.revision, 2)

    def test_storage_failure(self) -> None:
        """A failed commit fails its waiters and every later write."""
        store, storage, _ = make(auto_commit=False)
        _, seq = store.put(pb.PutRequest(key=b"a"), "t")
        fired: list[object] = []
        store.when_durable(seq, fired.append)
        storage.fail(OSError("disk gone"))
        self.assertIsInstance(fired[0], OSError)
        error = self.assertRaises(KVError, store.put, pb.PutRequest(key=b"b"), "t")
        self.assertEqual(error.code, "UNAVAILABLE")


class FailureHookTests(SynchronousTestCase):
    """The store reports the first storage failure to its owner."""

    def test_on_failure(self) -> None:
        """on_failure is called once, with the storage error."""
        storage = MemoryStorage(auto_commit=False)
        seen: list[BaseException] = []
        store = KVStore(storage, Clock(), on_failure=seen.append)
        store.restore(storage.load())
        store.put(pb.PutRequest(key=b"a"), "t")
        store.put(pb.PutRequest(key=b"b"), "t")
        error = OSError("gone")
        storage.fail(error)
        self.assertEqual(seen, [error])

    def test_expired_lease_cannot_be_renewed(self) -> None:
        """A keep-alive after expiry (before the sweep) finds no lease."""
        store, _, clock = make()
        store.lease_grant(1, 5, "t")
        clock.now += 5
        self.assertRaises(KVError, store.lessor.renew, 1, "t")
