"""
The watch hub: replays history from any uncompacted revision, then continues live.

Only committed revisions are ever delivered.  The store calls :meth:`WatchHub.publish` with the
events of each revision once it is durable, in revision order; a new watcher first receives the
retained history from its start revision up to the last published revision, synchronously, then
joins the live stream.  Both happen on one thread, so there is no gap and no duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lattice.kv._mvcc import DELETE, MVCC, PUT, Event, KeyRange

__all__ = ["WatchCompacted", "WatchHub", "Watcher"]

# Events are replayed in responses of at most this many events (never splitting a revision).
REPLAY_CHUNK = 1000


class WatchCompacted(Exception):
    """The start revision has been compacted; ``compact_revision`` is the oldest retained."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(compact_revision)
        self.compact_revision = compact_revision


Send = Callable[["Watcher", list[Event]], None]


@dataclass(eq=False, slots=True)
class Watcher:
    """One watch: a key range, the next revision it expects, filters and where events go."""

    key_range: KeyRange
    next_revision: int
    send: Send
    no_put: bool = False
    no_delete: bool = False
    tag: object = None

    def select(self, events: Sequence[Event]) -> list[Event]:
        """The events of ``events`` this watcher wants and has not seen."""
        key_range = self.key_range
        first = self.next_revision
        selected = []
        for event in events:
            kv = event.kv
            if kv.mod_revision < first or kv.key not in key_range:
                continue
            if (event.type == PUT and self.no_put) or (event.type == DELETE and self.no_delete):
                continue
            selected.append(event)
        return selected


class WatchHub:
    """Every watcher of one store."""

    def __init__(self, store: MVCC) -> None:
        self._store = store
        self._watchers: set[Watcher] = set()
        # The last revision whose events were published (everything before is durable).
        self.published = store.revision

    def __len__(self) -> int:
        return len(self._watchers)

    def watch(
        self,
        key_range: KeyRange,
        start_revision: int,
        send: Send,
        *,
        no_put: bool = False,
        no_delete: bool = False,
        tag: object = None,
    ) -> Watcher:
        """
        Start watching ``key_range`` from ``start_revision`` (0 or less: from the next
        revision).  Retained history is sent before this returns.

        :raises WatchCompacted: the start revision is older than the last compaction.
        """
        compact_revision = self._store.compact_revision
        if 0 < start_revision < compact_revision:
            raise WatchCompacted(compact_revision)
        first = start_revision if start_revision > 0 else self.published + 1
        watcher = Watcher(key_range, first, send, no_put, no_delete, tag)
        if first <= self.published:
            history = watcher.select(self._store.events(key_range, first, self.published))
            for chunk in _chunks(history):
                send(watcher, chunk)
            watcher.next_revision = self.published + 1
        self._watchers.add(watcher)
        return watcher

    def cancel(self, watcher: Watcher) -> None:
        """Stop a watcher; nothing more is sent to it."""
        self._watchers.discard(watcher)

    def publish(self, revision: int, events: Sequence[Event]) -> None:
        """
        Deliver the (durable) ``events`` of every revision up to ``revision``, in order.
        """
        self.published = max(self.published, revision)
        if events:
            for watcher in list(self._watchers):
                selected = watcher.select(events)
                if selected:
                    watcher.next_revision = revision + 1
                    watcher.send(watcher, selected)
                elif watcher.next_revision <= revision:
                    watcher.next_revision = revision + 1


def _chunks(events: list[Event]) -> list[list[Event]]:
    """Split ``events`` into lists of about ``REPLAY_CHUNK``, never splitting a revision."""
    chunks: list[list[Event]] = []
    current: list[Event] = []
    for event in events:
        if len(current) >= REPLAY_CHUNK and event.kv.mod_revision != current[-1].kv.mod_revision:
            chunks.append(current)
            current = []
        current.append(event)
    if current:
        chunks.append(current)
    return chunks
