"""The registry's fallback embedded store: real SQLite, its writer thread and the reactor."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from lattice.registry._embedded import EmbeddedStore
from lattice.registry._store import StoreEvent
from tests.integration._daemon import reactor


class EmbeddedStoreTests(TestCase):
    """The store loads in a thread, persists, and expires leases on a timer."""

    timeout = 30

    async def test_persists_and_expires(self) -> None:
        """Writes survive a restart; a lease that is not kept alive takes its keys."""
        path = Path(self.mktemp()) / "registry-kv.sqlite"
        service = EmbeddedStore(reactor, path)
        service.startService()
        store = await service.when_ready()
        await store.put(b"/services/x/config", b"{}")
        lease = await store.lease_grant(1)
        await store.put(b"/nodes/n/services/x", b"{}", lease=lease)
        self.assertIsNotNone(await store.get(b"/nodes/n/services/x"))
        stopped = service.stopService()
        assert stopped is not None
        await stopped

        again = EmbeddedStore(reactor, path)
        again.startService()
        self.addCleanup(again.stopService)
        store = await again.when_ready()
        value = await store.get(b"/services/x/config")
        assert value is not None
        self.assertEqual(value.value, b"{}")
        # The restored lease gets a full TTL (1 s), then expires and takes its key.
        deleted: Deferred[None] = Deferred()

        def events(batch: list[StoreEvent]) -> None:
            if any(e.value is None for e in batch) and not deleted.called:
                deleted.callback(None)

        cancel = store.watch(b"/nodes/", 0, events)
        self.addCleanup(cancel)
        await deleted
        self.assertIsNone(await store.get(b"/nodes/n/services/x"))
