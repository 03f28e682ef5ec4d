"""
A service that listens on one configured endpoint and reports readiness.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.python.failure import Failure

from lattice.readiness import Component

__all__ = ["ListenerService", "describe_address"]


def describe_address(address: IAddress) -> str:
    """
    A short human-readable form of a bound address.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"unix:{name}"
    return str(address)


class ListenerService(Service):
    """
    Listen on C{description} with C{factory} while running.

    A bind failure is fatal for the node: C{fail} is called with a message
    that names the configuration key and the reason.
    """

    def __init__(
        self,
        reactor: object,
        description: str,
        factory: IProtocolFactory,
        component: Component,
        setting: str,
        fail: Callable[[str], None],
    ):
        self._reactor = reactor
        self._description = description
        self._factory = factory
        self._component = component
        self._setting = setting
        self._fail = fail
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        try:
            endpoint = serverFromString(self._reactor, self._description)
        except Exception as e:
            # Endpoint parsers raise what they like (ValueError, KeyError,
            # IndexError for a systemd index that was not passed...).
            reason = str(e) or type(e).__name__
            if self._description.startswith("systemd:"):
                reason += " (no such socket passed by systemd: check the .socket unit)"
            self._fail(f"{self._setting} = {self._description}: cannot use endpoint: {reason}")
            return
        self._listening = endpoint.listen(self._factory)
        self._listening.addCallbacks(self._bound, self._not_bound)

    def _bound(self, port: IListeningPort) -> None:
        self._listening = None
        self.port = port
        self._component.set_ready(f"listening on {describe_address(port.getHost())}")

    def _not_bound(self, failure: Failure) -> None:
        self._listening = None
        if not self.running:
            return  # cancelled by stopService
        self._component.set_not_ready("cannot listen")
        self._fail(
            f"{self._setting} = {self._description}: cannot listen: {failure.getErrorMessage()}"
        )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
            self._listening = None
        port, self.port = self.port, None
        self._component.set_not_ready("stopped")
        if port is None:
            return None
        result = port.stopListening()
        return result if isinstance(result, Deferred) else None
