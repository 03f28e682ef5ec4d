"""
Composition of the node: L{make_lattice_service} wires the subsystems.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from lattice._logging import LogControl, effective_level
from lattice.config import ConfigError, LatticeConfig, load_config
from lattice.node import NodeService
from lattice.readiness import Readiness
from lattice.systemd import Notifier
from lattice.telemetry import TelemetryService, new_registry

if TYPE_CHECKING:
    from lattice.acme import CertificateService

__all__ = ["LatticeService", "make_lattice_service"]


class LatticeService(MultiService):
    """
    The root service: starts the subsystems in order, stops them in reverse
    within the configured shutdown timeout, and turns fatal start-up errors
    into a clean exit with status 1.
    """

    _log = Logger()

    def __init__(
        self,
        config: LatticeConfig,
        reactor: Any,
        notifier: Notifier,
        log_control: LogControl,
        environ: Mapping[str, str],
    ):
        super().__init__()
        self.config = config
        self.exit_code = 0
        self.readiness = Readiness()
        self.metrics = new_registry(self.readiness)
        self._reactor = reactor
        self._notifier = notifier
        self._log_control = log_control
        self._environ = environ
        self._failed = False

    def fail(self, reason: str) -> None:
        """
        A subsystem cannot start: log why and stop the node with status 1.
        """
        self._log.critical("Cannot start: {reason}", reason=reason)
        self.exit_code = 1
        if self._failed:
            return
        self._failed = True
        self._notifier.status(f"Failed: {reason}")
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    def startService(self) -> None:
        # MultiService.startService, stopping at the first fatal failure so
        # that no subsystem starts without the node identity.
        self.running = 1
        for child in self:
            child.startService()
            if self._failed:
                break

    def stopService(self) -> Deferred[None]:
        self._notifier.stopping()
        self.running = 0
        stopped: Deferred[None] = Deferred.fromCoroutine(self._stop_children())
        stopped.addTimeout(self.config.node.shutdown_timeout, self._reactor, self._timed_out)
        stopped.addBoth(self._stopped)
        return stopped

    async def _stop_children(self) -> None:
        # One at a time, in reverse start order: the registry withdraws its
        # advertisements while the KV store still runs, and the node (its
        # identity, its admin socket) goes last.
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                result = child.stopService()
                if isinstance(result, Deferred):
                    await result
            except CancelledError:
                raise  # the shutdown timeout expired
            except Exception:
                self._log.failure("Error while stopping {name}", name=child.name)

    def _timed_out(self, result: object, timeout: float) -> None:
        self._log.error(
            "Shutdown took longer than {timeout}s; abandoning the rest", timeout=timeout
        )

    def _stopped(self, result: object) -> None:
        if isinstance(result, Failure):
            self._log.failure("Error while stopping", result)
        self._notifier.close()

    def reload(self) -> None:
        """
        Re-read the configuration file and apply what can change while
        running (the log level); log what needs a restart.
        """
        source = self.config.source
        if source is None:
            self._log.info("Reload requested, but the configuration has no file to re-read")
            return
        self._notifier.reloading()
        try:
            new = load_config(source, self._environ)
        except ConfigError as e:
            for line in e.errors:
                self._log.error("Reload refused, configuration kept: {error}", error=line)
            self._notifier.reloaded("Reload refused: invalid configuration (see log)")
            return
        level = effective_level(new.log.level, self._environ)
        previous = self._log_control.set_level(level)
        if previous != level:
            self._log.info(
                "Reload: log level {previous} -> {new_level}", previous=previous, new_level=level
            )
        else:
            self._log.info("Reload: log level stays {new_level}", new_level=level)
        for section, key in _changed_keys(self.config, new):
            if (section, key) != ("log", "level"):
                self._log.warn(
                    "Reload: [{section}] {key} changed; it takes effect after a restart",
                    section=section,
                    key=key,
                )
        self._notifier.reloaded("Reloaded")


def _changed_keys(old: LatticeConfig, new: LatticeConfig) -> list[tuple[str, str]]:
    changed = []
    for section_field in fields(LatticeConfig):
        if section_field.name == "source":
            continue
        before = getattr(old, section_field.name)
        after = getattr(new, section_field.name)
        for key_field in fields(before):
            if getattr(before, key_field.name) != getattr(after, key_field.name):
                changed.append((section_field.name, key_field.name))
    return changed


def make_lattice_service(
    config: LatticeConfig,
    reactor: Any,
    *,
    environ: Mapping[str, str] | None = None,
    notifier: Notifier | None = None,
    log_control: LogControl | None = None,
) -> LatticeService:
    """
    Wire the node's services.  Pure: no I/O happens until the returned
    service is started.

    @param environ: the process environment (systemd's C{NOTIFY_SOCKET},
        C{WATCHDOG_USEC}, C{CREDENTIALS_DIRECTORY}); default C{os.environ}.
    """
    if environ is None:
        environ = os.environ
    if notifier is None:
        notifier = Notifier(environ)
    if log_control is None:
        log_control = LogControl(effective_level(config.log.level, environ), config.log.format)
    root = LatticeService(config, reactor, notifier, log_control, environ)
    root.setName("lattice")

    node = NodeService(config.node, reactor, root.readiness, notifier, root.fail, environ)
    _add(root, "node", node)

    if config.telemetry.enabled:
        telemetry = TelemetryService(
            config.telemetry, reactor, root.metrics, root.readiness, node.node_id, root.fail
        )
        _add(root, "telemetry", telemetry)

    # The certificate of the public TLS listeners: before every listener that uses it.
    # Each subsystem is imported only when enabled: a node that does not run
    # the USB proxy or ACME does not pay for pyusb or certbot's acme in
    # start-up time and memory.
    tls: CertificateService | None = None
    if config.tls.enabled:
        from lattice.acme import CertificateService  # noqa: PLC0415

        tls = CertificateService(
            config.tls,
            reactor,
            state_dir=config.node.state_dir,
            readiness=root.readiness,
            fail=root.fail,
            admin=node.admin,
            metrics=root.metrics,
        )
        _add(root, "tls", tls)

    if config.kv.enabled:
        from lattice.kv import KVService  # noqa: PLC0415

        kv = KVService(
            config.kv,
            reactor,
            state_dir=config.node.state_dir,
            node=node,
            readiness=root.readiness,
            metrics=root.metrics,
            fail=root.fail,
            certificates=tls,
        )
        _add(root, "kv", kv)

    if config.discovery.enabled:
        from lattice.discovery import DiscoveryService  # noqa: PLC0415

        discovery = DiscoveryService(
            config.discovery,
            config.node,
            reactor,
            node=node,
            readiness=root.readiness,
            metrics=root.metrics,
            fail=root.fail,
            environ=environ,
            certificates=tls,
        )
        _add(root, "discovery", discovery)

    if config.usb.enabled:
        from lattice.usb import UsbService  # noqa: PLC0415

        usb = UsbService(
            config.usb,
            reactor,
            state_dir=config.node.state_dir,
            readiness=root.readiness,
            fail=root.fail,
            node=node,
            metrics=root.metrics,
            notifier=notifier,
        )
        _add(root, "usb", usb)

    if config.registry.enabled:
        from lattice.registry import RegistryService  # noqa: PLC0415

        registry = RegistryService(
            config.registry,
            reactor,
            node_config=config.node,
            node=node,
            readiness=root.readiness,
            metrics=root.metrics,
            fail=root.fail,
            kv=kv if config.kv.enabled and config.kv.backend != "etcd" else None,
            cluster=kv if config.kv.enabled and config.kv.backend == "etcd" else None,
            tenant=config.kv.default_tenant,
            environ=environ,
        )
        _add(root, "registry", registry)
    return root


def _add(parent: MultiService, name: str, child: IService) -> None:
    child.setName(name)
    child.setServiceParent(parent)
