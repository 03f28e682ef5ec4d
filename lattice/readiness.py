"""
Readiness of the node's subsystems, as ``/readyz`` and sd_notify report it.

Each enabled subsystem registers one L{Component} when the node is wired and
marks it ready once it serves (for a listener: once it is bound).  The node
is ready when every registered component is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed

__all__ = ["Component", "ComponentState", "Readiness"]


@dataclass(frozen=True)
class ComponentState:
    """
    One subsystem's readiness and a human-readable detail.
    """

    ready: bool
    detail: str


class Component:
    """
    The handle a subsystem uses to report its readiness.
    """

    def __init__(self, board: Readiness, name: str):
        self._board = board
        self.name = name

    def set_ready(self, detail: str) -> None:
        """
        The subsystem serves; C{detail} says what (for example where it listens).
        """
        self._board._update(self.name, ComponentState(True, detail))

    def set_not_ready(self, detail: str) -> None:
        """
        The subsystem does not serve (yet, or any more); C{detail} says why.
        """
        self._board._update(self.name, ComponentState(False, detail))


class Readiness:
    """
    The readiness of every registered component.
    """

    def __init__(self) -> None:
        self._states: dict[str, ComponentState] = {}
        self._waiters: list[Deferred[None]] = []
        self._observers: list[Callable[[], None]] = []

    def observe(self, observer: Callable[[], None]) -> None:
        """
        Call C{observer} after every change of any component's state.
        """
        self._observers.append(observer)

    def register(self, name: str) -> Component:
        """
        Add a component, not ready until it says so.
        """
        if name in self._states:
            raise ValueError(f"component {name!r} registered twice")
        self._states[name] = ComponentState(False, "starting")
        return Component(self, name)

    @property
    def ready(self) -> bool:
        """
        Whether every registered component is ready.
        """
        return all(state.ready for state in self._states.values())

    def snapshot(self) -> dict[str, ComponentState]:
        """
        The current state of each component, in registration order.
        """
        return dict(self._states)

    def when_ready(self) -> Deferred[None]:
        """
        A Deferred that fires the first time every component is ready.
        """
        if self._states and self.ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _update(self, name: str, state: ComponentState) -> None:
        if self._states.get(name) == state:
            return
        self._states[name] = state
        for observer in list(self._observers):
            observer()
        if self.ready:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
