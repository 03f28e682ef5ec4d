"""
Tests for the HTTP boundary (L{lattice.discovery._http}) and the HTTP
transport (L{lattice.discovery._client}), with C{treq.testing.StubTreq}.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from lattice._web import limited_site
from lattice.admin import AdminSurface
from lattice.discovery._auth import sign_request
from lattice.discovery._canonical import signature_of, signing_bytes
from lattice.discovery._client import HTTPTransport
from lattice.discovery._http import AdminApp, PrefixedResource, PublicApp
from lattice.discovery._netpolicy import ForwardedPolicy
from lattice.discovery._node import DiscoveryNode, TransportError
from lattice.discovery._openapi import openapi_document
from lattice.discovery._records import make_peer_record, verify_signature
from lattice.identity import NodeIdentity
from tests.discovery._helpers import Cluster, run

ADMIN_ROUTES = [
    ("GET", "/health"),
    ("POST", "/api/v1/announce"),
    ("GET", "/api/v1/peers"),
    ("POST", "/api/v1/route/s1"),
    ("POST", "/api/v1/messages/send"),
    ("POST", "/api/v1/domain/verify"),
    ("POST", "/api/v1/domain/register"),
    ("POST", "/api/v1/maintenance/update_neighbors"),
    ("POST", "/api/v1/maintenance/process_messages"),
    ("POST", "/api/v1/maintenance/cleanup"),
]


def admin_app(node: DiscoveryNode) -> AdminApp:
    return AdminApp(
        node,
        {
            "update_neighbors": node.update_neighbors,
            "process_messages": node.process_messages,
            "cleanup": node.cleanup,
        },
    )


def stub_treq(resource: Any) -> Any:
    """
    C{StubTreq} (typed loosely: its methods are set at run time).
    """
    return StubTreq(resource)


def _local(node: DiscoveryNode) -> tuple[Any, str]:
    return node.signer, node.server_uuid


class HTTPCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Cluster(2)
        self.cluster.rounds(self, 1)
        self.node = self.cluster.nodes[0]
        self.peer = self.cluster.nodes[1]
        self.peer_identity = self.cluster.identities[1]
        self.public = PublicApp(self.node, self.cluster.clock, ForwardedPolicy(["127.0.0.1"]))
        self.stub = stub_treq(self.public.app.resource())

    def call(
        self,
        stub: Any,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any]:
        if data is None and body is not None:
            data = json.dumps(body).encode()
        d = stub.request(method, "http://s0.test" + path, data=data, headers=headers or {})
        stub.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(stub.content(response))
        return response.code, json.loads(content) if content else None

    def signed(
        self,
        path: str,
        body: dict[str, Any],
        signer: NodeIdentity | None = None,
        origin: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        headers = sign_request(
            signer or self.peer_identity,
            "POST",
            path,
            data,
            origin or self.peer.server_uuid,
            self.node.server_uuid,
            self.node.now(),
            os.urandom(16),
        )
        headers.update(extra or {})
        return self.call(self.stub, "POST", path, data=data, headers=headers)


class PublicSurfaceTests(HTTPCase):
    """
    The public listener's paths and fields.
    """

    def test_status(self) -> None:
        """
        C{/status} has the predecessor's fields.
        """
        code, body = self.call(self.stub, "GET", "/status")
        self.assertEqual(code, 200)
        self.assertEqual(
            set(body), {"alive", "accepting_messages", "peer_count", "saturation", "version"}
        )
        self.assertEqual(body["peer_count"], 1)

    def test_identity(self) -> None:
        """
        C{/api/v1/identity} has the predecessor's fields plus the key and key id.
        """
        code, body = self.call(self.stub, "GET", "/api/v1/identity")
        self.assertEqual(code, 200)
        self.assertEqual(body["server_uuid"], self.node.server_uuid)
        self.assertEqual(
            set(body),
            {"server_id", "server_uuid", "fingerprint", "created_at", "public_key", "key_id"},
        )

    def test_announcement_proof(self) -> None:
        """
        The announcement answers a challenge with a signature by the record's key.
        """
        code, body = self.call(self.stub, "GET", "/api/v1/announcement?challenge=" + "c" * 24)
        self.assertEqual(code, 200)
        proof = body["proof"]
        self.assertEqual(proof["challenge"], "c" * 24)
        _, signature = signature_of(proof)
        self.assertTrue(
            verify_signature(self.cluster.identities[0].public_key, signature, signing_bytes(proof))
        )
        code, _ = self.call(self.stub, "GET", "/api/v1/announcement?challenge=short")
        self.assertEqual(code, 400)

    def test_admin_routes_absent(self) -> None:
        """
        No admin route exists on the public listener.
        """
        for method, path in ADMIN_ROUTES:
            code, _ = self.call(self.stub, method, path, {})
            self.assertIn(code, (404, 405), path)

    def test_openapi(self) -> None:
        """
        C{/openapi.json} documents every path of the predecessor's table.
        """
        code, body = self.call(self.stub, "GET", "/openapi.json")
        self.assertEqual(code, 200)
        self.assertEqual(body, json.loads(json.dumps(openapi_document())))
        paths = set(body["paths"])
        for _, path in ADMIN_ROUTES:
            self.assertIn(path.replace("/s1", "/{domain}"), paths)
        for path in (
            "/status",
            "/api/v1/identity",
            "/api/v1/announcement",
            "/api/v1/gossip/receive",
            "/api/v1/domain/query",
            "/api/v1/federation/messages/receive",
        ):
            self.assertIn(path, paths)


class AuthenticationTests(HTTPCase):
    """
    Peer routes are authenticated, and limits are charged to the right party.
    """

    def test_signed_gossip(self) -> None:
        """
        A correctly signed digest is answered.
        """
        code, body = self.signed(
            "/api/v1/gossip/receive",
            {"type": "digest", "digest": {}, "record": self.peer.own_record()},
        )
        self.assertEqual(code, 200)
        self.assertEqual(body["type"], "digest_reply")

    def test_unsigned_refused(self) -> None:
        """
        An unsigned peer request is refused with 401.
        """
        for path in (
            "/api/v1/gossip/receive",
            "/api/v1/domain/query",
            "/api/v1/federation/messages/receive",
        ):
            code, _ = self.call(self.stub, "POST", path, {"type": "digest"})
            self.assertEqual(code, 401, path)

    def test_unknown_server_with_record(self) -> None:
        """
        A server nobody knows authenticates with the self-signed record it sends along.
        """
        stranger = NodeIdentity.generate()
        cluster_node = self.cluster.add("s9", identity=stranger)
        code, _ = self.signed(
            "/api/v1/gossip/receive",
            {"type": "digest", "digest": {}, "record": cluster_node.own_record()},
            signer=stranger,
            origin=stranger.node_id,
        )
        self.assertEqual(code, 200)
        code, _ = self.signed(
            "/api/v1/gossip/receive",
            {"type": "digest", "digest": {}},
            signer=NodeIdentity.generate(),
            origin=stranger.node_id,
        )
        self.assertEqual(code, 401)

    def test_unproven_servers_count_against_address(self) -> None:
        """
        Identities are free to mint: requests from servers not proven yet
        are limited per address too.
        """
        codes = []
        for _ in range(121):
            stranger = NodeIdentity.generate()
            record = make_peer_record(
                stranger, stranger.public_key, stranger.node_id, "x", ["http://x.test"], 1, 1
            )
            code, _ = self.signed(
                "/api/v1/gossip/receive",
                {"type": "events", "events": [], "record": record},
                signer=stranger,
                origin=stranger.node_id,
                extra={"X-Forwarded-For": "198.51.100.77"},
            )
            codes.append(code)
        self.assertEqual(codes[:120], [200] * 120)
        self.assertEqual(codes[120], 429)

    def test_peer_limit_after_authentication(self) -> None:
        """
        Forged requests in a peer's name do not use up its quota; its own
        signed requests are limited at 100 per minute.
        """
        forger = NodeIdentity.generate()
        for _ in range(30):
            code, _ = self.signed(
                "/api/v1/gossip/receive",
                {"type": "events", "events": []},
                signer=forger,
                extra={"X-Forwarded-For": "198.51.100.1"},
            )
            self.assertEqual(code, 401)
        codes = [
            self.signed("/api/v1/gossip/receive", {"type": "events", "events": []})[0]
            for _ in range(101)
        ]
        self.assertEqual(codes[:100], [200] * 100)
        self.assertEqual(codes[100], 429)

    def test_address_limit(self) -> None:
        """
        Unauthenticated requests are limited per client address; behind a
        trusted proxy the forwarded address counts.
        """
        codes = [
            self.call(self.stub, "GET", "/status", headers={"X-Forwarded-For": "203.0.113.5"})[0]
            for _ in range(121)
        ]
        self.assertEqual(codes[-1], 429)
        self.assertEqual(
            self.call(self.stub, "GET", "/status", headers={"X-Forwarded-For": "203.0.113.6"})[0],
            200,
        )

    def test_failed_authentication_charges_address(self) -> None:
        """
        Failed authentications count against the address, and an exhausted
        address is refused before any signature work.
        """
        forger = NodeIdentity.generate()
        for _ in range(120):
            self.signed(
                "/api/v1/gossip/receive",
                {"type": "events"},
                signer=forger,
                extra={"X-Forwarded-For": "192.0.2.1"},
            )
        code, _ = self.signed(
            "/api/v1/gossip/receive", {"type": "events"}, extra={"X-Forwarded-For": "192.0.2.1"}
        )
        self.assertEqual(code, 429)

    def test_malformed_bodies(self) -> None:
        """
        Non-JSON and non-object bodies are 400, never 500.
        """
        self.assertEqual(
            self.call(self.stub, "POST", "/api/v1/gossip/receive", data=b"{nope")[0], 400
        )
        self.assertEqual(
            self.call(self.stub, "POST", "/api/v1/gossip/receive", data=b"[1]")[0], 400
        )
        code, _ = self.signed(
            "/api/v1/gossip/receive",
            {"type": "digest", "digest": "x", "record": self.peer.own_record()},
        )
        self.assertEqual(code, 400)


class AdminSurfaceTests(HTTPCase):
    """
    The admin routes, on their own listener and on the node's admin socket.
    """

    def test_every_admin_route(self) -> None:
        """
        Each admin route answers on the admin app.
        """
        stub = stub_treq(admin_app(self.node).app.resource())
        bodies: dict[str, Any] = {
            "/api/v1/messages/send": {
                "to_address": "bob@s1",
                "from_address": "alice@s0",
                "content": "hi",
            },
            "/api/v1/domain/verify": {"domain": "free"},
            "/api/v1/domain/register": {"domain": "free"},
            "/api/v1/announce": {"force": True},
        }
        for method, path in ADMIN_ROUTES:
            code, body = self.call(
                stub, method, path, bodies.get(path, {}) if method == "POST" else None
            )
            self.assertEqual(code, 200, f"{path}: {body}")

    def test_peers_list(self) -> None:
        """
        C{GET /api/v1/peers} lists a known peer with the predecessor's fields
        (predecessor flaw 3: it answered 500 once a peer existed).
        """
        stub = stub_treq(admin_app(self.node).app.resource())
        code, body = self.call(stub, "GET", "/api/v1/peers?active_only=true")
        self.assertEqual(code, 200)
        (peer,) = body
        self.assertEqual(peer["server_id"], "s1")
        self.assertTrue(
            set(peer) >= {"server_id", "is_neighbor", "trust_status", "last_seen", "endpoints"}
        )

    def test_mounted_on_node_admin_surface(self) -> None:
        """
        Mounted under C{api} and C{health}, the routes keep their full paths.
        """
        surface = AdminSurface()
        resource = admin_app(self.node).app.resource()
        surface.mount("api", PrefixedResource(resource))
        surface.mount("health", PrefixedResource(resource))
        stub = stub_treq(surface.root)
        self.assertEqual(self.call(stub, "GET", "/health")[0], 200)
        code, body = self.call(stub, "GET", "/api/v1/peers")
        self.assertEqual((code, len(body)), (200, 1))

    def test_bad_admin_input(self) -> None:
        """
        Bad admin input is a 400 with a message, never a 500.
        """
        stub = stub_treq(admin_app(self.node).app.resource())
        self.assertEqual(self.call(stub, "POST", "/api/v1/announce", data=b"[")[0], 400)
        self.assertEqual(self.call(stub, "POST", "/api/v1/announce", {"force": "yes"})[0], 400)
        self.assertEqual(self.call(stub, "POST", "/api/v1/route/bad..name")[0], 400)
        self.assertEqual(self.call(stub, "POST", "/api/v1/maintenance/nope")[0], 404)
        self.assertEqual(self.call(stub, "GET", "/api/v1/messages/unknown")[0], 404)


class BodyLimitTests(SynchronousTestCase):
    """
    The public listener caps request bodies while reading them.
    """

    def request(self, raw: bytes) -> bytes:
        # A Clock, so the channel's idle timeout never lands on the real reactor.
        site = limited_site(Resource(), 1000, Clock())
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        value: bytes = transport.value()
        return value

    def test_declared_length(self) -> None:
        """
        A declared length over the cap is refused with 413 before the body arrives.
        """
        answer = self.request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"))

    def test_chunked(self) -> None:
        """
        A chunked body that grows over the cap is refused with 413.
        """
        chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
        answer = self.request(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"))


class _ByHost(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[bytes, IResource] = {}

    def render(self, request: Request) -> Any:
        host = (request.getHeader(b"host") or b"").split(b":")[0]
        return self.hosts[host].render(request)


class HTTPTransportTests(SynchronousTestCase):
    """
    Signed calls over HTTP between cores, and the outbound policy.
    """

    def test_cluster_over_http(self) -> None:
        """
        Three cores that talk only through signed HTTP requests converge and deliver a message.
        """
        cluster = Cluster(3)
        router = _ByHost()
        stub = stub_treq(router)
        for index, node in enumerate(cluster.nodes):
            app = PublicApp(node, cluster.clock, ForwardedPolicy())
            router.hosts[f"s{index}.test".encode()] = app.app.resource()
            transport = HTTPTransport(
                cluster.clock,
                functools.partial(_local, node),
                lambda host, port: succeed(["127.0.0.1"]),
                allow_private=True,
                client=stub,
            )
            node._transport = transport
        for _ in range(3):
            cluster.clock.advance(600)
            for node in cluster.nodes:
                d = Deferred.fromCoroutine(node.gossip_round())
                for _ in range(20):
                    stub.flush()
                self.successResultOf(d)
        self.assertTrue(cluster.converged())
        node = cluster.nodes[1]
        d = Deferred.fromCoroutine(
            node.send({"to_address": "bob@s2", "from_address": "alice@s1", "content": "over http"})
        )
        for _ in range(20):
            stub.flush()
        message_id = str(self.successResultOf(d)["message_id"])
        for _ in range(20):
            stub.flush()
        self.assertEqual(run(self, node.message_status(message_id))["status"], "delivered")
        self.assertEqual(len(cluster.webhooks[2].delivered), 1)

    def transport(self, addresses: list[str], allow_private: bool) -> HTTPTransport:
        identity = NodeIdentity.generate()
        return HTTPTransport(
            Cluster(0).clock,
            lambda: (identity, identity.node_id),
            lambda host, port: succeed(addresses),
            allow_private=allow_private,
            client=stub_treq(Resource()),
        )

    def test_private_targets_refused(self) -> None:
        """
        Endpoints resolving to loopback or private addresses are refused by default.
        """
        for address in ("127.0.0.1", "10.0.0.8", "::1"):
            transport = self.transport([address], allow_private=False)
            failure = self.failureResultOf(
                Deferred.fromCoroutine(
                    transport.call("http://peer.test", "x", "/api/v1/gossip/receive", {})
                ),
                TransportError,
            )
            self.assertIn("refused addresses", str(failure.value))

    def test_user_info_refused(self) -> None:
        """
        The predecessor's bypass URL is refused before any resolution (flaw 8).
        """
        transport = self.transport(["93.184.216.34"], allow_private=True)
        failure = self.failureResultOf(
            Deferred.fromCoroutine(
                transport.fetch_announcement("http://good.com:x@127.0.0.1/", "c" * 24)
            ),
            TransportError,
        )
        self.assertIn("user info", str(failure.value))
