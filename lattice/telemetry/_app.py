"""
The HTTP surface of the telemetry listener.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.iweb import IRequest

from lattice.readiness import Readiness


class TelemetryApp:
    """
    C{/metrics}, C{/healthz} and C{/readyz}.
    """

    app = Klein()

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Readiness,
        node_id: Callable[[], str | None],
    ):
        self._registry = registry
        self._readiness = readiness
        self._node_id = node_id

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)

    @app.route("/healthz", methods=["GET"])
    async def healthz(self, request: IRequest) -> bytes:
        # Answering at all proves the reactor runs: this is served by it.
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"status": "ok"}).encode("utf-8") + b"\n"

    @app.route("/readyz", methods=["GET"])
    async def readyz(self, request: IRequest) -> bytes:
        ready = self._readiness.ready
        body = {
            "ready": ready,
            "node_id": self._node_id(),
            "subsystems": {
                name: {"ready": state.ready, "detail": state.detail}
                for name, state in self._readiness.snapshot().items()
            },
        }
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"
