"""
Tests for the endpoint proof's bookkeeping: L{lattice.discovery._node.EndpointMemory}
and what a proof may change in the table.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._node import EndpointMemory
from lattice.discovery._records import make_peer_record
from tests.discovery._helpers import Cluster, run

KEY_A = b"a" * 32
KEY_B = b"b" * 32


class EndpointMemoryTests(SynchronousTestCase):
    """
    Entries expire at their deadline, renewals count from their own
    deadline, and the oldest entries go first past the limit.
    """

    def test_expiry(self) -> None:
        """
        An entry is there until its deadline, then gone, and dropped for good
        once a later entry is made.
        """
        memory = EndpointMemory(10)
        memory.put("a:80", KEY_A, 100, 0)
        self.assertEqual(memory.get("a:80", 99), (KEY_A, 100))
        self.assertIsNone(memory.get("a:80", 100))
        memory.put("b:80", None, 200, 100)
        self.assertEqual(len(memory), 1)
        self.assertEqual(memory.get("b:80", 150), (None, 200))

    def test_renewal(self) -> None:
        """
        A renewed entry lives until its new deadline, not the first one.
        """
        memory = EndpointMemory(10)
        memory.put("a:80", KEY_A, 100, 0)
        memory.put("a:80", KEY_B, 150, 50)
        memory.put("c:80", KEY_A, 200, 120)
        self.assertEqual(memory.get("a:80", 120), (KEY_B, 150))
        memory.put("d:80", KEY_A, 300, 160)
        self.assertIsNone(memory.get("a:80", 160))
        self.assertEqual(len(memory), 2)

    def test_limit(self) -> None:
        """
        Past the limit the oldest entries are dropped first.
        """
        memory = EndpointMemory(3)
        for i in range(5):
            memory.put(f"h{i}:80", KEY_A, 1000 + i // 2, i)
        self.assertEqual(len(memory), 3)
        self.assertEqual(
            [h for h in (f"h{i}:80" for i in range(5)) if memory.get(h, 10)],
            ["h2:80", "h3:80", "h4:80"],
        )

    def test_deadline_shared(self) -> None:
        """
        Entries made at one deadline share one int (a network's worth of
        entries is held at once).
        """
        memory = EndpointMemory(10)
        memory.put("a:80", KEY_A, 10**12 + 600_000, 0)
        memory.put("b:80", KEY_A, 10**12 + 600_000, 0)
        first, second = memory.get("a:80", 0), memory.get("b:80", 0)
        assert first is not None and second is not None
        self.assertIs(first[1], second[1])


class _Tampering:
    """
    A transport that answers announcement fetches with the server's real
    proof, but a newer copy of its record whose signature does not hold.
    """

    def __init__(self, inner: Any, newer: dict[str, Any]):
        self._inner = inner
        self._newer = newer

    def call(self, *args: Any) -> Any:
        return self._inner.call(*args)

    async def fetch_announcement(self, endpoint: str, challenge: str) -> dict[str, Any]:
        answer = dict(await self._inner.fetch_announcement(endpoint, challenge))
        answer["record"] = self._newer
        return answer


class ProofTests(SynchronousTestCase):
    """
    The record fetched along with an endpoint proof is not covered by the
    proof: a newer one is only taken when its own signature holds.
    """

    def test_unsigned_newer_record_not_taken(self) -> None:
        """
        A newer record with a broken signature, served with a valid proof,
        does not replace the pending record: the record that verified is
        the one accepted.
        """
        cluster = Cluster(2)
        prover, server = cluster.nodes[0], cluster.nodes[1]
        identity = cluster.identities[1]
        now = prover.now()
        pending = make_peer_record(
            identity,
            identity.public_key,
            server.server_uuid,
            "s1",
            ("http://s1.test",),
            server.own_record()["seq"] + 1,
            now,
        )
        newer = dict(
            make_peer_record(
                identity,
                identity.public_key,
                server.server_uuid,
                "s1",
                ("http://s1.test",),
                pending["seq"] + 1,
                now,
            )
        )
        newer["server_id"] = "evil"
        prover._transport = _Tampering(prover._transport, newer)
        self.assertEqual(prover.table.offer(pending, now).status, "pending")
        self.assertTrue(run(self, prover.prove(server.server_uuid)))
        self.assertEqual(prover.table.records[server.server_uuid]["server_id"], "s1")
        self.assertEqual(prover.table.records[server.server_uuid]["seq"], pending["seq"])
