"""
One contract for L{lattice.discovery.testing.MemoryTransport} (the verified
fake) and L{lattice.discovery._client.HTTPTransport} (through the real HTTP
boundary, with C{treq.testing.StubTreq}).
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from lattice.discovery._client import HTTPTransport
from lattice.discovery._http import PublicApp
from lattice.discovery._netpolicy import ForwardedPolicy
from lattice.discovery._node import DiscoveryNode, PeerTransport, TransportError
from tests.discovery._helpers import Cluster
from tests.discovery.test_http import _ByHost, stub_treq


def _local(node: DiscoveryNode) -> tuple[Any, str]:
    return node.signer, node.server_uuid


class TransportContract:
    """
    What every L{PeerTransport} does.
    """

    cluster: Cluster

    def transport(self) -> PeerTransport:
        raise NotImplementedError

    def settle(self, d: Deferred[Any]) -> Any:
        raise NotImplementedError

    def failure(self, d: Deferred[Any]) -> Any:
        raise NotImplementedError

    def assertEqual(self, a: object, b: object, msg: object = None) -> None: ...
    def assertIn(self, a: object, b: object, msg: object = None) -> None: ...

    def call(
        self, endpoint: str, destination: str, path: str, body: dict[str, Any]
    ) -> Deferred[Any]:
        return Deferred.fromCoroutine(
            _await(self.transport().call(endpoint, destination, path, body))
        )

    def test_call(self) -> None:
        """
        A call reaches the destination's handler and returns its answer.
        """
        target = self.cluster.nodes[0]
        body = {"type": "digest", "digest": {}, "record": self.cluster.nodes[1].own_record()}
        answer = self.settle(
            self.call("http://s0.test", target.server_uuid, "/api/v1/gossip/receive", body)
        )
        self.assertEqual(answer["type"], "digest_reply")

    def test_wrong_destination(self) -> None:
        """
        A call signed for another server is refused with status 401.
        """
        other = self.cluster.nodes[1].server_uuid
        error = self.failure(
            self.call("http://s0.test", other, "/api/v1/gossip/receive", {"type": "events"})
        )
        self.assertEqual(error.status, 401)

    def test_refused_by_handler(self) -> None:
        """
        A handler's refusal is a L{TransportError} with its status.
        """
        target = self.cluster.nodes[0]
        error = self.failure(
            self.call(
                "http://s0.test",
                target.server_uuid,
                "/api/v1/domain/query",
                {"record": self.cluster.nodes[1].own_record()},
            )
        )
        self.assertEqual(error.status, 400)

    def test_announcement(self) -> None:
        """
        The announcement comes with the record and the signed challenge.
        """
        d = Deferred.fromCoroutine(
            _await(self.transport().fetch_announcement("http://s0.test", "k" * 20))
        )
        answer = self.settle(d)
        self.assertEqual(answer["record"]["server_uuid"], self.cluster.nodes[0].server_uuid)
        self.assertEqual(answer["proof"]["challenge"], "k" * 20)


async def _await(awaitable: Any) -> Any:
    return await awaitable


class MemoryTransportTests(TransportContract, SynchronousTestCase):
    """
    The contract on the in-memory fake.
    """

    def setUp(self) -> None:
        self.cluster = Cluster(2)
        self.cluster.rounds(self, 1)

    def transport(self) -> PeerTransport:
        return self.cluster.network.transport(functools.partial(lambda n: n, self.cluster.nodes[1]))

    def settle(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def failure(self, d: Deferred[Any]) -> Any:
        return self.failureResultOf(d, TransportError).value

    def test_down(self) -> None:
        """
        An endpoint that is down refuses the connection.
        """
        self.cluster.network.down.add("http://s0.test")
        self.failure(
            self.call(
                "http://s0.test", self.cluster.nodes[0].server_uuid, "/api/v1/gossip/receive", {}
            )
        )


class HTTPTransportContractTests(TransportContract, SynchronousTestCase):
    """
    The contract on the real HTTP transport and boundary.
    """

    def setUp(self) -> None:
        self.cluster = Cluster(2)
        self.cluster.rounds(self, 1)
        router = _ByHost()
        for index, node in enumerate(self.cluster.nodes):
            router.hosts[f"s{index}.test".encode()] = PublicApp(
                node, self.cluster.clock, ForwardedPolicy()
            ).app.resource()
        self.stub = stub_treq(router)

    def transport(self) -> PeerTransport:
        return HTTPTransport(
            self.cluster.clock,
            functools.partial(_local, self.cluster.nodes[1]),
            lambda host, port: succeed(["127.0.0.1"]),
            allow_private=True,
            client=self.stub,
        )

    def settle(self, d: Deferred[Any]) -> Any:
        self.stub.flush()
        return self.successResultOf(d)

    def failure(self, d: Deferred[Any]) -> Any:
        self.stub.flush()
        return self.failureResultOf(d, TransportError).value

    def test_unknown_host(self) -> None:
        """
        A host that does not resolve is a L{TransportError}.
        """
        transport = HTTPTransport(
            self.cluster.clock,
            functools.partial(_local, self.cluster.nodes[1]),
            lambda host, port: succeed([]),
            allow_private=True,
            client=stub_treq(Resource()),
        )
        d = Deferred.fromCoroutine(
            _await(transport.fetch_announcement("http://nowhere.test", "k" * 20))
        )
        self.failureResultOf(d, TransportError)
