"""
The discovery core: gossip rounds, name resolution, the message queue and
inbound hand-off, driven by the HTTP boundary and by timers.

It is written against narrow seams so that tests and the convergence
benchmark run it without sockets: a L{PeerTransport} for signed calls to
peers, a L{Webhook} for the application, a store run in a thread pool through
a L{Runner}, and an C{IReactorTime} for the clock.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lattice.discovery._canonical import (
    Signer,
    b64encode,
    canonical_json,
    sign_object,
    signature_of,
    signing_bytes,
)
from lattice.discovery._gossip import (
    Candidate,
    GossipError,
    Merged,
    answer_digest,
    digest_request,
    handle_push,
    handle_reply,
    select_neighbors,
)
from lattice.discovery._limits import CircuitBreaker
from lattice.discovery._records import (
    MAX_KEY_HISTORY,
    PeerTable,
    RecordError,
    Verifier,
    check_peer_record,
    key_id_of,
    make_peer_record,
    make_revocation,
    make_rotation,
    public_key_of,
    valid_name,
    verify_signature,
)
from lattice.discovery._store import MessageRow, SQLStore
from lattice.identity import node_id_of

__all__ = [
    "ApiError",
    "DiscoveryNode",
    "PeerTransport",
    "Runner",
    "Settings",
    "TransportError",
    "Webhook",
    "WebhookError",
]

P = ParamSpec("P")
T = TypeVar("T")

VERSION = "lattice-discovery/1"
DAY_MS = 86_400_000
MINUTE_MS = 60_000
ENDPOINT_MEMORY_MS = 10 * MINUTE_MS
_USER = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")
_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")
_KEY_ID = re.compile(r"^ed25519:[0-9a-f]{16}$")


class ApiError(Exception):
    """
    A request cannot be served: HTTP C{status} and a message for the caller.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class TransportError(Exception):
    """
    A call to a peer failed (network, timeout, refused by policy, HTTP error).
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class WebhookError(Exception):
    """
    The application's webhook did not accept a message.
    """


class PeerTransport(Protocol):
    """
    Authenticated calls to peers, only ever to announced endpoints.
    """

    def call(
        self, endpoint: str, destination: str, path: str, body: dict[str, Any]
    ) -> Awaitable[dict[str, Any]]:
        """
        POST C{body} to C{endpoint + path}, signed for C{destination}.
        """

    def fetch_announcement(self, endpoint: str, challenge: str) -> Awaitable[dict[str, Any]]:
        """
        GET C{endpoint/api/v1/announcement?challenge=...}.
        """


class Webhook(Protocol):
    """
    The hand-off of an inbound message to the application.
    """

    def deliver(self, message_id: str, payload: dict[str, Any]) -> Awaitable[None]:
        """
        Deliver; raise L{WebhookError} unless the application accepted it.
        """


class Runner(Protocol):
    """
    Runs a blocking store call off the reactor thread.
    """

    def __call__(self, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[T]: ...


@dataclass(frozen=True)
class Settings:
    """
    The discovery core's tunables (defaults: the predecessor's thresholds).
    """

    server_name: str
    endpoints: tuple[str, ...]
    bootstrap: tuple[tuple[str, str | None], ...] = ()
    max_neighbors: int = 8
    fanout: int = 3
    neighbor_eligible_ms: int = 7 * DAY_MS
    neighbor_demote_ms: int = 30 * DAY_MS
    peer_delete_ms: int = 90 * DAY_MS
    message_ttl_ms: int = DAY_MS
    max_attempts: int = 5
    retry_base_ms: int = MINUTE_MS
    retry_max_ms: int = 60 * MINUTE_MS
    breaker_threshold: int = 5
    breaker_open_ms: int = 15 * MINUTE_MS
    received_keep_ms: int = 7 * DAY_MS
    route_cache_ms: int = DAY_MS
    announce_min_interval_ms: int = MINUTE_MS
    record_refresh_ms: int = DAY_MS
    query_hops: int = 3
    query_fanout: int = 2
    max_content: int = 10_000
    delivery_batch: int = 50
    proof_concurrency: int = 8
    webhook_concurrency: int = 16
    accepting_messages: bool = True


def parse_bootstrap(entries: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """
    C{URL} or C{URL#fingerprint} entries as C{(url, fingerprint or None)}.
    """
    result = []
    for entry in entries:
        url, _, fingerprint = entry.partition("#")
        result.append((url.rstrip("/"), fingerprint.lower() or None))
    return tuple(result)


@dataclass
class _Shared:
    """
    The result of one running operation, for any number of waiters; the
    operation's own Deferred is consumed (no unhandled errors).
    """

    _NOTHING = object()

    def __init__(self, operation: Deferred[Any]):
        self._waiters: list[Deferred[Any]] = []
        self._result: object = self._NOTHING
        operation.addBoth(self._fire)

    def _fire(self, result: object) -> None:
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    @property
    def done(self) -> bool:
        return self._result is not self._NOTHING

    def wait(self) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        if self._result is not self._NOTHING:
            waiter.callback(self._result)
        else:
            self._waiters.append(waiter)
        return waiter


class _Group:
    """
    Group commit: calls made while a batch is in the store thread are
    written together in the next batch (one transaction), each caller
    getting its own result.
    """

    def __init__(self, node: DiscoveryNode, many: Callable[[list[Any]], list[Any]]):
        self._node = node
        self._many = many
        self._pending: list[tuple[Any, Deferred[Any]]] = []
        self._busy = False

    def __call__(self, item: Any) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        self._pending.append((item, waiter))
        if not self._busy:
            self._flush()
        return waiter

    def _flush(self) -> None:
        self._busy = True
        batch, self._pending = self._pending, []
        run = self._node._run
        assert run is not None
        result = run(self._many, [item for item, _ in batch])

        def done(outcome: object) -> None:
            for index, (_, waiter) in enumerate(batch):
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    assert isinstance(outcome, list)
                    waiter.callback(outcome[index])
            if self._pending:
                self._flush()
            else:
                self._busy = False

        result.addBoth(done)


class EndpointMemory:
    """
    C{host:port} -> the key that answered there (C{None}: it failed), each
    until a deadline, at most C{limit} entries.

    Entries are grouped by deadline in the order they were made, so expired
    ones are dropped in bulk as new ones arrive and the oldest go first when
    over the limit; an entry costs two dictionary slots (a node remembers an
    endpoint for every server it proved recently, which in a large network
    is most of them).
    """

    def __init__(self, limit: int):
        self._limit = limit
        self._keys: dict[str, bytes | None] = {}
        self._until: dict[str, int] = {}
        self._batches: deque[tuple[int, deque[str]]] = deque()

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, host_port: str, now: int) -> tuple[bytes | None, int] | None:
        """
        C{(key, until)} remembered for C{host_port}, or C{None} (also once expired).
        """
        until = self._until.get(host_port)
        if until is None or until <= now:
            return None
        return self._keys[host_port], until

    def put(self, host_port: str, key: bytes | None, until: int, now: int) -> None:
        """
        Remember C{key} for C{host_port} until C{until} (replacing what was there).
        """
        batches = self._batches
        while batches and batches[0][0] <= now:
            self._drop(*batches.popleft())
        if batches and batches[-1][0] == until:
            until = batches[-1][0]  # one int per batch
            batches[-1][1].append(host_port)
        else:
            batches.append((until, deque([host_port])))
        self._keys[host_port] = key
        self._until[host_port] = until
        while len(self._keys) > self._limit and batches:
            deadline, hosts = batches[0]
            if not hosts:
                batches.popleft()
                continue
            self._drop(deadline, (hosts.popleft(),))

    def _drop(self, deadline: int, hosts: Iterable[str]) -> None:
        for host_port in hosts:
            # an entry renewed later belongs to a later batch
            if self._until.get(host_port) == deadline:
                del self._until[host_port]
                del self._keys[host_port]


@dataclass
class _Route:
    server_uuid: str
    cached_at: int


@dataclass
class Stats:
    """
    Counters the service exports as metrics.
    """

    events: Counter[str] = field(default_factory=Counter)


class DiscoveryNode:
    """
    One server's discovery state and behaviour.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        identity: Signer,
        public_key: bytes,
        settings: Settings,
        clock: IReactorTime,
        store: SQLStore | None,
        run: Runner | None,
        transport: PeerTransport,
        webhook: Webhook | None,
        rng: random.Random | None = None,
        verify: Verifier = verify_signature,
    ):
        self._identity = identity
        self._public_key = public_key
        self.settings = settings
        self._clock = clock
        self._store = store
        self._run = run
        self._transport = transport
        self._webhook = webhook
        self._rng = rng or random.SystemRandom()
        self.server_uuid = node_id_of(public_key)
        self.server_name = settings.server_name
        self.created_at = 0
        self.table = PeerTable(
            self.server_uuid,
            verify,
            {url: fp for url, fp in settings.bootstrap if fp is not None},
        )
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_open_ms)
        self.stats = Stats()
        self.neighbors: list[str] = []
        self.last_seen: dict[str, int] = {}
        self.last_gossip = 0
        self._last_announce = -(10**15)
        self._seq = 0
        self._own: dict[str, Any] | None = None
        self._routes: dict[str, _Route] = {}
        self._queries: OrderedDict[str, int] = OrderedDict()
        self._proving: dict[str, _Shared] = {}
        self._proofs = DeferredSemaphore(settings.proof_concurrency)
        self._webhooks = DeferredSemaphore(settings.webhook_concurrency)
        self._handing_off: dict[str, _Shared] = {}
        self._delivering: _Shared | None = None
        self._again = False
        self.background: set[Deferred[Any]] = set()
        self.listeners: dict[str, str] = {}
        # host:port -> (key that answered there, or None when it failed; until)
        self._endpoint_memory = EndpointMemory(10_000)
        self._now_seconds = -1.0
        self._now_ms = 0
        if store is not None and run is not None:
            self._enqueue = _Group(self, store.enqueue_many)
            self._inbound_ack = _Group(self, store.inbound_acks)
            self._record_inbound = _Group(self, store.record_inbound_many)
        self.started_at = 0

    # time, storage -------------------------------------------------------

    def now(self) -> int:
        seconds = self._clock.seconds()
        if seconds != self._now_seconds:
            # one int per clock reading, shared by everything stamped with it
            self._now_seconds = seconds
            self._now_ms = int(seconds * 1000)
        return self._now_ms

    async def _db(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        assert self._run is not None
        return await self._run(f, *args, **kwargs)

    @property
    def _has_store(self) -> bool:
        return self._store is not None and self._run is not None

    def _spawn(self, coroutine: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred.fromCoroutine(coroutine)
        self.background.add(d)

        def done(result: object) -> object:
            self.background.discard(d)
            if isinstance(result, Failure):
                self._log.failure("Discovery background task failed", result)
            return None

        d.addBoth(done)
        return d

    # start-up ------------------------------------------------------------

    async def start(self) -> None:
        """
        Load state from the store and sign this server's record.
        """
        now = self.now()
        self.started_at = now
        if self._has_store:
            store = self._store
            assert store is not None
            uuid = await self._db(store.get_meta, "server_uuid")
            events = await self._db(store.load_events)
            if uuid is not None and uuid != self.server_uuid and self._rotated_to_us(uuid, events):
                # the key was rotated: the server keeps the uuid of its first key
                self._log.info(
                    "Server uuid {uuid} kept: the store holds its rotation to key {key_id}",
                    uuid=uuid,
                    key_id=self._identity.key_id,
                )
                self.server_uuid = uuid
                self.table.own_uuid = uuid
            if uuid is None:
                await self._db(store.set_meta, "server_uuid", self.server_uuid)
                await self._db(store.set_meta, "created_at", str(now))
            elif uuid != self.server_uuid:
                self._log.warn(
                    "Stored server uuid {stored} differs from the identity's {current}; "
                    "the key was replaced without a rotation",
                    stored=uuid,
                    current=self.server_uuid,
                )
                await self._db(store.set_meta, "server_uuid", self.server_uuid)
            self.created_at = int(await self._db(store.get_meta, "created_at") or now)
            self._seq = int(await self._db(store.get_meta, "own_seq") or 0)
            name = await self._db(store.get_meta, "server_name")
            if name and not self.settings.server_name:
                self.server_name = name
            for event in events:
                if event.get("server_uuid") == self.server_uuid:
                    self._keep_own_event(event)
                else:
                    self.table.apply_events([event], now)
            for row in await self._db(store.load_peers):
                try:
                    self.table.add_trusted(check_peer_record(row.record))
                except RecordError:
                    continue
                self.last_seen[row.server_uuid] = row.last_seen
                if row.is_neighbor:
                    self.neighbors.append(row.server_uuid)
            self.table.apply_events(self.table.events(), now)
        else:
            self.created_at = now
        await self._resign()

    def _rotated_to_us(self, uuid: str, events: list[dict[str, Any]]) -> bool:
        """
        Whether the stored C{events} hold a rotation of C{uuid} to this key.
        """
        return any(
            event.get("kind") == "rotation"
            and event.get("server_uuid") == uuid
            and event.get("new_key_id") == self._identity.key_id
            for event in events
        )

    def _keep_own_event(self, event: dict[str, Any]) -> None:
        """
        Pass on this server's own stored rotations and revocations again (the
        table only applies other servers' events).
        """
        if event.get("kind") == "rotation":
            self.table.rotations[f"{self.server_uuid}/{event.get('old_key_id')}"] = event
        elif event.get("kind") == "revocation" and isinstance(event.get("key_id"), str):
            self.table.revocations[event["key_id"]] = event

    async def _resign(self) -> None:
        now = self.now()
        self._seq = max(self._seq + 1, now)
        self._own = make_peer_record(
            self._identity,
            self._public_key,
            self.server_uuid,
            self.server_name,
            self.settings.endpoints,
            self._seq,
            now,
            self.accepting_messages,
            key_history=self.key_history(),
        )
        if self._has_store:
            assert self._store is not None
            await self._db(self._store.set_meta, "own_seq", str(self._seq))

    def key_history(self) -> list[dict[str, Any]]:
        """
        The rotations from the key this server's uuid derives from to its
        current key, in order (empty when it never rotated), for its record.
        """
        prefix = self.server_uuid + "/"
        by_new = {
            event.get("new_key_id"): event
            for name, event in self.table.rotations.items()
            if name.startswith(prefix)
        }
        chain: list[dict[str, Any]] = []
        key_id: object = self._identity.key_id
        while key_id in by_new and len(chain) < MAX_KEY_HISTORY:
            rotation = by_new.pop(key_id)
            chain.append(rotation)
            key_id = rotation.get("old_key_id")
        chain.reverse()
        return chain

    @property
    def accepting_messages(self) -> bool:
        return self.settings.accepting_messages and self._webhook is not None

    @property
    def signer(self) -> Signer:
        """
        The key this server signs with now.
        """
        return self._identity

    def own_record(self) -> dict[str, Any]:
        assert self._own is not None, "start() first"
        return self._own

    # request authentication ---------------------------------------------

    def key_for_request(self, origin: str, key_id: str, body: object) -> bytes | None:
        """
        The key that may sign a request from C{origin}: a known server's
        current or still-valid key, or, for an unknown server, the key of the
        self-signed record it sent along (its uuid must derive from that key).
        """
        now = self.now()
        key = self.table.key_for(origin, key_id, now)
        if key is not None:
            return key
        if not isinstance(body, dict):
            return None
        if origin in self.table.keys:
            # a server that rotated signs with its new key; the rotation,
            # signed by the key we know, comes along
            events = body.get("events")
            for event in events[:256] if isinstance(events, list) else []:
                if (
                    isinstance(event, dict)
                    and event.get("kind") == "rotation"
                    and event.get("server_uuid") == origin
                    and event.get("new_key_id") == key_id
                    and self.table.apply_rotation(event, now).status == "updated"
                ):
                    self._spawn(self._persist_events(now))
            return self.table.key_for(origin, key_id, now)
        record = body.get("record")
        try:
            checked = check_peer_record(record)
            candidate = public_key_of(checked)
        except RecordError:
            return None
        if (
            checked["server_uuid"] != origin
            or checked["key_id"] != key_id
            or not self.table.may_claim(checked, candidate)
            or self.table.is_revoked(key_id)
            or not self.table.verify_object(checked, candidate)
        ):
            return None
        return candidate

    def seen(self, origin: str) -> None:
        """
        An authenticated request from C{origin} arrived.
        """
        self.last_seen[origin] = self.now()

    # public answers ------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "alive": True,
            "accepting_messages": self.accepting_messages,
            "peer_count": len(self.table.records),
            "saturation": self.saturation(),
            "version": VERSION,
        }

    def saturation(self) -> float:
        return round(min(1.0, len(self.neighbors) / max(1, self.settings.max_neighbors)), 3)

    def identity_document(self) -> dict[str, Any]:
        return {
            "server_id": self.server_name,
            "server_uuid": self.server_uuid,
            "fingerprint": hashlib.sha256(self._public_key).hexdigest(),
            "created_at": self.created_at,
            "public_key": b64encode(self._public_key),
            "key_id": key_id_of(self._public_key),
        }

    def announcement(self, challenge: str | None) -> dict[str, Any]:
        """
        This server's record, and when asked, a signed answer to a challenge
        (the endpoint proof).
        """
        proof = None
        if challenge is not None:
            if (
                not 16 <= len(challenge) <= 128
                or not challenge.replace("-", "").replace("_", "").isalnum()
            ):
                raise ApiError(400, "challenge must be 16..128 base64url characters")
            proof = sign_object(
                self._identity,
                {
                    "kind": "proof",
                    "server_uuid": self.server_uuid,
                    "challenge": challenge,
                    "issued_at": self.now(),
                },
            )
        return {"record": self.own_record(), "proof": proof}

    # endpoint proof ------------------------------------------------------

    def _worth_probing(self, endpoint: str, key: bytes) -> bool:
        """
        Whether to contact C{endpoint} to prove C{key}: not when it recently
        failed, nor when it recently answered with another key.  So records
        that name someone else's endpoint cost that endpoint at most one
        request per node per memory period, however many are sent.
        """
        found = self._endpoint_memory.get(_host_port(endpoint), self.now())
        if found is None:
            return True
        known, _ = found
        return known == key

    def _remember_endpoint(self, endpoint: str, key: bytes | None) -> None:
        """
        Remember which key answered at C{endpoint} (C{None}: it failed) for
        L{ENDPOINT_MEMORY_MS}.
        """
        now = self.now()
        self._endpoint_memory.put(_host_port(endpoint), key, now + ENDPOINT_MEMORY_MS, now)

    async def _fetch_proven(self, endpoint: str) -> dict[str, Any]:
        """
        Fetch the record at C{endpoint} with a fresh challenge and check that
        the server signed the challenge with the record's key.
        """
        challenge = b64encode(os.urandom(24))
        answer = await self._transport.fetch_announcement(endpoint, challenge)
        record = check_peer_record(answer.get("record"))
        key = public_key_of(record)
        self._remember_endpoint(endpoint, key)
        proof = answer.get("proof")
        if (
            not isinstance(proof, dict)
            or proof.get("kind") != "proof"
            or proof.get("challenge") != challenge
            or proof.get("server_uuid") != record["server_uuid"]
            or not self.table.verify_object(proof, key)
        ):
            raise RecordError("endpoint proof failed")
        if endpoint.rstrip("/") not in [url.rstrip("/") for url in record["endpoints"]]:
            raise RecordError("the server does not announce the endpoint it answered at")
        return record

    def prove(self, server_uuid: str) -> Deferred[bool]:
        """
        Prove the pending record of C{server_uuid} (once at a time per server).
        """
        existing = self._proving.get(server_uuid)
        if existing is None:
            proving: Deferred[bool] = Deferred.fromCoroutine(self._prove_limited(server_uuid))
            if proving.called:
                return proving
            existing = self._proving[server_uuid] = _Shared(proving)
            existing.wait().addBoth(lambda _: self._proving.pop(server_uuid, None))
        result: Deferred[bool] = existing.wait()
        return result

    async def _prove_limited(self, server_uuid: str) -> bool:
        """
        L{_prove}, at most C{proof_concurrency} at a time.
        """
        await self._proofs.acquire()
        try:
            return await self._prove(server_uuid)
        finally:
            self._proofs.release()

    async def _prove(self, server_uuid: str) -> bool:
        pending = self.table.pending.get(server_uuid)
        if pending is None:
            return server_uuid in self.table.records
        key = public_key_of(pending)
        for endpoint in pending["endpoints"]:
            if not self._worth_probing(endpoint, key):
                self.stats.events["proof_skipped"] += 1
                continue
            try:
                answered = await self._fetch_proven(endpoint)
            except (TransportError, RecordError) as e:
                self._remember_endpoint(endpoint, None)
                self.stats.events["proof_failed"] += 1
                self._log.debug(
                    "Endpoint proof of {uuid} at {endpoint} failed: {error}",
                    uuid=server_uuid,
                    endpoint=endpoint,
                    error=str(e),
                )
                continue
            if public_key_of(answered) != key or answered["server_uuid"] != server_uuid:
                self.stats.events["proof_failed"] += 1
                continue
            # a newer record fetched along with the proof is only taken when
            # its own signature holds (the proof does not cover it)
            if answered["seq"] > pending["seq"] and self.table.verify_object(answered, key):
                self.table.pending[server_uuid] = answered
            accepted = self.table.accept_pending(server_uuid, key)
            if accepted is None:
                return server_uuid in self.table.records
            self.stats.events["peer_accepted"] += 1
            now = self.now()
            self.last_seen[server_uuid] = now
            await self._persist([server_uuid], now)
            return True
        self.table.drop_pending(server_uuid)
        return False

    async def _persist(self, uuids: list[str], now: int) -> None:
        if not uuids or not self._has_store:
            return
        assert self._store is not None
        entries = []
        for uuid in uuids:
            record = self.table.records.get(uuid)
            if record is not None:
                trust = "pinned" if self.table._pinned_fingerprint(record) else "verified"
                entries.append((record, trust, self.last_seen.get(uuid, now)))
        await self._db(self._store.save_peers, entries)

    async def _after_merge(self, merged: Merged, wait: bool) -> None:
        now = self.now()
        await self._persist(merged.updated, now)
        if merged.events:
            await self._persist_events(now)
        proofs = [self.prove(uuid) for uuid in merged.pending]
        if wait and proofs:
            await gatherResults(proofs)

    async def _persist_events(self, now: int) -> None:
        if not self._has_store:
            return
        assert self._store is not None
        for event in self.table.events():
            key = f"{event['kind']}/{event['server_uuid']}/" + str(
                event.get("old_key_id") or event.get("key_id")
            )
            await self._db(self._store.save_event, key, event, now)

    # gossip: the receiving side ------------------------------------------

    async def receive_gossip(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """
        C{POST /api/v1/gossip/receive} from an authenticated C{origin}.
        """
        now = self.now()
        kind = body.get("type")
        try:
            if kind == "digest":
                record = body.get("record")
                if not isinstance(record, dict) or record.get("server_uuid") != origin:
                    raise ApiError(400, "a digest carries the sender's own record")
                reply, merged = answer_digest(self.table, self.own_record(), body, now)
            elif kind == "records":
                reply, merged = {"type": "ack"}, handle_push(self.table, body, now)
            elif kind == "events":
                count = self.table.apply_events(body.get("events", []), now)
                reply, merged = {"type": "ack"}, Merged([], [], count)
            else:
                raise ApiError(400, "unknown gossip type")
        except GossipError as e:
            raise ApiError(400, str(e)) from None
        self.stats.events["gossip_received"] += 1
        self._spawn(self._after_merge(merged, wait=False))
        return reply

    # gossip: the initiating side -----------------------------------------

    async def bootstrap(self) -> int:
        """
        Fetch (with proof, and the pinned fingerprint when configured) every
        bootstrap server not known yet.  Returns how many were added.
        """
        added = 0
        for url, fingerprint in self.settings.bootstrap:
            if url in [e.rstrip("/") for e in self.settings.endpoints]:
                continue
            known = any(
                url in [e.rstrip("/") for e in record["endpoints"]]
                for record in self.table.records.values()
            )
            if known:
                continue
            try:
                record = await self._fetch_proven(url)
            except (TransportError, RecordError) as e:
                self._log.warn("Bootstrap server {url} unusable: {error}", url=url, error=str(e))
                continue
            key = public_key_of(record)
            if fingerprint is not None and hashlib.sha256(key).hexdigest() != fingerprint:
                self.stats.events["bootstrap_pin_mismatch"] += 1
                self._log.error(
                    "Bootstrap server {url} has key {found}, pinned {pinned}: refused",
                    url=url,
                    found=hashlib.sha256(key).hexdigest(),
                    pinned=fingerprint,
                )
                continue
            outcome = self.table.offer(record, self.now())
            if outcome.status == "pending":
                self.table.accept_pending(record["server_uuid"], key)
            if record["server_uuid"] in self.table.records:
                now = self.now()
                self.last_seen[record["server_uuid"]] = now
                await self._persist([record["server_uuid"]], now)
                added += 1
        return added

    def usable_peers(self) -> list[str]:
        return [uuid for uuid in self.table.records if self.table.is_usable(uuid)]

    def gossip_partners(self) -> list[str]:
        """
        C{fanout} partners: neighbors, with one random known peer for diversity.
        """
        usable = self.usable_peers()
        if not usable:
            return []
        self._top_up_neighbors(usable)
        neighbors = [uuid for uuid in self.neighbors if self.table.is_usable(uuid)]
        fanout = self.settings.fanout
        partners = self._rng.sample(neighbors, min(len(neighbors), max(1, fanout - 1)))
        others = [uuid for uuid in usable if uuid not in partners]
        while len(partners) < fanout and others:
            pick = others.pop(self._rng.randrange(len(others)))
            partners.append(pick)
        return partners

    def _top_up_neighbors(self, usable: list[str]) -> None:
        self.neighbors = [uuid for uuid in self.neighbors if self.table.is_usable(uuid)]
        if len(self.neighbors) >= self.settings.max_neighbors:
            return
        candidates = [uuid for uuid in usable if uuid not in self.neighbors]
        self._rng.shuffle(candidates)
        self.neighbors += candidates[: self.settings.max_neighbors - len(self.neighbors)]

    async def gossip_round(self) -> dict[str, int]:
        """
        Bootstrap if needed, then one push-pull exchange with each partner.
        """
        now = self.now()
        if now - int(self.own_record()["issued_at"]) >= self.settings.record_refresh_ms:
            await self._resign()
        await self.bootstrap()
        partners = self.gossip_partners()
        before = len(self.table.records)
        results = await gatherResults(
            [Deferred.fromCoroutine(self.exchange(uuid)) for uuid in partners]
        )
        self.last_gossip = self.now()
        self.stats.events["gossip_rounds"] += 1
        return {
            "partners": len(partners),
            "succeeded": sum(1 for ok in results if ok),
            "learned": len(self.table.records) - before,
            "peer_count": len(self.table.records),
        }

    async def exchange(self, uuid: str) -> bool:
        """
        One push-pull exchange with C{uuid}; whether it succeeded.
        """
        record = self.table.records.get(uuid)
        if record is None:
            return False
        endpoint = record["endpoints"][0]
        path = "/api/v1/gossip/receive"
        try:
            reply = await self._transport.call(
                endpoint, uuid, path, digest_request(self.table, self.own_record())
            )
            push, merged = handle_reply(self.table, reply, self.now())
            if push is not None:
                push["record"] = self.own_record()
                await self._transport.call(endpoint, uuid, path, push)
        except (TransportError, GossipError) as e:
            self.stats.events["gossip_failed"] += 1
            self._log.debug("Gossip with {uuid} failed: {error}", uuid=uuid, error=str(e))
            return False
        self.stats.events["gossip_exchanges"] += 1
        now = self.now()
        self.last_seen[uuid] = now
        if self._has_store:
            assert self._store is not None
            await self._db(self._store.touch_peers, [(uuid, now, None)])
        await self._after_merge(merged, wait=True)
        return True

    async def announce(self, force: bool) -> dict[str, Any]:
        """
        C{POST /api/v1/announce}: a gossip round, at most one per minute unless forced.
        """
        now = self.now()
        if not force and now - self._last_announce < self.settings.announce_min_interval_ms:
            return {
                "status": "rate_limited",
                "retry_after_seconds": (
                    self.settings.announce_min_interval_ms - (now - self._last_announce)
                )
                // 1000,
            }
        self._last_announce = now
        result = await self.gossip_round()
        return {"status": "ok", **result}

    # key rotation and revocation -----------------------------------------

    async def rotate(self, new_identity: Signer, new_public_key: bytes) -> dict[str, Any]:
        """
        Hand this server's uuid over to a new key: the rotation is signed by
        the old key, and the record is re-signed by the new one; both spread
        with the next gossip rounds.
        """
        rotation = make_rotation(
            self._identity,
            self.server_uuid,
            new_public_key,
            self.now(),
            old_public_key=self._public_key,
        )
        self.table.rotations[f"{self.server_uuid}/{self._identity.key_id}"] = rotation
        self._identity = new_identity
        self._public_key = new_public_key
        await self._persist_events(self.now())
        await self._resign()
        return rotation

    def retired_keys(self) -> dict[str, dict[str, Any]]:
        """
        This server's rotated-out keys: key id -> the rotation that retired it.
        """
        prefix = self.server_uuid + "/"
        return {
            str(event["old_key_id"]): event
            for name, event in self.table.rotations.items()
            if name.startswith(prefix)
        }

    async def revoke(self, key_id: object, reason: object = "") -> dict[str, Any]:
        """
        Revoke one of this server's rotated-out keys (signed by the current
        key); peers that know the key refuse its signatures from then on.

        @raise ApiError: 400 for malformed input, 404 when C{key_id} is not a
            rotated-out key of this server, 409 when it is the current key or
            already revoked.
        """
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise ApiError(400, "key_id must be a key id (ed25519: and 16 hex digits)")
        if reason is None:
            reason = ""
        if not isinstance(reason, str) or len(reason) > 200:
            raise ApiError(400, "reason must be a string of at most 200 characters")
        if key_id == self._identity.key_id:
            raise ApiError(
                409,
                f"{key_id} is the key this server signs with now: rotate first "
                "(lattice identity rotate), then revoke the old key",
            )
        existing = self.table.revocations.get(key_id)
        if existing is not None:
            raise ApiError(409, f"{key_id} is already revoked (at {existing.get('issued_at')})")
        retired = self.retired_keys()
        if key_id not in retired:
            revocable = sorted(k for k in retired if k not in self.table.revocations)
            raise ApiError(
                404,
                f"{key_id} is not a rotated-out key of this server; keys that can be "
                f"revoked: {', '.join(revocable) or 'none'}",
            )
        revocation = make_revocation(self._identity, self.server_uuid, key_id, self.now(), reason)
        self.table.revocations[key_id] = revocation
        await self._persist_events(self.now())
        return revocation

    async def broadcast_events(self) -> int:
        """
        Push rotations and revocations to every usable peer now.
        """
        sent = 0
        for uuid in self.usable_peers():
            record = self.table.records[uuid]
            try:
                await self._transport.call(
                    record["endpoints"][0],
                    uuid,
                    "/api/v1/gossip/receive",
                    {"type": "events", "events": self.table.events(), "record": self.own_record()},
                )
                sent += 1
            except TransportError:
                continue
        return sent

    # neighbors -----------------------------------------------------------

    async def update_neighbors(self) -> dict[str, Any]:
        """
        Probe candidates (endpoint proof doubles as liveness) and choose neighbors.
        """
        now = self.now()
        usable = self.usable_peers()
        eligible = [
            uuid
            for uuid in usable
            if now - self.last_seen.get(uuid, 0) <= self.settings.neighbor_eligible_ms
        ]
        probes = eligible[: self.settings.max_neighbors * 4]
        results = await gatherResults(
            [Deferred.fromCoroutine(self._probe(uuid)) for uuid in probes]
        )
        probed = dict(zip(probes, results, strict=True))
        now = self.now()
        candidates = [
            Candidate(uuid, self.last_seen.get(uuid, 0), probed.get(uuid, False))
            for uuid in eligible
        ]
        self.neighbors = select_neighbors(
            candidates,
            now,
            self._rng,
            self.settings.max_neighbors,
            self.settings.neighbor_eligible_ms,
        )
        if self._has_store:
            assert self._store is not None
            await self._db(
                self._store.touch_peers, [(uuid, now, ok) for uuid, ok in probed.items()]
            )
            await self._db(self._store.set_neighbors, self.neighbors)
        return {"neighbors": list(self.neighbors), "probed": len(probed)}

    async def _probe(self, uuid: str) -> bool:
        record = self.table.records[uuid]
        try:
            answered = await self._fetch_proven(record["endpoints"][0])
        except (TransportError, RecordError):
            return False
        if answered["server_uuid"] != uuid or public_key_of(answered) != self.table.current_key(
            uuid
        ):
            return False
        if answered["seq"] > record["seq"]:
            self.table.offer(answered, self.now())
        self.last_seen[uuid] = self.now()
        return True

    # name resolution -----------------------------------------------------

    def _remember_query(self, query_id: str) -> bool:
        now = self.now()
        queries = self._queries
        while queries and next(iter(queries.values())) < now:
            queries.popitem(last=False)
        if query_id in queries:
            return False
        queries[query_id] = now + 10 * MINUTE_MS
        if len(queries) > 10_000:
            queries.popitem(last=False)
        return True

    def _answer_locally(self, domain: str) -> dict[str, Any] | None:
        if domain == self.server_name:
            return self.own_record()
        found = self.table.find_by_name(domain)
        if not found:
            return None
        return min(found, key=lambda r: r["issued_at"])

    async def domain_query(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """
        C{POST /api/v1/domain/query}: answer from the table, or forward with a
        lower hop count; duplicate query ids are answered C{found: false}.
        """
        query_id = body.get("query_id")
        domain = body.get("domain")
        hops = body.get("hops")
        if not isinstance(query_id, str) or not 16 <= len(query_id) <= 64:
            raise ApiError(400, "query_id must be 16..64 characters")
        if not valid_name(domain):
            raise ApiError(400, "domain is not a valid server name")
        if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= 8:
            raise ApiError(400, "hops must be an integer 0..8")
        assert isinstance(domain, str)
        if not self._remember_query(query_id):
            return {"query_id": query_id, "found": False, "duplicate": True}
        record = self._answer_locally(domain)
        if record is None and hops > 1:
            record = await self._ask_neighbors(
                domain, query_id, min(hops, self.settings.query_hops) - 1, exclude=origin
            )
        return {"query_id": query_id, "found": record is not None, "record": record}

    async def _ask_neighbors(
        self, domain: str, query_id: str, hops: int, exclude: str | None
    ) -> dict[str, Any] | None:
        asked = [
            uuid
            for uuid in (self.neighbors or self.usable_peers())
            if uuid != exclude and self.table.is_usable(uuid)
        ]
        asked = self._rng.sample(asked, min(len(asked), self.settings.query_fanout))
        for uuid in asked:
            if not self.breaker.allow(uuid, self.now()):
                continue
            endpoint = self.table.records[uuid]["endpoints"][0]
            try:
                answer = await self._transport.call(
                    endpoint,
                    uuid,
                    "/api/v1/domain/query",
                    {
                        "query_id": query_id,
                        "domain": domain,
                        "hops": hops,
                        "record": self.own_record(),
                    },
                )
            except TransportError:
                continue
            record = answer.get("record")
            if answer.get("found") and self._check_answer(domain, record):
                assert isinstance(record, dict)
                return record
        return None

    def _check_answer(self, domain: str, record: object) -> bool:
        """
        An answer is only believed when it is the owner's self-signed record.
        """
        try:
            checked = check_peer_record(record)
            key = public_key_of(checked)
        except RecordError:
            return False
        if checked["server_id"] != domain:
            return False
        uuid = checked["server_uuid"]
        current = self.table.current_key(uuid)
        if current is None and (uuid in self.table.keys or not self.table.may_claim(checked, key)):
            return False
        if current is not None and current != key:
            return False
        return self.table.verify_object(checked, key)

    async def resolve(self, domain: str) -> dict[str, Any]:
        """
        C{POST /api/v1/route/{domain}}: local table, route cache, then neighbors.
        """
        if not valid_name(domain):
            raise ApiError(400, "domain is not a valid server name")
        now = self.now()
        cached = self._routes.get(domain)
        if (
            cached is not None
            and now - cached.cached_at < self.settings.route_cache_ms
            and self.table.is_usable(cached.server_uuid)
            and self.table.records[cached.server_uuid]["server_id"] == domain
        ):
            return self._route(domain, self.table.records[cached.server_uuid], 1.0, True)
        record = self._answer_locally(domain)
        if record is not None:
            if record is not self._own:
                self._routes[domain] = _Route(record["server_uuid"], now)
            return self._route(domain, record, 1.0, False)
        query_id = b64encode(os.urandom(16))
        self._remember_query(query_id)
        answer = await self._ask_neighbors(domain, query_id, self.settings.query_hops, None)
        if answer is not None:
            uuid = answer["server_uuid"]
            self.table.offer(answer, now)
            if uuid in self.table.pending:
                await self.prove(uuid)
            if self.table.is_usable(uuid) and self.table.records[uuid]["server_id"] == domain:
                self._routes[domain] = _Route(uuid, self.now())
                await self._persist([uuid], self.now())
                return self._route(domain, self.table.records[uuid], 0.9, False)
        return {
            "found": False,
            "domain": domain,
            "server_id": None,
            "server_uuid": None,
            "endpoint_url": None,
            "confidence": 0.0,
            "from_cache": False,
        }

    def _route(
        self, domain: str, record: Mapping[str, Any], confidence: float, from_cache: bool
    ) -> dict[str, Any]:
        return {
            "found": True,
            "domain": domain,
            "server_id": record["server_id"],
            "server_uuid": record["server_uuid"],
            "endpoint_url": record["endpoints"][0],
            "confidence": confidence,
            "from_cache": from_cache,
        }

    # domains -------------------------------------------------------------

    def domain_verify(self, domain: object) -> dict[str, Any]:
        if not valid_name(domain):
            raise ApiError(400, "domain is not a valid server name")
        assert isinstance(domain, str)
        owners = [r["server_uuid"] for r in self.table.find_by_name(domain)]
        if domain == self.server_name:
            owners.insert(0, self.server_uuid)
        others = [uuid for uuid in owners if uuid != self.server_uuid]
        return {
            "domain": domain,
            "available": not others,
            "owner": owners[0] if owners else None,
        }

    async def domain_register(self, domain: object) -> dict[str, Any]:
        verdict = self.domain_verify(domain)
        if not verdict["available"]:
            raise ApiError(409, f"{domain} is already announced by {verdict['owner']}")
        assert isinstance(domain, str)
        self.server_name = domain
        if self._has_store:
            assert self._store is not None
            await self._db(self._store.set_meta, "server_name", domain)
        await self._resign()
        return {"registered": True, "domain": domain, "server_uuid": self.server_uuid}

    # outbound messages ---------------------------------------------------

    async def send(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """
        C{POST /api/v1/messages/send}: validate, sign once, queue durably.
        """
        to_address = body.get("to_address")
        from_address = body.get("from_address")
        content = body.get("content")
        message_type = body.get("message_type", "text")
        priority = body.get("priority", 1)
        metadata = body.get("metadata") or {}
        to_user, to_domain = _split_address(to_address, "to_address")
        from_user, from_domain = _split_address(from_address, "from_address")
        if from_domain != self.server_name:
            raise ApiError(400, f"from_address must be an address at {self.server_name}")
        if not isinstance(content, str) or not content or len(content) > self.settings.max_content:
            raise ApiError(400, f"content must be 1..{self.settings.max_content} characters")
        if not isinstance(message_type, str) or not 1 <= len(message_type) <= 32:
            raise ApiError(400, "message_type must be 1..32 characters")
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 2:
            raise ApiError(400, "priority must be 0, 1 or 2")
        if not isinstance(metadata, dict):
            raise ApiError(400, "metadata must be an object")
        try:
            if len(canonical_json(metadata)) > 4096:
                raise ApiError(400, "metadata is larger than 4096 bytes")
        except ValueError as e:
            raise ApiError(400, f"metadata: {e}") from None
        if not self._has_store:
            raise ApiError(503, "no message store")
        now = self.now()
        envelope = sign_object(
            self._identity,
            {
                "kind": "message",
                "message_id": os.urandom(16).hex(),
                "from_address": f"{from_user}@{from_domain}",
                "to_address": f"{to_user}@{to_domain}",
                "from_server": self.server_uuid,
                "content": content,
                "message_type": message_type,
                "priority": priority,
                "metadata": metadata,
                "sent_at": now,
            },
        )
        await self._enqueue(
            (envelope, to_domain, priority, now, now + self.settings.message_ttl_ms)
        )
        self.stats.events["messages_queued"] += 1
        self.kick_delivery()
        return {
            "status": "queued",
            "message_id": envelope["message_id"],
            "to_domain": to_domain,
        }

    def kick_delivery(self) -> None:
        """
        Run a delivery pass soon (coalesced with one that is running).
        """
        if self._delivering is None:
            self._spawn(self._deliver_soon())
        else:
            self._again = True

    async def _deliver_soon(self) -> None:
        await self.process_messages()

    def process_messages(self) -> Deferred[dict[str, int]]:
        """
        Deliver due messages; concurrent callers share the running pass, and a
        pass requested while one runs starts again once it ends.
        """
        if self._delivering is None:
            shared = self._delivering = _Shared(Deferred.fromCoroutine(self._process()))
            if shared.done:
                self._delivering = None
            else:
                shared.wait().addBoth(self._delivered)
        else:
            shared = self._delivering
        result: Deferred[dict[str, int]] = shared.wait()
        return result

    def _delivered(self, result: object) -> None:
        self._delivering = None
        if self._again:
            self._again = False
            self.kick_delivery()

    async def _process(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        assert self._store is not None
        while True:
            now = self.now()
            due = await self._db(self._store.due_messages, now, 1000)
            if not due:
                break
            by_domain: dict[str, list[MessageRow]] = {}
            for row in due:
                by_domain.setdefault(row.to_domain, []).append(row)
            results = await gatherResults(
                [
                    Deferred.fromCoroutine(self._deliver_domain(domain, rows))
                    for domain, rows in by_domain.items()
                ]
            )
            progressed = 0
            for result in results:
                totals.update(result)
                progressed += result.get("delivered", 0)
            if progressed == 0:
                break
        return {
            "delivered": totals["delivered"],
            "retried": totals["retried"],
            "failed": totals["failed"],
            "deferred": totals["deferred"],
        }

    async def _deliver_domain(self, domain: str, rows: list[MessageRow]) -> Counter[str]:
        counts: Counter[str] = Counter()
        try:
            route = await self.resolve(domain)
        except ApiError:
            route = {"found": False}
        uuid = route.get("server_uuid") if route.get("found") else None
        if uuid is None or uuid == self.server_uuid or not self.table.is_usable(uuid):
            await self._failed(rows, "cannot resolve destination", counts)
            return counts
        batch = self.settings.delivery_batch
        chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        parallel = DeferredSemaphore(4)

        async def one(chunk: list[MessageRow]) -> None:
            if not self.breaker.allow(uuid, self.now()):
                counts["deferred"] += len(chunk)
                return
            await self._deliver_chunk(uuid, chunk, counts)

        await gatherResults([parallel.run(one, chunk) for chunk in chunks])
        return counts

    async def _deliver_chunk(self, uuid: str, rows: list[MessageRow], counts: Counter[str]) -> None:
        record = self.table.records[uuid]
        key = self.table.current_key(uuid)
        assert key is not None
        try:
            answer = await self._transport.call(
                record["endpoints"][0],
                uuid,
                "/api/v1/federation/messages/receive",
                {"messages": [row.envelope for row in rows], "record": self.own_record()},
            )
        except TransportError as e:
            self.breaker.failure(uuid, self.now())
            await self._failed(rows, str(e), counts)
            return
        self.breaker.success(uuid)
        acks = answer.get("acks")
        acks = acks if isinstance(acks, list) else []
        by_id = {ack.get("message_id"): ack for ack in acks if isinstance(ack, dict)}
        delivered, failed = [], []
        for row in rows:
            ack = by_id.get(row.message_id)
            if ack is not None and self._valid_ack(ack, row.envelope, uuid, key):
                delivered.append((row.message_id, ack))
            else:
                failed.append(row)
        if delivered:
            assert self._store is not None
            await self._db(self._store.mark_delivered, delivered, self.now())
            counts["delivered"] += len(delivered)
            self.stats.events["messages_delivered"] += len(delivered)
        if failed:
            errors = answer.get("errors")
            reason = "no valid acknowledgement"
            if isinstance(errors, dict) and errors:
                reason += f" ({next(iter(errors.values()))})"
            await self._failed(failed, reason, counts)

    def _valid_ack(
        self, ack: Mapping[str, Any], envelope: Mapping[str, Any], uuid: str, key: bytes
    ) -> bool:
        return (
            ack.get("kind") == "ack"
            and ack.get("message_id") == envelope["message_id"]
            and ack.get("envelope_sha256") == _envelope_digest(envelope)
            and ack.get("to_server") == uuid
            and ack.get("from_server") == self.server_uuid
            and ack.get("status") == "accepted"
            and self.table.verify_object(ack, key)
        )

    async def _failed(self, rows: list[MessageRow], error: str, counts: Counter[str]) -> None:
        now = self.now()
        entries = []
        for row in rows:
            attempts = row.attempts + 1
            delay = min(self.settings.retry_base_ms * 2**attempts, self.settings.retry_max_ms)
            entries.append((row.message_id, attempts, now + delay, error))
            if attempts >= self.settings.max_attempts:
                counts["failed"] += 1
            else:
                counts["retried"] += 1
        self.stats.events["delivery_failures"] += len(rows)
        assert self._store is not None
        await self._db(self._store.mark_failed_attempts, entries, self.settings.max_attempts)

    async def message_status(self, message_id: str) -> dict[str, Any]:
        assert self._store is not None
        row = await self._db(self._store.get_message, message_id)
        if row is None:
            raise ApiError(404, "no such message")
        return {
            "message_id": row.message_id,
            "status": row.status,
            "attempts": row.attempts,
            "next_attempt_at": row.next_attempt_at,
            "last_error": row.last_error,
            "acknowledgement": row.ack,
            "delivered_at": row.delivered_at or None,
        }

    # inbound messages ----------------------------------------------------

    async def receive_messages(self, origin: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """
        C{POST /api/v1/federation/messages/receive}: verify each message, hand
        it to the webhook exactly once, and answer with signed acknowledgements.
        A single message (the predecessor's form) is accepted too.
        """
        if not self.accepting_messages or not self._has_store:
            raise ApiError(503, "this server does not accept messages")
        messages = body.get("messages")
        single = messages is None
        if single:
            messages = [dict(body)]
        if not isinstance(messages, list) or not 1 <= len(messages) <= 100:
            raise ApiError(400, "messages must be a list of 1..100 messages")
        sender = self.table.records.get(origin) or self.table.pending.get(origin)
        if sender is None:
            record = body.get("record")
            if self.table.offer(record, self.now()).status == "pending":
                await self.prove(origin)
            sender = self.table.records.get(origin)
        elif origin in self.table.pending:
            await self.prove(origin)
            sender = self.table.records.get(origin)
        if sender is None or not self.table.is_usable(origin):
            raise ApiError(403, "sender is not a proven server")
        key = self.table.current_key(origin)
        assert key is not None
        results = await gatherResults(
            [
                Deferred.fromCoroutine(self._receive_one(origin, sender, key, message))
                for message in messages
            ]
        )
        acks = [ack for ack, _ in results if ack is not None]
        errors = {
            mid: error for (ack, error), mid in zip(results, _ids(messages), strict=True) if error
        }
        if single:
            if not acks:
                raise ApiError(502 if "webhook" in str(errors) else 400, "; ".join(errors.values()))
            return {**acks[0], "acks": acks}
        return {"acks": acks, "errors": errors}

    async def _receive_one(
        self, origin: str, sender: Mapping[str, Any], key: bytes, message: object
    ) -> tuple[dict[str, Any] | None, str]:
        if not isinstance(message, dict) or message.get("kind") != "message":
            return None, "not a message"
        message_id = message.get("message_id")
        if not isinstance(message_id, str) or not _MESSAGE_ID.match(message_id):
            return None, "malformed message_id"
        if message.get("from_server") != origin:
            return None, "from_server is not the sender"
        try:
            _, to_domain = _split_address(message.get("to_address"), "to_address")
            _, from_domain = _split_address(message.get("from_address"), "from_address")
        except ApiError as e:
            return None, e.message
        if to_domain != self.server_name:
            return None, "message is not addressed to this server"
        if from_domain != sender["server_id"]:
            return None, "from_address is not at the sender's domain"
        content = message.get("content")
        if not isinstance(content, str) or len(content) > self.settings.max_content:
            return None, "malformed content"
        try:
            key_id, _ = signature_of(message)
        except ValueError:
            return None, "unsigned message"
        signer = self.table.key_for(origin, key_id, self.now())
        if signer is None or not self.table.verify_object(message, signer):
            return None, "bad message signature"
        del key
        assert self._store is not None
        ack = await self._inbound_ack(message_id)
        if ack is not None:
            self.stats.events["messages_duplicate"] += 1
            return ack, ""
        running = self._handing_off.get(message_id)
        if running is None:
            running = _Shared(Deferred.fromCoroutine(self._hand_off(origin, message)))
            if not running.done:
                self._handing_off[message_id] = running
                running.wait().addBoth(lambda _: self._handing_off.pop(message_id, None))
        shared = running.wait()
        try:
            ack = await shared
        except WebhookError as e:
            return None, f"webhook: {e}"
        return ack, ""

    async def _hand_off(self, origin: str, message: dict[str, Any]) -> dict[str, Any]:
        assert self._webhook is not None and self._store is not None
        payload: dict[str, Any] = {
            key: message[key]
            for key in (
                "message_id",
                "from_address",
                "to_address",
                "content",
                "message_type",
                "priority",
                "metadata",
                "sent_at",
                "from_server",
            )
            if key in message
        }
        payload["received_at"] = self.now()
        webhook = self._webhook
        await self._webhooks.run(_await, webhook.deliver(message["message_id"], payload))
        now = self.now()
        ack = sign_object(
            self._identity,
            {
                "kind": "ack",
                "message_id": message["message_id"],
                "envelope_sha256": _envelope_digest(message),
                "from_server": origin,
                "to_server": self.server_uuid,
                "status": "accepted",
                "received_at": now,
            },
        )
        await self._record_inbound((message["message_id"], origin, ack, now))
        self.stats.events["messages_received"] += 1
        return ack

    # maintenance ---------------------------------------------------------

    async def cleanup(self) -> dict[str, int]:
        """
        Expire messages and received ids; demote and delete stale peers.
        """
        now = self.now()
        for domain, route in list(self._routes.items()):
            if now - route.cached_at >= self.settings.route_cache_ms:
                del self._routes[domain]
        if not self._has_store:
            return {}
        assert self._store is not None
        counts, deleted = await self._db(
            self._store.cleanup,
            now,
            self.settings.received_keep_ms,
            self.settings.neighbor_demote_ms,
            self.settings.peer_delete_ms,
        )
        for uuid in deleted:
            self.table.forget(uuid)
            self.last_seen.pop(uuid, None)
        self.neighbors = [
            uuid
            for uuid in self.neighbors
            if now - self.last_seen.get(uuid, 0) < self.settings.neighbor_demote_ms
        ]
        return counts

    async def health(self) -> dict[str, Any]:
        now = self.now()
        queues = {"pending": 0, "sending": 0, "failed": 0}
        if self._has_store:
            assert self._store is not None
            counts = await self._db(self._store.queue_counts, now)
            queues = {name: counts.get(name, 0) for name in queues}
            queues["sending"] = 1 if self._delivering is not None else 0
        opened, total = self.breaker.counts(now)
        return {
            "status": "healthy",
            "service": "lattice-discovery",
            "server_id": self.server_name,
            "server_uuid": self.server_uuid,
            "last_gossip": self.last_gossip or None,
            "maintenance_mode": False,
            "queues": queues,
            "circuit_breakers": {
                "open": opened,
                "total_peers": max(total, len(self.table.records)),
            },
            "saturation": self.saturation(),
            "uptime_seconds": (now - self.started_at) // 1000,
            "endpoints": list(self.settings.endpoints),
            "listeners": dict(self.listeners),
            "peer_count": len(self.table.records),
        }

    async def peers(self, active_only: bool, include_blocked: bool) -> list[dict[str, Any]]:
        now = self.now()
        rows = []
        for uuid, record in self.table.records.items():
            revoked = self.table.current_key(uuid) is None
            if revoked and not include_blocked:
                continue
            last_seen = self.last_seen.get(uuid, 0)
            if active_only and now - last_seen > self.settings.neighbor_eligible_ms:
                continue
            pinned = self.table._pinned_fingerprint(record) is not None
            rows.append(
                {
                    "server_id": record["server_id"],
                    "server_uuid": uuid,
                    "is_neighbor": uuid in self.neighbors,
                    "trust_status": "revoked" if revoked else ("pinned" if pinned else "verified"),
                    "last_seen": last_seen or None,
                    "endpoints": list(record["endpoints"]),
                }
            )
        if include_blocked:
            for uuid, record in self.table.pending.items():
                rows.append(
                    {
                        "server_id": record["server_id"],
                        "server_uuid": uuid,
                        "is_neighbor": False,
                        "trust_status": "unverified",
                        "last_seen": None,
                        "endpoints": list(record["endpoints"]),
                    }
                )
        rows.sort(key=lambda row: (row["server_id"], row["server_uuid"]))
        return rows


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _ids(messages: list[Any]) -> list[str]:
    return [
        str(m.get("message_id", f"#{i}")) if isinstance(m, dict) else f"#{i}"
        for i, m in enumerate(messages)
    ]


@functools.lru_cache(maxsize=16384)
def _host_port(endpoint: str) -> str:
    try:
        parts = urlsplit(endpoint)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        return endpoint


def _envelope_digest(envelope: Mapping[str, Any]) -> str:
    return b64encode(hashlib.sha256(signing_bytes(envelope)).digest())


def _split_address(address: object, name: str) -> tuple[str, str]:
    if not isinstance(address, str) or address.count("@") != 1:
        raise ApiError(400, f"{name} must be user@server")
    user, domain = address.split("@")
    if not _USER.match(user) or not valid_name(domain):
        raise ApiError(400, f"{name} must be user@server")
    return user, domain
