"""
Tests for L{lattice.discovery.DiscoveryNode} on an in-memory network.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._node import ApiError, DiscoveryNode
from lattice.discovery._records import make_peer_record, make_rotation
from lattice.identity import NodeIdentity
from tests.discovery._helpers import Cluster, memory_store, run

MINUTE = 60.0


def send(
    test: SynchronousTestCase, cluster: Cluster, i: int, to: str, content: str = "hello"
) -> str:
    node = cluster.nodes[i]
    answer = run(
        test,
        node.send(
            {"to_address": to, "from_address": f"alice@{node.server_name}", "content": content}
        ),
    )
    return str(answer["message_id"])


def join_and_resolve(
    test: SynchronousTestCase, cluster: Cluster
) -> tuple[DiscoveryNode, dict[str, Any]]:
    """
    s3 joins knowing only s0 (bootstrapped, not gossiped yet; s0 knows s2) and resolves
    s2 through its neighbors: s3 and the route.
    """
    newcomer = cluster.add("s3")
    run(test, newcomer.bootstrap())
    test.assertNotIn(cluster.nodes[2].server_uuid, newcomer.table.records)
    return newcomer, run(test, newcomer.resolve("s2"))


class GossipTests(SynchronousTestCase):
    """
    Records spread by push-pull; everyone learns everyone.
    """

    def test_five_nodes_converge(self) -> None:
        """
        Five servers that only know the bootstrap server learn each other.
        """
        cluster = Cluster(5)
        cluster.rounds(self, 3)
        self.assertTrue(cluster.converged())
        for node in cluster.nodes:
            self.assertEqual(node.table.pending, {})

    def test_records_persisted_and_reloaded(self) -> None:
        """
        A restarted server loads its peers from its store.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        store, identity = cluster.stores[1], cluster.identities[1]
        restarted = cluster.add("s1b", identity=identity, store=store)
        self.assertEqual(len(restarted.table.records), 2)
        self.assertGreater(restarted.own_record()["seq"], cluster.nodes[1].own_record()["seq"])

    def test_unresponsive_endpoint_not_accepted(self) -> None:
        """
        A record whose endpoint does not answer is dropped, not accepted.
        """
        cluster = Cluster(3)
        cluster.network.down.add(cluster.endpoint("s2"))
        cluster.rounds(self, 3)
        self.assertNotIn(cluster.nodes[2].server_uuid, cluster.nodes[1].table.records)
        cluster.network.down.clear()
        cluster.rounds(self, 2)
        self.assertTrue(cluster.converged())

    def test_announce_rate_limited(self) -> None:
        """
        C{announce} runs one round per minute unless forced.
        """
        cluster = Cluster(2)
        node = cluster.nodes[1]
        self.assertEqual(run(self, node.announce(False))["status"], "ok")
        self.assertEqual(run(self, node.announce(False))["status"], "rate_limited")
        self.assertEqual(run(self, node.announce(True))["status"], "ok")
        cluster.clock.advance(MINUTE)
        self.assertEqual(run(self, node.announce(False))["status"], "ok")

    def test_bootstrap_pin(self) -> None:
        """
        A bootstrap server whose key does not match the pinned fingerprint is refused;
        the right pin is accepted.
        """
        cluster = Cluster(1)
        wrong = cluster.add("s1", bootstrap=((cluster.endpoint("s0"), "ab" * 32),))
        run(self, wrong.gossip_round())
        self.assertEqual(wrong.table.records, {})
        right = cluster.add(
            "s2", bootstrap=((cluster.endpoint("s0"), cluster.identities[0].fingerprint),)
        )
        run(self, right.gossip_round())
        self.assertIn(cluster.nodes[0].server_uuid, right.table.records)

    def test_neighbors_prefer_responsive(self) -> None:
        """
        Neighbor selection probes peers and leaves out those that do not answer.
        """
        cluster = Cluster(4, max_neighbors=2)
        cluster.rounds(self, 3)
        cluster.network.down.add(cluster.endpoint("s3"))
        result = run(self, cluster.nodes[0].update_neighbors())
        self.assertEqual(len(result["neighbors"]), 2)
        self.assertNotIn(cluster.nodes[3].server_uuid, result["neighbors"])


class ResolutionTests(SynchronousTestCase):
    """
    Names resolve through neighbors, with verifiable answers.
    """

    def test_resolve_through_neighbors(self) -> None:
        """
        A name unknown locally is found by asking neighbors, and the answer
        is the owner's self-signed record.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        newcomer, route = join_and_resolve(self, cluster)
        self.assertEqual(
            (route["found"], route["server_uuid"], route["endpoint_url"], route["from_cache"]),
            (True, cluster.nodes[2].server_uuid, "http://s2.test", False),
        )
        self.assertTrue(run(self, newcomer.resolve("s2"))["from_cache"])

    def test_unknown_name(self) -> None:
        """
        A name nobody has resolves to C{found: false}.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        self.assertFalse(run(self, cluster.nodes[1].resolve("nowhere"))["found"])

    def test_duplicate_query_and_hops(self) -> None:
        """
        A query id is answered once; hops must be within bounds.
        """
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        node, origin = cluster.nodes[0], cluster.nodes[1].server_uuid
        body = {"query_id": "q" * 16, "domain": "s1", "hops": 1}
        self.assertTrue(run(self, node.domain_query(origin, body))["found"])
        self.assertTrue(run(self, node.domain_query(origin, body))["duplicate"])
        failure = self.failureResultOf(
            Deferred.fromCoroutine(
                node.domain_query(origin, {**body, "query_id": "r" * 16, "hops": 99})
            ),
            ApiError,
        )
        self.assertEqual(failure.value.status, 400)

    def test_query_memory_bounded(self) -> None:
        """
        De-duplication remembers a bounded number of query ids.
        """
        cluster = Cluster(1)
        node = cluster.nodes[0]
        for i in range(10_050):
            node._remember_query(f"{i:016d}")
        self.assertEqual(len(node._queries), 10_000)


class MessageTests(SynchronousTestCase):
    """
    Durable queue, signed acknowledgements, exactly-once hand-off.
    """

    def setUp(self) -> None:
        self.cluster = Cluster(3, retry_base_ms=1000)
        self.cluster.rounds(self, 2)

    def test_delivery_with_ack(self) -> None:
        """
        A message reaches the destination's webhook and the sender keeps the
        destination's verified acknowledgement.
        """
        message_id = send(self, self.cluster, 1, "bob@s2", "hi bob")
        status = run(self, self.cluster.nodes[1].message_status(message_id))
        self.assertEqual(status["status"], "delivered")
        ack = status["acknowledgement"]
        self.assertEqual(
            (ack["to_server"], ack["status"]), (self.cluster.nodes[2].server_uuid, "accepted")
        )
        (payload,) = self.cluster.webhooks[2].delivered
        self.assertEqual((payload["to_address"], payload["content"]), ("bob@s2", "hi bob"))

    def test_webhook_failure_then_retry_exactly_once(self) -> None:
        """
        A failing webhook means no ack; the retry after the backoff delivers
        once, and the message counts as received only then.
        """
        self.cluster.webhooks[2].failures = 1
        message_id = send(self, self.cluster, 1, "bob@s2")
        status = run(self, self.cluster.nodes[1].message_status(message_id))
        self.assertEqual((status["status"], status["attempts"]), ("pending", 1))
        self.assertIsNone(self.cluster.stores[2].inbound_ack(message_id))
        self.cluster.clock.advance(2.0)  # retry_base * 2**1
        run(self, self.cluster.nodes[1].process_messages())
        self.assertEqual(
            run(self, self.cluster.nodes[1].message_status(message_id))["status"], "delivered"
        )
        self.assertEqual(len(self.cluster.webhooks[2].delivered), 1)
        self.assertIsNotNone(self.cluster.stores[2].inbound_ack(message_id))

    def test_redelivery_is_idempotent(self) -> None:
        """
        The same signed message delivered again is acknowledged again without
        a second hand-off.
        """
        message_id = send(self, self.cluster, 1, "bob@s2")
        row = self.cluster.stores[1].get_message(message_id)
        assert row is not None
        receiver, sender = self.cluster.nodes[2], self.cluster.nodes[1].server_uuid
        again = run(self, receiver.receive_messages(sender, {"messages": [row.envelope]}))
        self.assertEqual(again["acks"], [row.ack])
        self.assertEqual(len(self.cluster.webhooks[2].delivered), 1)

    def test_concurrent_duplicates_hand_off_once(self) -> None:
        """
        Two deliveries of one message while the webhook is still busy lead to one call.
        """
        message_id = send(self, self.cluster, 1, "bob@s2")
        row = self.cluster.stores[1].get_message(message_id)
        assert row is not None
        receiver, sender = self.cluster.nodes[0], self.cluster.nodes[1].server_uuid
        envelope = dict(row.envelope, to_address="bob@s0")
        del envelope["signature"]
        from lattice.discovery._canonical import sign_object

        signed = sign_object(self.cluster.identities[1], envelope)
        webhook = self.cluster.webhooks[0]
        webhook.pending = Deferred()
        first = Deferred.fromCoroutine(receiver.receive_messages(sender, {"messages": [signed]}))
        second = Deferred.fromCoroutine(receiver.receive_messages(sender, {"messages": [signed]}))
        webhook.pending.callback(None)
        webhook.pending = None
        self.assertEqual(self.successResultOf(first)["acks"], self.successResultOf(second)["acks"])
        self.assertEqual(webhook.calls, 1)

    def test_retries_backoff_and_give_up(self) -> None:
        """
        Attempts back off as min(base * 2^n, max) and stop after five.
        """
        down = self.cluster.endpoint("s2")
        self.cluster.network.down.add(down)
        message_id = send(self, self.cluster, 1, "bob@s2")
        node = self.cluster.nodes[1]
        delays = []
        for _ in range(5):
            status = run(self, node.message_status(message_id))
            if status["status"] != "pending":
                break
            delay = (status["next_attempt_at"] - node.now()) / 1000
            delays.append(delay)
            self.cluster.clock.advance(delay)
            run(self, node.process_messages())
        self.assertEqual(delays[:4], [2.0, 4.0, 8.0, 16.0])
        self.assertEqual(run(self, node.message_status(message_id))["status"], "failed")

    def test_breaker_opens_and_closes(self) -> None:
        """
        Five consecutive failures open the peer's breaker; after the open
        period one half-open delivery succeeds and closes it.
        """
        cluster = Cluster(
            3, retry_base_ms=1, retry_max_ms=1, breaker_open_ms=60_000, max_attempts=50
        )
        cluster.rounds(self, 2)
        node, target = cluster.nodes[1], cluster.nodes[2].server_uuid
        cluster.network.down.add(cluster.endpoint("s2"))
        message_id = send(self, cluster, 1, "bob@s2")
        for _ in range(4):
            cluster.clock.advance(0.01)
            run(self, node.process_messages())
        self.assertEqual(node.breaker.state(target, node.now()), "open")
        cluster.network.down.clear()
        cluster.clock.advance(1)
        run(self, node.process_messages())
        self.assertEqual(run(self, node.message_status(message_id))["status"], "pending")
        cluster.clock.advance(60)
        run(self, node.process_messages())
        self.assertEqual(node.breaker.state(target, node.now()), "closed")
        self.assertEqual(run(self, node.message_status(message_id))["status"], "delivered")

    def test_restarted_sender_resumes_queue(self) -> None:
        """
        Messages queued before a restart are delivered by the restarted server.
        """
        self.cluster.network.down.add(self.cluster.endpoint("s2"))
        message_id = send(self, self.cluster, 1, "bob@s2")
        self.cluster.network.down.clear()
        restarted = self.cluster.add(
            "s1b", identity=self.cluster.identities[1], store=self.cluster.stores[1]
        )
        self.cluster.network.nodes["http://s1.test"] = restarted
        self.cluster.clock.advance(10)
        run(self, restarted.process_messages())
        self.assertEqual(run(self, restarted.message_status(message_id))["status"], "delivered")
        self.assertEqual(len(self.cluster.webhooks[2].delivered), 1)

    def test_expiry(self) -> None:
        """
        Messages not delivered within 24 hours expire.
        """
        self.cluster.network.down.add(self.cluster.endpoint("s2"))
        message_id = send(self, self.cluster, 1, "bob@s2")
        self.cluster.clock.advance(86_400)
        run(self, self.cluster.nodes[1].cleanup())
        self.assertEqual(
            run(self, self.cluster.nodes[1].message_status(message_id))["status"], "expired"
        )

    def test_send_validation(self) -> None:
        """
        Addresses, content length, priority and the sender's domain are checked.
        """
        node = self.cluster.nodes[1]
        good = {"to_address": "bob@s2", "from_address": "alice@s1", "content": "x"}
        for bad in (
            {**good, "to_address": "bob"},
            {**good, "from_address": "alice@elsewhere"},
            {**good, "content": "x" * 10_001},
            {**good, "priority": 3},
            {**good, "metadata": {"f": 1.5}},
        ):
            failure = self.failureResultOf(Deferred.fromCoroutine(node.send(bad)), ApiError)
            self.assertEqual(failure.value.status, 400)

    def test_unresolvable_destination_retries(self) -> None:
        """
        A message to an unknown server is kept and retried, not lost.
        """
        message_id = send(self, self.cluster, 1, "bob@nowhere")
        status = run(self, self.cluster.nodes[1].message_status(message_id))
        self.assertEqual(
            (status["status"], status["last_error"]), ("pending", "cannot resolve destination")
        )


class RotationTests(SynchronousTestCase):
    """
    Key rotation and revocation spread and are honoured.
    """

    def test_rotation_spreads(self) -> None:
        """
        A rotation signed by the old key reaches every peer by gossip; they
        then accept records and requests signed by the new key.
        """
        cluster = Cluster(4)
        cluster.rounds(self, 3)
        node = cluster.nodes[1]
        new = NodeIdentity.generate()
        run(self, node.rotate(new, new.public_key))
        cluster.rounds(self, 3)
        for other in (cluster.nodes[0], cluster.nodes[2], cluster.nodes[3]):
            self.assertEqual(other.table.current_key(node.server_uuid), new.public_key)
            self.assertEqual(other.table.records[node.server_uuid]["key_id"], new.key_id)
        message_id = send(self, cluster, 1, "bob@s2")
        self.assertEqual(run(self, node.message_status(message_id))["status"], "delivered")

    def test_revocation_spreads(self) -> None:
        """
        A revoked old key is refused everywhere after the broadcast.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        node = cluster.nodes[1]
        old_key_id = cluster.identities[1].key_id
        new = NodeIdentity.generate()
        run(self, node.rotate(new, new.public_key))
        run(self, node.revoke(old_key_id, "key file leaked"))
        self.assertEqual(run(self, node.broadcast_events()), 2)
        for other in (cluster.nodes[0], cluster.nodes[2]):
            self.assertTrue(other.table.is_revoked(old_key_id))
            self.assertIsNone(other.table.key_for(node.server_uuid, old_key_id, other.now()))


class RotatedServerTests(SynchronousTestCase):
    """
    A server that rotated its key keeps the uuid derived from its first key; servers
    that join afterwards learn it from the chain of rotations it shows with its proof.
    """

    def rotate(self, cluster: Cluster, i: int, times: int = 1) -> list[NodeIdentity]:
        keys = []
        for _ in range(times):
            new = NodeIdentity.generate()
            run(self, cluster.nodes[i].rotate(new, new.public_key))
            keys.append(new)
        return keys

    def test_newcomer_learns_rotated_server(self) -> None:
        """
        A server added after s1 rotated twice (and revoked its first key) learns s1 by
        gossip, with s1's current key; messages flow both ways.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        node = cluster.nodes[1]
        first = cluster.identities[1].key_id
        _, current = self.rotate(cluster, 1, times=2)
        run(self, node.revoke(first, "retired"))
        cluster.rounds(self, 2)
        newcomer = cluster.add("s3")
        cluster.rounds(self, 3)
        self.assertTrue(cluster.converged())
        self.assertEqual(newcomer.table.current_key(node.server_uuid), current.public_key)
        self.assertEqual(newcomer.table.records[node.server_uuid]["key_id"], current.key_id)
        to_rotated = send(self, cluster, 3, "bob@s1")
        from_rotated = send(self, cluster, 1, "carol@s3")
        self.assertEqual(run(self, newcomer.message_status(to_rotated))["status"], "delivered")
        self.assertEqual(run(self, node.message_status(from_rotated))["status"], "delivered")
        # the rotations came along: a third rotation reaches the newcomer as to anyone
        (third,) = self.rotate(cluster, 1)
        cluster.rounds(self, 2)
        self.assertEqual(newcomer.table.current_key(node.server_uuid), third.public_key)

    def test_rotated_bootstrap_server(self) -> None:
        """A newcomer bootstraps from a server that rotated its key."""
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        (current,) = self.rotate(cluster, 0)
        newcomer = cluster.add("s2")
        cluster.rounds(self, 2)
        bootstrap = cluster.nodes[0]
        self.assertEqual(newcomer.table.current_key(bootstrap.server_uuid), current.public_key)
        self.assertTrue(cluster.converged())

    def test_resolve_rotated_server(self) -> None:
        """
        A newcomer that has not learned s2 yet resolves it through its neighbors after s2
        rotated: the answer's record is checked through its key history.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        self.rotate(cluster, 2)
        cluster.rounds(self, 2)
        _, route = join_and_resolve(self, cluster)
        self.assertEqual(
            (route["found"], route["server_uuid"]), (True, cluster.nodes[2].server_uuid)
        )

    def test_request_from_unknown_rotated_server(self) -> None:
        """
        A request from a rotated server that the receiver does not know yet is
        authenticated by the record it carries, through its key history.
        """
        cluster = Cluster(2)
        (current,) = self.rotate(cluster, 1)
        node = cluster.nodes[1]
        stranger = cluster.add("s2", bootstrap=())
        self.assertNotIn(node.server_uuid, stranger.table.keys)
        body = {"record": node.own_record()}
        self.assertEqual(
            stranger.key_for_request(node.server_uuid, current.key_id, body), current.public_key
        )
        without = dict(node.own_record())
        del without["key_history"]
        resigned = make_peer_record(
            current,
            current.public_key,
            node.server_uuid,
            "s1",
            without["endpoints"],
            without["seq"] + 1,
            without["issued_at"],
        )
        self.assertIsNone(
            stranger.key_for_request(node.server_uuid, current.key_id, {"record": resigned})
        )

    def test_forged_history_refused(self) -> None:
        """
        A record of an unknown server signed by a key that no valid chain of rotations
        leads to from the server's uuid is never accepted, even with a proof.
        """
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        victim = cluster.nodes[1]
        impostor_key = NodeIdentity.generate()
        impostor = cluster.add("s1x", identity=impostor_key)
        # the impostor claims the victim's uuid and shows a rotation it signed itself
        impostor.server_uuid = victim.server_uuid
        impostor.table.own_uuid = victim.server_uuid
        forged = make_rotation(
            impostor_key,
            victim.server_uuid,
            impostor_key.public_key,
            1,
            old_public_key=impostor_key.public_key,
        )
        impostor.table.rotations[f"{victim.server_uuid}/{impostor_key.key_id}"] = forged
        run(self, impostor._resign())
        newcomer = cluster.add("s2", bootstrap=((cluster.endpoint("s1x"), None),))
        run(self, newcomer.gossip_round())
        self.assertNotIn(victim.server_uuid, newcomer.table.records)
        self.assertNotIn(victim.server_uuid, newcomer.table.keys)


class StoreBackedTests(SynchronousTestCase):
    """
    Health and peers listings.
    """

    def test_health_and_peers(self) -> None:
        """
        C{health} and C{peers} carry the predecessor's fields.
        """
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        node = cluster.nodes[0]
        health = run(self, node.health())
        for name in (
            "status",
            "service",
            "server_id",
            "last_gossip",
            "maintenance_mode",
            "queues",
            "circuit_breakers",
            "saturation",
            "uptime_seconds",
        ):
            self.assertIn(name, health)
        self.assertEqual(set(health["queues"]), {"pending", "sending", "failed"})
        (peer,) = run(self, node.peers(False, False))
        self.assertEqual(
            set(peer) >= {"server_id", "is_neighbor", "trust_status", "last_seen", "endpoints"},
            True,
        )

    def test_domain_register(self) -> None:
        """
        A name taken by another server cannot be registered; a free one can,
        and the new name is announced.
        """
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        node = cluster.nodes[1]
        self.assertFalse(node.domain_verify("s0")["available"])
        self.failureResultOf(Deferred.fromCoroutine(node.domain_register("s0")), ApiError)
        run(self, node.domain_register("fresh"))
        self.assertEqual(node.own_record()["server_id"], "fresh")
        self.assertEqual(memory_store().get_meta("server_name"), None)
