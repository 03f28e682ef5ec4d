"""
etcd snapshots: the KV store's persisted state in etcd 3.4's backend layout, and back.

Pure (no Twisted, no I/O).  A snapshot is what etcd's ``Maintenance.Snapshot`` streams: a
bbolt database (:mod:`lattice.kv._bbolt`) followed by the SHA-256 of that database, which
``etcdctl snapshot restore`` checks.  The buckets are those etcd 3.4 keeps and reads on
``snapshot status``/``restore`` and at start-up (``mvcc/kvstore.go``, ``lease/lessor.go``,
``auth/store.go``, ``etcdserver/api/membership``):

``key``
   every retained version: the 17-byte revision (8-byte big-endian main revision, ``_``,
   8-byte big-endian sub-revision) with a trailing ``t`` for a deletion, mapped to an
   ``mvccpb.KeyValue`` (for a deletion, the key alone);
``meta``
   ``consistent_index`` (8 bytes big-endian) and, once compacted, ``scheduledCompactRev`` and
   ``finishedCompactRev`` (the compaction revision as 17 revision bytes);
``lease``
   8-byte big-endian lease ID to ``leasepb.Lease`` (ID, TTL);
``members``, ``members_removed``, ``cluster``
   this node as the only member (hex ID to its JSON), ``clusterVersion``;
``auth``, ``authUsers``, ``authRoles``
   ``enabled`` (when on), ``authRevision``; ``authpb.User`` and ``authpb.Role`` by name;
``alarm``
   raised alarms, each an ``etcdserverpb.AlarmMember`` key with an empty value.

A snapshot holds one tenant's keyspace (keys without the tenant prefix) and leases, as the
tenant sees them through the API; revisions keep their store-wide numbers.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lattice.kv._bbolt import BoltError, Bucket, read_db, write_db
from lattice.kv._mvcc import Change, KeyValue
from lattice.kv._proto import auth_pb2, kv_pb2, rpc_pb2
from lattice.kv._storage import LeaseRecord, StoredState

__all__ = [
    "Member",
    "Restored",
    "SnapshotError",
    "build_backend",
    "check_hash",
    "read_backend",
    "with_hash",
]

CLUSTER_VERSION = "3.4.0"
HASH_SIZE = 32

_REVISION = struct.Struct(">Q")
_REV_BYTES = 17
_TOMBSTONE = b"t"


class SnapshotError(ValueError):
    """The snapshot cannot be used; the message says why."""


@dataclass(frozen=True)
class Member:
    """This node as etcd's membership records it."""

    id: int
    name: str
    peer_urls: Sequence[str] = ()
    client_urls: Sequence[str] = ()


def tenant_prefix(tenant: str) -> bytes:
    """The prefix of ``tenant``'s keys in the store (as the API maps them)."""
    return tenant.encode() + b"\0"


def revision_bytes(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    """etcd's revision key: main and sub revisions, big-endian, ``t`` for a tombstone."""
    raw = _REVISION.pack(main) + b"_" + _REVISION.pack(sub)
    return raw + _TOMBSTONE if tombstone else raw


def with_hash(db: bytes) -> bytes:
    """The database followed by its SHA-256, as etcd streams a snapshot."""
    return db + hashlib.sha256(db).digest()


def check_hash(snapshot: bytes) -> bytes:
    """
    The database of a snapshot, after checking its trailing SHA-256 (etcd's rule: a file
    whose size is 32 bytes past a multiple of 512 carries the hash).

    :raises SnapshotError: no hash, or a hash that does not match.
    """
    if len(snapshot) % 512 != HASH_SIZE:
        raise SnapshotError(
            f"the snapshot ({len(snapshot)} bytes) carries no SHA-256 (etcd appends one); "
            f"it is truncated or not an etcd snapshot"
        )
    db, expected = snapshot[:-HASH_SIZE], snapshot[-HASH_SIZE:]
    actual = hashlib.sha256(db).digest()
    if actual != expected:
        raise SnapshotError(
            f"the snapshot's SHA-256 does not match its content (expected {expected.hex()}, "
            f"got {actual.hex()}): the file is damaged"
        )
    return db


# -- protobuf messages without generated classes -------------------------------------------


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64: negative numbers take ten bytes, as protobuf says
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _lease_pb(lease_id: int, ttl: int) -> bytes:
    """``leasepb.Lease{ID, TTL}`` (field 3, the checkpointed remaining TTL, left out)."""
    out = b""
    if lease_id:
        out += b"\x08" + _varint(lease_id)
    if ttl:
        out += b"\x10" + _varint(ttl)
    return out


def _varint_fields(data: bytes) -> dict[int, int]:
    """The varint fields of a message (other wire types are skipped)."""
    fields: dict[int, int] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            if i >= len(data) or shift > 63:
                raise SnapshotError("malformed lease record")
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        tag = varint()
        wire = tag & 7
        if wire == 0:
            value = varint()
            fields[tag >> 3] = value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 1:
            i += 8
        elif wire == 2:
            i += varint()
        elif wire == 5:
            i += 4
        else:
            raise SnapshotError("malformed lease record")
    if i != len(data):
        raise SnapshotError("malformed lease record")
    return fields


# -- writing -----------------------------------------------------------------------------


def _history_bucket(history: Iterable[Change], prefix: bytes) -> Bucket:
    bucket = Bucket()
    values = bucket.values
    size = len(prefix)
    for change in history:
        if not change.key.startswith(prefix):
            continue
        key = change.key[size:]
        kv = change.kv
        if kv is None:
            message = kv_pb2.KeyValue(key=key)
        else:
            message = kv_pb2.KeyValue(
                key=key,
                create_revision=kv.create_revision,
                mod_revision=kv.mod_revision,
                version=kv.version,
                value=kv.value,
                lease=kv.lease,
            )
        revision = revision_bytes(change.main, change.sub, kv is None)
        values[revision] = message.SerializeToString()
    return bucket


def _auth_buckets(root: Bucket, document: bytes | None) -> None:
    auth, users, roles = root.bucket(b"auth"), root.bucket(b"authUsers"), root.bucket(b"authRoles")
    state: dict[str, Any] = json.loads(document) if document else {}
    if state.get("enabled"):
        auth.values[b"enabled"] = b"\x01"
    auth.values[b"authRevision"] = _REVISION.pack(int(state.get("revision", 1)))
    for name, (password, user_roles) in state.get("users", {}).items():
        user = auth_pb2.User(name=name.encode(), password=password.encode(), roles=user_roles)
        user.options.no_password = not password
        users.values[name.encode()] = user.SerializeToString()
    for name, permissions in state.get("roles", {}).items():
        role = auth_pb2.Role(name=name.encode())
        for kind, key, range_end in permissions:
            role.keyPermission.add(
                permType=kind, key=bytes.fromhex(key), range_end=bytes.fromhex(range_end)
            )
        roles.values[name.encode()] = role.SerializeToString()


def build_backend(
    state: StoredState,
    *,
    tenant: str,
    member: Member,
    alarms: Iterable[int] = (),
) -> bytes:
    """
    The bbolt database etcd 3.4 would hold for ``tenant``'s part of ``state`` (without the
    trailing hash: see :func:`with_hash`).
    """
    prefix = tenant_prefix(tenant)
    root = Bucket()
    root.buckets[b"key"] = _history_bucket(state.history, prefix)
    meta = root.bucket(b"meta")
    meta.values[b"consistent_index"] = _REVISION.pack(max(state.revision, 1))
    if state.compact_revision > 0:
        compacted = revision_bytes(state.compact_revision)
        meta.values[b"scheduledCompactRev"] = compacted
        meta.values[b"finishedCompactRev"] = compacted
    lease = root.bucket(b"lease")
    for record in state.leases:
        if record.tenant == tenant:
            lease.values[_REVISION.pack(record.id)] = _lease_pb(record.id, record.ttl)
    members = root.bucket(b"members")
    members.values[b"%x" % member.id] = json.dumps(
        {
            "id": member.id,
            "peerURLs": list(member.peer_urls),
            "name": member.name,
            "clientURLs": list(member.client_urls),
        },
        separators=(",", ":"),
    ).encode()
    root.bucket(b"members_removed")
    root.bucket(b"cluster").values[b"clusterVersion"] = CLUSTER_VERSION.encode()
    _auth_buckets(root, state.meta.get("auth"))
    alarm = root.bucket(b"alarm")
    for kind in sorted(set(alarms)):
        raised = rpc_pb2.AlarmMember(memberID=member.id, alarm=rpc_pb2.AlarmType.Name(kind))
        alarm.values[raised.SerializeToString()] = b""
    return write_db(root)


# -- reading -----------------------------------------------------------------------------


def _parse_revision(raw: bytes) -> tuple[int, int, bool]:
    tombstone = len(raw) == _REV_BYTES + 1 and raw[-1:] == _TOMBSTONE
    if len(raw) != _REV_BYTES + tombstone or raw[8:9] != b"_":
        raise SnapshotError(f"bad revision key {raw.hex()} in the key bucket")
    return _REVISION.unpack_from(raw)[0], _REVISION.unpack_from(raw, 9)[0], tombstone


def _read_history(bucket: Bucket, prefix: bytes) -> list[Change]:
    history = []
    for raw in sorted(bucket.values):
        main, sub, tombstone = _parse_revision(raw)
        message = kv_pb2.KeyValue()
        try:
            message.ParseFromString(bucket.values[raw])
        except Exception as e:
            raise SnapshotError(f"bad key-value record at revision {main}.{sub}: {e}") from None
        if not message.key:
            raise SnapshotError(f"key-value record without a key at revision {main}.{sub}")
        key = prefix + message.key
        if tombstone:
            history.append(Change(main, sub, key, None))
            continue
        if message.mod_revision != main or message.version < 1:
            raise SnapshotError(f"inconsistent key-value record at revision {main}.{sub}")
        kv = KeyValue(
            key,
            message.create_revision,
            message.mod_revision,
            message.version,
            message.value,
            message.lease,
        )
        history.append(Change(main, sub, key, kv))
    return history


def _read_auth(root: Bucket) -> tuple[bytes | None, list[str], bool]:
    """
    Lattice's auth document, the users whose password hash could not be kept, and whether
    authentication had to be turned off because of them.
    """
    auth = root.buckets.get(b"auth", Bucket())
    users = root.buckets.get(b"authUsers", Bucket())
    roles = root.buckets.get(b"authRoles", Bucket())
    if not users.values and not roles.values and auth.values.get(b"enabled", b"\x00") == b"\x00":
        return None, [], False
    raw_revision = auth.values.get(b"authRevision", _REVISION.pack(1))
    dropped = []
    document_users: dict[str, list[Any]] = {}
    for name, value in sorted(users.values.items()):
        user = auth_pb2.User()
        user.ParseFromString(value)
        password = user.password.decode("utf-8", "replace")
        # Lattice keeps "salt$hash" (PBKDF2); etcd's bcrypt hashes ("$2a$...") cannot be checked.
        salt, dollar, digest = password.partition("$")
        if password and not (dollar and _is_hex(salt) and _is_hex(digest)):
            dropped.append(name.decode("utf-8", "replace"))
            password = ""
        document_users[name.decode()] = [password, sorted(user.roles)]
    document_roles: dict[str, list[list[Any]]] = {}
    for name, value in sorted(roles.values.items()):
        role = auth_pb2.Role()
        role.ParseFromString(value)
        document_roles[name.decode()] = sorted(
            ([p.permType, p.key.hex(), p.range_end.hex()] for p in role.keyPermission),
            key=lambda p: (p[1], p[2]),
        )
    enabled = auth.values.get(b"enabled") == b"\x01"
    # Nobody could log in to turn it off again: start with authentication off instead.
    turned_off = enabled and bool(dropped)
    document = {
        "enabled": enabled and not turned_off,
        "revision": _REVISION.unpack(raw_revision)[0] if len(raw_revision) == 8 else 1,
        "users": document_users,
        "roles": document_roles,
    }
    return json.dumps(document, sort_keys=True).encode(), dropped, turned_off


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return bool(text)


@dataclass(frozen=True)
class Restored:
    """
    A snapshot read back: the state to store, the users whose password could not be carried
    over (etcd's bcrypt hashes), and whether authentication was turned off because of them.
    """

    state: StoredState
    dropped_passwords: list[str]
    auth_turned_off: bool


def read_backend(db: bytes, *, tenant: str) -> Restored:
    """
    The store state an etcd backend database (from Lattice or from etcd 3.4) describes, with
    its keys in ``tenant``'s keyspace.

    :raises SnapshotError: the database is not a usable etcd backend.
    """
    try:
        root = read_db(db)
    except BoltError as e:
        raise SnapshotError(f"not a valid bbolt database: {e}") from None
    if b"key" not in root.buckets or b"meta" not in root.buckets:
        raise SnapshotError("not an etcd backend: the key or meta bucket is missing")
    prefix = tenant_prefix(tenant)
    history = _read_history(root.buckets[b"key"], prefix)
    meta = root.buckets[b"meta"].values
    compact_revision = 0
    if b"finishedCompactRev" in meta:
        compact_revision = _parse_revision(meta[b"finishedCompactRev"])[0]
    revision = max([1, compact_revision, *(change.main for change in history[-1:])])
    leases = []
    for raw, value in sorted(root.buckets.get(b"lease", Bucket()).values.items()):
        fields = _varint_fields(value)
        lease_id = fields.get(1, 0)
        if len(raw) != 8 or _REVISION.unpack(raw)[0] != lease_id or lease_id <= 0:
            raise SnapshotError(f"bad lease record {raw.hex()}")
        leases.append(LeaseRecord(lease_id, max(fields.get(2, 0), 1), tenant))
    auth, dropped, turned_off = _read_auth(root)
    stored_meta = {} if auth is None else {"auth": auth}
    state = StoredState(revision, compact_revision, history, leases, stored_meta)
    return Restored(state, dropped, turned_off)
