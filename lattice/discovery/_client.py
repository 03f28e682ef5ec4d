"""
Outbound HTTP: signed calls to peers and the webhook hand-off.

Calls to peers go only to announced endpoints.  Each call splits the URL
strictly, resolves the host once (in a thread: C{getaddrinfo} blocks), checks
every address against the private/loopback policy, and connects to the
checked address (the endpoint factory refuses any host that was not pinned
this way).  Every call has a timeout and passes two concurrency caps: one for
the process, one per host.  Answers larger than C{max_response} are cut off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from lattice.discovery._auth import sign_request
from lattice.discovery._canonical import Signer
from lattice.discovery._netpolicy import PolicyError, Target, address_allowed, parse_target
from lattice.discovery._node import TransportError, WebhookError

__all__ = ["HTTPTransport", "HTTPWebhook", "Resolver", "thread_resolver"]

Resolver = Callable[[str, int], Deferred[list[str]]]


def thread_resolver(reactor: Any, pool: ThreadPool) -> Resolver:
    """
    Resolve with C{getaddrinfo} in C{pool}, never on the reactor thread.
    """

    def lookup(host: str, port: int) -> list[str]:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def resolve(host: str, port: int) -> Deferred[list[str]]:
        return deferToThreadPool(reactor, pool, lookup, host, port)

    return resolve


@implementer(IAgentEndpointFactory)
class _PinnedEndpoints:
    """
    Connect to the address checked for a host, never to a fresh resolution.
    """

    def __init__(self, reactor: Any, connect_timeout: float):
        self._reactor = reactor
        self._timeout = connect_timeout
        self.pins: dict[tuple[str, int], str] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("idna") if isinstance(uri.host, bytes) else uri.host
        address = self.pins.get((host, uri.port))
        if address is None:
            raise ConnectError(string=f"{host}:{uri.port} was not resolved and checked")
        endpoint: IStreamClientEndpoint
        if ":" in address:
            endpoint = TCP6ClientEndpoint(self._reactor, address, uri.port, timeout=self._timeout)
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, address, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint


class _TooLarge(Exception):
    pass


async def _read_limited(response: IResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise _TooLarge()
        chunks.append(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


class HTTPTransport:
    """
    L{lattice.discovery._node.PeerTransport} over HTTP with treq.
    """

    def __init__(
        self,
        reactor: Any,
        local: Callable[[], tuple[Signer, str]],
        resolver: Resolver,
        allow_private: bool,
        timeout: float = 10.0,
        max_concurrency: int = 64,
        per_host: int = 8,
        max_response: int = 4 * 1024 * 1024,
        client: Any = None,
    ):
        self._reactor = reactor
        self._local = local
        self._resolver = resolver
        self._allow_private = allow_private
        self._timeout = timeout
        self._max_response = max_response
        self._all = DeferredSemaphore(max_concurrency)
        self._per_host_limit = per_host
        self._per_host: dict[tuple[str, int], DeferredSemaphore] = {}
        self._endpoints = _PinnedEndpoints(reactor, timeout)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = per_host
        self.pool.retryAutomatically = False
        self._client = client or HTTPClient(
            Agent.usingEndpointFactory(reactor, self._endpoints, pool=self.pool)
        )

    async def _pin(self, target: Target) -> None:
        try:
            addresses = await self._resolver(target.host, target.port)
        except (OSError, DNSLookupError) as e:
            raise TransportError(f"cannot resolve {target.host}: {e}") from None
        allowed = [a for a in addresses if address_allowed(a, self._allow_private)]
        if not allowed:
            raise TransportError(
                f"{target.host} resolves only to refused addresses ({', '.join(addresses)}); "
                "private and loopback targets need allow_private_addresses"
            )
        self._endpoints.pins[(target.host, target.port)] = allowed[0]

    async def _request(self, method: str, endpoint: str, path: str, **kwargs: Any) -> Any:
        try:
            target = parse_target(endpoint)
        except PolicyError as e:
            raise TransportError(f"refused {endpoint!r}: {e}") from None
        key = (target.host, target.port)
        host_limit = self._per_host.get(key)
        if host_limit is None:
            host_limit = self._per_host[key] = DeferredSemaphore(self._per_host_limit)
        await self._all.acquire()
        try:
            await host_limit.acquire()
            try:
                await self._pin(target)
                url = endpoint.rstrip("/") + path
                try:
                    response = await self._client.request(
                        method, url, timeout=self._timeout, **kwargs
                    )
                    data = await _read_limited(response, self._max_response)
                except _TooLarge:
                    raise TransportError(f"answer from {endpoint} too large") from None
                except (
                    ConnectError,
                    TimeoutError,
                    ResponseFailed,
                    OSError,
                    DNSLookupError,
                ) as e:
                    raise TransportError(f"{method} {url}: {type(e).__name__}: {e}") from None
                except Exception as e:  # treq's timeout cancels with CancelledError et al.
                    raise TransportError(f"{method} {url}: {type(e).__name__}") from None
            finally:
                host_limit.release()
        finally:
            self._all.release()
        if not 200 <= response.code < 300:
            detail = data[:200].decode("utf-8", "replace")
            raise TransportError(f"{method} {url}: HTTP {response.code} {detail}", response.code)
        try:
            answer = json.loads(data)
        except ValueError:
            raise TransportError(f"{method} {url}: answer is not JSON") from None
        if not isinstance(answer, dict):
            raise TransportError(f"{method} {url}: answer is not a JSON object")
        return answer

    async def call(
        self, endpoint: str, destination: str, path: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        signer, origin = self._local()
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        now = int(self._reactor.seconds() * 1000)
        headers = sign_request(signer, "POST", path, data, origin, destination, now, os.urandom(16))
        headers["Content-Type"] = "application/json"
        result: dict[str, Any] = await self._request(
            "POST", endpoint, path, data=data, headers=headers
        )
        return result

    async def fetch_announcement(self, endpoint: str, challenge: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "GET", endpoint, "/api/v1/announcement", params={"challenge": challenge}
        )
        return result

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


class HTTPWebhook:
    """
    Hand inbound messages to the application's webhook.

    The call carries C{Authorization: Bearer <secret>}, an HMAC-SHA256 of
    C{timestamp.body} under the secret (C{X-Lattice-Webhook-Signature}) and
    C{Idempotency-Key: <message_id>}; any 2xx answer means accepted.
    """

    def __init__(self, reactor: Any, url: str, secret: bytes, timeout: float = 10.0):
        self._reactor = reactor
        self._url = url
        self._secret = secret
        self._timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self._client = HTTPClient(Agent(reactor, pool=self.pool))

    async def deliver(self, message_id: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True).encode("utf-8")
        timestamp = str(int(self._reactor.seconds()))
        mac = hmac.new(self._secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers: dict[bytes | str, bytes | str] = {
            "Content-Type": "application/json",
            "Authorization": "Bearer " + self._secret.decode("utf-8", "replace"),
            "X-Lattice-Webhook-Timestamp": timestamp,
            "X-Lattice-Webhook-Signature": "sha256=" + mac,
            "Idempotency-Key": message_id,
        }
        try:
            response = await self._client.post(
                self._url, data=body, headers=headers, timeout=self._timeout
            )
            await _read_limited(response, 64 * 1024)
        except Exception as e:
            raise WebhookError(f"{type(e).__name__}: {e}") from None
        if not 200 <= response.code < 300:
            raise WebhookError(f"HTTP {response.code}")

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed
