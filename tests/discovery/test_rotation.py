"""
Tests for rotating the running node's key: L{lattice.discovery._rotation},
C{POST /api/v1/identity/rotate} and C{lattice identity rotate}.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lattice import cli
from lattice.config import config_from_string, section_classes
from lattice.discovery._http import AdminApp, PublicApp
from lattice.discovery._netpolicy import ForwardedPolicy
from lattice.discovery._node import DiscoveryNode
from lattice.discovery._records import KEY_GRACE_MS, make_peer_record
from lattice.discovery._rotation import KeyRotator
from lattice.discovery.testing import synchronous_runner
from lattice.identity import (
    NodeIdentity,
    create_identity_file,
    load_identity,
    load_or_create_identity,
    previous_key_path,
    rotate_identity_file,
    successor_key_path,
)
from lattice.node import NodeService
from lattice.service import make_lattice_service
from tests.discovery._helpers import Cluster, run
from tests.discovery.test_http import stub_treq
from tests.test_cli import _CLITestCase

ROTATE = "/api/v1/identity/rotate"


def node_only(state_dir: Path) -> str:
    """
    INI text for a node with telemetry only.
    """
    lines = [f"[node]\nstate_dir = {state_dir}\n"]
    for name, section in section_classes().items():
        if "enabled" in {f.name for f in fields(section)}:
            lines.append(f"[{name}]\nenabled = {str(name == 'telemetry').lower()}\n")
    return "".join(lines)


class Holder:
    """
    An L{lattice.discovery._rotation.IdentityHolder} that only records swaps.
    """

    def __init__(self, identity: NodeIdentity):
        self.identity = identity
        self.swapped: list[NodeIdentity] = []

    def swap_identity(self, identity: NodeIdentity) -> None:
        self.identity = identity
        self.swapped.append(identity)


class RotatingNodeCase(SynchronousTestCase):
    """
    s2, whose key is in a key file, converged with two other cores on the
    in-memory network.
    """

    def setUp(self) -> None:
        self.key_path = Path(self.mktemp()).absolute() / "private_key.pem"
        self.identity = create_identity_file(self.key_path)
        self.cluster = Cluster(2)
        self.node = self.cluster.add("s2", identity=self.identity)
        self.cluster.rounds(self, 3)
        self.assertTrue(self.cluster.converged())
        self.holder = Holder(self.identity)


class RotateRouteTests(RotatingNodeCase):
    """
    C{POST /api/v1/identity/rotate} on the admin routes, over a cluster of
    cores on the in-memory network.
    """

    def admin(self, holder: Any = None, run: Any = synchronous_runner) -> Any:
        rotator = KeyRotator(holder or self.holder, self.node, self.key_path, run)
        return stub_treq(AdminApp(self.node, {}, rotate=rotator.rotate).app.resource())

    def call(self, stub: Any, method: str, path: str) -> tuple[int, Any]:
        d = stub.request(method, "http://s2.test" + path, data=b"{}")
        stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(stub.content(response))
        return response.code, json.loads(content) if content else None

    def test_rotate(self) -> None:
        """
        The key file gets a new key (the old one kept as C{.previous}), the
        node and discovery sign with it, the server uuid stays, and every peer
        was sent the rotation signed by the old key.
        """
        old_uuid = self.node.server_uuid
        code, body = self.call(self.admin(), "POST", ROTATE)
        self.assertEqual(code, 200, body)
        new = load_identity(self.key_path)
        self.assertEqual(
            load_identity(previous_key_path(self.key_path)).key_id, self.identity.key_id
        )
        self.assertEqual([i.key_id for i in self.holder.swapped], [new.key_id])
        self.assertEqual(self.node.signer.key_id, new.key_id)
        self.assertEqual(self.node.own_record()["key_id"], new.key_id)
        self.assertEqual(
            (body["status"], body["server_uuid"], body["old_key_id"], body["new_key_id"]),
            ("rotated", old_uuid, self.identity.key_id, new.key_id),
        )
        self.assertEqual(
            (body["node_id"], body["old_node_id"]), (new.node_id, self.identity.node_id)
        )
        self.assertEqual((body["peers"], body["broadcast_to"]), (2, 2))
        self.assertEqual(self.node.server_uuid, old_uuid)
        self.assertEqual(body["rotation"]["signature"]["key_id"], self.identity.key_id)
        for peer in self.cluster.nodes[:2]:
            self.assertEqual(peer.table.current_key(old_uuid), new.public_key)

    def test_peers_honour_rotation(self) -> None:
        """
        After the broadcast, a peer takes the record signed by the new key and
        refuses a later one signed by the old key; the old key verifies
        requests only for the grace period.
        """
        uuid = self.node.server_uuid
        self.assertEqual(self.call(self.admin(), "POST", ROTATE)[0], 200)
        peer = self.cluster.nodes[0]
        self.cluster.rounds(self, 2)
        new = load_identity(self.key_path)
        self.assertEqual(peer.table.records[uuid]["key_id"], new.key_id)
        forged = make_peer_record(
            self.identity,
            self.identity.public_key,
            uuid,
            "s2",
            ("http://s2.test",),
            10**15,
            peer.now(),
        )
        outcome = peer.table.offer(forged, peer.now())
        self.assertEqual(
            (outcome.status, outcome.reason),
            ("invalid", "not signed by the current key of this server"),
        )
        self.assertEqual(peer.key_for_request(uuid, new.key_id, {}), new.public_key)
        self.assertIsNotNone(peer.key_for_request(uuid, self.identity.key_id, {}))
        self.cluster.clock.advance(KEY_GRACE_MS / 1000 + 1)
        self.assertIsNone(peer.key_for_request(uuid, self.identity.key_id, {}))
        self.assertEqual(peer.key_for_request(uuid, new.key_id, {}), new.public_key)

    def test_credential_rotated_into_state_dir(self) -> None:
        """
        A key from C{$CREDENTIALS_DIRECTORY} is rotated: the new key is
        written to the state directory, peers get the rotation signed by the
        credential's key, and the answer warns that the credential holds a
        rotated-out key.
        """
        credentials = Path(self.mktemp())
        credentials.mkdir()
        (credentials / "private_key").write_bytes(self.identity.private_pem())
        environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
        state = self.key_path.parent
        identity, _ = load_or_create_identity(self.key_path, environ, state)
        self.assertTrue(identity.source.startswith("credential "))
        holder = Holder(identity)
        rotator = KeyRotator(holder, self.node, self.key_path, synchronous_runner, state)
        stub = stub_treq(AdminApp(self.node, {}, rotate=rotator.rotate).app.resource())
        code, body = self.call(stub, "POST", ROTATE)
        self.assertEqual(code, 200, body)
        successor = successor_key_path(state)
        new = load_identity(successor)
        self.assertEqual(
            (body["key_path"], body["previous_key_path"], body["new_key_id"]),
            (str(successor), None, new.key_id),
        )
        self.assertEqual(body["old_key_source"], identity.source)
        self.assertIn("credential holds a rotated-out key; update it", body["warning"])
        self.assertEqual([i.key_id for i in holder.swapped], [new.key_id])
        self.assertEqual(self.node.signer.key_id, new.key_id)
        self.assertEqual(load_identity(self.key_path).key_id, self.identity.key_id)
        for peer in self.cluster.nodes[:2]:
            self.assertEqual(peer.table.current_key(self.node.server_uuid), new.public_key)
        # the next start picks the successor over the rotated-out credential
        again, _ = load_or_create_identity(self.key_path, environ, state)
        self.assertEqual(again.key_id, new.key_id)

    def test_one_at_a_time(self) -> None:
        """
        A second request while a rotation runs is refused with 409.
        """
        pending: list[Deferred[Any]] = []

        def slow(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            d.addCallback(lambda _: f(*args))
            return d

        stub = self.admin(run=slow)
        first = stub.request("POST", "http://s2.test" + ROTATE, data=b"{}")
        self.assertEqual(self.call(stub, "POST", ROTATE)[0], 409)
        pending[0].callback(None)
        stub.flush()
        self.assertEqual(self.successResultOf(first).code, 200)

    def test_not_on_public_listener(self) -> None:
        """
        The public listener has no rotation route; without a rotator the
        admin route answers 503.
        """
        public = PublicApp(self.node, self.cluster.clock, ForwardedPolicy([]))
        self.assertIn(self.call(stub_treq(public.app.resource()), "POST", ROTATE)[0], (404, 405))
        bare = stub_treq(AdminApp(self.node, {}).app.resource())
        self.assertEqual(self.call(bare, "POST", ROTATE)[0], 503)

    def test_restart_keeps_uuid(self) -> None:
        """
        Restarted with the new key on the same store, the server keeps its
        uuid and keeps passing its rotation on.
        """
        uuid = self.node.server_uuid
        store = self.cluster.stores[2]
        self.assertEqual(self.call(self.admin(), "POST", ROTATE)[0], 200)
        new = load_identity(self.key_path)
        restarted = DiscoveryNode(
            identity=new,
            public_key=new.public_key,
            settings=self.node.settings,
            clock=self.cluster.clock,
            store=store,
            run=synchronous_runner,
            transport=self.cluster.network.transport(lambda: restarted),
            webhook=None,
        )
        run(self, restarted.start())
        self.assertEqual(restarted.server_uuid, uuid)
        self.assertEqual(restarted.own_record()["server_uuid"], uuid)
        self.assertEqual(
            [e["new_key_id"] for e in restarted.table.events() if e["kind"] == "rotation"],
            [new.key_id],
        )


class NodeServiceSwapTests(SynchronousTestCase):
    """
    The node service follows the rotated key: the node id, C{/readyz} and
    C{lattice identity show} agree afterwards.
    """

    def test_swap(self) -> None:
        """
        After a rotation through the node service, C{/readyz} and C{identity
        show} both give the new key's node id.
        """
        state = Path(self.mktemp()).absolute()
        config = config_from_string(node_only(state))
        root = make_lattice_service(config, MemoryReactorClock(), environ={})
        node = root.getServiceNamed("node")
        assert isinstance(node, NodeService)
        node.startService()
        self.addCleanup(node.stopService)
        old = node.identity
        cluster = Cluster(1)
        core = cluster.add("s1", identity=old)
        rotator = KeyRotator(node, core, config.node.identity_key_path, synchronous_runner)
        answer = run(self, rotator.rotate())
        new = load_identity(config.node.identity_key_path)
        self.assertEqual(node.node_id(), new.node_id)
        self.assertEqual(answer["node_id"], new.node_id)
        self.assertEqual(root.readiness.snapshot()["node"].detail, f"node id {new.node_id}")
        telemetry = root.getServiceNamed("telemetry")
        stub = stub_treq(telemetry.app.app.resource())
        response = self.successResultOf(stub.get("http://t/readyz"))
        readyz = json.loads(self.successResultOf(stub.content(response)))
        self.assertEqual(readyz["node_id"], new.node_id)
        self.assertNotEqual(new.node_id, old.node_id)


class NodeServiceCredentialTests(SynchronousTestCase):
    """
    The node service starts with the rotated successor of its credential's
    key and says, in its readiness detail, that the credential must be updated.
    """

    def test_successor_used(self) -> None:
        """
        With a credential whose key was rotated, the node id is the
        successor's and the detail carries the warning.
        """
        state = Path(self.mktemp()).absolute()
        state.mkdir()
        credentials = Path(self.mktemp()).absolute()
        credentials.mkdir()
        old = NodeIdentity.generate()
        (credentials / "private_key").write_bytes(old.private_pem())
        environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
        config = config_from_string(node_only(state))
        current, _ = load_or_create_identity(config.node.identity_key_path, environ, state)
        new = rotate_identity_file(config.node.identity_key_path, current, state)
        root = make_lattice_service(config, MemoryReactorClock(), environ=environ)
        node = root.getServiceNamed("node")
        assert isinstance(node, NodeService)
        node.startService()
        self.addCleanup(node.stopService)
        self.assertEqual(node.node_id(), new.node_id)
        self.assertEqual(
            root.readiness.snapshot()["node"].detail,
            f"node id {new.node_id} (credential holds a rotated-out key; update it)",
        )


class RotateCommandTests(_CLITestCase):
    """
    C{lattice identity rotate} calls the admin route and reports its answer.
    """

    def setUp(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.answer: tuple[int, object] = (200, {})

        def fake(config: Any, method: str, path: str, body: object = None) -> tuple[int, object]:
            self.calls.append((method, path))
            return self.answer

        self.patch(cli, "admin_request", fake)

    def test_rotated(self) -> None:
        """
        A rotation prints the new node id and key id, and exits 0.
        """
        self.answer = (
            200,
            {
                "status": "rotated",
                "node_id": "newid",
                "old_node_id": "oldid",
                "new_key_id": "ed25519:new",
                "old_key_id": "ed25519:old",
                "server_uuid": "uuid",
                "broadcast_to": 2,
                "peers": 3,
            },
        )
        path = self.write_config("[discovery]\nenabled = true\n")
        code, out, err = self.run_cli("identity", "rotate", "--config", str(path))
        self.assertEqual(code, 0, err)
        self.assertEqual(self.calls, [("POST", ROTATE)])
        self.assertIn("node_id: newid (was oldid)", out)
        self.assertIn("key_id: ed25519:new (was ed25519:old)", out)
        self.assertIn("rotation sent to 2 of 3 peers", out)

    def test_credential_refused(self) -> None:
        """
        A 409 (key from a systemd credential) is a clear message and exit 1.
        """
        self.answer = (409, {"error": "... read-only: rotate the credential instead"})
        path = self.write_config("[discovery]\nenabled = true\n")
        code, _, err = self.run_cli("identity", "rotate", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("identity rotate: HTTP 409", err)
        self.assertIn("rotate the credential", err)

    def test_discovery_disabled(self) -> None:
        """
        Without discovery there is no rotation route: exit 1 and say so.
        """
        path = self.write_config("")
        code, _, err = self.run_cli("identity", "rotate", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("[discovery] enabled = false", err)
        self.assertEqual(self.calls, [])
