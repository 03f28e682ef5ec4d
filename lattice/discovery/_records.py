"""
Self-signed records and the table of known peers (no Twisted here).

A peer record is signed by its server's current key and carries a monotonic
C{seq}: a record only replaces one with a lower C{seq}, so stale replays lose.
A server's uuid is the node id of its first key; a key rotation, signed by the
old key, moves the uuid to a new key and keeps the old one verifiable for a
grace period; a revocation (signed by the revoked key or the server's current
key) makes a key unusable for good.  A server that rotated carries the chain
of its rotations in its record (C{key_history}), so that servers that never
knew its earlier keys can check that its uuid leads to its current key.

A record for a server nobody has vouched for enters the table as I{pending}:
its signature verified, it is not forwarded or used until the server proved
it answers at its announced endpoint with the same key (L{PeerTable.accept_pending}).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lattice.discovery._canonical import (
    Signer,
    b64decode,
    b64encode,
    sign_object,
    signature_of,
    signing_bytes,
)
from lattice.identity import PublicIdentity, node_id_of

__all__ = [
    "KEY_GRACE_MS",
    "MAX_KEY_HISTORY",
    "PeerTable",
    "RecordError",
    "Verifier",
    "check_key_history",
    "check_peer_record",
    "key_id_of",
    "make_peer_record",
    "make_revocation",
    "make_rotation",
    "public_key_of",
    "verify_signature",
]

KEY_GRACE_MS = 7 * 24 * 3600 * 1000
# rotations a record's key history may hold (one per rotation since the server's first key)
MAX_KEY_HISTORY = 16
MAX_ENDPOINTS = 4
MAX_URL = 512
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_UUID = re.compile(r"^[a-z2-7]{26}$")

Verifier = Callable[[bytes, bytes, bytes], bool]
"""C{verify(public_key, signature, data)}: whether the signature is valid."""


@functools.lru_cache(maxsize=4096)
def _loaded_key(public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key)


CACHED_DATA_MAX = 4096
"""Signed data up to this size has its verification remembered."""


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """
    Ed25519 verification of C{signature} over C{data} (parsed keys are cached).

    A pure function, so recent results for small objects (records, rotations,
    proofs) are cached too: the same record reaches a server from several
    peers, and each copy is checked.  The cache holds at most 8192 results
    of at most L{CACHED_DATA_MAX} bytes each, whatever peers send.
    """
    if len(data) <= CACHED_DATA_MAX:
        return _verify_cached(public_key, signature, data)
    return _verify(public_key, signature, data)


@functools.lru_cache(maxsize=8192)
def _verify_cached(public_key: bytes, signature: bytes, data: bytes) -> bool:
    return _verify(public_key, signature, data)


def _verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        _loaded_key(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class RecordError(ValueError):
    """
    A record, rotation or revocation is malformed or not validly signed.
    """


@functools.lru_cache(maxsize=65536)
def key_id_of(public_key: bytes) -> str:
    """
    The key id of a raw public key (recent answers are cached).
    """
    return PublicIdentity(public_key).key_id


@functools.lru_cache(maxsize=65536)
def _decoded_key(text: str) -> bytes:
    # every table holding a server shares one bytes object for its key
    return b64decode(text)


def public_key_of(record: Mapping[str, Any]) -> bytes:
    """
    The raw public key a record announces.
    """
    return _key_field(record, "public_key")


def _key_field(obj: Mapping[str, Any], name: str) -> bytes:
    """
    The raw public key in field C{name} of a signed object (a record, a rotation).

    @raise RecordError: it is missing, not base64 or not 32 bytes.
    """
    text = obj.get(name) if type(obj) is dict or isinstance(obj, Mapping) else None
    if not isinstance(text, str):
        raise RecordError(f"malformed {name}")
    try:
        # only what can be a key is remembered (43 characters for 32 bytes)
        key = _decoded_key(text) if len(text) == 43 else b64decode(text)
    except ValueError:
        raise RecordError(f"malformed {name}") from None
    if len(key) != 32:
        raise RecordError(f"{name} is not 32 bytes")
    return key


def valid_name(name: object) -> bool:
    """
    Whether C{name} is a server name (a DNS-like label sequence).
    """
    return isinstance(name, str) and _NAME.match(name) is not None


def valid_uuid(value: object) -> bool:
    """
    Whether C{value} has the form of a server uuid (a node id).
    """
    return isinstance(value, str) and _UUID.match(value) is not None


def _valid_endpoint(url: object) -> bool:
    if not isinstance(url, str) or len(url) > MAX_URL:
        return False
    return _valid_url(url)


@functools.lru_cache(maxsize=16384)
def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    del port
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and not parts.query
        and not parts.fragment
    )


def make_peer_record(
    signer: Signer,
    public_key: bytes,
    server_uuid: str,
    server_id: str,
    endpoints: Iterable[str],
    seq: int,
    issued_at: int,
    accepting_messages: bool = True,
    version: str = "lattice/0.1",
    key_history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """
    A self-signed peer record.  A server that rotated its key carries its
    C{key_history}: the rotations from the key its uuid derives from to
    C{public_key} (L{check_key_history}).
    """
    record = {
        "kind": "peer",
        "server_uuid": server_uuid,
        "server_id": server_id,
        "public_key": b64encode(public_key),
        "key_id": key_id_of(public_key),
        "endpoints": list(endpoints),
        "seq": seq,
        "issued_at": issued_at,
        "accepting_messages": accepting_messages,
        "version": version,
    }
    if key_history:
        record["key_history"] = key_history
    return sign_object(signer, record)


def check_peer_record(record: object) -> dict[str, Any]:
    """
    Check the shape of a peer record (not its signature).

    @raise RecordError: it is malformed.
    """
    if not isinstance(record, dict) or record.get("kind") != "peer":
        raise RecordError("not a peer record")
    if not valid_uuid(record.get("server_uuid")):
        raise RecordError("malformed server_uuid")
    if not valid_name(record.get("server_id")):
        raise RecordError("malformed server_id")
    endpoints = record.get("endpoints")
    if (
        not isinstance(endpoints, list)
        or not 1 <= len(endpoints) <= MAX_ENDPOINTS
        or not all(_valid_endpoint(url) for url in endpoints)
    ):
        raise RecordError("malformed endpoints")
    for name in ("seq", "issued_at"):
        value = record.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RecordError(f"malformed {name}")
    if not isinstance(record.get("accepting_messages"), bool):
        raise RecordError("malformed accepting_messages")
    if record.get("key_id") != key_id_of(public_key_of(record)):
        raise RecordError("key_id does not match public_key")
    history = record.get("key_history")
    if history is not None and (
        not isinstance(history, list) or not 1 <= len(history) <= MAX_KEY_HISTORY
    ):
        raise RecordError(f"key_history must be a list of 1 to {MAX_KEY_HISTORY} rotations")
    return record


def make_rotation(
    old: Signer, server_uuid: str, new_public_key: bytes, issued_at: int, *, old_public_key: bytes
) -> dict[str, Any]:
    """
    A key rotation: the old key hands C{server_uuid} over to C{new_public_key}.

    It names both public keys, so that a server that never knew the old key
    can still check the chain of rotations from the key the uuid derives from
    (L{check_key_history}).
    """
    return sign_object(
        old,
        {
            "kind": "rotation",
            "server_uuid": server_uuid,
            "old_key_id": old.key_id,
            "old_public_key": b64encode(old_public_key),
            "new_public_key": b64encode(new_public_key),
            "new_key_id": key_id_of(new_public_key),
            "issued_at": issued_at,
        },
    )


def check_key_history(
    server_uuid: str, history: object, public_key: bytes, verify: Verifier
) -> list[dict[str, Any]]:
    """
    Check that C{history}, a list of rotations, leads from the key
    C{server_uuid} derives from to C{public_key}, each rotation signed by the
    key it retires.  Revocations are not consulted: a key revoked after it was
    rotated out still signed its rotation (see docs/discovery.rst on what a
    stolen rotated-out key can still do).

    @return: the rotations, in order.
    @raise RecordError: the history is malformed or does not lead there.
    """
    if not isinstance(history, list) or not 1 <= len(history) <= MAX_KEY_HISTORY:
        raise RecordError(f"key history must be a list of 1 to {MAX_KEY_HISTORY} rotations")
    current: bytes | None = None
    for rotation in history:
        if (
            not isinstance(rotation, dict)
            or rotation.get("kind") != "rotation"
            or rotation.get("server_uuid") != server_uuid
        ):
            raise RecordError("key history holds something else than this server's rotations")
        try:
            old = _key_field(rotation, "old_public_key")
            new = _key_field(rotation, "new_public_key")
            signer_id, signature = signature_of(rotation)
            data = signing_bytes(rotation)
        except ValueError:  # RecordError included
            raise RecordError("malformed rotation in the key history") from None
        issued_at = rotation.get("issued_at")
        if not isinstance(issued_at, int) or isinstance(issued_at, bool):
            raise RecordError("malformed rotation in the key history")
        if current is None and node_id_of(old) != server_uuid:
            raise RecordError("key history does not start at the key the uuid derives from")
        if current is not None and old != current:
            raise RecordError("key history is not a chain")
        if not (
            rotation.get("old_key_id") == signer_id == key_id_of(old)
            and rotation.get("new_key_id") == key_id_of(new)
        ):
            raise RecordError("rotation key ids do not match its keys")
        if not verify(old, signature, data):
            raise RecordError("bad signature in the key history")
        current = new
    if current != public_key:
        raise RecordError("key history does not lead to the record's key")
    return list(history)


def make_revocation(
    signer: Signer, server_uuid: str, key_id: str, issued_at: int, reason: str = ""
) -> dict[str, Any]:
    """
    A revocation of C{key_id}, signed by that key or the server's current key.
    """
    return sign_object(
        signer,
        {
            "kind": "revocation",
            "server_uuid": server_uuid,
            "key_id": key_id,
            "issued_at": issued_at,
            "reason": reason[:200],
        },
    )


@dataclass(frozen=True)
class Offer:
    """
    The outcome of offering a record to the table.
    """

    status: str  # "new", "updated", "pending", "stale", "invalid", "revoked"
    reason: str = ""


_OWN = Offer("stale", "own record")
_STALE = Offer("stale")
_ALREADY_PENDING = Offer("stale", "already pending")
_UPDATED = Offer("updated")
_PENDING = Offer("pending")


class PeerTable:
    """
    The records of every known server, their keys, rotations and revocations.

    C{records} holds proven records (forwarded in digests); C{pending} holds
    records that verified but whose endpoint is not proven yet.
    """

    def __init__(
        self,
        own_uuid: str,
        verify: Verifier = verify_signature,
        pinned: Mapping[str, str] | None = None,
    ):
        self.own_uuid = own_uuid
        self._verify = verify
        self.records: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        # the current key of every known server, and the old keys of the
        # servers that rotated (key id -> key, valid until); kept apart
        # because a table holds every server of the network
        self.keys: dict[str, bytes] = {}
        self.previous: dict[str, dict[str, tuple[bytes, int]]] = {}
        self.revocations: dict[str, dict[str, Any]] = {}
        self.rotations: dict[str, dict[str, Any]] = {}
        # endpoint base URL -> fingerprint pinned by configuration
        self.pinned = dict(pinned or {})

    # keys ---------------------------------------------------------------

    def is_revoked(self, key_id: str) -> bool:
        return key_id in self.revocations

    def key_for(self, server_uuid: str, key_id: str, now: int) -> bytes | None:
        """
        A key that may verify signatures of C{server_uuid} now, or C{None}.
        """
        if key_id in self.revocations:
            return None
        return self._key_for(server_uuid, key_id, now)

    def _key_for(self, server_uuid: str, key_id: str, now: int) -> bytes | None:
        """
        The current or a still valid old key of C{server_uuid} (revoked or not).
        """
        current = self.keys.get(server_uuid)
        if current is None:
            return None
        if key_id_of(current) == key_id:
            return current
        entry = self.previous.get(server_uuid, {}).get(key_id)
        if entry is not None and entry[1] > now:
            return entry[0]
        return None

    def current_key(self, server_uuid: str) -> bytes | None:
        current = self.keys.get(server_uuid)
        if current is None or key_id_of(current) in self.revocations:
            return None
        return current

    def verify_object(self, obj: Mapping[str, Any], public_key: bytes) -> bool:
        try:
            key_id, sig = signature_of(obj)
        except ValueError:
            return False
        if key_id != key_id_of(public_key) or key_id in self.revocations:
            return False
        try:
            data = signing_bytes(obj)
        except ValueError:
            return False
        return self._verify(public_key, sig, data)

    # records ------------------------------------------------------------

    def seq_of(self, server_uuid: str) -> int:
        record = self.records.get(server_uuid)
        return -1 if record is None else int(record["seq"])

    def offer(self, record: object, now: int) -> Offer:
        """
        Check and take in a record received from anyone.

        A newer record of a known server signed by its current key replaces
        the old one unless it changes the endpoints (then it waits for a new
        proof); a record of an unknown server is pending until proven.
        """
        if isinstance(record, dict):
            # what would be dropped anyway is dropped before it is checked
            uuid, seq = record.get("server_uuid"), record.get("seq")
            if isinstance(uuid, str) and isinstance(seq, int):
                if uuid == self.own_uuid:
                    return _OWN
                if seq <= self.seq_of(uuid):
                    return _STALE
        try:
            checked = check_peer_record(record)
            key = public_key_of(checked)
        except RecordError as e:
            return Offer("invalid", str(e))
        uuid = checked["server_uuid"]
        if uuid == self.own_uuid:
            return _OWN
        if checked["key_id"] in self.revocations:
            return Offer("revoked", "key revoked")
        if checked["seq"] <= self.seq_of(uuid):
            return _STALE
        existing = self.records.get(uuid)
        waiting = self.pending.get(uuid)
        if existing is None and waiting is not None and waiting["seq"] >= checked["seq"]:
            return _ALREADY_PENDING
        known = self.keys.get(uuid)
        if known is not None:
            if key_id_of(known) != checked["key_id"]:
                return Offer("invalid", "not signed by the current key of this server")
        elif not self.may_claim(checked, key):
            return Offer(
                "invalid", "server_uuid is not derived from public_key nor from its key history"
            )
        if not self.verify_object(checked, key):
            return Offer("invalid", "bad signature")
        pinned = self._pinned_fingerprint(checked)
        if pinned is not None and PublicIdentity(key).fingerprint != pinned:
            return Offer("invalid", "key does not match the pinned fingerprint")
        if existing is not None and existing["endpoints"] == checked["endpoints"]:
            self.records[uuid] = checked
            return _UPDATED
        if waiting is not None and waiting["seq"] >= checked["seq"]:
            return _ALREADY_PENDING
        self.pending[uuid] = checked
        return _PENDING

    def _pinned_fingerprint(self, record: Mapping[str, Any]) -> str | None:
        for endpoint in record["endpoints"]:
            pinned = self.pinned.get(endpoint.rstrip("/"))
            if pinned is not None:
                return pinned
        return None

    def may_claim(self, record: Mapping[str, Any], public_key: bytes) -> bool:
        """
        Whether a server met for the first time may hold its record's uuid
        with C{public_key}: the uuid derives from that key, or the record's
        key history leads there from the key the uuid derives from.
        """
        uuid = record["server_uuid"]
        if node_id_of(public_key) == uuid:
            return True
        try:
            check_key_history(uuid, record.get("key_history"), public_key, self._verify)
        except RecordError:
            return False
        return True

    def accept_pending(self, server_uuid: str, public_key: bytes) -> dict[str, Any] | None:
        """
        The pending record of C{server_uuid} is proven (its endpoint answered
        with C{public_key}): make it a known record.

        For a server met for the first time after it rotated its key, the
        rotations of the record's key history are kept (and passed on), and its
        earlier keys are known as rotated out, valid for what is left of their
        grace period.
        """
        record = self.pending.get(server_uuid)
        if record is None or public_key_of(record) != public_key:
            return None
        del self.pending[server_uuid]
        if record["seq"] <= self.seq_of(server_uuid):
            return None
        rotations: list[dict[str, Any]] = []
        if server_uuid not in self.keys and node_id_of(public_key) != server_uuid:
            # the proof may have brought a newer record than the one offered
            try:
                rotations = check_key_history(
                    server_uuid, record.get("key_history"), public_key, self._verify
                )
            except RecordError:
                return None
        self.records[server_uuid] = record
        if server_uuid not in self.keys:
            self.keys[server_uuid] = public_key
            for rotation in rotations:
                old = _key_field(rotation, "old_public_key")
                until = rotation["issued_at"] + KEY_GRACE_MS
                self.previous.setdefault(server_uuid, {})[key_id_of(old)] = (old, until)
                self.rotations[f"{server_uuid}/{rotation['old_key_id']}"] = rotation
        return record

    def drop_pending(self, server_uuid: str) -> None:
        self.pending.pop(server_uuid, None)

    def add_trusted(self, record: dict[str, Any]) -> None:
        """
        Load a record already proven (from storage).
        """
        uuid = record["server_uuid"]
        self.records[uuid] = record
        if uuid not in self.keys:
            self.keys[uuid] = public_key_of(record)

    def forget(self, server_uuid: str) -> None:
        self.records.pop(server_uuid, None)
        self.pending.pop(server_uuid, None)
        self.keys.pop(server_uuid, None)
        self.previous.pop(server_uuid, None)

    # anti-entropy -------------------------------------------------------

    def digest(self) -> dict[str, int]:
        """
        C{{server_uuid: seq}} of every proven record.
        """
        return {uuid: record["seq"] for uuid, record in self.records.items()}

    def compare(
        self, theirs: Mapping[str, int], limit: int = 1000
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """
        Records the digest's owner lacks (up to C{limit}) and the uuids we want.
        """
        records = self.records
        give = [record for uuid, record in records.items() if theirs.get(uuid, -1) < record["seq"]][
            :limit
        ]
        want = []
        for uuid, seq in theirs.items():
            if uuid == self.own_uuid or not isinstance(seq, int):
                continue
            mine = records.get(uuid)
            if (mine is None or mine["seq"] < seq) and (
                uuid not in self.pending or self.pending[uuid]["seq"] < seq
            ):
                want.append(uuid)
        return give, want[:limit]

    def records_for(self, uuids: Iterable[str], limit: int = 1000) -> list[dict[str, Any]]:
        result = []
        for uuid in uuids:
            record = self.records.get(uuid)
            if record is not None:
                result.append(record)
                if len(result) >= limit:
                    break
        return result

    # rotation and revocation -------------------------------------------

    def apply_rotation(self, rotation: object, now: int) -> Offer:
        """
        Honour a key rotation signed by the server's current key.
        """
        if not isinstance(rotation, dict) or rotation.get("kind") != "rotation":
            return Offer("invalid", "not a rotation")
        uuid = rotation.get("server_uuid")
        old_key_id = rotation.get("old_key_id")
        if not isinstance(uuid, str) or not isinstance(old_key_id, str):
            return Offer("invalid", "malformed rotation")
        try:
            new_key = b64decode(rotation["new_public_key"])
        except (KeyError, ValueError):
            return Offer("invalid", "malformed new_public_key")
        if len(new_key) != 32 or rotation.get("new_key_id") != key_id_of(new_key):
            return Offer("invalid", "malformed new key")
        current = self.keys.get(uuid)
        if current is None:
            return Offer("stale", "unknown server")
        if key_id_of(current) == rotation["new_key_id"]:
            return Offer("stale", "already rotated")
        if key_id_of(current) != old_key_id:
            return Offer("stale", "not the current key")
        if not self.verify_object(rotation, current):
            return Offer("invalid", "bad signature")
        self.previous.setdefault(uuid, {})[old_key_id] = (current, now + KEY_GRACE_MS)
        self.keys[uuid] = new_key
        self.rotations[f"{uuid}/{old_key_id}"] = rotation
        record = self.records.get(uuid)
        if record is not None and record["key_id"] != key_id_of(new_key):
            # keep the record until a newer one signed by the new key arrives
            pass
        return Offer("updated")

    def apply_revocation(self, revocation: object, now: int) -> Offer:
        """
        Honour a revocation signed by the revoked key or the server's current key.
        """
        if not isinstance(revocation, dict) or revocation.get("kind") != "revocation":
            return Offer("invalid", "not a revocation")
        uuid = revocation.get("server_uuid")
        key_id = revocation.get("key_id")
        if not isinstance(uuid, str) or not isinstance(key_id, str):
            return Offer("invalid", "malformed revocation")
        if key_id in self.revocations:
            return Offer("stale")
        current = self.keys.get(uuid)
        if current is None:
            return Offer("stale", "unknown server")
        try:
            signer_id, _ = signature_of(revocation)
        except ValueError:
            return Offer("invalid", "malformed signature")
        signer = self._key_for(uuid, signer_id, now)
        if signer is None or signer_id not in (key_id, key_id_of(current)):
            return Offer("invalid", "not signed by the revoked or current key")
        if not self.verify_object(revocation, signer):
            return Offer("invalid", "bad signature")
        if key_id_of(current) != key_id and key_id not in self.previous.get(uuid, {}):
            return Offer("invalid", "not a key of this server")
        self.revocations[key_id] = revocation
        return Offer("updated")

    def is_usable(self, server_uuid: str) -> bool:
        """
        Whether C{server_uuid} is proven and its current key not revoked.
        """
        return server_uuid in self.records and self.current_key(server_uuid) is not None

    def events(self) -> list[dict[str, Any]]:
        """
        Rotations and revocations to pass on in every exchange.
        """
        return [*self.rotations.values(), *self.revocations.values()]

    def apply_events(self, events: object, now: int) -> int:
        """
        Apply gossiped rotations and revocations; returns how many were new.
        """
        if not isinstance(events, list):
            return 0
        applied = 0
        for event in events[:256]:
            if isinstance(event, dict) and event.get("kind") == "rotation":
                outcome = self.apply_rotation(event, now)
            else:
                outcome = self.apply_revocation(event, now)
            if outcome.status == "updated":
                applied += 1
        return applied

    def find_by_name(self, server_id: str) -> list[dict[str, Any]]:
        """
        Proven, usable records that claim C{server_id}.
        """
        return [
            record
            for uuid, record in self.records.items()
            if record["server_id"] == server_id and self.is_usable(uuid)
        ]
