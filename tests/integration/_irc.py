"""
A real IRC client (jaraco's ``irc`` from PyPI, a blocking library) driven from trial: its
reactor runs in a thread; the test waits for events with ``deferToThread``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import irc.client  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

Event = tuple[str, ...]


class IrcClient:
    """One connected IRC client; its events are ``(type, nick, target, text)`` tuples."""

    def __init__(self, port: int, nick: str) -> None:
        self.nick = nick
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self.reactor = irc.client.Reactor()
        for kind in ("welcome", "join", "pubmsg", "quit", "disconnect"):
            self.reactor.add_global_handler(kind, self._handler(kind))
        self.connection = self.reactor.server().connect("127.0.0.1", port, nick)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _handler(self, kind: str) -> Callable[[Any, Any], None]:
        def handle(connection: Any, event: Any) -> None:
            nick = getattr(event.source, "nick", "") or ""
            text = event.arguments[0] if event.arguments else ""
            self.events.put((kind, nick, event.target or "", text))

        return handle

    def _run(self) -> None:
        while not self._stop.is_set():
            self.reactor.process_once(timeout=0.05)

    def _wait(self, predicate: Callable[[Event], bool], timeout: float) -> Event:
        for event in self.seen:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.nick}: no matching event; saw {self.seen}")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(event)
            if predicate(event):
                return event

    def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 10.0
    ) -> Deferred[Event]:
        """Fire with the first event (seen or to come) matching ``predicate``."""
        return deferToThread(self._wait, predicate, timeout)

    def join(self, channel: str) -> None:
        self.connection.join(channel)

    def say(self, channel: str, text: str) -> None:
        self.connection.privmsg(channel, text)

    def close(self) -> None:
        if self.connection.is_connected():
            self.connection.disconnect("bye")
        self._stop.set()
        self.thread.join(2)


def message(nick: str, text: str) -> Callable[[Event], bool]:
    """A predicate: a channel message from ``nick`` saying ``text``."""
    return lambda event: event[0] == "pubmsg" and event[1] == nick and event[3] == text
