"""
The USB proxy's admin routes, mounted at C{/usb/} on the node's admin surface.

  GET  /usb/                  devices, holders, pending approvals
  POST /usb/approve/<key>     approve a pending client (id or identity)
  POST /usb/deny/<key>        deny (and disconnect) a client
  POST /usb/share/<busid>     export a device by hand (``auto_share = false``)
  POST /usb/unshare/<busid>   stop exporting it
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from lattice.usb._policy import approval_id
from lattice.usb._registry import DeviceRegistry

__all__ = ["UsbAdmin", "describe"]


def describe(registry: DeviceRegistry) -> dict[str, Any]:
    """
    The state the admin surface and C{lattice usb list} show.
    """
    exports = registry.exports
    devices = []
    for busid, device in sorted(registry.present.items()):
        info = device.info
        export = exports.get(busid)
        holder = export.holder if export is not None else None
        devices.append(
            {
                "busid": busid,
                "vid": f"{info.vendor_id:04x}",
                "pid": f"{info.product_id:04x}",
                "description": device.description,
                "exported": export is not None,
                "holder": None
                if holder is None or export is None
                else {
                    "client": holder.identity,
                    "id": approval_id(holder.identity),
                    "address": holder.address,
                    "since": export.since,
                },
                "allowed_clients": sorted(registry.policy.allowed_clients(info) or []),
            }
        )
    return {
        "backend": registry.backend.name,
        "require_approval": registry.approvals.require_approval,
        "devices": devices,
        "pending": [p.as_json() for p in registry.pending()],
        "approved": sorted(registry.approvals.approved | set(registry.approvals.configured)),
        "denied": sorted(registry.approvals.denied),
    }


def _json(request: IRequest, body: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


class UsbAdmin:
    """
    Klein app over a L{DeviceRegistry}; C{persist} saves decisions.
    """

    app = Klein()

    def __init__(self, registry: DeviceRegistry, persist: Callable[[], Awaitable[None]]):
        self._registry = registry
        self._persist = persist

    @app.route("/", methods=["GET"])
    async def show(self, request: IRequest) -> bytes:
        return _json(request, describe(self._registry))

    @app.route("/approve/<key>", methods=["POST"])
    async def approve(self, request: IRequest, key: str) -> bytes:
        try:
            identity = await self._registry.approve(key)
        except KeyError:
            return _json(request, {"error": f"no pending approval or client {key!r}"}, 404)
        return _json(request, {"approved": identity, "id": approval_id(identity)})

    @app.route("/deny/<key>", methods=["POST"])
    async def deny(self, request: IRequest, key: str) -> bytes:
        try:
            identity = await self._registry.deny(key)
        except KeyError:
            return _json(request, {"error": f"no pending approval or client {key!r}"}, 404)
        return _json(request, {"denied": identity, "id": approval_id(identity)})

    @app.route("/share/<busid>", methods=["POST"])
    async def share(self, request: IRequest, busid: str) -> bytes:
        if busid not in self._registry.present:
            return _json(request, {"error": f"no USB device at {busid!r}"}, 404)
        self._registry.shared.add(busid)
        await self._registry.rescan()
        await self._persist()
        exported = busid in self._registry.exports
        return _json(request, {"busid": busid, "shared": True, "exported": exported})

    @app.route("/unshare/<busid>", methods=["POST"])
    async def unshare(self, request: IRequest, busid: str) -> bytes:
        self._registry.shared.discard(busid)
        await self._registry.rescan()
        await self._persist()
        exported = busid in self._registry.exports
        return _json(request, {"busid": busid, "shared": False, "exported": exported})
