"""
The C{node} service: identity, systemd notification and the watchdog.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lattice.admin import AdminSurface
from lattice.config import NodeConfig
from lattice.identity import IdentityError, NodeIdentity, load_or_create_identity
from lattice.listening import ListenerService
from lattice.readiness import Readiness
from lattice.systemd import Notifier, WatchdogService, watchdog_interval

__all__ = ["NodeService"]


class NodeService(MultiService):
    """
    Loads (or creates) the node identity when started, pings the systemd
    watchdog, and tells systemd when every enabled subsystem is ready.
    """

    _log = Logger()

    def __init__(
        self,
        config: NodeConfig,
        reactor: IReactorTime,
        readiness: Readiness,
        notifier: Notifier,
        fail: Callable[[str], None],
        environ: Mapping[str, str] | None = None,
    ):
        super().__init__()
        self._config = config
        self.admin = AdminSurface()
        self._readiness = readiness
        self._notifier = notifier
        self._fail = fail
        self._environ = os.environ if environ is None else environ
        self._identity: NodeIdentity | None = None
        self._announced = False
        self._component = readiness.register("node")
        self.admin_listener = ListenerService(
            reactor,
            config.admin_endpoint,
            self.admin.site(reactor),
            readiness.register("admin"),
            "[node] admin_listen",
            fail,
        )
        self.admin_listener.setServiceParent(self)
        interval = watchdog_interval(self._environ)
        self.watchdog: WatchdogService | None = None
        if interval is not None:
            self.watchdog = WatchdogService(reactor, notifier, interval)
            self.watchdog.setServiceParent(self)

    @property
    def identity(self) -> NodeIdentity:
        """
        The node's identity; only available once the service started.
        """
        if self._identity is None:
            raise RuntimeError("the node identity is loaded when the node service starts")
        return self._identity

    def swap_identity(self, identity: NodeIdentity) -> None:
        """
        Use C{identity} from now on (after a key rotation): the node id, the
        readiness detail and C{/readyz} follow the new key.
        """
        if self._identity is None:
            raise RuntimeError("the node identity is loaded when the node service starts")
        previous, self._identity = self._identity, identity
        self._log.info(
            "Node identity {old_node_id} ({old_key_id}) replaced by {node_id} ({key_id}) from "
            "{source}",
            old_node_id=previous.node_id,
            old_key_id=previous.key_id,
            node_id=identity.node_id,
            key_id=identity.key_id,
            source=identity.source,
        )
        self._component.set_ready(self._identity_detail(identity))

    @staticmethod
    def _identity_detail(identity: NodeIdentity) -> str:
        detail = f"node id {identity.node_id}"
        if identity.warning and identity.warning.startswith("credential holds"):
            detail += " (credential holds a rotated-out key; update it)"
        return detail

    def node_id(self) -> str | None:
        """
        The node id, or C{None} before the identity is loaded.
        """
        return None if self._identity is None else self._identity.node_id

    def startService(self) -> None:
        state_dir = self._config.state_dir
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            self._fail(f"[node] state_dir = {state_dir}: cannot create: {e.strerror}")
            return
        try:
            identity, created = load_or_create_identity(
                self._config.identity_key_path, self._environ, state_dir
            )
        except IdentityError as e:
            self._component.set_not_ready(str(e))
            self._fail(f"[node] identity_key: {e}")
            return
        self._identity = identity
        if created:
            self._log.info(
                "Created node identity {node_id} in {path}",
                node_id=identity.node_id,
                path=identity.source,
            )
        else:
            self._log.info(
                "Node identity {node_id} from {source}",
                node_id=identity.node_id,
                source=identity.source,
            )
        if identity.warning:
            self._log.warn("Node identity: {problem}", problem=identity.warning)
        super().startService()
        self._component.set_ready(self._identity_detail(identity))
        self._notifier.status("Starting: waiting for " + self._waiting_for())
        self._readiness.when_ready().addCallback(lambda _: self._announce_ready())
        self._readiness.observe(self._state_changed)

    def _waiting_for(self) -> str:
        waiting = [name for name, state in self._readiness.snapshot().items() if not state.ready]
        return ", ".join(waiting) or "nothing"

    def status_line(self) -> str:
        """
        One line on what serves where, for C{systemctl status}.
        """
        parts = [
            f"{name}: {state.detail}"
            for name, state in self._readiness.snapshot().items()
            if name != "node"
        ]
        return f"Ready ({self.node_id()}); " + "; ".join(parts)

    def _announce_ready(self) -> None:
        if not self.running:
            return
        self._announced = True
        line = self.status_line()
        self._log.info("{status}", status=line)
        self._notifier.ready(line)

    def _state_changed(self) -> None:
        # After READY=1, keep `systemctl status` current: subsystems update
        # their detail (devices attached, peers known...) through readiness.
        if self.running and self._announced:
            if self._readiness.ready:
                self._notifier.status(self.status_line())
            else:
                waiting = self._waiting_for()
                self._notifier.status(f"Degraded: {waiting} not ready; " + self.status_line())
