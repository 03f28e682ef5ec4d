"""Tests for lattice.kv._bbolt: the bbolt file writer and reader."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.kv._bbolt import (
    BRANCH_PAGE,
    FREELIST_PAGE,
    LEAF_PAGE,
    META_PAGE,
    PAGE_SIZE,
    BoltError,
    Bucket,
    fnv64a,
    read_db,
    write_db,
)

_HEADER = struct.Struct("<QHHI")
_META = struct.Struct("<IIIIQQQQQQ")


def pages(data: bytes, page_size: int = PAGE_SIZE) -> list[tuple[int, int, int, int]]:
    """(id, flags, count, overflow) of every page that starts a node, following overflows."""
    found = []
    pgid = 0
    while pgid * page_size < len(data):
        header = _HEADER.unpack_from(data, pgid * page_size)
        found.append(header)
        pgid += 1 + header[3]
    return found


def meta(data: bytes, pgid: int) -> tuple[int, ...]:
    return _META.unpack_from(data, pgid * PAGE_SIZE + _HEADER.size)


keys = st.binary(min_size=1, max_size=24)
# Large values (over a page, so written to overflow pages) cost little entropy: a pattern
# repeated to a drawn length.
big_values = st.tuples(st.binary(min_size=1, max_size=8), st.integers(3000, 12000)).map(
    lambda drawn: (drawn[0] * drawn[1])[: drawn[1]]
)
values = st.binary(max_size=48) | big_values


@st.composite
def buckets(draw: st.DrawFn, depth: int = 0) -> Bucket:
    bucket = Bucket(values=draw(st.dictionaries(keys, values, max_size=30)))
    bucket.sequence = draw(st.integers(0, 2**64 - 1))
    if depth < 2:
        names = draw(st.lists(keys, max_size=3, unique=True))
        for name in names:
            if name not in bucket.values:
                bucket.buckets[name] = draw(buckets(depth + 1))
    return bucket


@st.composite
def roots(draw: st.DrawFn) -> Bucket:
    root = Bucket()
    for name in draw(st.lists(keys, min_size=0, max_size=4, unique=True)):
        root.buckets[name] = draw(buckets(1))
    return root


class WriterTests(SynchronousTestCase):
    """The writer's file layout."""

    def test_empty(self) -> None:
        """An empty database is two meta pages, a freelist and an empty root leaf."""
        data = write_db(Bucket())
        self.assertEqual(len(data), 4 * PAGE_SIZE)
        self.assertEqual(
            pages(data),
            [(0, META_PAGE, 0, 0), (1, META_PAGE, 0, 0), (2, FREELIST_PAGE, 0, 0), (3, 2, 0, 0)],
        )
        self.assertEqual(read_db(data), Bucket())

    def test_meta_pages(self) -> None:
        """Both meta pages carry the magic, version 2, page size, root, freelist, high-water
        mark, consecutive transaction IDs and a valid FNV-64a checksum."""
        root = Bucket()
        root.bucket(b"b").values[b"k"] = b"v"
        data = write_db(root, txid=7)
        for pgid in (0, 1):
            fields = meta(data, pgid)
            magic, version, page_size, _, root_pgid, _, freelist, high_water, txid, check = fields
            self.assertEqual((magic, version, page_size), (0xED0CDAED, 2, PAGE_SIZE))
            self.assertEqual((root_pgid, freelist, high_water), (3, 2, 4))
            self.assertEqual(txid, 7 + pgid - 1)
            start = pgid * PAGE_SIZE + _HEADER.size
            self.assertEqual(check, fnv64a(data[start : start + 56]))

    def test_fnv64a(self) -> None:
        """The checksum is FNV-1a 64 (published test vectors)."""
        self.assertEqual(fnv64a(b""), 0xCBF29CE484222325)
        self.assertEqual(fnv64a(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(fnv64a(b"foobar"), 0x85944171F73967E8)

    def test_small_bucket_inline(self) -> None:
        """A small bucket without sub-buckets is stored inline: no page of its own."""
        root = Bucket()
        root.bucket(b"small").values[b"k"] = b"v"
        data = write_db(root)
        self.assertEqual(len(pages(data)), 4)
        self.assertEqual(read_db(data), root)

    def test_branch_pages(self) -> None:
        """Many keys are spread over leaves under branch pages, several levels deep."""
        root = Bucket()
        bucket = root.bucket(b"big")
        for i in range(60_000):
            bucket.values[b"%08d" % i] = b"value %d" % i
        data = write_db(root)
        kinds = [flags for _, flags, _, _ in pages(data)]
        # About 120 elements a leaf, 170 a branch: 500 leaves under 3 branches under a root.
        self.assertGreaterEqual(kinds.count(BRANCH_PAGE), 4)
        self.assertGreater(kinds.count(LEAF_PAGE), 400)
        self.assertEqual(read_db(data), root)

    def test_overflow_pages(self) -> None:
        """A value larger than a page is written over contiguous overflow pages."""
        root = Bucket()
        root.bucket(b"b").values.update({b"big": bytes(range(256)) * 100, b"small": b"x"})
        data = write_db(root)
        overflows = [overflow for _, _, _, overflow in pages(data)]
        self.assertEqual(max(overflows), 25600 // PAGE_SIZE)
        self.assertEqual(read_db(data), root)

    def test_refuses_values_at_root(self) -> None:
        """bbolt's root holds buckets only."""
        self.assertRaises(ValueError, write_db, Bucket(values={b"k": b"v"}))

    def test_refuses_empty_keys(self) -> None:
        """bbolt keys cannot be empty."""
        root = Bucket()
        root.bucket(b"b").values[b""] = b"v"
        self.assertRaises(ValueError, write_db, root)

    @settings(deadline=None, max_examples=40)
    @given(roots())
    def test_round_trip(self, root: Bucket) -> None:
        """Whatever is written reads back the same: values, nested buckets, sequences."""
        data = write_db(root)
        self.assertEqual(len(data) % PAGE_SIZE, 0)
        self.assertEqual(read_db(data), root)

    @settings(deadline=None, max_examples=15)
    @given(st.integers(200, 20_000), st.integers(0, 2**32), st.integers(0, 300))
    def test_round_trip_many_keys(self, count: int, seed: int, size: int) -> None:
        """Buckets spanning many leaf and branch pages read back in full."""
        rng = random.Random(seed)
        items = {rng.randbytes(rng.randint(1, 40)): rng.randbytes(size) for _ in range(count)}
        root = Bucket()
        root.buckets[b"b"] = Bucket(values=items)
        self.assertEqual(read_db(write_db(root)).buckets[b"b"].values, items)

    @settings(deadline=None, max_examples=10)
    @given(roots(), st.sampled_from([1024, 4096, 16384]))
    def test_page_sizes(self, root: Bucket, page_size: int) -> None:
        """Other page sizes work too; the reader takes the size from the meta page."""
        self.assertEqual(read_db(write_db(root, page_size=page_size)), root)


class ReaderTests(SynchronousTestCase):
    """The reader refuses damaged files."""

    def setUp(self) -> None:
        root = Bucket()
        bucket = root.bucket(b"b")
        for i in range(2000):
            bucket.values[b"%06d" % i] = b"v" * 20
        self.root = root
        self.data = write_db(root)

    def damaged(self, offset: int, replacement: bytes) -> bytes:
        data = bytearray(self.data)
        data[offset : offset + len(replacement)] = replacement
        return bytes(data)

    def test_newest_valid_meta(self) -> None:
        """A damaged newest meta page falls back to the other one."""
        data = self.damaged(PAGE_SIZE + 20, b"\xff\xff")
        self.assertEqual(read_db(data), self.root)

    def test_both_metas_damaged(self) -> None:
        """Without a valid meta page the file is refused."""
        checksum = _HEADER.size + 56
        data = self.damaged(checksum, b"\xff\xff")
        data = data[:PAGE_SIZE] + self.damaged(PAGE_SIZE + checksum, b"\xff")[PAGE_SIZE:]
        error = self.assertRaises(BoltError, read_db, data)
        self.assertIn("checksum", str(error))

    def test_not_bolt(self) -> None:
        """A file that is not bbolt is refused with the reason."""
        error = self.assertRaises(BoltError, read_db, b"SQLite format 3\0" + bytes(8192))
        self.assertIn("meta page 0", str(error))

    def test_truncated(self) -> None:
        """A file shorter than its high-water mark is refused."""
        error = self.assertRaises(BoltError, read_db, self.data[: -PAGE_SIZE * 3])
        self.assertIn("pages of", str(error))

    def test_wrong_page_id(self) -> None:
        """A page whose header names another page is refused."""
        data = self.damaged(5 * PAGE_SIZE, struct.pack("<Q", 99))
        error = self.assertRaises(BoltError, read_db, data)
        self.assertIn("says it is page 99", str(error))

    def test_bad_page_type(self) -> None:
        """A tree page that is neither branch nor leaf is refused."""
        data = self.damaged(5 * PAGE_SIZE + 8, struct.pack("<H", FREELIST_PAGE))
        error = self.assertRaises(BoltError, read_db, data)
        self.assertIn("neither branch nor leaf", str(error))

    def test_keys_out_of_order(self) -> None:
        """Keys out of order (a corrupted leaf) are refused."""
        data = bytearray(self.data)
        at = data.index(b"000001")
        data[at : at + 6] = b"999999"
        self.assertRaises(BoltError, read_db, bytes(data))

    def test_free_page_in_use(self) -> None:
        """A page both in the tree and on the freelist is refused."""
        data = self.damaged(2 * PAGE_SIZE + 10, struct.pack("<H", 1))
        data = data[: 2 * PAGE_SIZE + 16] + struct.pack("<Q", 4) + data[2 * PAGE_SIZE + 24 :]
        error = self.assertRaises(BoltError, read_db, data)
        self.assertIn("both in use and free", str(error))
