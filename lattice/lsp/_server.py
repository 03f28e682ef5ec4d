"""
The LSP server: ``LatticeController`` and ``LatticeStore`` on ``lattice.grpc``.

The boundary: authenticate the token, check the store and every key against the grant,
call the store, map errors.  Every refusal is logged with the instance and the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from twisted.internet.defer import DeferredQueue, QueueOverflow
from twisted.logger import Logger

from lattice.grpc import GrpcError, GrpcServerFactory, ServerContext, StatusCode
from lattice.lsp import lsp_pb2
from lattice.lsp._tokens import Grant, TokenBook

if TYPE_CHECKING:
    from lattice.registry._store import KeyValueStore, StoredValue, StoreEvent

__all__ = ["PROTOCOL_VERSION", "LspServer", "add_lsp_services"]

PROTOCOL_VERSION = "1"
SCAN_CHUNK = 500
WATCH_QUEUE = 10000
MAX_KEY = 4096


def _kv(value: StoredValue, out: lsp_pb2.KeyValue) -> None:
    out.key = value.key
    out.value = value.value
    out.create_revision = value.create_revision
    out.mod_revision = value.mod_revision
    out.version = value.version


class LspServer:
    """
    :param stores: the stores by ``store_id`` (``local``: the node's embedded store).
    :param node_id: the node id (once known).
    :param on_denied: called with ``(grant or None, reason)`` for every refused call.
    """

    _log = Logger()

    def __init__(
        self,
        tokens: TokenBook,
        stores: Mapping[str, KeyValueStore],
        node_id: Callable[[], str | None],
        on_denied: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self.tokens = tokens
        self.stores = stores
        self._node_id = node_id
        self._on_denied = on_denied

    # -- checks ----------------------------------------------------------------------------

    def _grant(self, context: ServerContext, token: str | None = None) -> Grant:
        if token is None:
            header = context.invocation_metadata.get("authorization")
            text = header if isinstance(header, str) else ""
            token = text.removeprefix("Bearer ").strip()
        grant = self.tokens.lookup(token)
        if grant is None:
            reason = "missing token" if not token else "unknown or revoked token"
            self._log.warn(
                "LSP: refused {method} from {peer}: {reason}",
                method=context.method,
                peer=str(context.peer),
                reason=reason,
            )
            self._on_denied("unauthenticated")
            raise GrpcError(StatusCode.UNAUTHENTICATED, reason)
        return grant

    def _deny(self, grant: Grant, context: ServerContext, what: str) -> GrpcError:
        self._log.warn(
            "LSP: {store}/{service} denied {method} on {what}: outside its prefixes {prefixes}",
            store=grant.store_id,
            service=grant.service_id,
            method=context.method.rsplit("/", 1)[-1],
            what=what,
            prefixes=", ".join(p.decode("utf-8", "replace") for p in grant.prefixes),
        )
        self._on_denied("permission_denied")
        return GrpcError(StatusCode.PERMISSION_DENIED, f"{what} is outside this service's prefixes")

    def _store(self, grant: Grant, store_id: str, context: ServerContext) -> KeyValueStore:
        store_id = store_id or grant.store_id
        if store_id != grant.store_id:
            raise self._deny(grant, context, f"store {store_id!r}")
        store = self.stores.get(store_id)
        if store is None:
            raise GrpcError(StatusCode.UNAVAILABLE, f"store {store_id!r} is not available")
        return store

    def _key(self, grant: Grant, key: bytes, context: ServerContext, prefix: bool = False) -> bytes:
        if not key:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "empty key")
        if len(key) > MAX_KEY:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "key too long")
        allowed = grant.allows_prefix(key) if prefix else grant.allows_key(key)
        if not allowed:
            raise self._deny(grant, context, repr(key.decode("utf-8", "replace")))
        return key

    # -- LatticeController -----------------------------------------------------------------

    async def connect(
        self, request: lsp_pb2.ConnectRequest, context: ServerContext
    ) -> lsp_pb2.ConnectResponse:
        grant = self._grant(context, request.auth_token or None)
        if request.service_id and request.service_id != grant.service_id:
            self._on_denied("unauthenticated")
            raise GrpcError(StatusCode.UNAUTHENTICATED, "the token is for another service")
        if request.version and request.version != PROTOCOL_VERSION:
            raise GrpcError(
                StatusCode.FAILED_PRECONDITION,
                f"protocol version {request.version!r} unsupported (this node: {PROTOCOL_VERSION})",
            )
        return lsp_pb2.ConnectResponse(
            session_id=grant.session_id,
            node_info=lsp_pb2.NodeInfo(node_id=self._node_id() or "", version=PROTOCOL_VERSION),
            store_id=grant.store_id,
            prefixes=[p.decode("utf-8") for p in grant.prefixes],
        )

    async def open_store(
        self, request: lsp_pb2.OpenStoreRequest, context: ServerContext
    ) -> lsp_pb2.StoreHandleResponse:
        grant = self._grant(context)
        if request.HasField("create_as_type") and request.create_as_type not in ("", "kv"):
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "only stores of type 'kv' exist")
        store = self._store(grant, request.store_id, context)
        _, revision = await store.range(grant.prefixes[0], limit=1)
        return lsp_pb2.StoreHandleResponse(
            store_id=request.store_id or grant.store_id, type="kv", revision=revision
        )

    # -- LatticeStore ----------------------------------------------------------------------

    async def get(self, request: lsp_pb2.GetRequest, context: ServerContext) -> lsp_pb2.GetResponse:
        grant = self._grant(context)
        store = self._store(grant, request.store_id, context)
        value = await store.get(self._key(grant, request.key, context))
        response = lsp_pb2.GetResponse()
        if value is not None:
            response.found = True
            _kv(value, response.kv)
        return response

    async def put(self, request: lsp_pb2.PutRequest, context: ServerContext) -> lsp_pb2.PutResponse:
        grant = self._grant(context)
        store = self._store(grant, request.store_id, context)
        revision = await store.put(self._key(grant, request.key, context), request.value)
        return lsp_pb2.PutResponse(revision=revision)

    async def delete(
        self, request: lsp_pb2.DeleteRequest, context: ServerContext
    ) -> lsp_pb2.DeleteResponse:
        grant = self._grant(context)
        store = self._store(grant, request.store_id, context)
        key = self._key(grant, request.key, context, prefix=request.prefix)
        return lsp_pb2.DeleteResponse(deleted=await store.delete(key, prefix=request.prefix))

    async def scan(
        self, request: lsp_pb2.ScanRequest, context: ServerContext
    ) -> AsyncIterator[lsp_pb2.ScanResponse]:
        grant = self._grant(context)
        store = self._store(grant, request.store_id, context)
        prefix = self._key(grant, request.key_prefix, context, prefix=True)
        values, revision = await store.range(prefix, limit=max(0, request.limit))
        for start in range(0, max(len(values), 1), SCAN_CHUNK):
            response = lsp_pb2.ScanResponse(revision=revision)
            for value in values[start : start + SCAN_CHUNK]:
                _kv(value, response.kvs.add())
            yield response

    async def watch(self, request: lsp_pb2.WatchRequest, context: ServerContext) -> None:
        grant = self._grant(context)
        store = self._store(grant, request.store_id, context)
        prefix = self._key(grant, request.key_prefix, context, prefix=True)
        queue: DeferredQueue[list[StoreEvent] | None] = DeferredQueue(size=WATCH_QUEUE)
        overflowed = False

        def deliver(events: list[StoreEvent]) -> None:
            nonlocal overflowed
            if overflowed:
                return
            try:
                queue.put(events)
            except QueueOverflow:
                overflowed = True
                queue.pending.clear()
                queue.put(None)

        await context.send(lsp_pb2.WatchEvent(created=True))
        cancel = store.watch(prefix, max(0, request.start_revision), deliver)
        try:
            while True:
                events = await queue.get()
                if events is None:
                    raise GrpcError(
                        StatusCode.RESOURCE_EXHAUSTED,
                        "watcher too slow; watch again from a revision",
                    )
                for event in events:
                    if event.value is None:
                        message = lsp_pb2.WatchEvent(delete=event.key, revision=event.revision)
                    else:
                        message = lsp_pb2.WatchEvent(
                            put=lsp_pb2.Intention(key=event.key, value=event.value),
                            revision=event.revision,
                        )
                    await context.send(message)
        finally:
            cancel()


def add_lsp_services(factory: GrpcServerFactory, server: LspServer) -> None:
    """Serve ``LatticeController`` and ``LatticeStore`` from ``server`` on ``factory``."""
    services = lsp_pb2.DESCRIPTOR.services_by_name
    factory.add_service(services["LatticeController"], server)
    factory.add_service(services["LatticeStore"], server)
