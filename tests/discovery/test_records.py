"""
Tests for L{lattice.discovery._records.PeerTable}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._records import (
    CACHED_DATA_MAX,
    KEY_GRACE_MS,
    PeerTable,
    _verify_cached,
    make_peer_record,
    make_revocation,
    make_rotation,
    verify_signature,
)
from lattice.identity import NodeIdentity

NOW = 1_800_000_000_000


def record(
    identity: NodeIdentity, seq: int = 1, endpoint: str = "http://x.test", **kw: Any
) -> dict[str, Any]:
    return make_peer_record(
        kw.pop("signer", identity),
        identity.public_key,
        kw.pop("uuid", identity.node_id),
        kw.pop("name", "x"),
        [endpoint],
        seq,
        NOW,
    )


class PeerTableTests(SynchronousTestCase):
    """
    Records enter the table only when valid, and newer ones win.
    """

    def setUp(self) -> None:
        self.me = NodeIdentity.generate()
        self.table = PeerTable(self.me.node_id)
        self.peer = NodeIdentity.generate()

    def accept(self, identity: NodeIdentity, seq: int = 1) -> None:
        self.assertEqual(self.table.offer(record(identity, seq), NOW).status, "pending")
        self.assertIsNotNone(self.table.accept_pending(identity.node_id, identity.public_key))

    def test_unknown_record_is_pending_until_proven(self) -> None:
        """
        A valid record of an unknown server is pending and not in the digest.
        """
        self.assertEqual(self.table.offer(record(self.peer), NOW).status, "pending")
        self.assertEqual(self.table.digest(), {})
        self.table.accept_pending(self.peer.node_id, self.peer.public_key)
        self.assertEqual(self.table.digest(), {self.peer.node_id: 1})

    def test_proof_with_another_key_is_refused(self) -> None:
        """
        A pending record is not accepted when the endpoint answered with another key.
        """
        self.table.offer(record(self.peer), NOW)
        other = NodeIdentity.generate()
        self.assertIsNone(self.table.accept_pending(self.peer.node_id, other.public_key))

    def test_stale_replay_loses(self) -> None:
        """
        A record with a lower or equal seq never replaces the known one.
        """
        self.accept(self.peer, seq=5)
        self.assertEqual(self.table.offer(record(self.peer, seq=4), NOW).status, "stale")
        self.assertEqual(self.table.offer(record(self.peer, seq=5), NOW).status, "stale")
        self.assertEqual(self.table.offer(record(self.peer, seq=6), NOW).status, "updated")
        self.assertEqual(self.table.seq_of(self.peer.node_id), 6)

    def test_endpoint_change_needs_new_proof(self) -> None:
        """
        A newer record that moves the endpoint waits for a proof again.
        """
        self.accept(self.peer)
        moved = record(self.peer, seq=2, endpoint="http://elsewhere.test")
        self.assertEqual(self.table.offer(moved, NOW).status, "pending")
        self.assertEqual(self.table.records[self.peer.node_id]["seq"], 1)

    def test_bad_signature_is_invalid(self) -> None:
        """
        A record signed by another key than the one it announces is invalid.
        """
        forged = record(self.peer, signer=NodeIdentity.generate())
        self.assertEqual(self.table.offer(forged, NOW).status, "invalid")

    def test_uuid_must_derive_from_key(self) -> None:
        """
        An unknown server cannot claim a uuid that is not derived from its key.
        """
        victim = NodeIdentity.generate()
        claim = record(self.peer, uuid=victim.node_id)
        self.assertEqual(self.table.offer(claim, NOW).status, "invalid")

    def test_known_server_cannot_be_taken_over(self) -> None:
        """
        Once a server is known, a record for its uuid signed by another key is refused.
        """
        self.accept(self.peer)
        attacker = NodeIdentity.generate()
        hijack = make_peer_record(
            attacker, attacker.public_key, self.peer.node_id, "x", ["http://evil.test"], 9, NOW
        )
        self.assertEqual(self.table.offer(hijack, NOW).status, "invalid")

    def test_pinned_fingerprint(self) -> None:
        """
        A record at a pinned endpoint with another key is refused.
        """
        table = PeerTable(self.me.node_id, pinned={"http://x.test": "00" * 32})
        self.assertEqual(table.offer(record(self.peer), NOW).status, "invalid")
        table = PeerTable(self.me.node_id, pinned={"http://x.test": self.peer.fingerprint})
        self.assertEqual(table.offer(record(self.peer), NOW).status, "pending")

    def test_compare(self) -> None:
        """
        Comparing digests yields what the other side lacks and what we want.
        """
        self.accept(self.peer, seq=3)
        third = NodeIdentity.generate()
        give, want = self.table.compare({self.peer.node_id: 1, third.node_id: 4})
        self.assertEqual([r["server_uuid"] for r in give], [self.peer.node_id])
        self.assertEqual(want, [third.node_id])

    def test_rotation(self) -> None:
        """
        A rotation signed by the current key moves the server to the new key;
        the old key stays valid for the grace period only.
        """
        self.accept(self.peer)
        new = NodeIdentity.generate()
        rotation = make_rotation(self.peer, self.peer.node_id, new.public_key, NOW)
        self.assertEqual(self.table.apply_rotation(rotation, NOW).status, "updated")
        self.assertEqual(self.table.current_key(self.peer.node_id), new.public_key)
        self.assertEqual(
            self.table.key_for(self.peer.node_id, self.peer.key_id, NOW + 1), self.peer.public_key
        )
        self.assertIsNone(
            self.table.key_for(self.peer.node_id, self.peer.key_id, NOW + KEY_GRACE_MS)
        )
        rotated = make_peer_record(
            new, new.public_key, self.peer.node_id, "x", ["http://x.test"], 2, NOW
        )
        self.assertEqual(self.table.offer(rotated, NOW).status, "updated")

    def test_rotation_by_other_key_refused(self) -> None:
        """
        A rotation not signed by the server's current key is refused.
        """
        self.accept(self.peer)
        attacker = NodeIdentity.generate()
        rotation = make_rotation(attacker, self.peer.node_id, attacker.public_key, NOW)
        self.assertNotEqual(self.table.apply_rotation(rotation, NOW).status, "updated")
        self.assertEqual(self.table.current_key(self.peer.node_id), self.peer.public_key)

    def test_revocation(self) -> None:
        """
        A revoked key's server is unusable and its records are refused.
        """
        self.accept(self.peer)
        revocation = make_revocation(self.peer, self.peer.node_id, self.peer.key_id, NOW, "lost")
        self.assertEqual(self.table.apply_revocation(revocation, NOW).status, "updated")
        self.assertFalse(self.table.is_usable(self.peer.node_id))
        self.assertEqual(self.table.offer(record(self.peer, seq=9), NOW).status, "revoked")
        self.assertIsNone(self.table.key_for(self.peer.node_id, self.peer.key_id, NOW))

    def test_revocation_by_stranger_refused(self) -> None:
        """
        Nobody but the server itself can revoke its key.
        """
        self.accept(self.peer)
        attacker = NodeIdentity.generate()
        revocation = make_revocation(attacker, self.peer.node_id, self.peer.key_id, NOW)
        self.assertEqual(self.table.apply_revocation(revocation, NOW).status, "invalid")
        self.assertTrue(self.table.is_usable(self.peer.node_id))


class VerificationCacheTests(SynchronousTestCase):
    """
    L{verify_signature} remembers results for small signed data only, and
    gives the same answers as without the cache.
    """

    def test_answers(self) -> None:
        """
        Valid and invalid signatures over small and large data are told apart.
        """
        identity = NodeIdentity.generate()
        other = NodeIdentity.generate()
        for size in (10, CACHED_DATA_MAX + 1):
            data = b"x" * size
            signature = identity.sign(data)
            for _ in range(2):
                self.assertTrue(verify_signature(identity.public_key, signature, data))
                self.assertFalse(verify_signature(other.public_key, signature, data))
                self.assertFalse(verify_signature(identity.public_key, signature, data + b"y"))

    def test_large_data_not_kept(self) -> None:
        """
        Data over L{CACHED_DATA_MAX} bytes is verified without entering the cache.
        """
        identity = NodeIdentity.generate()
        data = b"y" * (CACHED_DATA_MAX + 1)
        before = _verify_cached.cache_info().currsize
        verify_signature(identity.public_key, identity.sign(data), data)
        self.assertEqual(_verify_cached.cache_info().currsize, before)
