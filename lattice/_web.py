"""
Shared pieces for the node's HTTP/1.1 listeners (``twisted.web``).
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request, Site

__all__ = ["limited_site"]


class _LimitedRequest(Request):
    """
    A request whose body may not exceed C{max_body} bytes.
    """

    max_body = 1024 * 1024

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._too_large()
            return
        self._received = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received = getattr(self, "_received", 0) + len(data)
        if self._received > self.max_body:
            self._too_large()
            return
        super().handleContentChunk(data)

    def _too_large(self) -> None:
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: 35\r\n\r\n"
                b'{"error": "request body too large"}'
            )
            channel.transport.loseConnection()


def limited_site(resource: IResource, max_body: int, reactor: Any = None) -> Site:
    """
    A quiet Site whose requests refuse bodies over C{max_body} bytes.
    """

    class Limited(_LimitedRequest):
        pass

    Limited.max_body = max_body
    site = Site(resource, requestFactory=Limited, reactor=reactor)
    site.noisy = False
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
