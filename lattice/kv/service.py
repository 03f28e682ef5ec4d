"""
``KVService``: the KV store and its etcd v3 listener, as a Twisted service.

Start-up loads the database on the storage's writer thread (the reactor never blocks on
SQLite), restores the store, then listens.  Storage results come back to the reactor through
``reactor.callFromThread``.  Stopping drains the gRPC connections and closes the database after
its queued commits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from lattice._web import limited_site
from lattice.config import KvConfig
from lattice.grpc import GrpcServerFactory, GrpcServerOptions
from lattice.kv._api import ETCD_VERSION, EtcdApi, Limits, services
from lattice.kv._auth import AuthStore
from lattice.kv._gateway import Gateway
from lattice.kv._metrics import KVMetrics
from lattice.kv._proto import rpc_pb2
from lattice.kv._quota import Quotas
from lattice.kv._sqlite import SQLiteStorage
from lattice.kv._storage import Storage, StoredState
from lattice.kv._store import KVStore
from lattice.kv._upstream import UpstreamApi, UpstreamPool, grpc_connector, upstream_services
from lattice.listening import ListenerService, describe_address
from lattice.readiness import Readiness
from lattice.tls import ReloadingServerContext, TlsConfigurationError, TlsServerOptions

__all__ = ["KVService", "member_id_of"]

LEASE_CHECK_INTERVAL = 0.5
UPSTREAM_PROBE_INTERVAL = 1.0  # how often the etcd backend checks the cluster can linearize
PROGRESS_INTERVAL = 600.0  # etcd's default progress notification interval
GRPC_OVERHEAD = 512 * 1024
MAX_STREAMS = 100_000
MAX_MESSAGE = 2**31 - 1  # etcd's send limit, and what its client accepts


def member_id_of(node_id: str, salt: str = "member") -> int:
    """A stable 64-bit etcd member (or cluster) ID derived from the node ID."""
    digest = hashlib.sha256(f"{salt}:{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFFFFFFFFFF or 1


class _Health(Resource):
    isLeaf = True

    def __init__(self, readiness: Readiness, ready_only: bool) -> None:
        super().__init__()
        self._readiness = readiness
        self._ready_only = ready_only

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if not self._ready_only:
            return json.dumps({"health": "true", "status": "ok"}).encode() + b"\n"
        ready = self._readiness.ready
        body = {
            "ready": ready,
            "subsystems": {
                name: {"ready": state.ready, "detail": state.detail}
                for name, state in self._readiness.snapshot().items()
            },
        }
        request.setResponseCode(200 if ready else 503)
        return json.dumps(body, sort_keys=True).encode() + b"\n"


class _AdminStatus(Resource):
    """``GET /kv/status`` on the node's admin surface."""

    isLeaf = True

    def __init__(self, service: KVService) -> None:
        super().__init__()
        self._service = service

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self._service.status(), sort_keys=True).encode() + b"\n"


class _Version(Resource):
    """etcd's ``/version`` (clients such as etcd3gw pick the gateway's prefix from it)."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        body = {"etcdserver": ETCD_VERSION, "etcdcluster": ETCD_VERSION}
        return json.dumps(body).encode()


def http_site(
    readiness: Readiness,
    reactor: Any,
    implementations: dict[str, object] | None = None,
    max_body: int = 4 * 1024 * 1024,
) -> Site:
    """
    The KV port's HTTP/1.1 side: ``/healthz`` (and etcd's ``/health``), ``/readyz``,
    ``/version`` and, given the service ``implementations``, etcd's JSON gateway under
    ``/v3/`` and ``/v3beta/`` (bodies up to ``max_body`` bytes).
    """
    root = Resource()
    root.putChild(b"healthz", _Health(readiness, ready_only=False))
    root.putChild(b"health", _Health(readiness, ready_only=False))
    root.putChild(b"readyz", _Health(readiness, ready_only=True))
    root.putChild(b"version", _Version())
    if implementations is not None:
        gateway = Gateway(implementations)
        root.putChild(b"v3", gateway)
        root.putChild(b"v3beta", gateway)
    return limited_site(root, max_body, reactor)


class _NoDelayProtocol(ProtocolWrapper):
    def makeConnection(self, transport: Any) -> None:
        # Responses are small writes; without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACKs hold them back for tens of milliseconds.
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)


class NoDelayFactory(WrappingFactory):
    """Wraps a server factory so that every TCP connection has ``TCP_NODELAY`` set."""

    protocol = _NoDelayProtocol


class KVService(Service):
    """
    The KV subsystem.  ``storage`` may be injected (tests); by default it is SQLite at
    ``config.data_path(state_dir)`` with its writer thread.  The database is loaded in
    ``thread_pool`` (default: the reactor's).
    """

    _log = Logger()

    def __init__(
        self,
        config: KvConfig,
        reactor: Any,
        *,
        state_dir: Path,
        node: Any,
        readiness: Readiness,
        metrics: CollectorRegistry,
        fail: Callable[[str], None],
        storage: Storage | None = None,
        thread_pool: Any = None,
        certificates: Any = None,
    ) -> None:
        self.config = config
        # The node's [tls] certificate service: used when [kv] names no
        # certificate of its own.
        self._certificates = certificates
        self._reactor = reactor
        self._node = node
        self._readiness = readiness
        self._registry = metrics
        self._fail = fail
        self._component = readiness.register("kv")
        self.path = config.data_path(state_dir)
        self.storage: Storage = storage or SQLiteStorage(
            self.path, self._call_from_thread, durability=config.durability
        )
        self._thread_pool = thread_pool
        self._cluster = readiness.register("kv-cluster") if config.backend == "etcd" else None
        self.upstream: UpstreamApi | None = None
        self._probe: LoopingCall | None = None
        self.store: KVStore | None = None
        self.api: EtcdApi | None = None
        self.factory: GrpcServerFactory | None = None
        self.listener: ListenerService | None = None
        self._tls: Any = None
        self._tls_shared = False
        self._expiry: LoopingCall | None = None
        self._progress: LoopingCall | None = None
        self._loading: Deferred[StoredState] | None = None
        self._metrics: KVMetrics | None = None
        admin = getattr(node, "admin", None)
        if admin is not None:
            admin.mount("kv", _AdminStatus(self))

    def status(self) -> dict[str, Any]:
        """The store's state, for the admin surface and ``lattice kv status``."""
        store, api = self.store, self.api
        port = self.when_listening()
        if self.upstream is not None:
            pool = self.upstream.pool
            return {
                "backend": "etcd",
                "endpoints": [e.url for e in pool.endpoints],
                "current": pool.endpoints[pool.current].url,
                "can_linearize": pool.can_linearize,
                "reachable": pool.reachable,
                "listening": None if port is None else describe_address(port.getHost()),
                "revision": self.upstream.mux.revision,
                "upstream_watches": len(self.upstream.mux),
            }
        size, in_use = self.storage.size() if store is not None else (0, 0)
        return {
            "path": str(self.path),
            "durability": self.config.durability,
            "listening": None if port is None else describe_address(port.getHost()),
            "revision": None if store is None else store.revision,
            "compact_revision": None if store is None else store.mvcc.compact_revision,
            "keys": None if store is None else len(store.mvcc),
            "leases": None if store is None else len(store.lessor),
            "watchers": None if store is None else len(store.hub),
            "db_size": size,
            "db_in_use": in_use,
            "auth_enabled": api is not None and api.auth.enabled,
        }

    def _call_from_thread(self, function: Callable[[], None]) -> None:
        self._reactor.callFromThread(function)

    def when_listening(self) -> Any:
        """The bound port once listening (tests), or ``None``."""
        return None if self.listener is None else self.listener.port

    def startService(self) -> None:
        super().startService()
        if self.config.backend == "etcd":
            self._start_upstream()
            return
        self._component.set_not_ready(f"loading {self.path}")
        self._loading = Deferred()
        loading = self._loading
        pool = self._thread_pool or self._reactor.getThreadPool()

        def load() -> None:
            try:
                state = self.storage.load()
            except BaseException as e:
                error = e
                self._reactor.callFromThread(loading.errback, Failure(error))
            else:
                self._reactor.callFromThread(loading.callback, state)

        pool.callInThread(load)
        loading.addCallbacks(self._loaded, self._not_loaded)

    def _not_loaded(self, failure: Failure) -> None:
        self._loading = None
        self._component.set_not_ready("cannot load the database")
        self._fail(f"[kv] cannot open {self.path}: {failure.getErrorMessage()}")

    def _loaded(self, state: StoredState) -> None:
        self._loading = None
        if not self.running:
            return
        node_id = self._node.node_id() or "lattice"
        store = KVStore(
            self.storage,
            self._reactor.seconds,
            durability=self.config.durability,
            cluster_id=member_id_of(node_id, "cluster"),
            member_id=member_id_of(node_id),
            on_failure=self._storage_failed,
        )
        try:
            store.restore(state)
        except ValueError as e:
            self._fail(f"[kv] {self.path}: inconsistent history ({e}); refusing to start")
            return
        auth = AuthStore(self._reactor.seconds)
        if "auth" in store.meta:
            auth.load_json(store.meta["auth"])
        self.store = store
        if self._metrics is None:
            self._metrics = KVMetrics(
                self._registry, lambda: store.revision, lambda: len(store.lessor)
            )
        limits = Limits(
            max_request_bytes=self.config.max_request_bytes,
            lease_ttl_default=int(self.config.lease_ttl_default),
            lease_ttl_max=int(self.config.lease_ttl_max),
            default_tenant=self.config.default_tenant,
        )
        self.api = EtcdApi(
            store,
            auth,
            Quotas(
                self.config.tenant_qps_limit, self.config.tenant_bytes_limit, self._reactor.seconds
            ),
            limits,
            self._metrics,
            member_name=node_id,
            client_urls=self._client_urls,
        )
        if not self._listen(services(self.api)):
            return
        self._progress = LoopingCall(self.api.progress_tick)
        self._progress.clock = self._reactor
        self._progress.start(PROGRESS_INTERVAL, now=False)
        self._expiry = LoopingCall(self._expire)
        self._expiry.clock = self._reactor
        self._expiry.start(LEASE_CHECK_INTERVAL, now=False)
        self.listener.startService()  # type: ignore[union-attr]
        self._log.info(
            "KV store loaded from {path} at revision {revision} ({keys} keys)",
            path=str(self.path),
            revision=store.revision,
            keys=len(store.mvcc),
        )

    def _start_upstream(self) -> None:
        """``backend = etcd``: serve the API in front of the cluster (no local store)."""
        config = self.config
        cluster = self._cluster
        assert cluster is not None
        cluster.set_not_ready("connecting to the etcd cluster")
        # What the operator was last told about the cluster: (can_linearize, reachable).
        told: tuple[bool, bool] | None = None

        def on_state(can_linearize: bool, reachable: bool, detail: str) -> None:
            nonlocal told
            if self._metrics is not None:
                self._metrics.can_linearize.set(1 if can_linearize else 0)
                self._metrics.cache_state.set(1 if reachable else 0)
            if can_linearize:
                message = f"etcd cluster: {detail}"
                cluster.set_ready(message)
            elif reachable:
                message = (
                    f"etcd cluster: linearizability unavailable (no quorum or no leader; "
                    f"serializable reads still served): {detail}"
                )
                cluster.set_not_ready(message)
            else:
                message = f"etcd cluster: no member reachable: {detail}"
                cluster.set_not_ready(message)
            if told != (can_linearize, reachable):
                told = (can_linearize, reachable)
                if can_linearize:
                    self._log.info("{message}", message=message)
                else:
                    self._log.warn("{message}", message=message)

        try:
            pool = UpstreamPool(
                self._reactor,
                config.etcd_endpoints,
                grpc_connector(
                    self._reactor,
                    ca=None if config.etcd_tls_ca is None else str(config.etcd_tls_ca),
                    certificate=None
                    if config.etcd_tls_certificate is None
                    else str(config.etcd_tls_certificate),
                    private_key=None if config.etcd_tls_key is None else str(config.etcd_tls_key),
                    connect_timeout=min(config.upstream_timeout, 2.0),
                ),
                timeout=config.upstream_timeout,
                on_state=on_state,
            )
        except ValueError as e:
            self._fail(f"[kv] etcd_endpoints: {e}")
            return
        upstream = UpstreamApi(
            pool,
            Quotas(config.tenant_qps_limit, config.tenant_bytes_limit, self._reactor.seconds),
            Limits(
                max_request_bytes=config.max_request_bytes,
                lease_ttl_default=int(config.lease_ttl_default),
                lease_ttl_max=int(config.lease_ttl_max),
                default_tenant=config.default_tenant,
            ),
            None,
            self._reactor,
        )
        if self._metrics is None:
            self._metrics = KVMetrics(
                self._registry, lambda: upstream.mux.revision, lambda: len(upstream.lease_tenants)
            )
        upstream.metrics = self._metrics
        self._metrics.can_linearize.set(0)
        self._metrics.cache_state.set(0)
        self.upstream = upstream
        if not self._listen(upstream_services(upstream)):
            return
        self._probe = LoopingCall(lambda: Deferred.fromCoroutine(pool.probe()))
        self._probe.clock = self._reactor
        self._probe.start(UPSTREAM_PROBE_INTERVAL, now=True)
        self.listener.startService()  # type: ignore[union-attr]
        self._log.info(
            "KV listener in front of the etcd cluster {endpoints}",
            endpoints=", ".join(config.etcd_endpoints),
        )

    def _listen(self, implementations: dict[str, object]) -> bool:
        """Build the gRPC factory and the listener (not started); False if TLS is broken."""
        size = self.config.max_request_bytes + GRPC_OVERHEAD
        self.factory = GrpcServerFactory(
            self._reactor,
            GrpcServerOptions(
                max_receive_message_size=size,
                # etcd limits what it receives, never what it sends (math.MaxInt32): a
                # range or a watch revision larger than 4 MiB reaches its clients whole.
                max_send_message_size=MAX_MESSAGE,
                # etcd does not limit streams per connection; clients multiplex every
                # watch and keep-alive stream over one connection.
                max_concurrent_streams=MAX_STREAMS,
            ),
            # JSON carries bytes in base64 (4/3 of their size) and some syntax around them.
            http_fallback=http_site(
                self._readiness,
                self._reactor,
                implementations,
                2 * self.config.max_request_bytes + 64 * 1024,
            ),
        )
        for name, implementation in implementations.items():
            self.factory.add_service(rpc_pb2.DESCRIPTOR.services_by_name[name], implementation)
        protocol_factory: Any = self.factory
        if self.config.tls_certificate is not None:
            try:
                self._tls = ReloadingServerContext(
                    self._reactor,
                    TlsServerOptions(
                        certificate=self.config.tls_certificate,
                        private_key=self.config.tls_key or self.config.tls_certificate,
                        client_ca=self.config.tls_client_ca,
                        minimum_version=self.config.tls_minimum_version,
                    ),
                )
            except (TlsConfigurationError, ValueError) as e:
                self._fail(f"[kv] tls_certificate: {e}")
                return False
            self._tls.start()
            protocol_factory = self._tls.wrap(self.factory)
        elif self._certificates is not None:
            try:
                shared = self._certificates.server_context(
                    client_ca=self.config.tls_client_ca,
                    minimum_version=self.config.tls_minimum_version,
                )
            except (TlsConfigurationError, ValueError) as e:
                self._fail(f"[kv] tls_client_ca: {e}")
                return False
            self._tls_shared = True
            self._tls = shared
            protocol_factory = shared.wrap(self.factory)
        self.listener = ListenerService(
            self._reactor,
            self.config.listen,
            NoDelayFactory(protocol_factory),
            self._component,
            "[kv] listen",
            self._fail,
        )
        return True

    def _client_urls(self) -> list[str]:
        port = self.when_listening()
        if port is None:
            return []
        address = port.getHost()
        scheme = "https" if self._tls is not None else "http"
        host = getattr(address, "host", "127.0.0.1")
        return [f"{scheme}://{host}:{getattr(address, 'port', 2379)}"]

    def _expire(self) -> None:
        store = self.store
        if store is None or store.failure is not None:
            return
        try:
            store.expire_leases()
        except Exception:
            self._log.failure("Expiring leases failed")

    def _storage_failed(self, error: BaseException) -> None:
        self._fail(f"[kv] storage failed, the store stops: {error}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._loading is not None:
            try:
                await self._loading
            except Exception:  # reported by _not_loaded
                self._log.debug("KV store stopped while loading")
        for loop in (self._expiry, self._progress, self._probe):
            if loop is not None and loop.running:
                loop.stop()
        if self._tls is not None and not self._tls_shared:
            self._tls.stop()
        if self.listener is not None:
            stopped = self.listener.stopService()
            if stopped is not None:
                await stopped
        if self.factory is not None:
            await self.factory.drain(2.0)
        if self.upstream is not None:
            self.upstream.mux.stop()
            self.upstream.pool.close()
            return
        closed: Deferred[None] = Deferred()
        self.storage.close(lambda: closed.callback(None))
        await closed
