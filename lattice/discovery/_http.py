"""
The HTTP boundary: the public federation listener and the admin listener.

Each handler validates, calls the core (L{DiscoveryNode}) and maps errors;
nothing else.  Peer routes are authenticated here (L{verify_request}); rate
limits are charged to the verified origin, unauthenticated traffic to the
client address (only trusted proxies may name another address) and bounded
by a body size cap enforced while the body is read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from lattice.discovery._auth import AuthError, NonceCache, verify_request
from lattice.discovery._limits import RateLimiter
from lattice.discovery._netpolicy import ForwardedPolicy
from lattice.discovery._node import ApiError, DiscoveryNode
from lattice.discovery._openapi import openapi_document
from lattice.discovery._records import verify_signature

__all__ = ["AdminApp", "PrefixedResource", "PublicApp"]

JSON = b"application/json"


def _json(request: IRequest, value: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value, sort_keys=True).encode("utf-8") + b"\n"


def _error(request: IRequest, code: int, message: str) -> bytes:
    return _json(request, {"error": message}, code)


def _peer_address(request: IRequest) -> str:
    peer = request.getClientAddress()
    host = getattr(peer, "host", None)
    return str(host) if host is not None else "unix"


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value if isinstance(value, str) else value.decode("latin-1")


def _read_json(request: IRequest) -> Any:
    content = request.content
    body = content.read() if content is not None else b""
    if not body:
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not JSON") from None


def _body_bytes(request: IRequest) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read()
    return data


Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class PublicApp:
    """
    The public federation listener.
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        node: DiscoveryNode,
        clock: IReactorTime,
        forwarded: ForwardedPolicy,
        peer_rate: int = 100,
        address_rate: int = 120,
        nonces: NonceCache | None = None,
    ):
        self.node = node
        self._clock = clock
        self._forwarded = forwarded
        self.peer_limits = RateLimiter(peer_rate)
        self.address_limits = RateLimiter(address_rate)
        self.nonces = nonces or NonceCache()

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    def client_address(self, request: IRequest) -> str:
        return self._forwarded.client_address(
            _peer_address(request),
            _header(request, b"x-forwarded-for"),
            _header(request, b"forwarded"),
        )

    def _unauthenticated(self, request: IRequest) -> bytes | None:
        """
        Charge an unauthenticated request to its address; an answer when over the limit.
        """
        if not self.address_limits.allow(self.client_address(request), self._now()):
            self.node.stats.events["rejected_rate_address"] += 1
            request.setHeader(b"Retry-After", b"60")
            return _error(request, 429, "too many requests from this address")
        return None

    async def _authenticated(self, request: IRequest, handler: Handler) -> bytes:
        now = self._now()
        address = self.client_address(request)
        if self.address_limits.exhausted(address, now):
            self.node.stats.events["rejected_rate_address"] += 1
            request.setHeader(b"Retry-After", b"60")
            return _error(request, 429, "too many requests from this address")
        raw = _body_bytes(request)
        try:
            body = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            self.address_limits.allow(address, now)
            return _error(request, 400, "body is not JSON")
        if not isinstance(body, dict):
            self.address_limits.allow(address, now)
            return _error(request, 400, "body must be a JSON object")
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        try:
            auth = verify_request(
                headers,
                request.method.decode("ascii"),
                request.path.decode("latin-1"),
                raw,
                self.node.server_uuid,
                now,
                lambda origin, key_id: self.node.key_for_request(origin, key_id, body),
                verify_signature,
                self.nonces,
            )
        except AuthError as e:
            self.address_limits.allow(address, now)
            self.node.stats.events[f"rejected_auth_{e.reason}"] += 1
            return _error(request, 401, f"not authenticated: {e}")
        if auth.origin not in self.node.table.records and not self.address_limits.allow(
            address, now
        ):
            # servers not proven yet mint identities for free: their
            # requests count against the address as well
            self.node.stats.events["rejected_rate_address"] += 1
            request.setHeader(b"Retry-After", b"60")
            return _error(request, 429, "too many requests from this address")
        if not self.peer_limits.allow(auth.origin, now):
            self.node.stats.events["rejected_rate_peer"] += 1
            request.setHeader(b"Retry-After", b"60")
            return _error(request, 429, "too many requests from this server")
        self.node.seen(auth.origin)
        try:
            return _json(request, await handler(auth.origin, body))
        except ApiError as e:
            return _error(request, e.status, e.message)

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        return self._unauthenticated(request) or _json(request, self.node.status())

    @app.route("/api/v1/identity", methods=["GET"])
    async def identity(self, request: IRequest) -> bytes:
        return self._unauthenticated(request) or _json(request, self.node.identity_document())

    @app.route("/api/v1/announcement", methods=["GET"])
    async def announcement(self, request: IRequest) -> bytes:
        limited = self._unauthenticated(request)
        if limited is not None:
            return limited
        values = request.args.get(b"challenge") if request.args else None
        challenge = values[0].decode("latin-1") if values else None
        try:
            return _json(request, self.node.announcement(challenge))
        except ApiError as e:
            return _error(request, e.status, e.message)

    @app.route("/openapi.json", methods=["GET"])
    async def openapi(self, request: IRequest) -> bytes:
        return self._unauthenticated(request) or _json(request, openapi_document())

    @app.route("/api/v1/gossip/receive", methods=["POST"])
    async def gossip(self, request: IRequest) -> bytes:
        return await self._authenticated(request, self.node.receive_gossip)

    @app.route("/api/v1/domain/query", methods=["POST"])
    async def domain_query(self, request: IRequest) -> bytes:
        return await self._authenticated(request, self.node.domain_query)

    @app.route("/api/v1/federation/messages/receive", methods=["POST"])
    async def messages(self, request: IRequest) -> bytes:
        return await self._authenticated(request, self.node.receive_messages)

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Any) -> bytes:
        if failure.check(ApiError):
            return _error(request, failure.value.status, failure.value.message)
        code = getattr(failure.value, "code", None)
        if isinstance(code, int) and 400 <= code < 500:
            return _error(request, code, failure.getErrorMessage() or "request refused")
        self._log.failure("Unexpected error in {path}", failure, path=request.path)
        return _error(request, 500, "internal error")


def _flag(request: IRequest, name: bytes, default: bool) -> bool:
    values = request.args.get(name) if request.args else None
    if not values:
        return default
    return values[0].lower() in (b"1", b"true", b"yes", b"on")


class AdminApp:
    """
    The admin routes (the predecessor's "local admin only" ones), served only
    on the admin listener.
    """

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        node: DiscoveryNode,
        jobs: dict[str, Callable[[], Awaitable[Any]]],
        rotate: Callable[[], Awaitable[Any]] | None = None,
        revoke: Callable[[object, object], Awaitable[Any]] | None = None,
    ):
        """
        @param rotate: rotates the node's key (L{lattice.discovery._rotation.KeyRotator});
            without it, C{POST /api/v1/identity/rotate} answers 503.
        @param revoke: revokes a rotated-out key (C{KeyRotator.revoke});
            without it, C{POST /api/v1/identity/revoke} answers 503.
        """
        self.node = node
        self._jobs = jobs
        self._rotate = rotate
        self._revoke = revoke

    async def _call(self, request: IRequest, action: Callable[[], Awaitable[Any]]) -> bytes:
        try:
            return _json(request, await action())
        except ApiError as e:
            return _error(request, e.status, e.message)

    async def _body(self, request: IRequest) -> dict[str, Any]:
        body = _read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        return body

    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        return await self._call(request, self.node.health)

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        return _json(request, self.node.status())

    @app.route("/openapi.json", methods=["GET"])
    async def openapi(self, request: IRequest) -> bytes:
        return _json(request, openapi_document())

    @app.route("/api/v1/identity", methods=["GET"])
    async def identity(self, request: IRequest) -> bytes:
        return _json(request, self.node.identity_document())

    @app.route("/api/v1/identity/rotate", methods=["POST"])
    async def rotate_identity(self, request: IRequest) -> bytes:
        rotate = self._rotate
        if rotate is None:
            return _error(request, 503, "key rotation is not available on this listener")
        return await self._call(request, rotate)

    @app.route("/api/v1/identity/revoke", methods=["POST"])
    async def revoke_key(self, request: IRequest) -> bytes:
        revoke = self._revoke
        if revoke is None:
            return _error(request, 503, "key revocation is not available on this listener")

        async def action() -> Any:
            body = await self._body(request)
            return await revoke(body.get("key_id"), body.get("reason", ""))

        return await self._call(request, action)

    @app.route("/api/v1/announce", methods=["POST"])
    async def announce(self, request: IRequest) -> bytes:
        async def action() -> Any:
            body = await self._body(request)
            force = body.get("force", False)
            if not isinstance(force, bool):
                raise ApiError(400, "force must be true or false")
            return await self.node.announce(force)

        return await self._call(request, action)

    @app.route("/api/v1/peers", methods=["GET"])
    async def peers(self, request: IRequest) -> bytes:
        active_only = _flag(request, b"active_only", False)
        include_blocked = _flag(request, b"include_blocked", False)
        return await self._call(request, lambda: self.node.peers(active_only, include_blocked))

    @app.route("/api/v1/route/<string:domain>", methods=["POST"])
    async def route(self, request: IRequest, domain: str) -> bytes:
        return await self._call(request, lambda: self.node.resolve(domain))

    @app.route("/api/v1/messages/send", methods=["POST"])
    async def send(self, request: IRequest) -> bytes:
        async def action() -> Any:
            return await self.node.send(await self._body(request))

        return await self._call(request, action)

    @app.route("/api/v1/messages/<string:message_id>", methods=["GET"])
    async def message(self, request: IRequest, message_id: str) -> bytes:
        return await self._call(request, lambda: self.node.message_status(message_id))

    @app.route("/api/v1/domain/verify", methods=["POST"])
    async def domain_verify(self, request: IRequest) -> bytes:
        async def action() -> Any:
            return self.node.domain_verify((await self._body(request)).get("domain"))

        return await self._call(request, action)

    @app.route("/api/v1/domain/register", methods=["POST"])
    async def domain_register(self, request: IRequest) -> bytes:
        async def action() -> Any:
            return await self.node.domain_register((await self._body(request)).get("domain"))

        return await self._call(request, action)

    @app.route("/api/v1/maintenance/<string:job>", methods=["POST"])
    async def maintenance(self, request: IRequest, job: str) -> bytes:
        action = self._jobs.get(job)
        if action is None:
            return _error(request, 404, f"no maintenance job {job!r}")
        return await self._call(request, action)

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Any) -> bytes:
        if failure.check(ApiError):
            return _error(request, failure.value.status, failure.value.message)
        code = getattr(failure.value, "code", None)
        if isinstance(code, int) and 400 <= code < 500:
            return _error(request, code, failure.getErrorMessage() or "request refused")
        self._log.failure("Unexpected error in {path}", failure, path=request.path)
        return _error(request, 500, "internal error")


class PrefixedResource(Resource):
    """
    Serve a Klein resource mounted under C{/<segment>/} of another tree with
    its full path (C{/api/v1/...}), so routes keep the predecessor's paths on
    the node's admin surface.
    """

    isLeaf = True

    def __init__(self, inner: IResource):
        super().__init__()
        self._inner = inner

    def render(self, request: Request) -> Any:
        prepath = request.prepath or []
        request.postpath = prepath[-1:] + (request.postpath or [])
        request.prepath = prepath[:-1]
        return self._inner.render(request)
