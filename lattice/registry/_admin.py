"""
The registry's admin routes, mounted at ``/services/`` on the node's local admin surface:

  GET  /services/                         instances (desired, running, why), descriptors
  POST /services/consent/<service_id>     {"consent": "AlwaysAllow|Block|FollowMesh|Manual"}
  POST /services/port/<store>/<service>   {"port": N} or {"port": null} (remove the override)

Consent and port overrides are node-local: only this surface changes them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, Protocol

from klein import Klein
from twisted.web.iweb import IRequest

from lattice.registry._policy import Consent

__all__ = ["RegistryAdmin"]


class _Registry(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def set_consent(self, service_id: str, consent: Consent) -> Awaitable[None]: ...

    def set_port(self, store_id: str, service_id: str, port: int | None) -> Awaitable[None]: ...


def _json(request: IRequest, body: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


def _body(request: IRequest) -> dict[str, Any] | None:
    try:
        document = json.loads(request.content.read() or b"{}")
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


class RegistryAdmin:
    """Klein app over the registry service."""

    app = Klein()

    def __init__(self, registry: _Registry) -> None:
        self._registry = registry

    @app.route("/", methods=["GET"])
    async def show(self, request: IRequest) -> bytes:
        return _json(request, self._registry.describe())

    @app.route("/consent/<service_id>", methods=["POST"])
    async def consent(self, request: IRequest, service_id: str) -> bytes:
        body = _body(request)
        if body is None or not isinstance(body.get("consent"), str):
            return _json(request, {"error": 'expected {"consent": "<mode>"}'}, 400)
        try:
            consent = Consent.parse(body["consent"])
        except ValueError as e:
            return _json(request, {"error": str(e)}, 400)
        await self._registry.set_consent(service_id, consent)
        return _json(request, {"service": service_id, "consent": consent.value})

    @app.route("/port/<store_id>/<service_id>", methods=["POST"])
    async def port(self, request: IRequest, store_id: str, service_id: str) -> bytes:
        body = _body(request)
        port = None if body is None else body.get("port", "missing")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
        ):
            return _json(request, {"error": 'expected {"port": 0..65535 or null}'}, 400)
        await self._registry.set_port(store_id, service_id, port)
        return _json(request, {"store": store_id, "service": service_id, "port": port})
