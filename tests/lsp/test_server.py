"""Tests for the LSP server and client library, connected in memory (iosim)."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase

from lattice.grpc import (
    GrpcChannel,
    GrpcClientOptions,
    GrpcClientProtocol,
    GrpcError,
    GrpcServerFactory,
    GrpcServerOptions,
    StatusCode,
)
from lattice.lsp import LspServer, TokenBook, add_lsp_services
from lattice.lsp.client import DaemonEnvironment, LspClient, LspEvent, report_ready
from lattice.registry.testing import memory_store


class LspTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tokens = TokenBook()
        self.irc_token = self.tokens.issue("local", "lattice.irc-gateway", ("/chat/",))
        self.other_token = self.tokens.issue("local", "other", ("/other/",))
        self.store = memory_store(self.clock)
        self.denied: list[str] = []
        self.server = LspServer(
            self.tokens, {"local": self.store}, lambda: "node-1", self.denied.append
        )
        factory = GrpcServerFactory(self.clock, GrpcServerOptions(keepalive_interval=None))
        add_lsp_services(factory, self.server)
        address = UNIXAddress(b"/tmp/lsp.sock")
        server = factory.buildProtocol(address)
        protocol = GrpcClientProtocol(self.clock, GrpcClientOptions())
        self.pump: IOPump = connect(
            server,
            FakeTransport(server, isServer=True, hostAddress=address, peerAddress=address),
            protocol,
            FakeTransport(protocol, isServer=False, hostAddress=address, peerAddress=address),
        )
        self.channel = GrpcChannel(protocol, "lattice-lsp")
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def call(self, coroutine: Any) -> Any:
        deferred = Deferred.fromCoroutine(coroutine)
        self.pump.flush()
        return deferred

    def client(self, token: str | None = None) -> LspClient:
        return LspClient(self.channel, self.irc_token if token is None else token, "local")

    def test_connect(self) -> None:
        """Connect checks the token and returns the store, prefixes and node id."""
        client = self.client()
        self.successResultOf(self.call(client.authenticate("lattice.irc-gateway")))
        self.assertEqual(client.prefixes, ("/chat/",))
        self.assertEqual(client.node_id, "node-1")
        self.assertEqual(client.store_id, "local")

    def test_connect_wrong_service(self) -> None:
        """A token presented for another service is refused."""
        failure = self.failureResultOf(self.call(self.client().authenticate("other")), GrpcError)
        self.assertEqual(failure.value.code, StatusCode.UNAUTHENTICATED)

    def test_put_get_delete(self) -> None:
        """Keys under the prefix can be written, read and deleted."""
        client = self.client()
        revision = self.successResultOf(self.call(client.put("/chat/a", b"1")))
        self.assertGreater(revision, 1)
        value = self.successResultOf(self.call(client.get("/chat/a")))
        self.assertEqual((value.key, value.value, value.mod_revision), (b"/chat/a", b"1", revision))
        self.assertEqual(self.successResultOf(self.call(client.delete("/chat/a"))), 1)
        self.assertIsNone(self.successResultOf(self.call(client.get("/chat/a"))))

    def test_scan(self) -> None:
        """Scan returns every key under a prefix in order, in chunks."""
        client = self.client()
        for i in range(1200):
            self.successResultOf(self.call(client.put(f"/chat/k{i:05}", b"v")))
        values, revision = self.successResultOf(self.call(client.scan("/chat/")))
        self.assertEqual(len(values), 1200)
        self.assertEqual(values[0].key, b"/chat/k00000")
        self.assertEqual(revision, values[-1].mod_revision)

    def test_watch(self) -> None:
        """A watch sees history from its start revision, then live puts and deletes."""
        client = self.client()
        first = self.successResultOf(self.call(client.put("/chat/a", b"1")))
        watch = client.watch("/chat/", start_revision=first)
        self.successResultOf(self.call(watch.established()))
        received: list[LspEvent] = []

        async def collect() -> None:
            async for event in watch:
                received.append(event)

        done = self.call(collect())
        self.successResultOf(self.call(client.put("/chat/b", b"2")))
        self.successResultOf(self.call(client.delete("/chat/a")))
        self.successResultOf(self.call(self.store.put(b"/elsewhere/x", b"3")))
        self.pump.flush()
        self.assertEqual(
            [(e.key, e.value) for e in received],
            [(b"/chat/a", b"1"), (b"/chat/b", b"2"), (b"/chat/a", None)],
        )
        watch.cancel()
        self.pump.flush()
        self.successResultOf(done)
        self.assertEqual(len(self.store.store.hub), 0)

    def test_outside_prefix_denied_and_logged(self) -> None:
        """Reading outside the descriptor's prefixes is PERMISSION_DENIED and logged."""
        self.successResultOf(self.call(self.store.put(b"/passwords/root", b"hunter2")))
        client = self.client()
        for call in (
            client.get("/passwords/root"),
            client.put("/passwords/root", b"x"),
            client.delete("/", prefix=True),
            client.scan("/"),
            client.scan("/pass"),
        ):
            failure = self.failureResultOf(self.call(call), GrpcError)
            self.assertEqual(failure.value.code, StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.denied, ["permission_denied"] * 5)
        logged = [e for e in self.events if "denied" in e.get("log_format", "")]
        self.assertEqual(len(logged), 5)
        self.assertEqual(logged[0]["service"], "lattice.irc-gateway")

    def test_watch_outside_prefix_denied(self) -> None:
        """A watch outside the prefixes is refused."""
        watch = self.client().watch("/")
        failure = self.failureResultOf(self.call(watch.established()), GrpcError)
        self.assertEqual(failure.value.code, StatusCode.PERMISSION_DENIED)

    def test_token_cannot_reach_other_instance(self) -> None:
        """One instance's token cannot reach another instance's prefixes or store."""
        self.successResultOf(self.call(self.client(self.other_token).put("/other/x", b"1")))
        failure = self.failureResultOf(self.call(self.client().get("/other/x")), GrpcError)
        self.assertEqual(failure.value.code, StatusCode.PERMISSION_DENIED)
        stranger = LspClient(self.channel, self.irc_token, "mesh-b")
        failure = self.failureResultOf(self.call(stranger.get("/chat/x")), GrpcError)
        self.assertEqual(failure.value.code, StatusCode.PERMISSION_DENIED)

    def test_forged_or_missing_token(self) -> None:
        """A forged, missing or revoked token is UNAUTHENTICATED."""
        for token in ("", "forged" + self.irc_token[6:]):
            failure = self.failureResultOf(self.call(self.client(token).get("/chat/a")), GrpcError)
            self.assertEqual(failure.value.code, StatusCode.UNAUTHENTICATED)
        self.tokens.revoke("local", "lattice.irc-gateway")
        failure = self.failureResultOf(self.call(self.client().get("/chat/a")), GrpcError)
        self.assertEqual(failure.value.code, StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.denied, ["unauthenticated"] * 3)

    def test_open_store(self) -> None:
        """Only the instance's own store opens."""
        self.successResultOf(self.call(self.client().open_store()))
        failure = self.failureResultOf(self.call(self.client().open_store("mesh-b")), GrpcError)
        self.assertEqual(failure.value.code, StatusCode.PERMISSION_DENIED)


class EnvironmentTests(SynchronousTestCase):
    def test_from_environ(self) -> None:
        """The daemon environment is read from LATTICE_* variables."""
        env = DaemonEnvironment.from_environ(
            {
                "LATTICE_LSP_ADDRESS": "unix:/x",
                "LATTICE_LSP_TOKEN": "t",
                "LATTICE_PORT": "0",
                "LATTICE_SERVICE_CONFIG": '{"channels": ["#a"]}',
            }
        )
        self.assertEqual((env.address, env.port, env.store_id), ("unix:/x", 0, "local"))
        self.assertEqual(env.config, {"channels": ["#a"]})

    def test_report_ready(self) -> None:
        """The readiness line carries the port and endpoints."""
        import io

        out = io.StringIO()
        report_ready(6667, ("tcp://127.0.0.1:6667",), out=out)
        self.assertEqual(out.getvalue(), "LATTICE-READY port=6667 endpoint=tcp://127.0.0.1:6667\n")
