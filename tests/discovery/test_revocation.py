"""
Tests for revoking a rotated-out key from the operator's side:
L{lattice.discovery._node.DiscoveryNode.revoke}, C{POST /api/v1/identity/revoke}
and C{lattice identity revoke}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred

from lattice import cli
from lattice.discovery._auth import sign_request
from lattice.discovery._canonical import sign_object
from lattice.discovery._http import AdminApp, PublicApp
from lattice.discovery._netpolicy import ForwardedPolicy
from lattice.discovery._node import DiscoveryNode
from lattice.discovery._rotation import KeyRotator
from lattice.discovery.testing import synchronous_runner
from lattice.identity import NodeIdentity, load_identity
from tests.discovery._helpers import run
from tests.discovery.test_http import stub_treq
from tests.discovery.test_rotation import RotatingNodeCase
from tests.test_cli import _CLITestCase

ROTATE = "/api/v1/identity/rotate"
REVOKE = "/api/v1/identity/revoke"


class RevokeRouteTests(RotatingNodeCase):
    """
    C{POST /api/v1/identity/revoke} on the admin routes of s2, in a cluster of
    three cores on the in-memory network.
    """

    def setUp(self) -> None:
        super().setUp()
        self.rotator = KeyRotator(self.holder, self.node, self.key_path, synchronous_runner)
        self.stub = stub_treq(
            AdminApp(
                self.node, {}, rotate=self.rotator.rotate, revoke=self.rotator.revoke
            ).app.resource()
        )

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        d = self.stub.request(method, "http://s2.test" + path, data=json.dumps(body or {}).encode())
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(self.stub.content(response))
        return response.code, json.loads(content) if content else None

    def rotate(self) -> NodeIdentity:
        code, body = self.call("POST", ROTATE)
        self.assertEqual(code, 200, body)
        return load_identity(self.key_path)

    def signed_gossip(self, peer: DiscoveryNode, signer: NodeIdentity) -> int:
        """
        The status of a request signed by C{signer} as s2, sent to C{peer}'s
        public listener.
        """
        public = PublicApp(peer, self.cluster.clock, ForwardedPolicy([]))
        stub = stub_treq(public.app.resource())
        data = json.dumps({"type": "events", "events": []}).encode()
        headers = sign_request(
            signer,
            "POST",
            "/api/v1/gossip/receive",
            data,
            self.node.server_uuid,
            peer.server_uuid,
            peer.now(),
            os.urandom(16),
        )
        d = stub.request(
            "POST", "http://peer.test/api/v1/gossip/receive", data=data, headers=headers
        )
        stub.flush()
        return int(self.successResultOf(d).code)

    def test_revoke(self) -> None:
        """
        After a rotation, the old key is revoked with a revocation signed by
        the new key and pushed to every peer; from then on the peers refuse
        requests and objects signed by the old key, which they accepted
        during the grace period before.
        """
        uuid = self.node.server_uuid
        old = self.identity
        new = self.rotate()
        peers = self.cluster.nodes[:2]
        for peer in peers:
            self.assertEqual(self.signed_gossip(peer, old), 200)
            self.assertIsNotNone(peer.key_for_request(uuid, old.key_id, {}))
        code, body = self.call("POST", REVOKE, {"key_id": old.key_id, "reason": "key file leaked"})
        self.assertEqual(code, 200, body)
        self.assertEqual(
            (body["status"], body["server_uuid"], body["key_id"], body["reason"]),
            ("revoked", uuid, old.key_id, "key file leaked"),
        )
        self.assertEqual(body["current_key_id"], new.key_id)
        self.assertEqual((body["peers"], body["broadcast_to"]), (2, 2))
        self.assertEqual(body["revocation"]["signature"]["key_id"], new.key_id)
        forged = sign_object(old, {"kind": "ack", "message_id": "0" * 32})
        for peer in peers:
            self.assertTrue(peer.table.is_revoked(old.key_id))
            self.assertIsNone(peer.key_for_request(uuid, old.key_id, {}))
            self.assertEqual(self.signed_gossip(peer, old), 401)
            self.assertFalse(peer.table.verify_object(forged, old.public_key))
            # the server itself stays usable under its new key
            self.assertTrue(peer.table.is_usable(uuid))
            self.assertEqual(self.signed_gossip(peer, new), 200)

    def test_missed_broadcast_spreads_by_gossip(self) -> None:
        """
        A peer that was down during the broadcast learns the revocation from
        the next gossip exchanges.
        """
        old = self.identity
        self.rotate()
        late = self.cluster.nodes[1]
        self.cluster.network.down.add("http://s1.test")
        code, body = self.call("POST", REVOKE, {"key_id": old.key_id})
        self.assertEqual((code, body["broadcast_to"]), (200, 1))
        self.assertFalse(late.table.is_revoked(old.key_id))
        self.cluster.network.down.clear()
        self.cluster.rounds(self, 2)
        self.assertTrue(late.table.is_revoked(old.key_id))
        self.assertIsNone(late.key_for_request(self.node.server_uuid, old.key_id, {}))

    def test_current_key_refused(self) -> None:
        """
        Revoking the key the server signs with now is refused with 409 and
        the advice to rotate first; nothing is revoked.
        """
        code, body = self.call("POST", REVOKE, {"key_id": self.identity.key_id})
        self.assertEqual(code, 409)
        self.assertIn("rotate first", body["error"])
        self.assertEqual(self.node.table.revocations, {})

    def test_unknown_key_refused(self) -> None:
        """
        A key id that is not a rotated-out key of this server is a 404 that
        names the keys that can be revoked.
        """
        old = self.identity
        self.rotate()
        stranger = NodeIdentity.generate()
        code, body = self.call("POST", REVOKE, {"key_id": stranger.key_id})
        self.assertEqual(code, 404)
        self.assertIn(f"{stranger.key_id} is not a rotated-out key", body["error"])
        self.assertIn(f"can be revoked: {old.key_id}", body["error"])
        # another server's key cannot be revoked through this one either
        other = self.cluster.identities[0].key_id
        self.assertEqual(self.call("POST", REVOKE, {"key_id": other})[0], 404)
        self.assertEqual(self.node.table.revocations, {})

    def test_twice_refused(self) -> None:
        """
        A key already revoked is a 409.
        """
        old = self.identity
        self.rotate()
        self.assertEqual(self.call("POST", REVOKE, {"key_id": old.key_id})[0], 200)
        code, body = self.call("POST", REVOKE, {"key_id": old.key_id})
        self.assertEqual(code, 409)
        self.assertIn("already revoked", body["error"])

    def test_bad_input(self) -> None:
        """
        A missing or malformed key id, or a bad reason, is a 400.
        """
        old = self.identity
        self.rotate()
        for body in (
            {},
            {"key_id": 7},
            {"key_id": "ed25519:XYZ"},
            {"key_id": old.key_id, "reason": 5},
            {"key_id": old.key_id, "reason": "x" * 201},
        ):
            self.assertEqual(self.call("POST", REVOKE, body)[0], 400, body)
        self.assertEqual(self.node.table.revocations, {})

    def test_not_on_public_listener(self) -> None:
        """
        The public listener has no revocation route; without a revoker the
        admin route answers 503.
        """
        public = stub_treq(
            PublicApp(self.node, self.cluster.clock, ForwardedPolicy([])).app.resource()
        )
        d = public.request("POST", "http://s2.test" + REVOKE, data=b"{}")
        public.flush()
        self.assertIn(self.successResultOf(d).code, (404, 405))
        bare = stub_treq(AdminApp(self.node, {}).app.resource())
        d = bare.request("POST", "http://s2.test" + REVOKE, data=b"{}")
        bare.flush()
        self.assertEqual(self.successResultOf(d).code, 503)

    def test_restart_keeps_revocation(self) -> None:
        """
        Restarted on the same store, the server still passes its revocation
        on and refuses to revoke the key again.
        """
        old = self.identity
        new = self.rotate()
        self.assertEqual(self.call("POST", REVOKE, {"key_id": old.key_id})[0], 200)
        restarted = DiscoveryNode(
            identity=new,
            public_key=new.public_key,
            settings=self.node.settings,
            clock=self.cluster.clock,
            store=self.cluster.stores[2],
            run=synchronous_runner,
            transport=self.cluster.network.transport(lambda: restarted),
            webhook=None,
        )
        run(self, restarted.start())
        kinds = sorted(e["kind"] for e in restarted.table.events())
        self.assertEqual(kinds, ["revocation", "rotation"])
        failure = self.failureResultOf(Deferred.fromCoroutine(restarted.revoke(old.key_id, "")))
        self.assertEqual(failure.value.status, 409)


class RevokeCommandTests(_CLITestCase):
    """
    C{lattice identity revoke KEY_ID [--reason ...]} calls the admin route
    and reports its answer.
    """

    def setUp(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.answer: tuple[int, object] = (200, {})

        def fake(config: Any, method: str, path: str, body: object = None) -> tuple[int, object]:
            self.calls.append((method, path, body))
            return self.answer

        self.patch(cli, "admin_request", fake)

    def test_revoked(self) -> None:
        """
        The key id and reason are sent; the answer is printed; exit 0.
        """
        self.answer = (
            200,
            {
                "status": "revoked",
                "key_id": "ed25519:0123456789abcdef",
                "reason": "leaked",
                "current_key_id": "ed25519:fedcba9876543210",
                "server_uuid": "uuid",
                "broadcast_to": 3,
                "peers": 4,
            },
        )
        path = self.write_config("[discovery]\nenabled = true\n")
        code, out, err = self.run_cli(
            "identity",
            "revoke",
            "ed25519:0123456789abcdef",
            "--reason",
            "leaked",
            "--config",
            str(path),
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(
            self.calls,
            [("POST", REVOKE, {"key_id": "ed25519:0123456789abcdef", "reason": "leaked"})],
        )
        self.assertIn("revoked: ed25519:0123456789abcdef (leaked)", out)
        self.assertIn("signed by: ed25519:fedcba9876543210", out)
        self.assertIn("revocation sent to 3 of 4 peers", out)

    def test_refused(self) -> None:
        """
        A refusal (here: the current key) is the server's message and exit 1.
        """
        self.answer = (409, {"error": "ed25519:x is the key this server signs with now: ..."})
        path = self.write_config("[discovery]\nenabled = true\n")
        code, _, err = self.run_cli("identity", "revoke", "ed25519:x", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("identity revoke: HTTP 409: ed25519:x is the key this server signs", err)

    def test_discovery_disabled(self) -> None:
        """
        Without discovery there is nobody to tell: exit 1 and say so.
        """
        path = self.write_config("")
        code, _, err = self.run_cli("identity", "revoke", "ed25519:x", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("[discovery] enabled = false", err)
        self.assertEqual(self.calls, [])
