"""Tests for lattice.kv._snapshot, the storage's snapshot builder hook and the API's stream."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.kv import MVCC, Change, KeyRange, KeyValue, LeaseRecord, SQLiteStorage, StoredState
from lattice.kv._api import MaintenanceService
from lattice.kv._auth import AuthStore, Permission
from lattice.kv._bbolt import Bucket, read_db, write_db
from lattice.kv._cli import restore_snapshot
from lattice.kv._proto import auth_pb2, kv_pb2
from lattice.kv._proto import rpc_pb2 as pb
from lattice.kv._snapshot import (
    Member,
    SnapshotError,
    build_backend,
    check_hash,
    read_backend,
    revision_bytes,
    with_hash,
)
from lattice.kv._storage import Batch
from lattice.kv.testing import MemoryStorage

from .test_api import ApiTestCase, Context

MEMBER = Member(0x1234, "node", (), ("http://127.0.0.1:2379",))


def history(*changes: tuple[int, int, bytes, bytes | None]) -> list[Change]:
    """Changes for (main, sub, key, value or None), versions and create revisions derived."""
    live: dict[bytes, KeyValue] = {}
    out = []
    for main, sub, key, value in changes:
        if value is None:
            live.pop(key, None)
            out.append(Change(main, sub, key, None))
            continue
        prev = live.get(key)
        kv = KeyValue(
            key,
            prev.create_revision if prev else main,
            main,
            prev.version + 1 if prev else 1,
            value,
            0,
        )
        live[key] = kv
        out.append(Change(main, sub, key, kv))
    return out


def state(
    changes: list[Change],
    revision: int = 0,
    compact: int = 0,
    leases: list[LeaseRecord] | None = None,
    meta: dict[str, bytes] | None = None,
) -> StoredState:
    top = max([1, compact, *(c.main for c in changes)])
    return StoredState(revision or top, compact, changes, leases or [], meta or {})


class LayoutTests(SynchronousTestCase):
    """The backend has etcd 3.4's buckets and encodings."""

    def build(self, stored: StoredState, tenant: str = "default", **kw: Any) -> Bucket:
        return read_db(build_backend(stored, tenant=tenant, member=MEMBER, **kw))

    def test_buckets(self) -> None:
        """Every bucket etcd reads on status, restore and start-up is there."""
        root = self.build(state([]))
        self.assertEqual(
            sorted(root.buckets),
            [
                b"alarm",
                b"auth",
                b"authRoles",
                b"authUsers",
                b"cluster",
                b"key",
                b"lease",
                b"members",
                b"members_removed",
                b"meta",
            ],
        )
        self.assertEqual(root.buckets[b"cluster"].values, {b"clusterVersion": b"3.4.0"})
        self.assertEqual(root.buckets[b"auth"].values, {b"authRevision": bytes(7) + b"\1"})
        member = json.loads(root.buckets[b"members"].values[b"1234"])
        self.assertEqual(member["id"], 0x1234)
        self.assertEqual(member["clientURLs"], ["http://127.0.0.1:2379"])

    def test_key_bucket(self) -> None:
        """Versions are keyed by 17-byte revisions, tombstones carry a 't' and the key only."""
        changes = history((2, 0, b"default\0a", b"1"), (3, 0, b"default\0a", None))
        root = self.build(state(changes))
        self.assertEqual(
            list(root.buckets[b"key"].values),
            [bytes(7) + b"\2_" + bytes(8), bytes(7) + b"\3_" + bytes(8) + b"t"],
        )
        put = kv_pb2.KeyValue()
        put.ParseFromString(root.buckets[b"key"].values[revision_bytes(2)])
        self.assertEqual(
            put,
            kv_pb2.KeyValue(key=b"a", create_revision=2, mod_revision=2, version=1, value=b"1"),
        )
        tombstone = root.buckets[b"key"].values[revision_bytes(3, 0, True)]
        self.assertEqual(tombstone, kv_pb2.KeyValue(key=b"a").SerializeToString())

    def test_meta_and_compaction(self) -> None:
        """meta holds the consistent index and, once compacted, both compaction revisions."""
        root = self.build(state(history((5, 0, b"default\0a", b"1")), compact=4))
        meta = root.buckets[b"meta"].values
        self.assertEqual(meta[b"consistent_index"], (5).to_bytes(8, "big"))
        self.assertEqual(meta[b"scheduledCompactRev"], revision_bytes(4))
        self.assertEqual(meta[b"finishedCompactRev"], revision_bytes(4))
        fresh = self.build(state([])).buckets[b"meta"].values
        self.assertNotIn(b"finishedCompactRev", fresh)

    def test_leases(self) -> None:
        """The tenant's leases are 8-byte big-endian IDs to leasepb.Lease{ID, TTL}, byte for
        byte as etcd 3.4 wrote this lease (granted with TTL 600) in a real snapshot."""
        leases = [LeaseRecord(0x4236A2426C6EF109, 600, "default"), LeaseRecord(7, 5, "other")]
        root = self.build(state([], leases=leases))
        self.assertEqual(
            root.buckets[b"lease"].values,
            {b"B6\xa2Bln\xf1\t": b"\x08\x89\xe2\xbb\xe3\xa6\xc8\xa8\x9bB\x10\xd8\x04"},
        )

    def test_tenant(self) -> None:
        """Only the tenant's keys are included, without the tenant prefix."""
        changes = history(
            (2, 0, b"default\0a", b"1"), (3, 0, b"other\0b", b"2"), (4, 0, b"default\0c", b"3")
        )
        keys = self.build(state(changes)).buckets[b"key"].values
        self.assertEqual(list(keys), [revision_bytes(2), revision_bytes(4)])
        other = self.build(state(changes), tenant="other").buckets[b"key"].values
        self.assertEqual(list(other), [revision_bytes(3)])

    def test_auth(self) -> None:
        """Users and roles are authpb records; enabled and the auth revision are kept."""
        auth = AuthStore(lambda: 0.0)
        auth.user_add("root", "pw")
        auth.user_grant_role("root", "root")
        auth.role_add("reader")
        auth.role_grant_permission("reader", Permission(0, b"a", b"b"))
        auth.enable()
        root = self.build(state([], meta={"auth": auth.to_json()}))
        self.assertEqual(root.buckets[b"auth"].values[b"enabled"], b"\1")
        user = auth_pb2.User()
        user.ParseFromString(root.buckets[b"authUsers"].values[b"root"])
        self.assertEqual((user.name, list(user.roles)), (b"root", ["root"]))
        role = auth_pb2.Role()
        role.ParseFromString(root.buckets[b"authRoles"].values[b"reader"])
        self.assertEqual(
            role,
            auth_pb2.Role(
                name=b"reader", keyPermission=[auth_pb2.Permission(key=b"a", range_end=b"b")]
            ),
        )

    def test_alarms(self) -> None:
        """Raised alarms are AlarmMember keys."""
        root = self.build(state([]), alarms=[pb.NOSPACE])
        expected = pb.AlarmMember(memberID=0x1234, alarm=pb.NOSPACE).SerializeToString()
        self.assertEqual(root.buckets[b"alarm"].values, {expected: b""})


class HashTests(SynchronousTestCase):
    """The trailing SHA-256."""

    def test_round_trip(self) -> None:
        """A database with its hash passes the check."""
        db = write_db(Bucket())
        self.assertEqual(check_hash(with_hash(db)), db)

    def test_mismatch(self) -> None:
        """A changed byte fails the check with a clear error."""
        blob = bytearray(with_hash(write_db(Bucket())))
        blob[5000] ^= 1
        error = self.assertRaises(SnapshotError, check_hash, bytes(blob))
        self.assertIn("does not match", str(error))

    def test_missing(self) -> None:
        """A snapshot without its hash is refused."""
        error = self.assertRaises(SnapshotError, check_hash, write_db(Bucket()))
        self.assertIn("no SHA-256", str(error))


operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "delete", "compact"]),
        st.sampled_from([b"a", b"b", b"c", b"d\xff"]),
        st.sampled_from(["default", "other"]),
        st.binary(max_size=20),
    ),
    max_size=40,
)


def replay(ops: list[tuple[str, bytes, str, bytes]]) -> StoredState:
    """A stored state with the history a store would persist for ``ops``."""
    store = MVCC()
    changes: dict[tuple[int, int], Change] = {}
    for op, key, tenant, value in ops:
        stored_key = tenant.encode() + b"\0" + key
        if op == "compact":
            if store.revision > store.compact_revision:
                for position in store.compact(store.revision):
                    del changes[position]
            continue
        write = store.write()
        if op == "put":
            write.put(stored_key, value, 0)
        else:
            write.delete_range(KeyRange(stored_key))
        write.end()
        changes.update(((c.main, c.sub), c) for c in write.changes)
    ordered = [changes[p] for p in sorted(changes)]
    return StoredState(store.revision, store.compact_revision, ordered, [], {})


class RoundTripTests(SynchronousTestCase):
    """What is written reads back."""

    @settings(deadline=None)
    @given(operations)
    def test_history(self, ops: list[tuple[str, bytes, str, bytes]]) -> None:
        """A tenant's history and compaction revision survive a write and read."""
        stored = replay(ops)
        for tenant in ("default", "other"):
            db = build_backend(stored, tenant=tenant, member=MEMBER)
            back = read_backend(db, tenant=tenant).state
            prefix = tenant.encode() + b"\0"
            mine = [c for c in stored.history if c.key.startswith(prefix)]
            self.assertEqual(list(back.history), mine)
            self.assertEqual(back.compact_revision, stored.compact_revision)
            top = max([1, stored.compact_revision, *(c.main for c in mine)])
            self.assertEqual(back.revision, top)
            # What the store rebuilds from it is the tenant's part of the original.
            rebuilt, original = MVCC(), MVCC()
            rebuilt.restore(back.revision, back.compact_revision, back.history)
            original.restore(stored.revision, stored.compact_revision, stored.history)
            everything = KeyRange(prefix, prefix[:-1] + b"\1")
            self.assertEqual(rebuilt.range(everything), original.range(everything))

    def test_leases_and_auth(self) -> None:
        """Leases and Lattice's own password hashes come back."""
        auth = AuthStore(lambda: 0.0)
        auth.user_add("root", "secret")
        auth.user_add("bob", "", no_password=True)
        stored = state([], leases=[LeaseRecord(99, 30, "t")], meta={"auth": auth.to_json()})
        back = read_backend(build_backend(stored, tenant="t", member=MEMBER), tenant="t")
        self.assertEqual(list(back.state.leases), [LeaseRecord(99, 30, "t")])
        again = AuthStore(lambda: 0.0)
        again.load_json(back.state.meta["auth"])
        again.user_grant_role("root", "root")
        again.enable()
        self.assertTrue(again.authenticate("root", "secret"))
        self.assertEqual(again.user_list(), ["bob", "root"])
        self.assertEqual(back.dropped_passwords, [])

    def test_foreign_passwords(self) -> None:
        """etcd's bcrypt hashes cannot be kept: those users lose their password, and
        authentication is turned off rather than locking everybody out."""
        root = read_db(build_backend(state([]), tenant="default", member=MEMBER))
        user = auth_pb2.User(
            name=b"root", password=b"$2a$10$abcdefghijklmnopqrstuv", roles=["root"]
        )
        root.buckets[b"authUsers"].values[b"root"] = user.SerializeToString()
        root.buckets[b"auth"].values[b"enabled"] = b"\1"
        back = read_backend(write_db(root), tenant="default")
        self.assertEqual(back.dropped_passwords, ["root"])
        self.assertTrue(back.auth_turned_off)
        document = json.loads(back.state.meta["auth"])
        self.assertEqual((document["enabled"], document["users"]["root"]), (False, ["", ["root"]]))

    def test_not_etcd(self) -> None:
        """A bbolt file without etcd's buckets, or not bbolt at all, is refused."""
        self.assertRaises(SnapshotError, read_backend, write_db(Bucket()), tenant="t")
        self.assertRaises(SnapshotError, read_backend, bytes(8192), tenant="t")

    def test_bad_revision_key(self) -> None:
        """A malformed revision key is refused."""
        root = read_db(build_backend(state([]), tenant="t", member=MEMBER))
        root.buckets[b"key"].values[b"short"] = b""
        error = self.assertRaises(SnapshotError, read_backend, write_db(root), tenant="t")
        self.assertIn("bad revision key", str(error))


class StorageBuildTests(SynchronousTestCase):
    """Storage hands its committed state to the snapshot builder."""

    def batch(self) -> Batch:
        return Batch(
            3,
            changes=history((2, 0, b"default\0a", b"1"), (3, 0, b"default\0a", b"2")),
            leases_granted=[LeaseRecord(5, 10, "default")],
            meta={"auth": b"{}"},
        )

    def check(self, storage: Any) -> None:
        storage.submit(self.batch(), lambda error: None)
        seen: list[StoredState] = []
        results: list[object] = []

        def build(stored: StoredState) -> bytes:
            seen.append(stored)
            return b"built"

        storage.snapshot(results.append, build)
        self.assertEqual(results, [b"built"])
        self.assertEqual(seen[0].revision, 3)
        self.assertEqual(list(seen[0].history), list(self.batch().changes))
        self.assertEqual(list(seen[0].leases), [LeaseRecord(5, 10, "default")])
        self.assertEqual(seen[0].meta, {"auth": b"{}"})
        failed: list[object] = []
        storage.snapshot(failed.append, lambda stored: 1 // 0)
        self.assertIsInstance(failed[0], ZeroDivisionError)

    def test_sqlite(self) -> None:
        """SQLite reads what it committed and runs the builder (here synchronously)."""
        storage = SQLiteStorage(Path(self.mktemp()), lambda f: f(), threaded=False)
        storage.load()
        self.addCleanup(storage.close, lambda: None)
        self.check(storage)

    def test_memory(self) -> None:
        """The fake does the same."""
        storage = MemoryStorage()
        storage.load()
        self.check(storage)


class ApiSnapshotTests(ApiTestCase):
    """Maintenance.Snapshot streams an etcd snapshot of the caller's keyspace."""

    def test_stream(self) -> None:
        """The chunks join into a database with its hash, counting down remaining bytes."""
        for i in range(200):
            self.put(b"key%d" % i, b"x" * 500)
        self.put(b"theirs", context=Context(cn="other"))
        maintenance = MaintenanceService(self.api)
        context = Context()
        self.call(maintenance.snapshot(pb.SnapshotRequest(), context))
        self.assertGreater(len(context.sent), 1)
        blob = b"".join(message.blob for message in context.sent)
        for i, message in enumerate(context.sent):
            later = sum(len(m.blob) for m in context.sent[i + 1 :])
            self.assertEqual(message.remaining_bytes, later)
        self.assertEqual(context.sent[-1].remaining_bytes, 0)
        db = check_hash(blob)
        self.assertEqual(blob[-32:], hashlib.sha256(db).digest())
        back = read_backend(db, tenant="default").state
        self.assertEqual(len(back.history), 200)
        self.assertEqual(back.revision, 201)
        self.assertNotIn(b"default\0theirs", {c.key for c in back.history})


class RestoreTests(SynchronousTestCase):
    """restore_snapshot builds a SQLite store from a snapshot."""

    def snapshot(self) -> Path:
        changes = history((2, 0, b"default\0a", b"1"), (3, 0, b"default\0b", b"2"))
        path = Path(self.mktemp())
        path.write_bytes(with_hash(build_backend(state(changes), tenant="default", member=MEMBER)))
        return path

    def test_restore(self) -> None:
        """The new database loads with the snapshot's keys, in the chosen tenant."""
        target = Path(self.mktemp())
        restore_snapshot(self.snapshot(), target, "t2")
        loaded = SQLiteStorage(target, lambda f: f(), threaded=False)
        self.addCleanup(loaded.close, lambda: None)
        stored = loaded.load()
        self.assertEqual(stored.revision, 3)
        self.assertEqual([c.key for c in stored.history], [b"t2\0a", b"t2\0b"])

    def test_refuses_existing(self) -> None:
        """An existing database is never overwritten."""
        target = Path(self.mktemp())
        target.write_bytes(b"data")
        error = self.assertRaises(SnapshotError, restore_snapshot, self.snapshot(), target, "t")
        self.assertIn("refusing to overwrite", str(error))
        self.assertEqual(target.read_bytes(), b"data")

    def test_refuses_bad_hash(self) -> None:
        """A damaged snapshot is refused and nothing is created."""
        path = self.snapshot()
        data = bytearray(path.read_bytes())
        data[-1] ^= 1
        path.write_bytes(bytes(data))
        target = Path(self.mktemp())
        self.assertRaises(SnapshotError, restore_snapshot, path, target, "t")
        self.assertFalse(target.exists())
        restore_snapshot(path, target, "t", skip_hash_check=True)
        self.assertTrue(target.exists())
