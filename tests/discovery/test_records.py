"""
Tests for L{lattice.discovery._records.PeerTable}.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._records import (
    CACHED_DATA_MAX,
    KEY_GRACE_MS,
    PeerTable,
    _decoded_key,
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
        rotation = make_rotation(
            self.peer, self.peer.node_id, new.public_key, NOW, old_public_key=self.peer.public_key
        )
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
        rotation = make_rotation(
            attacker,
            self.peer.node_id,
            attacker.public_key,
            NOW,
            old_public_key=attacker.public_key,
        )
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


def rotations(keys: list[NodeIdentity]) -> list[dict[str, Any]]:
    """The rotations from C{keys[0]} (whose uuid the server keeps) through every later key."""
    uuid = keys[0].node_id
    return [
        make_rotation(old, uuid, new.public_key, NOW + i, old_public_key=old.public_key)
        for i, (old, new) in enumerate(itertools.pairwise(keys))
    ]


def rotated_record(
    keys: list[NodeIdentity], history: list[dict[str, Any]] | None, seq: int = 1
) -> dict[str, Any]:
    current = keys[-1]
    return make_peer_record(
        current,
        current.public_key,
        keys[0].node_id,
        "x",
        ["http://x.test"],
        seq,
        NOW,
        key_history=history,
    )


class KeyHistoryTests(SynchronousTestCase):
    """
    A server met for the first time after it rotated its key is accepted only
    when its record's key history leads from its uuid's key to its current key.
    """

    def setUp(self) -> None:
        self.table = PeerTable(NodeIdentity.generate().node_id)
        self.keys = [NodeIdentity.generate() for _ in range(3)]
        self.uuid = self.keys[0].node_id

    def test_valid_history(self) -> None:
        """
        With the chain, the record is pending, then accepted with the current key; the
        earlier keys are known as rotated out, so their revocation can be honoured.
        """
        history = rotations(self.keys)
        offered = rotated_record(self.keys, history)
        self.assertEqual(self.table.offer(offered, NOW).status, "pending")
        accepted = self.table.accept_pending(self.uuid, self.keys[-1].public_key)
        self.assertEqual(accepted, offered)
        self.assertEqual(self.table.current_key(self.uuid), self.keys[-1].public_key)
        self.assertEqual(
            self.table.key_for(self.uuid, self.keys[0].key_id, NOW), self.keys[0].public_key
        )
        self.assertIsNone(
            self.table.key_for(self.uuid, self.keys[0].key_id, NOW + KEY_GRACE_MS + 1)
        )
        revocation = make_revocation(self.keys[-1], self.uuid, self.keys[0].key_id, NOW)
        self.assertEqual(self.table.apply_revocation(revocation, NOW).status, "updated")
        self.assertEqual(len(self.table.events()), 3)
        # the next rotation applies as for any known server
        newer = NodeIdentity.generate()
        rotation = make_rotation(
            self.keys[-1], self.uuid, newer.public_key, NOW, old_public_key=self.keys[-1].public_key
        )
        self.assertEqual(self.table.apply_rotation(rotation, NOW).status, "updated")
        self.assertEqual(self.table.current_key(self.uuid), newer.public_key)

    def assertRefused(self, history: object, keys: list[NodeIdentity] | None = None) -> None:
        keys = keys or self.keys
        offered = rotated_record(keys, history)  # type: ignore[arg-type]
        outcome = self.table.offer(offered, NOW)
        self.assertEqual(
            (outcome.status, outcome.reason),
            ("invalid", "server_uuid is not derived from public_key nor from its key history"),
        )
        self.assertNotIn(self.uuid, self.table.pending)

    def test_no_history(self) -> None:
        """Without a history, a key the uuid does not derive from is refused."""
        self.assertRefused(None)

    def test_gap(self) -> None:
        """A chain with a missing link is refused."""
        history = rotations(self.keys)
        self.assertRefused([history[1]])
        self.assertRefused(history[:1])

    def test_history_of_another_server(self) -> None:
        """Rotations of another uuid do not vouch for this one."""
        other = [NodeIdentity.generate(), self.keys[1], self.keys[2]]
        stolen = rotations(other)
        self.assertRefused(stolen)

    def test_forged_link(self) -> None:
        """A link not signed by the key it retires is refused."""
        history = rotations(self.keys)
        attacker = NodeIdentity.generate()
        forged = make_rotation(
            self.keys[1],
            self.uuid,
            attacker.public_key,
            NOW,
            old_public_key=self.keys[1].public_key,
        )
        forged["signature"] = history[1]["signature"]
        self.assertRefused([history[0], forged], [*self.keys[:2], attacker])

    def test_history_must_start_at_the_uuid_key(self) -> None:
        """A chain that starts at a key the uuid does not derive from is refused."""
        impostor = [NodeIdentity.generate(), self.keys[1], self.keys[2]]
        chain = [
            make_rotation(old, self.uuid, new.public_key, NOW, old_public_key=old.public_key)
            for old, new in itertools.pairwise(impostor)
        ]
        self.assertRefused(chain)

    def test_malformed(self) -> None:
        """Malformed histories are refused by the record check or the chain check."""
        history = rotations(self.keys)
        broken = dict(history[0], old_public_key="!!")
        self.assertRefused([broken, history[1]])
        self.assertRefused([dict(history[0], issued_at="soon"), history[1]])
        self.assertEqual(
            self.table.offer(rotated_record(self.keys, [history[0]] * 17), NOW).status, "invalid"
        )
        # what cannot be a key is not remembered by the decoded-key cache
        before = _decoded_key.cache_info().currsize
        self.assertRefused([dict(history[0], old_public_key="A" * 4000), history[1]])
        self.assertEqual(_decoded_key.cache_info().currsize, before)


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
