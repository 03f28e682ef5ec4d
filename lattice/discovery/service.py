"""
The discovery subsystem as a service: store, core, listeners and timers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from lattice._web import limited_site
from lattice.config import DiscoveryConfig, NodeConfig
from lattice.discovery._client import HTTPTransport, HTTPWebhook, thread_resolver
from lattice.discovery._http import AdminApp, PrefixedResource, PublicApp
from lattice.discovery._netpolicy import ForwardedPolicy
from lattice.discovery._node import DiscoveryNode, Settings, Webhook, parse_bootstrap
from lattice.discovery._rotation import KeyRotator
from lattice.discovery._store import SQLStore, open_store
from lattice.listening import describe_address
from lattice.readiness import Readiness

__all__ = ["DiscoveryService", "settings_from_config"]

WEBHOOK_CREDENTIAL = "webhook_secret"
P = ParamSpec("P")
T = TypeVar("T")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def settings_from_config(
    config: DiscoveryConfig, endpoints: tuple[str, ...], server_name: str
) -> Settings:
    """
    The core's settings from the C{[discovery]} section.
    """
    return Settings(
        server_name=server_name,
        endpoints=endpoints,
        bootstrap=parse_bootstrap(config.bootstrap_servers),
        max_neighbors=config.max_neighbors,
        fanout=config.fanout,
        neighbor_eligible_ms=_ms(config.neighbor_eligible),
        neighbor_demote_ms=_ms(config.neighbor_demote),
        peer_delete_ms=_ms(config.peer_delete),
        message_ttl_ms=_ms(config.message_ttl),
        max_attempts=config.max_attempts,
        retry_base_ms=_ms(config.retry_base),
        retry_max_ms=_ms(config.retry_max),
        breaker_threshold=config.breaker_threshold,
        breaker_open_ms=_ms(config.breaker_open),
        received_keep_ms=_ms(config.received_keep),
        route_cache_ms=_ms(config.route_cache),
    )


def default_server_name(config: DiscoveryConfig) -> str:
    if config.server_name:
        return config.server_name
    host = urlsplit(config.public_url).hostname if config.public_url else None
    return host or "localhost"


class _Lazy(Resource):
    """
    Delegates to C{target} once the core is up; 503 before.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.target: IResource | None = None

    def render(self, request: Request) -> Any:
        if self.target is None:
            request.setResponseCode(503)
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"error": "discovery is starting"}\n'
        return self.target.render(request)


class _Timer:
    """
    Run C{job} every C{interval} seconds stretched by up to C{jitter} percent,
    never overlapping itself.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        name: str,
        interval: float,
        jitter: int,
        rng: random.Random,
        job: Callable[[], Awaitable[Any]],
    ):
        self._clock = clock
        self.name = name
        self._interval = interval
        self._jitter = jitter
        self._rng = rng
        self._job = job
        self._call: IDelayedCall | None = None
        self.running: Deferred[Any] | None = None

    def _delay(self) -> float:
        return self._interval * (1 + self._rng.uniform(0, self._jitter / 100))

    def start(self) -> None:
        self._call = self._clock.callLater(self._delay(), self._fire)

    def _fire(self) -> None:
        self._call = None
        running: Deferred[Any] = Deferred.fromCoroutine(_run(self._job))
        self.running = running

        def failed(failure: Any) -> None:
            self._log.failure("Discovery job {name} failed", failure, name=self.name)

        def again(result: object) -> None:
            self.running = None
            if self._call is None and not self._stopped:
                self.start()

        running.addErrback(failed)
        running.addBoth(again)

    _stopped = False

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


async def _run(job: Callable[[], Awaitable[Any]]) -> Any:
    return await job()


class _Collector:
    def __init__(self, service: DiscoveryService):
        self._service = service

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        node = self._service.node
        events = CounterMetricFamily(
            "lattice_discovery_events", "Discovery events by kind.", labels=["event"]
        )
        peers = GaugeMetricFamily("lattice_discovery_peers", "Proven peers known.")
        neighbors = GaugeMetricFamily("lattice_discovery_neighbors", "Current neighbors.")
        if node is not None:
            for name, count in sorted(node.stats.events.items()):
                events.add_metric([name], count)
        peers.add_metric([], len(node.table.records) if node is not None else 0)
        neighbors.add_metric([], len(node.neighbors) if node is not None else 0)
        yield events
        yield peers
        yield neighbors


class DiscoveryService(Service):
    """
    Serves the public listener and the admin routes, and runs the timers.
    """

    _log = Logger()

    def __init__(
        self,
        config: DiscoveryConfig,
        node_config: NodeConfig,
        reactor: Any,
        *,
        node: Any,
        readiness: Readiness,
        metrics: CollectorRegistry,
        fail: Callable[[str], None],
        environ: Mapping[str, str] | None = None,
        certificates: Any = None,
    ):
        """
        @param certificates: the node's C{[tls]} certificate service
            (L{lattice.acme.CertificateService}); when given, the public
            listener serves HTTPS with its certificate.
        """
        self._config = config
        self._certificates = certificates
        self._state_dir = node_config.state_dir
        self._key_path = node_config.identity_key_path
        self._reactor = reactor
        self._node_service = node
        self._fail = fail
        self._environ = os.environ if environ is None else environ
        self._component = readiness.register("discovery")
        self._public_resource = _Lazy()
        self._admin_resource = _Lazy()
        node.admin.mount("api", PrefixedResource(self._admin_resource))
        node.admin.mount("health", PrefixedResource(self._admin_resource))
        self.node: DiscoveryNode | None = None
        self.public_port: IListeningPort | None = None
        self.admin_port: IListeningPort | None = None
        self._store: SQLStore | None = None
        self._pool: ThreadPool | None = None
        self._resolver_pool: ThreadPool | None = None
        self._transport: HTTPTransport | None = None
        self._webhook: HTTPWebhook | None = None
        self._timers: list[_Timer] = []
        self._starting: Deferred[None] | None = None
        self._rng = random.SystemRandom()
        metrics.register(_Collector(self))

    # start ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._start_failed)

    def when_ready(self) -> Deferred[None]:
        """
        Fires once the subsystem serves (tests).
        """
        assert self._starting is not None
        d: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._starting.addBoth(fire)
        return d

    def _start_failed(self, failure: Any) -> None:
        self._log.failure("Discovery cannot start", failure)
        self._fail(f"[discovery]: cannot start: {failure.getErrorMessage()}")

    def _run_in_pool(self, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        assert self._pool is not None
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

    async def _start(self) -> None:
        config = self._config
        self._pool = ThreadPool(1, 1, name="discovery-store")
        self._pool.start()
        self._resolver_pool = ThreadPool(0, 4, name="discovery-resolver")
        self._resolver_pool.start()
        secret = await self._run_in_pool(self._read_secret)
        store: SQLStore = await self._run_in_pool(open_store, config.database, self._state_dir)
        self._store = store
        public_site = limited_site(self._public_resource, config.max_body, self._reactor)
        public_factory: Any = public_site
        scheme = "http"
        if self._certificates is not None:
            public_factory = self._certificates.server_context(alpn=(b"http/1.1",)).wrap(
                public_site
            )
            scheme = "https"
        try:
            port: IListeningPort = await serverFromString(self._reactor, config.listen).listen(
                public_factory
            )
        except Exception as e:
            self._fail(f"[discovery] listen = {config.listen}: cannot listen: {e}")
            return
        self.public_port = port
        endpoints = (config.public_url.rstrip("/"),) if config.public_url else ()
        if not endpoints:
            address = port.getHost()
            host = getattr(address, "host", "127.0.0.1")
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 (a check)
            host = f"[{host}]" if ":" in host else host
            endpoints = (f"{scheme}://{host}:{getattr(address, 'port', 0)}",)
        identity = self._node_service.identity
        webhook: Webhook | None = None
        if config.webhook_url:
            if secret is None:
                self._fail(
                    "[discovery] webhook_url is set but no webhook secret: provide "
                    "$CREDENTIALS_DIRECTORY/webhook_secret or [discovery] webhook_secret_file"
                )
                return
            self._webhook = HTTPWebhook(
                self._reactor, config.webhook_url, secret, config.outbound_timeout
            )
            webhook = self._webhook
        node_holder: list[DiscoveryNode] = []

        def local() -> Any:
            current = node_holder[0]
            return current.signer, current.server_uuid

        self._transport = HTTPTransport(
            self._reactor,
            local,
            thread_resolver(self._reactor, self._resolver_pool),
            config.allow_private_addresses,
            timeout=config.outbound_timeout,
            max_concurrency=config.outbound_concurrency,
            per_host=max(2, config.outbound_concurrency // 4),
        )
        node = DiscoveryNode(
            identity=identity,
            public_key=identity.public_key,
            settings=settings_from_config(config, endpoints, default_server_name(config)),
            clock=self._reactor,
            store=store,
            run=self._run_in_pool,
            transport=self._transport,
            webhook=webhook,
        )
        node_holder.append(node)
        await node.start()
        self.node = node
        public = PublicApp(
            node,
            self._reactor,
            ForwardedPolicy(config.trusted_proxies),
            peer_rate=config.peer_rate_limit,
            address_rate=config.address_rate_limit,
        )
        jobs: dict[str, Callable[[], Awaitable[Any]]] = {
            "update_neighbors": node.update_neighbors,
            "process_messages": lambda: _as_coroutine(node.process_messages()),
            "cleanup": node.cleanup,
        }
        rotator = KeyRotator(
            self._node_service, node, self._key_path, self._run_in_pool, self._state_dir
        )
        admin = AdminApp(node, jobs, rotate=rotator.rotate, revoke=rotator.revoke)
        self._public_resource.target = public.app.resource()
        self._admin_resource.target = admin.app.resource()
        node.listeners["public"] = describe_address(port.getHost())
        detail = f"public {node.listeners['public']} as {endpoints[0]}"
        if config.admin_listen:
            admin_site = limited_site(admin.app.resource(), config.max_body, self._reactor)
            try:
                self.admin_port = await serverFromString(self._reactor, config.admin_listen).listen(
                    admin_site
                )
            except Exception as e:
                self._fail(f"[discovery] admin_listen = {config.admin_listen}: cannot listen: {e}")
                return
            node.listeners["admin"] = describe_address(self.admin_port.getHost())
            detail += f"; admin {node.listeners['admin']}"
        jitter = config.timer_jitter
        self._timers = [
            _Timer(
                self._reactor,
                "gossip",
                config.gossip_interval,
                jitter,
                self._rng,
                node.gossip_round,
            ),
            _Timer(
                self._reactor,
                "delivery",
                config.delivery_interval,
                jitter,
                self._rng,
                lambda: _as_coroutine(node.process_messages()),
            ),
            _Timer(
                self._reactor,
                "neighbors",
                config.neighbor_interval,
                jitter,
                self._rng,
                node.update_neighbors,
            ),
            _Timer(
                self._reactor, "cleanup", config.cleanup_interval, jitter, self._rng, node.cleanup
            ),
        ]
        for timer in self._timers:
            timer.start()
        if not self.running:
            return
        self._component.set_ready(detail)
        self._log.info("Discovery serving: {detail}", detail=detail)
        # first contact and a restarted queue do not wait for the timers
        node._spawn(_first_round(node))

    def _read_secret(self) -> bytes | None:
        credentials = self._environ.get("CREDENTIALS_DIRECTORY")
        candidates: list[Path] = []
        if credentials:
            candidates.append(Path(credentials) / WEBHOOK_CREDENTIAL)
        if self._config.webhook_secret_file is not None:
            candidates.append(self._config.webhook_secret_file)
        for path in candidates:
            if path.exists():
                secret = path.read_bytes().strip()
                if secret:
                    return secret
        return None

    # stop ----------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._component.set_not_ready("stopped")
        for timer in self._timers:
            timer.stop()
        for port in (self.admin_port, self.public_port):
            if port is not None:
                stopped = port.stopListening()
                if stopped is not None:
                    await stopped
        self.admin_port = self.public_port = None
        for closer in (self._transport, self._webhook):
            if closer is not None:
                await closer.close()
        if self._store is not None and self._pool is not None:
            try:
                await self._run_in_pool(self._store.close)
            except Exception:
                self._log.failure("Closing the discovery store")
        for pool in (self._pool, self._resolver_pool):
            if pool is not None:
                pool.stop()
        self._pool = self._resolver_pool = None


async def _as_coroutine(d: Awaitable[Any]) -> Any:
    return await d


async def _first_round(node: DiscoveryNode) -> None:
    await node.gossip_round()
    await node.process_messages()
