"""
Verified fakes for tests and the convergence benchmark: an in-memory network
of L{DiscoveryNode}s, a webhook that records (and can refuse) hand-offs, a
synchronous store runner, and a cheap stand-in signature scheme.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from lattice.discovery._node import ApiError, DiscoveryNode, TransportError, WebhookError

__all__ = [
    "FastKey",
    "MemoryNetwork",
    "MemoryTransport",
    "MemoryWebhook",
    "fast_verify",
    "synchronous_runner",
]

P = ParamSpec("P")
T = TypeVar("T")


def synchronous_runner(f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
    """
    Run a store call at once (tests inject it instead of a thread pool).
    """
    try:
        return succeed(f(*args, **kwargs))
    except Exception:
        return fail()


_FAST_SECRETS: dict[bytes, bytes] = {}


class FastKey:
    """
    A stand-in for an Ed25519 key with the same interface, for simulations of
    thousands of nodes in one process: a signature is a SHA-512 keyed with a
    secret that L{fast_verify} looks up by public key.  Not a signature
    scheme; never used outside tests and benchmarks.
    """

    def __init__(self) -> None:
        self._secret = os.urandom(32)
        self.public_key = hashlib.sha256(b"fast" + self._secret).digest()
        _FAST_SECRETS[self.public_key] = self._secret
        self.key_id = "ed25519:" + hashlib.sha256(self.public_key).hexdigest()[:16]

    def sign(self, data: bytes) -> bytes:
        return hashlib.sha512(self._secret + data).digest()


def fast_verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """
    Verify a L{FastKey} signature.
    """
    secret = _FAST_SECRETS.get(public_key)
    return secret is not None and hashlib.sha512(secret + data).digest() == signature


class MemoryNetwork:
    """
    Nodes reachable by endpoint URL, with switchable outages and a count of
    requests sent by each node.
    """

    def __init__(self, copy: bool = True):
        self.nodes: dict[str, DiscoveryNode] = {}
        self.down: set[str] = set()
        self.sent: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.copy = copy

    def add(self, endpoint: str, node: DiscoveryNode) -> None:
        self.nodes[endpoint.rstrip("/")] = node

    def transport(self, owner: Callable[[], DiscoveryNode]) -> MemoryTransport:
        return MemoryTransport(self, owner)


class MemoryTransport:
    """
    L{lattice.discovery._node.PeerTransport} that calls the receiving node's
    handlers directly, after the same sender check the HTTP boundary makes.
    """

    def __init__(self, network: MemoryNetwork, owner: Callable[[], DiscoveryNode]):
        self._network = network
        self._owner = owner

    def _target(self, endpoint: str) -> DiscoveryNode:
        endpoint = endpoint.rstrip("/")
        self._network.received[endpoint] += 1
        if endpoint in self._network.down or endpoint not in self._network.nodes:
            raise TransportError(f"{endpoint}: connection refused")
        return self._network.nodes[endpoint]

    def _copy(self, value: dict[str, Any]) -> dict[str, Any]:
        if not self._network.copy:
            return value
        result: dict[str, Any] = json.loads(json.dumps(value))
        return result

    async def call(
        self, endpoint: str, destination: str, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        owner = self._owner()
        self._network.sent[owner.server_uuid] += 1
        self._network.kinds[path] += 1
        target = self._target(endpoint)
        if target.server_uuid != destination:
            raise TransportError("HTTP 401 request addressed to another server", 401)
        body = self._copy(body)
        if target.key_for_request(owner.server_uuid, owner.signer.key_id, body) is None:
            raise TransportError("HTTP 401 unknown origin or key", 401)
        target.seen(owner.server_uuid)
        handlers = {
            "/api/v1/gossip/receive": target.receive_gossip,
            "/api/v1/domain/query": target.domain_query,
            "/api/v1/federation/messages/receive": target.receive_messages,
        }
        handler = handlers.get(path)
        if handler is None:
            raise TransportError(f"HTTP 404 {path}", 404)
        try:
            answer = await handler(owner.server_uuid, body)
        except ApiError as e:
            raise TransportError(f"HTTP {e.status} {e.message}", e.status) from None
        return self._copy(answer)

    async def fetch_announcement(self, endpoint: str, challenge: str) -> dict[str, Any]:
        self._network.sent[self._owner().server_uuid] += 1
        self._network.kinds["/api/v1/announcement"] += 1
        target = self._target(endpoint)
        return self._copy(target.announcement(challenge))


class MemoryWebhook:
    """
    Records delivered messages; refuses the next C{failures} calls.
    """

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.calls = 0
        self.delivered: list[dict[str, Any]] = []
        self.pending: Deferred[None] | None = None

    async def deliver(self, message_id: str, payload: dict[str, Any]) -> None:
        self.calls += 1
        if self.pending is not None:
            await self.pending
        if self.failures > 0:
            self.failures -= 1
            raise WebhookError("HTTP 500")
        self.delivered.append(payload)
