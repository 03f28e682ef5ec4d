"""
An C{http.client} connection over a unix socket: the CLI's and the tests' way to the
node's admin listeners.
"""

from __future__ import annotations

import http.client
import socket

__all__ = ["UnixHTTPConnection"]


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to the unix socket at C{path}; C{host} only fills the Host header."""

    def __init__(self, path: str, host: str = "localhost", timeout: float = 30.0) -> None:
        super().__init__(host, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock
