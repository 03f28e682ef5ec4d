"""
The telemetry subsystem as a service.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService

from lattice.admin import QuietSite
from lattice.config import TelemetryConfig
from lattice.listening import ListenerService
from lattice.readiness import Readiness
from lattice.telemetry._app import TelemetryApp


class TelemetryService(MultiService):
    """
    Serves L{TelemetryApp} on C{[telemetry] listen}.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        reactor: object,
        registry: CollectorRegistry,
        readiness: Readiness,
        node_id: Callable[[], str | None],
        fail: Callable[[str], None],
    ):
        super().__init__()
        self.app = TelemetryApp(registry, readiness, node_id)
        site = QuietSite(self.app.app.resource(), reactor=reactor)
        site.displayTracebacks = False
        self.listener = ListenerService(
            reactor,
            config.listen,
            site,
            readiness.register("telemetry"),
            "[telemetry] listen",
            fail,
        )
        self.listener.setServiceParent(self)
