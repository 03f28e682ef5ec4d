"""
bbolt (boltdb) database files, the format of etcd's backend: a writer and a reader.

Pure: bytes in, bytes out, no Twisted and no I/O.  The writer builds a fresh, compact file in
one pass: every B+tree is built bottom-up from its sorted items (leaf pages packed up to the
page size, then branch pages over them until one root remains), a node larger than a page
spills into overflow pages, a small bucket without sub-buckets is stored inline in its
parent (as bbolt does), and the freelist page lists no free page.  The reader follows the
meta page with the highest valid transaction ID and checks what it reads (page types and IDs,
bounds, key order, cycles), so a damaged file fails with :class:`BoltError` instead of
yielding partial data.

The layout (little-endian, as bbolt writes it on the platforms etcd supports):

- every page starts with a 16-byte header: page ID (u64), flags (u16: branch 0x01, leaf 0x02,
  meta 0x04, freelist 0x10), element count (u16) and the number of overflow pages (u32);
- pages 0 and 1 are meta pages: magic ``0xED0CDAED``, version 2, page size, flags, the root
  bucket (root page ID and sequence), the freelist page ID, the high-water mark (the first
  page ID past the end), the transaction ID and an FNV-64a checksum of the fields before it;
- a leaf element is (flags u32, pos u32, key size u32, value size u32), a branch element
  (pos u32, key size u32, child page ID u64); ``pos`` is the distance from the element to its
  key, the value follows the key;
- a bucket is a leaf element with flag 0x01 whose value is (root page ID u64, sequence u64),
  followed, when the root page ID is 0, by the bucket's one leaf page (an inline bucket);
- the freelist page's elements are free page IDs (u64); a count of 0xFFFF means the true count
  is in the first element.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["BoltError", "Bucket", "read_db", "write_db"]

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_SIZE = 4096

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF = 0x01

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
# magic, version, page size, flags, root bucket (pgid, sequence), freelist, high-water mark, txid
_META = struct.Struct("<IIIIQQQQQ")
_CHECKSUM = struct.Struct("<Q")
_BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
_PGID = struct.Struct("<Q")

_HEADER_SIZE = _PAGE_HEADER.size
_ELEMENT_SIZE = 16
_MAX_COUNT = 0xFFFF
_NO_FREELIST = 0xFFFFFFFFFFFFFFFF


class BoltError(ValueError):
    """The bytes are not a valid bbolt database; the message says what is wrong."""


@dataclass
class Bucket:
    """
    A bucket: its key/value pairs, its nested buckets (a key is one or the other) and its
    sequence number.
    """

    values: dict[bytes, bytes] = field(default_factory=dict)
    buckets: dict[bytes, Bucket] = field(default_factory=dict)
    sequence: int = 0

    def bucket(self, name: bytes) -> Bucket:
        """The nested bucket ``name``, created if missing."""
        child = self.buckets.get(name)
        if child is None:
            if name in self.values:
                raise ValueError(f"{name!r} is a value, not a bucket")
            child = self.buckets[name] = Bucket()
        return child


def fnv64a(data: bytes) -> int:
    """FNV-1a, 64 bits: bbolt's meta page checksum."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


# -- writing ---------------------------------------------------------------------------------

# A node's item: flags, key, value (leaf) or child page ID (branch).
_Item = tuple[int, bytes, bytes]


def _node_size(items: list[_Item], leaf: bool) -> int:
    size = _HEADER_SIZE + _ELEMENT_SIZE * len(items)
    for _, key, value in items:
        size += len(key) + (len(value) if leaf else 0)
    return size


def _node_image(pgid: int, items: list[_Item], leaf: bool, length: int, overflow: int) -> bytes:
    """The bytes of one leaf or branch node, ``length`` long (the page and its overflow)."""
    flags = LEAF_PAGE if leaf else BRANCH_PAGE
    parts = [_PAGE_HEADER.pack(pgid, flags, len(items), overflow)]
    data: list[bytes] = []
    # Each element's pos is the distance from the element to its key.
    distance = _ELEMENT_SIZE * len(items)
    if leaf:
        for item_flags, key, value in items:
            parts.append(_LEAF_ELEMENT.pack(item_flags, distance, len(key), len(value)))
            data += (key, value)
            distance += len(key) + len(value) - _ELEMENT_SIZE
    else:
        for _, key, value in items:
            (child,) = _PGID.unpack(value)
            parts.append(_BRANCH_ELEMENT.pack(distance, len(key), child))
            data.append(key)
            distance += len(key) - _ELEMENT_SIZE
    image = b"".join(parts) + b"".join(data)
    return image + bytes(length - len(image))


class _Writer:
    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.pages: list[tuple[int, bytes]] = []
        self.next_pgid = 3  # 0 and 1: meta pages, 2: the freelist

    def node(self, items: list[_Item], leaf: bool) -> int:
        """Write one node; return its page ID."""
        size = _node_size(items, leaf)
        count = max(1, -(-size // self.page_size))
        pgid = self.next_pgid
        self.next_pgid += count
        image = _node_image(pgid, items, leaf, count * self.page_size, count - 1)
        self.pages.append((pgid, image))
        return pgid

    def _groups(self, items: list[_Item], leaf: bool) -> Iterator[list[_Item]]:
        """Split sorted items into runs that each fit a page (or hold one big item)."""
        group: list[_Item] = []
        size = _HEADER_SIZE
        for item in items:
            grow = _ELEMENT_SIZE + len(item[1]) + (len(item[2]) if leaf else 0)
            if group and (size + grow > self.page_size or len(group) >= _MAX_COUNT):
                yield group
                group, size = [], _HEADER_SIZE
            group.append(item)
            size += grow
        if group:
            yield group

    def tree(self, items: list[_Item]) -> int:
        """Write a B+tree holding ``items`` (sorted); return its root page ID."""
        if not items:
            return self.node([], leaf=True)
        level = [(group[0][1], self.node(group, leaf=True)) for group in self._groups(items, True)]
        while len(level) > 1:
            branch_items = [(0, key, _PGID.pack(pgid)) for key, pgid in level]
            level = [
                (group[0][1], self.node(group, leaf=False))
                for group in self._groups(branch_items, False)
            ]
        return level[0][1]

    def items(self, bucket: Bucket) -> list[_Item]:
        """A bucket's leaf items, sorted, with its sub-buckets written out."""
        clash = bucket.values.keys() & bucket.buckets.keys()
        if clash:
            raise ValueError(f"keys both values and buckets: {sorted(clash)[:3]!r}")
        items: list[_Item] = [(0, key, value) for key, value in bucket.values.items()]
        for name, child in bucket.buckets.items():
            items.append((BUCKET_LEAF, name, self.bucket_value(child)))
        for _, key, _ in items:
            if not key:
                raise ValueError("bbolt keys cannot be empty")
        items.sort(key=lambda item: item[1])
        return items

    def bucket_value(self, bucket: Bucket) -> bytes:
        """The value a parent stores for ``bucket``: its header, inline page if small."""
        items = self.items(bucket)
        size = _node_size(items, leaf=True)
        if not bucket.buckets and size <= self.page_size // 4:
            page = _node_image(0, items, True, size, 0)
            return _BUCKET_HEADER.pack(0, bucket.sequence) + page
        return _BUCKET_HEADER.pack(self.tree(items), bucket.sequence)


def write_db(root: Bucket, *, page_size: int = PAGE_SIZE, txid: int = 2) -> bytes:
    """
    A complete bbolt database file holding ``root``'s buckets (top-level values are not
    allowed: bbolt's root holds buckets only).
    """
    if root.values:
        raise ValueError("the root of a bbolt database holds buckets only")
    if page_size < 1024 or page_size & (page_size - 1):
        raise ValueError(f"bad page size {page_size}")
    writer = _Writer(page_size)
    root_pgid = writer.tree(writer.items(root))
    high_water = writer.next_pgid
    out = bytearray(high_water * page_size)
    for pgid, image in writer.pages:
        out[pgid * page_size : pgid * page_size + len(image)] = image
    _PAGE_HEADER.pack_into(out, 2 * page_size, 2, FREELIST_PAGE, 0, 0)
    for pgid in (0, 1):
        # Both meta pages are valid; page 1 is the newer and is the one read.
        offset = pgid * page_size
        _PAGE_HEADER.pack_into(out, offset, pgid, META_PAGE, 0, 0)
        fields = _META.pack(
            MAGIC, VERSION, page_size, 0, root_pgid, 0, 2, high_water, txid - 1 + pgid
        )
        start = offset + _HEADER_SIZE
        out[start : start + _META.size] = fields
        _CHECKSUM.pack_into(out, start + _META.size, fnv64a(fields))
    return bytes(out)


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    page_size: int
    root: int
    freelist: int
    high_water: int
    txid: int


def _read_meta(data: bytes, offset: int) -> _Meta | str:
    """The meta at ``offset`` (a page start), or why it is invalid."""
    start = offset + _HEADER_SIZE
    if len(data) < start + _META.size + _CHECKSUM.size:
        return "truncated meta page"
    _, flags, _, _ = _PAGE_HEADER.unpack_from(data, offset)
    if not flags & META_PAGE:
        return f"page flags {flags:#x} are not a meta page's"
    fields = data[start : start + _META.size]
    magic, version, page_size, _, root, _, freelist, high_water, txid = _META.unpack(fields)
    if magic != MAGIC:
        return f"bad magic {magic:#x}"
    if version != VERSION:
        return f"unsupported version {version}"
    (checksum,) = _CHECKSUM.unpack_from(data, start + _META.size)
    if checksum != fnv64a(fields):
        return "meta checksum mismatch"
    if page_size < 512 or page_size & (page_size - 1):
        return f"bad page size {page_size}"
    return _Meta(page_size, root, freelist, high_water, txid)


class _Reader:
    def __init__(self, data: bytes) -> None:
        if len(data) < 2 * 512:
            raise BoltError(f"file too small for a bbolt database ({len(data)} bytes)")
        first = _read_meta(data, 0)
        if isinstance(first, str):
            raise BoltError(f"meta page 0: {first}")
        second = _read_meta(data, first.page_size)
        metas = [m for m in (first, second) if isinstance(m, _Meta)]
        meta = max(metas, key=lambda m: m.txid)
        if meta.high_water * meta.page_size > len(data):
            raise BoltError(
                f"file is {len(data)} bytes but the database needs "
                f"{meta.high_water} pages of {meta.page_size}"
            )
        if meta.root < 2 or meta.root >= meta.high_water:
            raise BoltError(f"root page {meta.root} out of bounds")
        self.data = data
        self.meta = meta
        self.visited: set[int] = set()

    def page(self, pgid: int) -> tuple[memoryview, int, int]:
        """A page's bytes (with overflow), flags and element count."""
        meta = self.meta
        if pgid < 2 or pgid >= meta.high_water:
            raise BoltError(f"page {pgid} out of bounds (high-water mark {meta.high_water})")
        if pgid in self.visited:
            raise BoltError(f"page {pgid} referenced twice")
        self.visited.add(pgid)
        offset = pgid * meta.page_size
        header_id, flags, count, overflow = _PAGE_HEADER.unpack_from(self.data, offset)
        if header_id != pgid:
            raise BoltError(f"page {pgid} says it is page {header_id}")
        end = offset + (overflow + 1) * meta.page_size
        if pgid + overflow >= meta.high_water:
            raise BoltError(f"page {pgid} overflows past the high-water mark")
        return memoryview(self.data)[offset:end], flags, count

    def leaf_items(self, page: memoryview, count: int) -> Iterator[_Item]:
        """The elements of a leaf page (a view of the page)."""
        for i in range(count):
            element = _HEADER_SIZE + _ELEMENT_SIZE * i
            if element + _ELEMENT_SIZE > len(page):
                raise BoltError("leaf elements run past the page")
            flags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(page, element)
            start = element + pos
            if start + ksize + vsize > len(page):
                raise BoltError("leaf data runs past the page")
            yield (
                flags,
                bytes(page[start : start + ksize]),
                bytes(page[start + ksize : start + ksize + vsize]),
            )

    def tree_items(self, pgid: int, depth: int = 0) -> Iterator[_Item]:
        """Every leaf item under page ``pgid``, in order."""
        if depth > 64:
            raise BoltError("B+tree too deep")
        page, flags, count = self.page(pgid)
        if flags & LEAF_PAGE:
            yield from self.leaf_items(page, count)
        elif flags & BRANCH_PAGE:
            children = []
            for i in range(count):
                element = _HEADER_SIZE + _ELEMENT_SIZE * i
                if element + _ELEMENT_SIZE > len(page):
                    raise BoltError("branch elements run past the page")
                pos, ksize, child = _BRANCH_ELEMENT.unpack_from(page, element)
                if element + pos + ksize > len(page):
                    raise BoltError("branch key runs past the page")
                children.append((bytes(page[element + pos : element + pos + ksize]), child))
            for index, (key, child) in enumerate(children):
                first = True
                for item in self.tree_items(child, depth + 1):
                    if first and item[1] < key:
                        raise BoltError(f"page {child}: first key below its branch key")
                    if index + 1 < len(children) and item[1] >= children[index + 1][0]:
                        raise BoltError(f"page {child}: key beyond the next branch key")
                    first = False
                    yield item
        else:
            raise BoltError(f"page {pgid}: flags {flags:#x} are neither branch nor leaf")

    def bucket(self, value: bytes, depth: int = 0) -> Bucket:
        """The bucket a parent's bucket value describes."""
        if depth > 64:
            raise BoltError("buckets nested too deep")
        if len(value) < _BUCKET_HEADER.size:
            raise BoltError("bucket value too short")
        root, sequence = _BUCKET_HEADER.unpack_from(value)
        if root == 0:
            page = memoryview(value)[_BUCKET_HEADER.size :]
            if len(page) < _HEADER_SIZE:
                raise BoltError("inline bucket too short")
            _, flags, count, _ = _PAGE_HEADER.unpack_from(page)
            if not flags & LEAF_PAGE:
                raise BoltError("inline bucket page is not a leaf")
            items: Iterator[_Item] = self.leaf_items(page, count)
        else:
            items = self.tree_items(root)
        bucket = Bucket(sequence=sequence)
        previous: bytes | None = None
        for flags, key, item_value in items:
            if previous is not None and key <= previous:
                raise BoltError(f"keys out of order at {key[:32]!r}")
            previous = key
            if flags & BUCKET_LEAF:
                bucket.buckets[key] = self.bucket(item_value, depth + 1)
            else:
                bucket.values[key] = item_value
        return bucket

    def freelist(self) -> list[int]:
        """The free page IDs."""
        if self.meta.freelist == _NO_FREELIST:
            return []
        page, flags, count = self.page(self.meta.freelist)
        if not flags & FREELIST_PAGE:
            raise BoltError(f"page {self.meta.freelist} is not the freelist")
        start = _HEADER_SIZE
        if count == _MAX_COUNT:
            (count,) = _PGID.unpack_from(page, start)
            start += _PGID.size
        if start + count * _PGID.size > len(page):
            raise BoltError("freelist runs past its pages")
        return [_PGID.unpack_from(page, start + i * _PGID.size)[0] for i in range(count)]


def read_db(data: bytes) -> Bucket:
    """
    Read a whole bbolt database file into memory: the root's buckets (``Bucket.buckets``).

    :raises BoltError: the file is not a valid bbolt database.
    """
    reader = _Reader(data)
    root = Bucket()
    previous: bytes | None = None
    for flags, key, value in reader.tree_items(reader.meta.root):
        if previous is not None and key <= previous:
            raise BoltError(f"root keys out of order at {key[:32]!r}")
        previous = key
        if not flags & BUCKET_LEAF:
            raise BoltError(f"root key {key[:32]!r} is not a bucket")
        root.buckets[key] = reader.bucket(value)
    for pgid in reader.freelist():
        if pgid in reader.visited:
            raise BoltError(f"page {pgid} is both in use and free")
    return root
