"""
The KV store: etcd's apply layer over the MVCC key space, the lessor, the watch hub and storage.

Synchronous and free of Twisted.  Each request is applied to memory at once, in arrival order;
its changes go to storage as one :class:`~lattice.kv._storage.Batch`; the method returns the
response together with a *sequence number*.  The caller answers only once
:meth:`KVStore.when_durable` says that sequence number is committed, so that a write is
acknowledged only when durable.  Reads return the sequence number of the last write they could
have observed, so that nothing is ever shown before it is durable.  Watchers see a revision
only once it is committed.

Requests arrive as etcd protobuf messages, already validated and mapped into the tenant's
keyspace by the API boundary.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from lattice.kv._errors import (
    KVError,
    duplicate_key,
    empty_key,
    key_not_found,
    lease_provided,
    too_many_ops,
    value_provided,
)
from lattice.kv._lease import Lease, Lessor
from lattice.kv._mvcc import DELETE, MVCC, Event, KeyRange, KeyValue, WriteTxn
from lattice.kv._proto import kv_pb2, rpc_pb2
from lattice.kv._storage import Batch, LeaseRecord, Storage, StoredState
from lattice.kv._watch import WatchHub

__all__ = ["MAX_TXN_OPS", "KVStore", "check_txn", "kv_to_pb"]

MAX_TXN_OPS = 128

_Sort = rpc_pb2.RangeRequest
_Cmp = rpc_pb2.Compare


def kv_to_pb(kv: KeyValue, out: kv_pb2.KeyValue, keys_only: bool = False) -> None:
    """Copy a key version into a protobuf ``KeyValue``."""
    out.key = kv.key
    out.create_revision = kv.create_revision
    out.mod_revision = kv.mod_revision
    out.version = kv.version
    if not keys_only:
        out.value = kv.value
    out.lease = kv.lease


def check_txn(request: rpc_pb2.TxnRequest, max_ops: int = MAX_TXN_OPS) -> None:
    """
    etcd's static checks of a transaction: operation counts, empty keys, and no key written
    twice (or written and deleted) along any path.
    """
    if (
        len(request.compare) > max_ops
        or len(request.success) > max_ops
        or len(request.failure) > max_ops
    ):
        raise too_many_ops()
    for compare in request.compare:
        if not compare.key:
            raise empty_key()
    for ops in (request.success, request.failure):
        for op in ops:
            _check_op(op, max_ops)
        _check_intervals(ops)


def _check_op(op: rpc_pb2.RequestOp, max_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        if not op.request_range.key:
            raise empty_key()
    elif kind == "request_put":
        check_put(op.request_put)
    elif kind == "request_delete_range":
        if not op.request_delete_range.key:
            raise empty_key()
    elif kind == "request_txn":
        check_txn(op.request_txn, max_ops)


def check_put(request: rpc_pb2.PutRequest) -> None:
    """etcd's static checks of a put."""
    if not request.key:
        raise empty_key()
    if request.ignore_value and request.value:
        raise value_provided()
    if request.ignore_lease and request.lease:
        raise lease_provided()


def _check_intervals(
    ops: Sequence[rpc_pb2.RequestOp],
) -> tuple[set[bytes], list[KeyRange]]:
    """etcd's ``checkIntervals``: the keys put and ranges deleted by ``ops``, or an error."""
    deletes = [
        KeyRange(op.request_delete_range.key, op.request_delete_range.range_end)
        for op in ops
        if op.WhichOneof("request") == "request_delete_range"
    ]
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, deletes_then = _check_intervals(op.request_txn.success)
        puts_else, deletes_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or _intersects(deletes, key):
                raise duplicate_key()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _intersects(deletes, key):
                raise duplicate_key()
            puts.add(key)
        deletes.extend(deletes_then)
        deletes.extend(deletes_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or _intersects(deletes, key):
            raise duplicate_key()
        puts.add(key)
    return puts, deletes


def _intersects(ranges: list[KeyRange], key: bytes) -> bool:
    return any(key in key_range for key_range in ranges)


class KVStore:
    """
    One node's key-value store.

    :param storage: where batches become durable.
    :param clock: monotonic seconds, for leases.
    :param durability: ``sync`` (answer after commit) or ``async`` (answer at once).
    """

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], float],
        *,
        durability: str = "sync",
        cluster_id: int = 0,
        member_id: int = 0,
        random_id: Callable[[], int] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.storage = storage
        self.mvcc = MVCC()
        self.lessor = Lessor(clock)
        self.hub = WatchHub(self.mvcc)
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.meta: dict[str, bytes] = {}
        self._sync = durability == "sync"
        self._on_failure = on_failure
        self._random_id = random_id or (lambda: random.getrandbits(63))
        self._submitted = 0
        self._committed = 0
        self._failure: BaseException | None = None
        self._waiters: deque[tuple[int, Callable[[BaseException | None], None]]] = deque()
        self._unpublished: deque[tuple[int, int, list[Event]]] = deque()

    # -- start-up ------------------------------------------------------------------------

    def restore(self, state: StoredState) -> None:
        """Take over the persisted state: keys, history, leases and metadata."""
        self.mvcc.restore(state.revision, state.compact_revision, state.history)
        self.hub.published = self.mvcc.revision
        self.meta = dict(state.meta)
        for record in state.leases:
            self.lessor.restore(record.id, record.ttl, record.tenant)
        for kv in self.mvcc.live_items():
            if kv.lease:
                self.lessor.attach(kv.lease, kv.key)

    # -- durability ----------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        """The storage error that stopped the store, if any."""
        return self._failure

    @property
    def revision(self) -> int:
        """The current (applied) revision."""
        return self.mvcc.revision

    def read_barrier(self) -> int:
        """The sequence number a read must wait for before it is answered."""
        return self._submitted if self._sync else 0

    def when_durable(self, seq: int, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback`` once ``seq`` is committed (at once if it already is)."""
        if self._failure is not None:
            callback(self._failure)
        elif seq <= self._committed or not self._sync:
            callback(None)
        else:
            self._waiters.append((seq, callback))

    def _submit(self, batch: Batch, events: list[Event]) -> int:
        if self._failure is not None:
            raise KVError("UNAVAILABLE", f"etcdserver: storage failed: {self._failure}")
        self._submitted += 1
        seq = self._submitted
        if events:
            self._unpublished.append((seq, batch.revision, events))
        self.storage.submit(batch, lambda error: self._committed_one(seq, error))
        return seq

    def _committed_one(self, seq: int, error: BaseException | None) -> None:
        if error is not None and self._failure is None:
            self._failure = error
            if self._on_failure is not None:
                self._on_failure(error)
        if self._failure is None:
            self._committed = seq
        while self._unpublished and self._unpublished[0][0] <= seq:
            _, revision, events = self._unpublished.popleft()
            if self._failure is None:
                self.hub.publish(revision, events)
        while self._waiters and (self._waiters[0][0] <= seq or self._failure is not None):
            _, callback = self._waiters.popleft()
            callback(self._failure)

    def save_meta(self, name: str, value: bytes) -> int:
        """Persist a named value (authentication state, for example); returns its seq."""
        self.meta[name] = value
        return self._submit(Batch(self.mvcc.revision, meta={name: value}), [])

    # -- headers -------------------------------------------------------------------------

    def header(self, header: rpc_pb2.ResponseHeader, revision: int | None = None) -> None:
        """Fill a response header."""
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.revision = self.mvcc.revision if revision is None else revision
        header.raft_term = 1

    # -- KV ------------------------------------------------------------------------------

    def range(self, request: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """Answer a Range request."""
        response = rpc_pb2.RangeResponse()
        self._range_into(request, response)
        # As etcd: the store's revision, also for a read at an older one.
        self.header(response.header)
        return response

    def _range_into(self, request: rpc_pb2.RangeRequest, response: rpc_pb2.RangeResponse) -> None:
        at = self.mvcc.check_revision(request.revision)
        kvs = self.mvcc.range(KeyRange(request.key, request.range_end), at)
        response.count = len(kvs)
        if request.count_only:
            return
        if request.min_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision >= request.min_mod_revision]
        if request.max_mod_revision:
            kvs = [kv for kv in kvs if kv.mod_revision <= request.max_mod_revision]
        if request.min_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision >= request.min_create_revision]
        if request.max_create_revision:
            kvs = [kv for kv in kvs if kv.create_revision <= request.max_create_revision]
        order = request.sort_order
        target = request.sort_target
        if target != _Sort.KEY and order == _Sort.NONE:
            order = _Sort.ASCEND
        if order != _Sort.NONE and not (target == _Sort.KEY and order == _Sort.ASCEND):
            field = {
                _Sort.KEY: 0,
                _Sort.VERSION: 3,
                _Sort.CREATE: 1,
                _Sort.MOD: 2,
                _Sort.VALUE: 4,
            }[target]
            kvs = sorted(kvs, key=lambda kv: kv[field], reverse=order == _Sort.DESCEND)
        if 0 < request.limit < len(kvs):
            kvs = kvs[: request.limit]
            response.more = True
        keys_only = request.keys_only
        add = response.kvs.add
        for kv in kvs:
            kv_to_pb(kv, add(), keys_only)

    def put(self, request: rpc_pb2.PutRequest, tenant: str) -> tuple[rpc_pb2.PutResponse, int]:
        """Apply a Put; returns the response and the seq to wait for."""
        check_put(request)
        self._check_put_state(request, tenant)
        response = rpc_pb2.PutResponse()
        write = self.mvcc.write()
        self._put(request, write, response)
        return response, self._finish(write, response.header)

    def delete_range(
        self, request: rpc_pb2.DeleteRangeRequest
    ) -> tuple[rpc_pb2.DeleteRangeResponse, int]:
        """Apply a DeleteRange; the revision moves only if something was deleted."""
        if not request.key:
            raise empty_key()
        response = rpc_pb2.DeleteRangeResponse()
        write = self.mvcc.write()
        self._delete(request, write, response)
        return response, self._finish(write, response.header)

    def txn(self, request: rpc_pb2.TxnRequest, tenant: str) -> tuple[rpc_pb2.TxnResponse, int]:
        """
        Apply a Txn: every compare is evaluated against the state before the transaction,
        every check passes before anything is written, and all writes share one revision.
        """
        check_txn(request)
        path = self._compare_path(request)
        self._check_txn_state(request, iter(path), tenant)
        response = rpc_pb2.TxnResponse()
        write = self.mvcc.write()
        try:
            self._txn(request, iter(path), write, response)
        except BaseException:
            write.abort()
            raise
        seq = self._finish(write, response.header)
        return response, seq

    def compact(self, request: rpc_pb2.CompactionRequest) -> tuple[rpc_pb2.CompactionResponse, int]:
        """Compact history up to ``request.revision``."""
        removed = self.mvcc.compact(request.revision)
        response = rpc_pb2.CompactionResponse()
        self.header(response.header)
        batch = Batch(self.mvcc.revision, compact_revision=request.revision, compacted=removed)
        return response, self._submit(batch, [])

    # -- leases --------------------------------------------------------------------------

    def lease_grant(self, lease_id: int, ttl: int, tenant: str) -> tuple[Lease, int]:
        """Grant a lease (``lease_id`` 0: choose one); TTL bounds are the caller's."""
        if lease_id == 0:
            lease_id = self.lessor.new_id(self._random_id)
        lease = self.lessor.grant(lease_id, ttl, tenant)
        batch = Batch(self.mvcc.revision, leases_granted=[LeaseRecord(lease_id, ttl, tenant)])
        return lease, self._submit(batch, [])

    def lease_revoke(self, lease_id: int, tenant: str | None) -> int:
        """Revoke a lease and delete its keys, all in one revision."""
        lease = self.lessor.lookup(lease_id, tenant)
        write = self.mvcc.write()
        for key in sorted(lease.keys):
            write.delete(key)
        write.end()
        self.lessor.remove(lease_id)
        self._track_leases(write.events)
        batch = Batch(self.mvcc.revision, changes=write.changes, leases_revoked=[lease_id])
        return self._submit(batch, write.events)

    def expire_leases(self) -> list[int]:
        """Revoke every expired lease (each in one revision); returns the IDs expired."""
        expired = []
        for lease in self.lessor.expired():
            self.lease_revoke(lease.id, None)
            expired.append(lease.id)
        return expired

    # -- helpers -------------------------------------------------------------------------

    def _finish(self, write: WriteTxn, header: rpc_pb2.ResponseHeader) -> int:
        write.end()
        self._track_leases(write.events)
        self.header(header)
        if not write.changes:
            return self._submitted if self._sync else 0
        return self._submit(Batch(self.mvcc.revision, changes=write.changes), write.events)

    def _track_leases(self, events: list[Event]) -> None:
        lessor = self.lessor
        for event in events:
            prev = event.prev_kv
            if event.type == DELETE:
                if prev is not None and prev.lease:
                    lessor.detach(prev.lease, prev.key)
                continue
            kv = event.kv
            if prev is not None and prev.lease and prev.lease != kv.lease:
                lessor.detach(prev.lease, kv.key)
            if kv.lease:
                lessor.attach(kv.lease, kv.key)

    def _check_put_state(self, request: rpc_pb2.PutRequest, tenant: str) -> None:
        if request.lease:
            self.lessor.lookup(request.lease, tenant)
        if (request.ignore_value or request.ignore_lease) and self.mvcc.get(request.key) is None:
            raise key_not_found()

    def _put(
        self, request: rpc_pb2.PutRequest, write: WriteTxn, response: rpc_pb2.PutResponse
    ) -> None:
        value = request.value
        lease = request.lease
        if request.ignore_value or request.ignore_lease:
            current = self.mvcc.get(request.key)
            if current is None:
                raise key_not_found()
            if request.ignore_value:
                value = current.value
            if request.ignore_lease:
                lease = current.lease
        prev = write.put(request.key, value, lease)
        if request.prev_kv and prev is not None:
            kv_to_pb(prev, response.prev_kv)

    def _delete(
        self,
        request: rpc_pb2.DeleteRangeRequest,
        write: WriteTxn,
        response: rpc_pb2.DeleteRangeResponse,
    ) -> None:
        deleted = write.delete_range(KeyRange(request.key, request.range_end))
        response.deleted = len(deleted)
        if request.prev_kv:
            for kv in deleted:
                kv_to_pb(kv, response.prev_kvs.add())

    def _compare(self, compare: rpc_pb2.Compare) -> bool:
        kvs = self.mvcc.range(KeyRange(compare.key, compare.range_end))
        target = compare.target
        if not kvs:
            if target == _Cmp.VALUE:
                return False
            return _compare_kv(compare, KeyValue(b"", 0, 0, 0, b"", 0))
        return all(_compare_kv(compare, kv) for kv in kvs)

    def _compare_path(self, request: rpc_pb2.TxnRequest) -> list[bool]:
        succeeded = all(self._compare(compare) for compare in request.compare)
        path = [succeeded]
        for op in request.success if succeeded else request.failure:
            if op.WhichOneof("request") == "request_txn":
                path.extend(self._compare_path(op.request_txn))
        return path

    def _check_txn_state(
        self, request: rpc_pb2.TxnRequest, path: Iterator[bool], tenant: str
    ) -> None:
        succeeded = next(path)
        for op in request.success if succeeded else request.failure:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                self._check_put_state(op.request_put, tenant)
            elif kind == "request_range":
                self.mvcc.check_revision(op.request_range.revision)
            elif kind == "request_txn":
                self._check_txn_state(op.request_txn, path, tenant)

    def _txn(
        self,
        request: rpc_pb2.TxnRequest,
        path: Iterator[bool],
        write: WriteTxn,
        response: rpc_pb2.TxnResponse,
    ) -> None:
        succeeded = next(path)
        response.succeeded = succeeded
        for op in request.success if succeeded else request.failure:
            kind = op.WhichOneof("request")
            out = response.responses.add()
            # As etcd: an operation's header holds only the revision it saw or wrote (the
            # transaction's new revision once it changed something); a nested
            # transaction's header is empty.
            if kind == "request_range":
                self._range_into(op.request_range, out.response_range)
                out.response_range.header.revision = write.read_revision
            elif kind == "request_put":
                self._put(op.request_put, write, out.response_put)
                out.response_put.header.revision = write.revision
            elif kind == "request_delete_range":
                self._delete(op.request_delete_range, write, out.response_delete_range)
                out.response_delete_range.header.revision = write.read_revision
            elif kind == "request_txn":
                out.response_txn.header.SetInParent()
                self._txn(op.request_txn, path, write, out.response_txn)


def _compare_kv(compare: rpc_pb2.Compare, kv: KeyValue) -> bool:
    target = compare.target
    result: int
    if target == _Cmp.VALUE:
        mine, theirs = kv.value, compare.value
        result = (mine > theirs) - (mine < theirs)
    else:
        if target == _Cmp.CREATE:
            have, want = kv.create_revision, compare.create_revision
        elif target == _Cmp.MOD:
            have, want = kv.mod_revision, compare.mod_revision
        elif target == _Cmp.VERSION:
            have, want = kv.version, compare.version
        elif target == _Cmp.LEASE:
            have, want = kv.lease, compare.lease
        else:
            return True
        result = (have > want) - (have < want)
    outcome = compare.result
    if outcome == _Cmp.EQUAL:
        return result == 0
    if outcome == _Cmp.NOT_EQUAL:
        return result != 0
    if outcome == _Cmp.GREATER:
        return result > 0
    if outcome == _Cmp.LESS:
        return result < 0
    return True
