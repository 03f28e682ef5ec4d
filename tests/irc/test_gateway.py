"""Tests for the IRC gateway over an in-memory chat store, with StringTransport clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lattice.irc import IrcFactory, IrcGateway
from lattice.registry._store import KVStoreAdapter, StoreEvent
from lattice.registry.testing import memory_store


class _Watch:
    def __init__(self, store: KVStoreAdapter, prefix: bytes, start: int) -> None:
        self.queue: DeferredQueue[StoreEvent | None] = DeferredQueue()
        self._cancel = store.watch(prefix, start, self._events)

    def _events(self, events: list[StoreEvent]) -> None:
        for event in events:
            self.queue.put(event)

    async def established(self) -> None:
        pass

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            yield event

    def cancel(self) -> None:
        self._cancel()
        self.queue.put(None)


class MemoryChat:
    """The gateway's ChatStore over the embedded store, without LSP in between."""

    def __init__(self, store: KVStoreAdapter) -> None:
        self.store = store

    async def put(self, key: str | bytes, value: bytes) -> int:
        return await self.store.put(key.encode() if isinstance(key, str) else key, value)

    async def scan(self, prefix: str | bytes, limit: int = 0) -> tuple[list[Any], int]:
        key = prefix.encode() if isinstance(prefix, str) else prefix
        return await self.store.range(key, limit)

    def watch(self, prefix: str | bytes, start_revision: int = 0) -> _Watch:
        key = prefix.encode() if isinstance(prefix, str) else prefix
        return _Watch(self.store, key, start_revision)


class GatewayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = memory_store(Clock())
        self.gateway = self.new_gateway()

    def new_gateway(self) -> IrcGateway:
        gateway = IrcGateway(MemoryChat(self.store), server_name="irc.test", history=10)
        self.successResultOf(Deferred.fromCoroutine(gateway.start()))
        return gateway

    def connect(self, nick: str, gateway: IrcGateway | None = None) -> tuple[Any, StringTransport]:
        protocol = IrcFactory(gateway or self.gateway).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
        return protocol, transport

    def lines(self, transport: StringTransport) -> list[str]:
        text = transport.value().decode()
        transport.clear()
        return [line for line in text.split("\r\n") if line]

    def test_welcome(self) -> None:
        """NICK and USER register the client with RPL_WELCOME."""
        _, transport = self.connect("alice")
        self.assertIn(":irc.test 001 alice :Welcome to Lattice IRC, alice", self.lines(transport))

    def test_nick_in_use(self) -> None:
        """A second client cannot take a nick in use."""
        self.connect("alice")
        _, transport = self.connect("alice")
        self.assertTrue(any(" 433 " in line for line in self.lines(transport)))

    def test_channel_messages(self) -> None:
        """Two clients in a channel see each other's messages, and not their own."""
        alice, a = self.connect("alice")
        bob, b = self.connect("bob")
        alice.dataReceived(b"JOIN #general\r\n")
        bob.dataReceived(b"JOIN #general\r\n")
        self.lines(a)
        self.lines(b)
        alice.dataReceived(b"PRIVMSG #general :hello bob\r\n")
        self.assertEqual(self.lines(b), [":alice!alice@lattice PRIVMSG #general :hello bob"])
        self.assertEqual(self.lines(a), [])
        [value], _ = self.successResultOf(Deferred.fromCoroutine(self.store.range(b"/chat/")))
        self.assertTrue(value.key.startswith(b"/chat/%23general/messages/"))

    def test_history_survives_restart(self) -> None:
        """A new daemon over the same store shows the channel's history on JOIN."""
        alice, _ = self.connect("alice")
        alice.dataReceived(b"JOIN #general\r\nPRIVMSG #general :before restart\r\n")
        self.gateway.stop()
        restarted = self.new_gateway()
        carol, c = self.connect("carol", restarted)
        carol.dataReceived(b"JOIN #general\r\n")
        self.assertIn(":alice!alice@lattice PRIVMSG #general :before restart", self.lines(c))

    def test_two_daemons_share_a_channel(self) -> None:
        """Clients of two daemons on one store see each other's messages (the watch)."""
        other = self.new_gateway()
        alice, _ = self.connect("alice")
        dave, d = self.connect("dave", other)
        alice.dataReceived(b"JOIN #dev\r\n")
        dave.dataReceived(b"JOIN #dev\r\n")
        self.lines(d)
        alice.dataReceived(b"PRIVMSG #dev :across daemons\r\n")
        self.assertEqual(self.lines(d), [":alice!alice@lattice PRIVMSG #dev :across daemons"])

    def test_must_join_to_speak(self) -> None:
        """A client cannot write to a channel it has not joined."""
        alice, a = self.connect("alice")
        self.lines(a)
        alice.dataReceived(b"PRIVMSG #general :sneaky\r\n")
        self.assertTrue(any(" 404 " in line for line in self.lines(a)))

    def test_allowed_channels(self) -> None:
        """With a channel list, other channels cannot be joined."""
        self.gateway.allowed = {"#general"}
        alice, a = self.connect("alice")
        self.lines(a)
        alice.dataReceived(b"JOIN #secret\r\n")
        self.assertTrue(any(" 403 " in line for line in self.lines(a)))

    def test_ping(self) -> None:
        """PING is answered with PONG."""
        alice, a = self.connect("alice")
        self.lines(a)
        alice.dataReceived(b"PING :abc\r\n")
        self.assertEqual(self.lines(a), [":irc.test PONG irc.test :abc"])

    def test_quit_notifies(self) -> None:
        """Members see a client quit."""
        alice, _ = self.connect("alice")
        bob, b = self.connect("bob")
        alice.dataReceived(b"JOIN #general\r\n")
        bob.dataReceived(b"JOIN #general\r\n")
        self.lines(b)
        alice.connectionLost()
        self.assertEqual(self.lines(b), [":alice!alice@lattice QUIT :Connection closed"])
