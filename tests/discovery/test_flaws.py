"""
The predecessor's ten flaws (C{shared/spec/discovery.md}), each reproduced
as an attack or a scenario against lattice, and shown fixed.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._auth import sign_request
from lattice.discovery._canonical import sign_object
from lattice.discovery._http import PublicApp
from lattice.discovery._netpolicy import ForwardedPolicy, PolicyError, parse_target
from lattice.discovery._node import ApiError, DiscoveryNode
from lattice.discovery._records import (
    RecordError,
    check_peer_record,
    make_peer_record,
    make_revocation,
)
from lattice.discovery.testing import MemoryTransport
from lattice.identity import NodeIdentity
from tests.discovery._helpers import Cluster, run
from tests.discovery.test_http import ADMIN_ROUTES, stub_treq


def send(test: SynchronousTestCase, cluster: Cluster, i: int, to: str) -> str:
    node = cluster.nodes[i]
    answer = run(
        test,
        node.send(
            {"to_address": to, "from_address": f"alice@{node.server_name}", "content": "hello"}
        ),
    )
    return str(answer["message_id"])


def _same(node: DiscoveryNode) -> DiscoveryNode:
    return node


class _Scrambling(MemoryTransport):
    """
    Re-serialises every body with another key order and spacing, as any
    JSON library on the way may.
    """

    def _copy(self, value: dict[str, Any]) -> dict[str, Any]:
        def scramble(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: scramble(v[k]) for k in sorted(v, reverse=True)}
            if isinstance(v, list):
                return [scramble(x) for x in v]
            return v

        result: dict[str, Any] = json.loads(
            json.dumps(scramble(value), indent=2, ensure_ascii=True)
        )
        return result


class PredecessorFlawTests(SynchronousTestCase):
    """
    One test per flaw.
    """

    def test_flaw_01_delivered_messages_verify(self) -> None:
        """
        Messages re-serialised on the way still verify and are delivered,
        because the signed bytes are the canonical form of the object.
        """
        cluster = Cluster(3)
        for index, node in enumerate(cluster.nodes):
            node._transport = _Scrambling(cluster.network, functools.partial(_same, node))
            del index
        cluster.rounds(self, 2)
        message_id = send(self, cluster, 1, "bob@s2")
        self.assertEqual(
            run(self, cluster.nodes[1].message_status(message_id))["status"], "delivered"
        )

    def test_flaw_02_times_are_integer_milliseconds(self) -> None:
        """
        Every time in records, messages, acknowledgements and the store is an
        integer of epoch milliseconds; nothing is compared as text.
        """
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        message_id = send(self, cluster, 0, "bob@s1")
        status = run(self, cluster.nodes[0].message_status(message_id))
        record = cluster.nodes[0].own_record()
        for value in (
            record["issued_at"],
            record["seq"],
            status["delivered_at"],
            status["acknowledgement"]["received_at"],
        ):
            self.assertIsInstance(value, int)
            self.assertGreater(value, 10**12)
        connection: sqlite3.Connection = cluster.stores[0]._connection
        for table, column in (
            ("outbound", "created_at"),
            ("outbound", "next_attempt_at"),
            ("peers", "last_seen"),
        ):
            types = {row[0] for row in connection.execute(f"SELECT typeof({column}) FROM {table}")}
            self.assertEqual(types, {"integer"}, f"{table}.{column}")

    def test_flaw_03_breaker_closes_and_peers_listing(self) -> None:
        """
        A peer's breaker opens after failures and closes after a successful
        half-open probe; listing peers works once peers exist.
        """
        cluster = Cluster(
            2, retry_base_ms=1, retry_max_ms=1, breaker_threshold=2, breaker_open_ms=1000
        )
        cluster.rounds(self, 1)
        node, target = cluster.nodes[0], cluster.nodes[1].server_uuid
        cluster.network.down.add(cluster.endpoint("s1"))
        send(self, cluster, 0, "bob@s1")
        cluster.clock.advance(0.01)
        run(self, node.process_messages())
        self.assertEqual(node.breaker.state(target, node.now()), "open")
        cluster.network.down.clear()
        cluster.clock.advance(1)
        run(self, node.process_messages())
        self.assertEqual(node.breaker.state(target, node.now()), "closed")
        self.assertEqual(len(run(self, node.peers(True, True))), 1)

    def test_flaw_04_network_grows(self) -> None:
        """
        Servers unknown to everyone, with names unrelated to any bootstrap
        host, are accepted after proof and forwarded transitively along a chain.
        """
        cluster = Cluster(1)
        previous = "s0"
        for name in ("alpha", "bravo", "charlie", "delta"):
            cluster.add(name, bootstrap=((cluster.endpoint(previous), None),))
            previous = name
        cluster.rounds(self, 4)
        self.assertTrue(cluster.converged())

    def test_flaw_05_failed_hand_off_is_not_lost(self) -> None:
        """
        When the webhook fails, the message is not marked received; the
        sender's retry hands it off.
        """
        cluster = Cluster(2, retry_base_ms=1)
        cluster.rounds(self, 1)
        cluster.webhooks[1].failures = 1
        message_id = send(self, cluster, 0, "bob@s1")
        self.assertEqual(cluster.webhooks[1].delivered, [])
        self.assertIsNone(cluster.stores[1].inbound_ack(message_id))
        cluster.clock.advance(1)
        run(self, cluster.nodes[0].process_messages())
        self.assertEqual([p["message_id"] for p in cluster.webhooks[1].delivered], [message_id])

    def test_flaw_06_unsigned_gossip_cannot_inject_peers(self) -> None:
        """
        An unsigned envelope claiming to be the bootstrap server is refused,
        and records inside a signed envelope must be self-signed by their servers.
        """
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        node = cluster.nodes[1]
        stub = stub_treq(PublicApp(node, cluster.clock, ForwardedPolicy()).app.resource())
        attacker = NodeIdentity.generate()
        fake = make_peer_record(
            attacker,
            attacker.public_key,
            attacker.node_id,
            "evil",
            ["http://evil.test"],
            1,
            node.now(),
        )
        body = json.dumps({"type": "records", "records": [fake]}).encode()
        d = stub.post(
            "http://s1.test/api/v1/gossip/receive",
            data=body,
            headers={"X-Lattice-Origin": cluster.nodes[0].server_uuid},
        )
        stub.flush()
        self.assertEqual(self.successResultOf(d).code, 401)
        # signed by the real bootstrap server, but a record it forged for someone else
        victim = NodeIdentity.generate()
        forged = make_peer_record(
            attacker,
            victim.public_key,
            victim.node_id,
            "victim",
            ["http://evil.test"],
            1,
            node.now(),
        )
        run(
            self,
            node.receive_gossip(
                cluster.nodes[0].server_uuid, {"type": "records", "records": [forged]}
            ),
        )
        self.assertNotIn(victim.node_id, node.table.records)
        self.assertNotIn(victim.node_id, node.table.pending)

    def test_flaw_07_limits_after_authentication_and_no_amplification(self) -> None:
        """
        Unauthenticated requests trigger no outbound request and are limited
        per address; a forger cannot spend a real peer's quota.
        """
        cluster = Cluster(2)
        cluster.rounds(self, 1)
        node = cluster.nodes[1]
        app = PublicApp(node, cluster.clock, ForwardedPolicy())
        stub = stub_treq(app.app.resource())
        sent_before = sum(cluster.network.sent.values())
        attacker = NodeIdentity.generate()
        claim = make_peer_record(
            attacker,
            attacker.public_key,
            attacker.node_id,
            "a",
            ["http://victim.test"],
            1,
            node.now(),
        )
        codes = []
        for _ in range(130):
            data = json.dumps({"type": "digest", "digest": {}, "record": claim}).encode()
            headers = sign_request(
                NodeIdentity.generate(),
                "POST",
                "/api/v1/gossip/receive",
                data,
                cluster.nodes[0].server_uuid,
                node.server_uuid,
                node.now(),
                os.urandom(16),
            )
            d = stub.post("http://s1.test/api/v1/gossip/receive", data=data, headers=headers)
            stub.flush()
            codes.append(self.successResultOf(d).code)
        self.assertEqual(set(codes[:120]), {401})
        self.assertEqual(set(codes[120:]), {429})
        self.assertEqual(sum(cluster.network.sent.values()), sent_before)
        self.assertFalse(app.peer_limits.exhausted(cluster.nodes[0].server_uuid, node.now()))

    def test_flaw_07_records_cannot_aim_requests_at_a_victim(self) -> None:
        """
        A peer pushing hundreds of fresh records that all name a victim's
        endpoint makes a server contact that endpoint once, not once per record.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        node, victim = cluster.nodes[1], cluster.endpoint("s2")
        records = []
        for _ in range(200):
            fake = NodeIdentity.generate()
            records.append(
                make_peer_record(
                    fake, fake.public_key, fake.node_id, "fake", [victim], 1, node.now()
                )
            )
        before = cluster.network.received[victim]
        run(
            self,
            node.receive_gossip(
                cluster.nodes[0].server_uuid, {"type": "records", "records": records}
            ),
        )
        self.assertLessEqual(cluster.network.received[victim] - before, 1)
        self.assertEqual(node.table.pending, {})

    def test_flaw_08_ssrf_bypass(self) -> None:
        """
        The predecessor's bypass URL is refused as a target and as an announced endpoint.
        """
        self.assertRaises(PolicyError, parse_target, "http://good.com:x@127.0.0.1/")
        identity = NodeIdentity.generate()
        record = make_peer_record(
            identity,
            identity.public_key,
            identity.node_id,
            "x",
            ["http://good.com:x@127.0.0.1/"],
            1,
            1,
        )
        self.assertRaises(RecordError, check_peer_record, record)

    def test_flaw_09_admin_not_decided_by_peer_address(self) -> None:
        """
        Through the public listener, even from loopback (a same-host proxy)
        and with forged forwarding headers, no admin route exists.
        """
        cluster = Cluster(1)
        stub = stub_treq(
            PublicApp(
                cluster.nodes[0], cluster.clock, ForwardedPolicy(["127.0.0.1"])
            ).app.resource()
        )
        for method, path in ADMIN_ROUTES:
            d = stub.request(
                method,
                "http://s0.test" + path,
                headers={"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"},
                data=b"{}",
            )
            stub.flush()
            self.assertIn(self.successResultOf(d).code, (404, 405), path)

    def test_flaw_10_rotation_revocation_signed_answers_acks_replay(self) -> None:
        """
        Revoked peers are not used; forged name answers and forged
        acknowledgements are refused.
        """
        cluster = Cluster(3)
        cluster.rounds(self, 2)
        node = cluster.nodes[0]
        # a forged answer for s2's name, signed by someone else
        attacker = NodeIdentity.generate()
        forged = make_peer_record(
            attacker,
            cluster.identities[2].public_key,
            cluster.nodes[2].server_uuid,
            "s2",
            ["http://evil.test"],
            99,
            node.now(),
        )
        self.assertFalse(node._check_answer("s2", forged))
        # a forged acknowledgement does not count as delivery
        message_id = send(self, cluster, 0, "bob@s1")
        row = cluster.stores[0].get_message(message_id)
        assert row is not None and row.ack is not None
        fake_ack = sign_object(attacker, {k: v for k, v in row.ack.items() if k != "signature"})
        key = node.table.current_key(cluster.nodes[1].server_uuid)
        assert key is not None
        self.assertFalse(node._valid_ack(fake_ack, row.envelope, cluster.nodes[1].server_uuid, key))
        # s2 revokes its key: nobody sends to it any more
        revocation = make_revocation(
            cluster.identities[2],
            cluster.nodes[2].server_uuid,
            cluster.identities[2].key_id,
            node.now(),
        )
        cluster.nodes[2].table.revocations[cluster.identities[2].key_id] = revocation
        run(self, cluster.nodes[2].broadcast_events())
        cluster.rounds(self, 1)
        for other in cluster.nodes[:2]:
            self.assertFalse(other.table.is_usable(cluster.nodes[2].server_uuid))
        message_id = send(self, cluster, 0, "bob@s2")
        self.assertEqual(run(self, node.message_status(message_id))["status"], "pending")
        self.assertEqual(cluster.webhooks[2].delivered, [])
        failure = self.failureResultOf(
            Deferred.fromCoroutine(
                cluster.nodes[1].receive_messages(cluster.nodes[2].server_uuid, {"messages": []})
            ),
            ApiError,
        )
        self.assertIn(failure.value.status, (400, 403))
