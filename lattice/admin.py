"""
The node's local admin surface: HTTP on a listener that only the operator
reaches (by default a unix socket, mode 0600, under the state directory).

Subsystems mount their admin resources under a first path segment of their
own (C{usb}, C{services}; discovery keeps the predecessor's C{/api/v1/...}
and C{/health} paths).  The C{lattice} CLI talks to it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

__all__ = ["AdminSurface", "QuietSite", "json_error"]


class QuietSite(Site):
    """
    A Site that does not write an access log line per request (health checks
    and scrapes would drown everything else).
    """

    noisy = False

    def log(self, request: Any) -> None:
        pass


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        child: IResource = super().getChild(path, request)
        return child

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        children = sorted(name.decode("ascii") for name in self.children)
        return json.dumps({"mounted": children}).encode("utf-8") + b"\n"


class AdminSurface:
    """
    The resource tree served on the admin listener.
    """

    def __init__(self) -> None:
        self.root = _Root()

    def mount(self, segment: str, resource: IResource) -> None:
        """
        Serve C{resource} under C{/<segment>/}.
        """
        name = segment.encode("ascii")
        if name in self.root.children:
            raise ValueError(f"admin path /{segment} mounted twice")
        self.root.putChild(name, resource)

    def site(self, reactor: Any) -> Site:
        """
        A Site serving the admin tree, timing out idle connections on C{reactor}.
        """
        site = QuietSite(self.root, reactor=reactor)
        site.displayTracebacks = False
        return site


def json_error(request: Request, code: int, message: str, **extra: Any) -> bytes:
    """
    Set C{code} and return C{{"error": message, ...}} as JSON.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message, **extra}).encode("utf-8") + b"\n"
