"""
The ``registry`` subsystem as a service: the registry watch, the reconciler, the daemons'
supervisor, advertisements, the LSP listener, admin routes, readiness and metrics.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from lattice.config import NodeConfig, RegistryConfig
from lattice.grpc import GrpcError, GrpcServerFactory, GrpcServerOptions
from lattice.kv import KVStore
from lattice.kv._upstream import UpstreamApi
from lattice.listening import ListenerService
from lattice.lsp import LspServer, TokenBook, add_lsp_services
from lattice.readiness import Component, Readiness
from lattice.registry._admin import RegistryAdmin
from lattice.registry._advertise import Advertiser
from lattice.registry._cluster import ClusterStoreAdapter
from lattice.registry._descriptor import IServiceDescriptor, load_descriptors
from lattice.registry._embedded import EmbeddedStore
from lattice.registry._local import LocalState, LocalStateError, write_atomically
from lattice.registry._policy import REGISTRY_PREFIX, Consent, ServiceEntry
from lattice.registry._reconciler import Reconciler
from lattice.registry._store import KeyValueStore, KVStoreAdapter, StoredValue, StoreEvent
from lattice.registry._supervisor import InstanceKey, ProcessSupervisor

__all__ = ["LOCAL_STORE", "RegistryService", "child_address"]

LOCAL_STORE = "local"
# How long stopping waits for the store to confirm the advertisements' withdrawal.
STOP_STORE_TIMEOUT = 2.0
# How often the first read of the registry is retried while the shared cluster is unavailable.
CLUSTER_RETRY_INTERVAL = 1.0

# What a daemon inherits from the node's environment; everything else (credentials, the
# notify socket, LATTICE_* overrides) stays behind.
_INHERITED = (
    "PATH",
    "PYTHONPATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "HOME",
    "TMPDIR",
    "VIRTUAL_ENV",
)


class _Admin(Protocol):
    def mount(self, segment: str, resource: IResource) -> None: ...


class _Node(Protocol):
    @property
    def admin(self) -> _Admin: ...

    def node_id(self) -> str | None: ...


class _KvOwner(Protocol):
    """The KV service: its ``store`` is set once loaded."""

    @property
    def store(self) -> KVStore | None: ...


class _ClusterOwner(Protocol):
    """The KV service with ``backend = etcd``: its ``upstream`` is set once started."""

    @property
    def upstream(self) -> UpstreamApi | None: ...


def child_address(address: object) -> str:
    """The client endpoint string a daemon connects to, from the LSP listener's bound address."""
    if isinstance(address, UNIXAddress):
        name = address.name
        path = name.decode() if isinstance(name, bytes) else str(name)
        return f"unix:{path.replace(':', chr(92) + ':')}"
    if isinstance(address, IPv4Address):
        return f"tcp:{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        host = address.host.replace(":", "\\:")
        return f"tcp6:{host}:{address.port}"
    raise ValueError(f"cannot hand {address!r} to a daemon")


class _Notifying(Component):
    """A readiness component that also tells the registry when its listener is bound."""

    def __init__(self, board: Readiness, name: str, bound: Callable[[], None]) -> None:
        super().__init__(board, name)
        self._bound = bound

    def set_ready(self, detail: str) -> None:
        super().set_ready(detail)
        self._bound()


class RegistryMetrics:
    """The ``lattice_registry_*`` and ``lattice_lsp_*`` metrics."""

    def __init__(self, service: RegistryService) -> None:
        self._service = service
        self.denied: dict[str, int] = {"unauthenticated": 0, "permission_denied": 0}
        self.restarts = 0

    def collect(self) -> Iterator[Metric]:
        reconciler = self._service.reconciler
        states: dict[str, int] = dict.fromkeys(("starting", "ready", "backoff", "stopping"), 0)
        for child in reconciler.supervisor.children.values():
            states[child.state] = states.get(child.state, 0) + 1
        instances = GaugeMetricFamily(
            "lattice_registry_instances", "Supervised daemons by state", labels=["state"]
        )
        for state, count in sorted(states.items()):
            instances.add_metric([state], count)
        yield instances
        yield GaugeMetricFamily(
            "lattice_registry_desired",
            "Instances this node should run (policy, consent, ports)",
            value=sum(1 for p in reconciler.plan.values() if p.decision.run),
        )
        yield GaugeMetricFamily(
            "lattice_registry_invalid_entries",
            "Registry entries rejected (invalid or unknown service)",
            value=len(reconciler.invalid),
        )
        yield CounterMetricFamily(
            "lattice_registry_restarts", "Daemon restarts after a crash", value=self.restarts
        )
        denied = CounterMetricFamily("lattice_lsp_denied", "LSP calls refused", labels=["reason"])
        for reason, count in sorted(self.denied.items()):
            denied.add_metric([reason], count)
        yield denied

    def deny(self, reason: str) -> None:
        self.denied[reason] = self.denied.get(reason, 0) + 1


class RegistryService(MultiService):
    """
    :param kv: the KV service whose store holds the registry; ``None`` uses an embedded
        store of the registry's own (``[registry] database``).
    :param cluster: the KV service when it runs in front of an etcd cluster
        (``[kv] backend = etcd``): the registry then uses the cluster, shared by every node.
    :param descriptors: the installed services (default: the ``lattice.plugins`` plugins).
    :param tenant: the KV tenant the registry's keys live in (the etcd API's default tenant).
    """

    _log = Logger()

    def __init__(
        self,
        config: RegistryConfig,
        reactor: Any,
        *,
        node_config: NodeConfig,
        node: _Node,
        readiness: Readiness,
        metrics: CollectorRegistry | None,
        fail: Callable[[str], None],
        kv: _KvOwner | None = None,
        cluster: _ClusterOwner | None = None,
        tenant: str = "default",
        descriptors: Mapping[str, IServiceDescriptor] | None = None,
        python: str = sys.executable,
        environ: Mapping[str, str] | None = None,
        threadpool: ThreadPool | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._node = node
        self._readiness = readiness
        self._fail = fail
        self._kv = kv
        self._cluster = cluster
        self._tenant = tenant
        self._python = python
        self._environ = os.environ if environ is None else environ
        self._threadpool = threadpool
        self._state_dir = node_config.state_dir
        self.consent_path = config.consent_path(node_config.state_dir)
        self.descriptors = dict(load_descriptors() if descriptors is None else descriptors)
        self.stores: dict[str, KeyValueStore] = {}
        self.tokens = TokenBook()
        self.local = LocalState()
        self._component = readiness.register("registry")
        self.metrics = RegistryMetrics(self)
        self.supervisor = ProcessSupervisor(
            reactor,
            kill_timeout=config.kill_timeout,
            restart_min=config.restart_min,
            restart_max=config.restart_max,
            on_change=self._child_changed,
        )
        self.reconciler = Reconciler(
            self.descriptors,
            self.local,
            node_config.tags,
            self.supervisor,
            self._launch,
            self._release,
        )
        self.advertiser = Advertiser(reactor, self.stores, self._node_id, ttl=config.advertise_ttl)
        self.lsp = LspServer(self.tokens, self.stores, node.node_id, self.metrics.deny)
        self.lsp_factory = GrpcServerFactory(reactor, GrpcServerOptions(keepalive_interval=None))
        add_lsp_services(self.lsp_factory, self.lsp)
        readiness.register("lsp")
        self._bound: Deferred[None] = Deferred()
        self.lsp_listener = ListenerService(
            reactor,
            config.lsp_endpoint(node_config.state_dir),
            self.lsp_factory,
            _Notifying(readiness, "lsp", self._lsp_bound),
            "[registry] lsp_listen",
            fail,
        )
        self.lsp_listener.setServiceParent(self)
        self.embedded: EmbeddedStore | None = None
        if kv is None and cluster is None:
            self.embedded = EmbeddedStore(
                reactor, config.database_path(node_config.state_dir), threadpool
            )
            self.embedded.setServiceParent(self)
        self._cancel_watch: Callable[[], None] | None = None
        self._started: Deferred[None] | None = None
        self.lsp_address = ""
        self._ready = False
        self._ready_waiters: list[Deferred[None]] = []
        node.admin.mount("services", RegistryAdmin(self).app.resource())
        if metrics is not None:
            metrics.register(self.metrics)

    # -- start and stop --------------------------------------------------------------------

    def _node_id(self) -> str:
        return self._node.node_id() or "unknown"

    def _lsp_bound(self) -> None:
        if not self._bound.called:
            self._bound.callback(None)

    def startService(self) -> None:
        try:
            self.local = LocalState.load(self.consent_path)
        except LocalStateError as e:
            self._component.set_not_ready(str(e))
            self._fail(f"[registry] consent_file: {e}")
            return
        self.reconciler.local = self.local
        super().startService()
        self._component.set_not_ready("waiting for the store and the LSP listener")
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addErrback(self._start_failed)

    def when_ready(self) -> Deferred[None]:
        """Fires once the registry has been read and reconciled the first time."""
        waiter: Deferred[None] = Deferred()
        if self._ready:
            waiter.callback(None)
        else:
            self._ready_waiters.append(waiter)
        return waiter

    async def _start(self) -> None:
        store = await self._open_store()
        await self._bound
        port = self.lsp_listener.port
        if port is None or not self.running:
            return
        self.lsp_address = child_address(port.getHost())
        self.stores[LOCAL_STORE] = store
        read = await self._read_registry(store)
        if read is None or not self.running:
            return  # stopped while reading
        values, revision = read
        entries = {}
        for value in values:
            service_id = _service_of(value.key)
            if service_id is not None:
                entries[service_id] = value.value
        self.reconciler.store_reset(LOCAL_STORE, entries)
        self._cancel_watch = store.watch(
            REGISTRY_PREFIX.encode(), revision + 1, self._registry_events
        )
        self.advertiser.start()
        self.reconciler.reconcile()
        self._update_readiness()
        self._ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._log.info(
            "Registry: watching {prefix} from revision {revision}; LSP at {address}; "
            "{count} installed service(s): {ids}",
            prefix=REGISTRY_PREFIX,
            revision=revision,
            address=self.lsp_address,
            count=len(self.descriptors),
            ids=", ".join(sorted(self.descriptors)) or "none",
        )

    async def _read_registry(self, store: KeyValueStore) -> tuple[list[StoredValue], int] | None:
        """
        ``/services/`` and its revision.  The shared cluster may be briefly unreachable (no
        quorum, members restarting): keep trying while running rather than fail the node.
        """
        while True:
            try:
                return await store.range(REGISTRY_PREFIX.encode())
            except GrpcError as e:
                if self._cluster is None:
                    raise
                self._component.set_not_ready(f"cannot read the registry: {e.message}")
                self._log.warn("Cannot read the registry, retrying: {error}", error=e.message)
            await deferLater(self._reactor, CLUSTER_RETRY_INTERVAL)
            if not self.running:
                return None

    async def _open_store(self) -> KeyValueStore:
        if self.embedded is not None:
            return await self.embedded.when_ready()
        if self._cluster is not None:
            upstream = self._cluster.upstream
            if upstream is None:
                raise RuntimeError("the KV service is not connected to the etcd cluster")
            return ClusterStoreAdapter(upstream, self._tenant)
        assert self._kv is not None
        kv = self._kv
        if kv.store is None:
            loaded: Deferred[None] = Deferred()

            def check() -> None:
                if kv.store is not None and not loaded.called:
                    loaded.callback(None)

            self._readiness.observe(check)
            await loaded
        assert kv.store is not None
        return KVStoreAdapter(kv.store, self._tenant)

    def _start_failed(self, failure: Failure) -> None:
        self._component.set_not_ready("failed to start")
        self._log.failure("Registry failed to start", failure)
        self._fail(f"[registry] cannot start: {failure.getErrorMessage()}")

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._cancel_watch is not None:
            self._cancel_watch()
            self._cancel_watch = None
        # Withdraw the advertisements first: the node stops its subsystems together, and the
        # revocation is applied at once, before the store closes.
        withdrawn = Deferred.fromCoroutine(self.advertiser.stop())
        withdrawn.addTimeout(STOP_STORE_TIMEOUT, self._reactor)
        await self.supervisor.stop_all()
        try:
            await withdrawn
        except Exception as e:
            self._log.warn("Advertisements not withdrawn cleanly: {error}", error=e)
        try:
            await self.lsp_factory.drain(timeout=1.0)
        except Exception:
            self._log.failure("Draining LSP connections failed")
        result = super().stopService()
        if isinstance(result, Deferred):
            await result

    # -- events ----------------------------------------------------------------------------

    def _registry_events(self, events: list[StoreEvent]) -> None:
        changed = False
        for event in events:
            service_id = _service_of(event.key)
            if service_id is None:
                continue
            self.reconciler.entry_changed(LOCAL_STORE, service_id, event.value)
            changed = True
        if changed:
            self.reconciler.reconcile()
            self._update_readiness()

    def _child_changed(self, key: InstanceKey) -> None:
        child = self.supervisor.get(key)
        if child is not None and child.state == "backoff":
            self.metrics.restarts += 1
        self.advertiser.changed(key, child)
        self._update_readiness()

    def _update_readiness(self) -> None:
        if not self.running or self._cancel_watch is None:
            return
        children = self.supervisor.children.values()
        ready = sum(1 for c in children if c.state == "ready")
        desired = sum(1 for p in self.reconciler.plan.values() if p.decision.run)
        detail = f"{ready} of {desired} desired service(s) running"
        crashing = sorted(f"{c.key[0]}/{c.key[1]}" for c in children if c.state == "backoff")
        if crashing:
            detail += "; restarting: " + ", ".join(crashing)
        invalid = sorted(f"{k[0]}/{k[1]}" for k in self.reconciler.invalid)
        if invalid:
            detail += "; invalid configuration: " + ", ".join(invalid) + " (lattice service list)"
        self._component.set_ready(detail)

    # -- launching -------------------------------------------------------------------------

    def _launch(
        self, key: InstanceKey, entry: ServiceEntry, port: int | None
    ) -> tuple[list[str], dict[str, str]]:
        store_id, service_id = key
        descriptor = self.descriptors[service_id]
        token = self.tokens.issue(store_id, service_id, tuple(descriptor.prefixes))
        env = {name: self._environ[name] for name in _INHERITED if name in self._environ}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "LATTICE_LSP_ADDRESS": self.lsp_address,
                "LATTICE_LSP_TOKEN": token,
                "LATTICE_SERVICE_ID": service_id,
                "LATTICE_STORE_ID": store_id,
                "LATTICE_NODE_ID": self._node_id(),
                "LATTICE_PORT": "" if port is None else str(port),
                "LATTICE_SERVICE_CONFIG": json.dumps(dict(entry.settings), sort_keys=True),
            }
        )
        return descriptor.command(self._python), env

    def _release(self, key: InstanceKey) -> None:
        self.tokens.revoke(*key)

    # -- admin -----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What ``GET /services/`` and ``lattice service list`` show."""
        return {
            "node_id": self._node.node_id(),
            "tags": sorted(self.reconciler.tags),
            "stores": sorted(self.stores),
            "lsp": self.lsp_address,
            "instances": self.reconciler.status(),
            "descriptors": [
                {
                    "id": d.id,
                    "description": d.description,
                    "prefixes": list(d.prefixes),
                    "default_port": d.default_port,
                }
                for d in sorted(self.descriptors.values(), key=lambda d: str(d.id))
            ],
        }

    async def _persist(self) -> None:
        data = self.local.to_json()
        pool = self._threadpool or self._reactor.getThreadPool()
        await deferToThreadPool(self._reactor, pool, write_atomically, self.consent_path, data)

    async def set_consent(self, service_id: str, consent: Consent) -> None:
        """Change this node's consent for a service (admin surface only), then reconcile."""
        self.local.set_consent(service_id, consent)
        await self._persist()
        self._log.info(
            "Consent for {service} set to {consent} by the local operator",
            service=service_id,
            consent=consent.value,
        )
        self.reconciler.reconcile()
        self._update_readiness()

    async def set_port(self, store_id: str, service_id: str, port: int | None) -> None:
        """Override (or stop overriding) one instance's port, then reconcile."""
        self.local.set_port(store_id, service_id, port)
        await self._persist()
        self._log.info(
            "Port override for {store}/{service}: {port}",
            store=store_id,
            service=service_id,
            port="none" if port is None else port,
        )
        self.reconciler.reconcile()
        self._update_readiness()


def _service_of(key: bytes) -> str | None:
    """``svc`` for ``/services/svc/config``; ``None`` for any other key."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.startswith(REGISTRY_PREFIX) or not text.endswith("/config"):
        return None
    service_id = text[len(REGISTRY_PREFIX) : -len("/config")]
    if not service_id or "/" in service_id:
        return None
    return service_id
