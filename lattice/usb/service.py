"""
The C{usb} subsystem as a service: listeners, device registry, hot-plug,
approvals persistence, metrics, status and admin routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from lattice.config import UsbConfig
from lattice.listening import ListenerService
from lattice.readiness import Component, Readiness
from lattice.tls import TlsConfigurationError
from lattice.usb._admin import UsbAdmin
from lattice.usb._device import DeviceBackend
from lattice.usb._emulated import EmulatedBackend
from lattice.usb._hotplug import HotplugService
from lattice.usb._policy import (
    ApprovalBook,
    ExportPolicy,
    PolicyError,
    normalize_identity,
    write_atomically,
)
from lattice.usb._protocol import Errno
from lattice.usb._pyusb import PyUSBBackend
from lattice.usb._registry import DeviceRegistry
from lattice.usb._server import KeepAlive, UrbObserver, UsbipServerFactory
from lattice.usb._tls import LateServerContext, tls_identity

__all__ = ["APPROVALS_FILE", "UsbService"]

APPROVALS_FILE = "usb-approvals.json"


class _Admin(Protocol):
    def mount(self, segment: str, resource: IResource) -> None: ...


class _Node(Protocol):
    @property
    def admin(self) -> _Admin: ...

    def status_line(self) -> str: ...


class _Notifier(Protocol):
    def status(self, status: str) -> None: ...


_RESULTS = {
    int(Errno.OK): "ok",
    int(Errno.EPIPE): "stall",
    int(Errno.ECONNRESET): "unlinked",
    int(Errno.ENODEV): "nodev",
    int(Errno.ETIMEDOUT): "timeout",
    int(Errno.ENOENT): "no_endpoint",
    int(Errno.EOVERFLOW): "overflow",
    int(Errno.EREMOTEIO): "short",
    int(Errno.ESHUTDOWN): "shutdown",
}


class UsbMetrics(UrbObserver):
    """
    The C{lattice_usb_*} metrics.

    Per-URB counts are plain integers (a labelled Prometheus counter costs
    about a microsecond per increment, a noticeable share of a URB), turned
    into counter families when scraped.
    """

    def __init__(self, registry: CollectorRegistry | None):
        self.devices = 0
        self.clients = 0
        self.pending = 0
        self.urbs: dict[int, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        if registry is not None:
            registry.register(self)

    def urb_completed(self, status: int, bytes_in: int, bytes_out: int) -> None:
        urbs = self.urbs
        urbs[status] = urbs.get(status, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def urb_count(self, result: str) -> int:
        """
        URBs completed with C{result} (a label value such as C{ok} or C{stall}).
        """
        return sum(n for status, n in self.urbs.items() if _RESULTS.get(status, "error") == result)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "lattice_usb_devices_exported", "USB devices exported", value=self.devices
        )
        yield GaugeMetricFamily(
            "lattice_usb_clients", "USB/IP clients holding a device", value=self.clients
        )
        yield GaugeMetricFamily(
            "lattice_usb_pending_approvals",
            "USB/IP clients waiting for approval",
            value=self.pending,
        )
        urbs = CounterMetricFamily(
            "lattice_usb_urbs", "URBs completed, by result", labels=["result"]
        )
        totals: dict[str, int] = dict.fromkeys(_RESULTS.values(), 0)
        totals["error"] = 0
        for status, count in list(self.urbs.items()):
            name = _RESULTS.get(status, "error")
            totals[name] += count
        for name, count in sorted(totals.items()):
            urbs.add_metric([name], count)
        yield urbs
        payload = CounterMetricFamily(
            "lattice_usb_bytes", "Payload bytes transferred, by direction", labels=["direction"]
        )
        payload.add_metric(["in"], self.bytes_in)
        payload.add_metric(["out"], self.bytes_out)
        yield payload


class _StatusComponent(Component):
    """
    A readiness component whose detail also counts devices and clients, and
    which is ready only once the listener is bound and the first device scan
    is done.
    """

    def __init__(self, inner: Component, extra: Callable[[], str]):
        self._inner = inner
        self._extra = extra
        self.name = inner.name
        self.base = "starting"
        self.bound = False
        self.scanned = False

    def set_ready(self, detail: str) -> None:
        self.base, self.bound = detail, True
        self.refresh()

    def set_not_ready(self, detail: str) -> None:
        self.base, self.bound = detail, False
        self._inner.set_not_ready(detail)

    def scan_done(self) -> None:
        self.scanned = True
        self.refresh()

    def refresh(self) -> None:
        if self.bound and self.scanned:
            self._inner.set_ready(f"{self.base}; {self._extra()}")
        elif self.bound:
            self._inner.set_not_ready(f"{self.base}; scanning for devices")


class _ThreadPoolService(Service):
    def __init__(self, pool: ThreadPool):
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class UsbService(MultiService):
    """
    Serves USB/IP on C{[usb] listen} (and C{tls_listen}) with devices from the
    configured backend.
    """

    _log = Logger()

    def __init__(
        self,
        config: UsbConfig,
        reactor: Any,
        *,
        state_dir: Path,
        readiness: Readiness,
        fail: Callable[[str], None],
        node: _Node | None = None,
        metrics: CollectorRegistry | None = None,
        notifier: _Notifier | None = None,
        backend: DeviceBackend | None = None,
        threadpool: ThreadPool | None = None,
    ):
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._fail = fail
        self._node = node
        self._notifier = notifier
        self._readiness = readiness
        self.approvals_path = state_dir / APPROVALS_FILE
        if threadpool is None:
            threadpool = ThreadPool(minthreads=0, maxthreads=32, name="lattice-usb")
            _ThreadPoolService(threadpool).setServiceParent(self)
        self.threadpool = threadpool
        if backend is None:
            backend = self._make_backend()
        self.backend = backend
        self.metrics = UsbMetrics(metrics)
        self.approvals = ApprovalBook(config.require_approval)
        self.registry = DeviceRegistry(backend, ExportPolicy(), self.approvals, reactor)
        self.registry.approval_changed = self.persist
        self.registry.subscribe(self._changed)
        keepalive = KeepAlive(idle=config.keepalive, interval=1.0, count=3)
        self.factory = UsbipServerFactory(
            self.registry, reactor, keepalive=keepalive, observer=self.metrics
        )
        self.component = _StatusComponent(readiness.register("usb"), self._counts)
        self.listener = ListenerService(
            reactor, config.listen, self.factory, self.component, "[usb] listen", fail
        )
        self.listener.setServiceParent(self)
        self.tls_listener: ListenerService | None = None
        self.tls_context = LateServerContext()
        self.tls_factory: UsbipServerFactory | None = None
        if config.tls_listen:
            self.tls_factory = UsbipServerFactory(
                self.registry,
                reactor,
                identify=tls_identity,
                keepalive=keepalive,
                observer=self.metrics,
                direct_send=False,
            )
            self.tls_listener = ListenerService(
                reactor,
                config.tls_listen,
                TLSMemoryBIOFactory(self.tls_context, False, self.tls_factory),
                readiness.register("usb-tls"),
                "[usb] tls_listen",
                fail,
            )
            self.tls_listener.setServiceParent(self)
        self.hotplug: Service | None = None
        if config.backend == "pyusb" and backend.name == "pyusb":
            self.hotplug = HotplugService(
                reactor,
                self.registry,
                poll_interval=config.poll_interval,
                debounce=config.hotplug_debounce,
            )
            self.hotplug.setServiceParent(self)
        self.admin = UsbAdmin(self.registry, self.persist)
        if node is not None:
            node.admin.mount("usb", self.admin.app.resource())

    def _make_backend(self) -> DeviceBackend:
        if self.config.backend == "emulated":
            return EmulatedBackend()
        return PyUSBBackend(self._reactor, self.threadpool)

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        config = self.config
        try:
            self.registry.policy = ExportPolicy.from_settings(
                config.auto_share, config.filters, config.device_clients
            )
            self.approvals.configured = frozenset(
                normalize_identity(c) for c in config.approved_clients
            )
        except PolicyError as e:
            self._fail(f"[usb]: {e}")
            return
        try:
            self._load()
        except (OSError, ValueError, PolicyError) as e:
            self._fail(f"[usb] approvals file {self.approvals_path}: {e}")
            return
        if config.tls_listen:
            try:
                self.tls_context.load(self._clock, config)
            except (TlsConfigurationError, ValueError) as e:
                self._fail(f"[usb] tls_listen: {e}")
                return
        if config.require_approval and not (self.approvals.configured or self.approvals.approved):
            self._log.warn(
                "[usb] require_approval is on and no client is approved: every import is "
                "refused until an operator runs `lattice usb approve ID`"
            )
        scanning = self.registry.rescan()
        super().startService()
        scanning.addBoth(lambda _: self.component.scan_done())

    def stopService(self) -> Deferred[None]:
        """
        Disconnect every client and give every device back (kernel drivers
        reattached) before the listeners and the thread pool stop.
        """
        self.tls_context.stop()
        factories = [self.factory] + ([self.tls_factory] if self.tls_factory else [])
        for factory in factories:
            for connection in list(factory.connections):
                connection.disconnect()
        closing: list[Deferred[None]] = []
        for export in self.registry.exports.values():
            if export.holder is not None:
                self.registry.release(export, export.holder)
            if export.closing is not None:
                closing.append(export.closing)
        released: Deferred[Any] = DeferredList(closing, consumeErrors=True)
        return released.addBoth(lambda _: super(UsbService, self).stopService())

    # -- persistence -------------------------------------------------------

    def _load(self) -> None:
        try:
            text = self.approvals_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        document = json.loads(text)
        self.approvals.load_json(document)
        shared = document.get("shared", [])
        if isinstance(shared, list):
            self.registry.shared = {str(s) for s in shared}

    async def persist(self) -> None:
        """
        Save approvals, denials and hand-shared devices (atomically, off the reactor).
        """
        document = self.approvals.to_json()
        document["shared"] = sorted(self.registry.shared)
        await deferToThreadPool(
            self._reactor, self.threadpool, write_atomically, self.approvals_path, document
        )

    # -- status ------------------------------------------------------------

    def _counts(self) -> str:
        exports = self.registry.exports
        devices = len(exports)
        clients = sum(1 for e in exports.values() if e.holder is not None)
        pending = len(self.approvals.pending)
        text = f"{devices} device{'s' if devices != 1 else ''} exported, "
        text += f"{clients} client{'s' if clients != 1 else ''}"
        if pending:
            text += f", {pending} pending approval{'s' if pending != 1 else ''}"
        return text

    def _changed(self) -> None:
        exports = self.registry.exports
        self.metrics.devices = len(exports)
        self.metrics.clients = sum(1 for e in exports.values() if e.holder is not None)
        self.metrics.pending = len(self.approvals.pending)
        self.component.refresh()
        if self._notifier is not None and self._node is not None and self._readiness.ready:
            self._notifier.status(self._node.status_line())
