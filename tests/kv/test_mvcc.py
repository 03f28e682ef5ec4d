"""Tests for lattice.kv._mvcc: revisions, ranges, history and compaction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.kv import DELETE, MVCC, PUT, Change, KeyRange, KeyValue, KVError, prefix_end

KEYS = [b"a", b"ab", b"abc", b"b", b"ba", b"c", b"\xff", b"\xff\xff"]
ENDS = [b"", b"\0", *KEYS, b"b\x00", b"zz"]


def put(store: MVCC, key: bytes, value: bytes, lease: int = 0) -> int:
    write = store.write()
    write.put(key, value, lease)
    write.end()
    return store.revision


class PrefixEndTests(SynchronousTestCase):
    """Tests for prefix_end."""

    def test_increments_last_byte(self) -> None:
        """The last byte of the prefix is incremented."""
        self.assertEqual(prefix_end(b"aa"), b"ab")

    def test_skips_trailing_ff(self) -> None:
        """Trailing 0xff bytes are dropped before incrementing, as etcd does."""
        self.assertEqual(prefix_end(b"a\xff"), b"b")

    def test_all_ff_means_from_key(self) -> None:
        """A prefix of only 0xff bytes selects every key from it on."""
        self.assertEqual(prefix_end(b"\xff\xff"), b"\0")


class KeyRangeTests(SynchronousTestCase):
    """Tests for KeyRange membership."""

    def test_single(self) -> None:
        """An empty end selects only the key itself."""
        self.assertIn(b"a", KeyRange(b"a"))
        self.assertNotIn(b"ab", KeyRange(b"a"))

    def test_from_key(self) -> None:
        """An end of NUL selects every key from the key on."""
        self.assertIn(b"\xff", KeyRange(b"b", b"\0"))
        self.assertNotIn(b"a", KeyRange(b"b", b"\0"))

    def test_interval(self) -> None:
        """Any other end is an exclusive upper bound."""
        self.assertIn(b"ab", KeyRange(b"a", b"b"))
        self.assertNotIn(b"b", KeyRange(b"a", b"b"))


class MVCCTests(SynchronousTestCase):
    """Tests for the MVCC key space."""

    def test_fresh_store_is_at_revision_one(self) -> None:
        """A new store starts at revision 1, as etcd does."""
        self.assertEqual(MVCC().revision, 1)

    def test_put_bumps_revision_and_version(self) -> None:
        """Each put moves the revision by one and the key's version by one."""
        store = MVCC()
        put(store, b"k", b"1")
        put(store, b"k", b"2")
        self.assertEqual(store.get(b"k"), KeyValue(b"k", 2, 3, 2, b"2", 0))

    def test_delete_resets_version(self) -> None:
        """A key put again after a delete starts over at version 1 with a new create revision."""
        store = MVCC()
        put(store, b"k", b"1")
        write = store.write()
        write.delete(b"k")
        write.end()
        put(store, b"k", b"2")
        self.assertEqual(store.get(b"k"), KeyValue(b"k", 4, 4, 1, b"2", 0))

    def test_txn_shares_one_revision(self) -> None:
        """Every write of one transaction has the same revision and its own sub-revision."""
        store = MVCC()
        write = store.write()
        write.put(b"a", b"1", 0)
        write.put(b"b", b"2", 0)
        write.end()
        self.assertEqual(store.revision, 2)
        self.assertEqual(
            [(c.main, c.sub) for c in write.changes],
            [(2, 0), (2, 1)],
        )

    def test_empty_write_keeps_revision(self) -> None:
        """A transaction that changes nothing does not move the revision."""
        store = MVCC()
        write = store.write()
        write.delete_range(KeyRange(b"a", b"\0"))
        write.end()
        self.assertEqual(store.revision, 1)

    def test_abort_undoes_everything(self) -> None:
        """An aborted transaction leaves no trace."""
        store = MVCC()
        put(store, b"a", b"1")
        write = store.write()
        write.put(b"a", b"2", 0)
        write.put(b"new", b"x", 0)
        write.delete(b"a")
        write.abort()
        self.assertEqual(store.revision, 2)
        self.assertEqual(store.range(KeyRange(b"\0", b"\0")), [KeyValue(b"a", 2, 2, 1, b"1", 0)])
        self.assertEqual(store.events(KeyRange(b"\0", b"\0"), 1, 10)[-1].kv.value, b"1")

    def test_read_past_revision(self) -> None:
        """A read at an old revision sees the store as it was."""
        store = MVCC()
        put(store, b"k", b"1")
        put(store, b"k", b"2")
        self.assertEqual(store.range(KeyRange(b"k"), 2)[0].value, b"1")

    def test_future_revision(self) -> None:
        """A read beyond the current revision is etcd's future-revision error."""
        store = MVCC()
        error = self.assertRaises(KVError, store.range, KeyRange(b"k"), 5)
        self.assertEqual(error.code, "OUT_OF_RANGE")
        self.assertIn("future revision", error.message)

    def test_compaction(self) -> None:
        """After compaction, older revisions fail and the compacted revision still reads."""
        store = MVCC()
        put(store, b"k", b"1")
        put(store, b"k", b"2")
        put(store, b"k", b"3")
        removed = store.compact(3)
        self.assertEqual(removed, [(2, 0)])
        self.assertEqual(store.range(KeyRange(b"k"), 3)[0].value, b"2")
        error = self.assertRaises(KVError, store.range, KeyRange(b"k"), 2)
        self.assertEqual(error.message, "etcdserver: mvcc: required revision has been compacted")
        self.assertRaises(KVError, store.compact, 3)
        self.assertRaises(KVError, store.compact, 0)

    def test_compaction_at_zero(self) -> None:
        """As etcd: compacting at 0 before any compaction is accepted and removes nothing."""
        store = MVCC()
        put(store, b"k", b"1")
        self.assertEqual(store.compact(0), [])
        self.assertEqual(store.compact_revision, 0)
        self.assertRaises(KVError, store.compact, -1)

    def test_compaction_drops_deleted_keys(self) -> None:
        """A key deleted at or before the compaction revision leaves no history."""
        store = MVCC()
        put(store, b"k", b"1")
        write = store.write()
        write.delete(b"k")
        write.end()
        store.compact(3)
        self.assertEqual(store.events(KeyRange(b"k"), 1, 3), [])

    def test_events_carry_prev_kv(self) -> None:
        """Replayed events come in revision order with the key's previous version."""
        store = MVCC()
        put(store, b"a", b"1")
        put(store, b"b", b"2")
        write = store.write()
        write.delete(b"a")
        write.end()
        events = store.events(KeyRange(b"a", b"c"), 2, 4)
        self.assertEqual([e.type for e in events], [PUT, PUT, DELETE])
        self.assertEqual(events[2].prev_kv, KeyValue(b"a", 2, 2, 1, b"1", 0))
        self.assertEqual(events[2].kv.mod_revision, 4)

    def test_restore(self) -> None:
        """Restoring persisted history rebuilds the same store."""
        store = MVCC()
        put(store, b"a", b"1")
        put(store, b"a", b"2")
        other = MVCC()
        other.restore(
            3,
            0,
            [
                Change(2, 0, b"a", KeyValue(b"a", 2, 2, 1, b"1", 0)),
                Change(3, 0, b"a", KeyValue(b"a", 2, 3, 2, b"2", 0)),
            ],
        )
        self.assertEqual(other.range(KeyRange(b"a"), 2), store.range(KeyRange(b"a"), 2))
        self.assertEqual(other.hash(), store.hash())

    def test_restore_rejects_disorder(self) -> None:
        """History out of revision order is refused."""
        kv = KeyValue(b"a", 2, 2, 1, b"", 0)
        self.assertRaises(
            ValueError, MVCC().restore, 3, 0, [Change(3, 0, b"a", kv), Change(2, 0, b"a", kv)]
        )


# -- a model-based check of revisions, ranges, history and compaction --------------------

_op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(max_size=3)),
    st.tuples(st.just("del"), st.sampled_from(KEYS), st.sampled_from(ENDS)),
)
_step = st.one_of(
    st.lists(_op, min_size=1, max_size=4).map(lambda ops: ("write", ops)),
    st.integers(min_value=0, max_value=40).map(lambda n: ("compact", n)),
)


def _model_range(state: dict[bytes, KeyValue], key_range: KeyRange) -> list[KeyValue]:
    return [state[k] for k in sorted(state) if k in key_range]


class MVCCModelTests(SynchronousTestCase):
    """The MVCC store agrees with a naive model that copies the whole state per revision."""

    @settings(max_examples=150, deadline=None)
    @given(
        steps=st.lists(_step, max_size=25),
        probes=st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(ENDS)), max_size=6),
    )
    def test_agrees_with_model(self, steps, probes) -> None:
        """Reads at every revision, replays and compaction match the model."""
        store = MVCC()
        states: dict[int, dict[bytes, KeyValue]] = {1: {}}
        log: list[tuple[int, int, int, bytes, bytes, KeyValue | None]] = []
        compact = 0
        for step in steps:
            if step[0] == "compact":
                target = step[1]
                # etcd's rule: refused at or below the last compaction (as if compacted at
                # -1 at first: 0 is accepted until something has been compacted)
                if (target <= compact and not target == 0 == compact) or target > store.revision:
                    self.assertRaises(KVError, store.compact, target)
                    continue
                store.compact(target)
                compact = target
                continue
            state = dict(states[store.revision])
            new = store.revision + 1
            write = store.write()
            sub = 0
            for op in step[1]:
                if op[0] == "put":
                    _, key, value = op
                    prev = state.get(key)
                    kv = (
                        KeyValue(key, prev.create_revision, new, prev.version + 1, value, 0)
                        if prev
                        else KeyValue(key, new, new, 1, value, 0)
                    )
                    state[key] = kv
                    log.append((new, sub, PUT, key, value, prev))
                    sub += 1
                    write.put(key, value, 0)
                else:
                    _, key, end = op
                    for victim in _model_range(state, KeyRange(key, end)):
                        log.append((new, sub, DELETE, victim.key, b"", victim))
                        sub += 1
                        del state[victim.key]
                    write.delete_range(KeyRange(key, end))
            write.end()
            if sub:
                states[new] = state
            self.assertEqual(store.revision, max(states))
        for key, end in probes:
            key_range = KeyRange(key, end)
            for revision in range(1, store.revision + 2):
                if revision > store.revision or revision < compact:
                    self.assertRaises(KVError, store.range, key_range, revision)
                else:
                    self.assertEqual(
                        store.range(key_range, revision),
                        _model_range(states[revision], key_range),
                    )
            start = compact + 1
            expected = [
                (main, kind, k, value, prev)
                for main, _, kind, k, value, prev in log
                if main >= start and k in key_range
            ]
            got = [
                (e.kv.mod_revision, e.type, e.kv.key, e.kv.value, e.prev_kv)
                for e in store.events(key_range, start, store.revision)
            ]
            self.assertEqual(got, expected)
