"""
The certificate service's admin routes, mounted at C{/tls/} on the node's admin surface.

  GET  /tls/         the certificate, its expiry, the next renewal, the last error
  POST /tls/renew    renew now (C{acme}) or regenerate (C{self-signed}); answers when done
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from klein import Klein
from twisted.web.iweb import IRequest

if TYPE_CHECKING:
    from lattice.acme.service import CertificateService

__all__ = ["TlsAdmin"]


def _json(request: IRequest, body: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


class TlsAdmin:
    """
    Klein app over a L{CertificateService}.
    """

    app = Klein()

    def __init__(self, service: CertificateService):
        self._service = service

    @app.route("/", methods=["GET"])
    async def show(self, request: IRequest) -> bytes:
        await self._service.refresh()
        return _json(request, self._service.status())

    @app.route("/renew", methods=["POST"])
    async def renew(self, request: IRequest) -> bytes:
        try:
            info = await self._service.renew_now()
        except Exception as e:
            return _json(request, {"error": str(e), "status": self._service.status()}, 502)
        return _json(request, {"renewed": info.as_json(), "status": self._service.status()})
