"""
The IRC gateway: an IRC server (Twisted's ``irc.IRC`` protocol) whose channels live in a chat
store reached through LSP.

What a client says is written to ``/chat/{channel}/messages/{time}-{origin}``; every daemon
watching ``/chat/`` (this one included) forwards new messages to its clients in that channel,
so clients of different daemons, or of one daemon across restarts, share the channel.  No
polling: the history is read once at start, then the watch carries everything.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import quote, unquote

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols import irc

__all__ = ["ChatStore", "IrcConnection", "IrcGateway", "message_key"]

CHAT_PREFIX = "/chat/"
_NICK_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789[]\\`_^{|}-")


class _Event(Protocol):
    key: bytes
    value: bytes | None
    revision: int


class _Value(Protocol):
    key: bytes
    value: bytes


class _Watch(Protocol):
    async def established(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None: ...


class ChatStore(Protocol):
    """What the gateway needs from LSP (``lattice.lsp.client.LspClient`` provides it)."""

    async def put(self, key: str | bytes, value: bytes) -> int: ...

    async def scan(self, prefix: str | bytes, limit: int = 0) -> tuple[Sequence[Any], int]: ...

    def watch(self, prefix: str | bytes, start_revision: int = 0) -> _Watch: ...


def message_key(channel: str, stamp: int, origin: str) -> str:
    """``/chat/%23general/messages/<ns>-<origin>``: key order is time order."""
    return f"{CHAT_PREFIX}{quote(channel.lower(), safe='')}/messages/{stamp:020d}-{origin}"


def _channel_of(key: bytes) -> str | None:
    parts = key.decode("utf-8", "replace")[len(CHAT_PREFIX) :].split("/")
    if len(parts) != 3 or parts[1] != "messages":
        return None
    return unquote(parts[0])


class IrcGateway:
    """
    The shared state of one daemon: connected clients, channel membership, recent history.

    :param channels: the channels clients may join (empty: any).
    :param history: how many recent messages per channel a joining client is shown.
    """

    _log = Logger()

    def __init__(
        self,
        store: ChatStore,
        *,
        server_name: str = "lattice-irc",
        channels: Sequence[str] = (),
        history: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.server_name = server_name
        self.allowed = {c.lower() for c in channels}
        self.history_size = history
        self.clock = clock
        self.origin = secrets.token_hex(4)
        self.connections: dict[str, IrcConnection] = {}
        self.members: dict[str, set[IrcConnection]] = {}
        self.history: dict[str, deque[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._watch: _Watch | None = None
        self.revision = 0
        self.done: Deferred[None] = Deferred()

    # -- the store side ----------------------------------------------------------------------

    async def start(self) -> None:
        """Read the history once, then watch for everything after it."""
        values, revision = await self.store.scan(CHAT_PREFIX)
        for value in values:
            self._remember(value.key, value.value)
        self.revision = revision
        self._watch = self.store.watch(CHAT_PREFIX, start_revision=revision + 1)
        await self._watch.established()
        Deferred.fromCoroutine(self._follow(self._watch)).addBoth(self._watch_ended)

    async def _follow(self, watch: _Watch) -> None:
        async for event in watch:
            self.revision = event.revision
            if event.value is None:
                continue
            message = self._remember(event.key, event.value)
            if message is not None:
                self._deliver(message)

    def _watch_ended(self, result: object) -> None:
        if isinstance(result, Failure):
            self._log.error("Chat store watch failed: {error}", error=result.getErrorMessage())
        if not self.done.called:
            self.done.callback(None)

    def stop(self) -> None:
        """Stop watching."""
        if self._watch is not None:
            self._watch.cancel()

    def _remember(self, key: bytes, value: bytes) -> dict[str, Any] | None:
        channel = _channel_of(key)
        if channel is None:
            return None
        try:
            message = json.loads(value)
            nick, text = str(message["nick"]), str(message["text"])
        except (ValueError, KeyError, TypeError):
            self._log.warn("Ignoring malformed chat message at {key}", key=key)
            return None
        entry = {"channel": channel, "nick": nick, "text": text, "origin": message.get("origin")}
        recent = self.history.setdefault(channel, deque(maxlen=max(self.history_size, 1)))
        recent.append(entry)
        return entry

    def _deliver(self, message: dict[str, Any]) -> None:
        for connection in list(self.members.get(message["channel"], ())):
            if message["origin"] == connection.origin:
                continue  # IRC does not echo a client's own messages
            connection.relay(message["nick"], message["channel"], message["text"])

    async def post(self, connection: IrcConnection, channel: str, text: str) -> None:
        """Write a message to the chat store (it comes back through the watch)."""
        document = {
            "nick": connection.nick,
            "text": text,
            "time": self.clock(),
            "origin": connection.origin,
        }
        key = message_key(channel, time.time_ns(), connection.origin)
        await self.store.put(key, json.dumps(document, sort_keys=True).encode())

    # -- the IRC side ------------------------------------------------------------------------

    def new_origin(self) -> str:
        """A unique id for a new connection."""
        return f"{self.origin}.{next(self._ids)}"

    def channel_allowed(self, channel: str) -> bool:
        """Whether clients may join ``channel``."""
        return not self.allowed or channel.lower() in self.allowed

    def join(self, connection: IrcConnection, channel: str) -> set[IrcConnection]:
        """Add a member; returns the members (the joiner included)."""
        members = self.members.setdefault(channel.lower(), set())
        members.add(connection)
        return members

    def leave(self, connection: IrcConnection, channel: str) -> set[IrcConnection]:
        """Remove a member; returns who remains."""
        members = self.members.get(channel.lower(), set())
        members.discard(connection)
        return members


class IrcConnection(irc.IRC):
    """One IRC client."""

    _log = Logger()

    def __init__(self, gateway: IrcGateway) -> None:
        self.gateway = gateway
        self.origin = gateway.new_origin()
        self.nick: str | None = None
        self.username: str | None = None
        self.registered = False
        self.joined: set[str] = set()

    @property
    def mask(self) -> str:
        return f"{self.nick}!{self.username or self.nick}@lattice"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.hostname = self.gateway.server_name

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._quit("Connection closed")
        super().connectionLost(reason)

    def _reply(self, code: str, *params: str) -> None:
        self.sendMessage(code, self.nick or "*", *params, prefix=self.gateway.server_name)

    def irc_unknown(self, prefix: str, command: str, params: list[str]) -> None:
        if self.registered:
            self._reply(irc.ERR_UNKNOWNCOMMAND, command, ":Unknown command")

    def irc_CAP(self, prefix: str, params: list[str]) -> None:
        if params and params[0].upper() == "LS":
            self.sendMessage("CAP", "*", "LS", ":", prefix=self.gateway.server_name)

    def irc_NICK(self, prefix: str, params: list[str]) -> None:
        if not params or not params[0]:
            self._reply(irc.ERR_NONICKNAMEGIVEN, ":No nickname given")
            return
        nick = params[0]
        if not set(nick) <= _NICK_CHARS or nick[0].isdigit() or len(nick) > 30:
            self._reply(irc.ERR_ERRONEUSNICKNAME, nick, ":Erroneous nickname")
            return
        holder = self.gateway.connections.get(nick.lower())
        if holder is not None and holder is not self:
            self._reply(irc.ERR_NICKNAMEINUSE, nick, ":Nickname is already in use")
            return
        if self.nick is not None:
            self.gateway.connections.pop(self.nick.lower(), None)
            if self.registered:
                self.sendLine(f":{self.mask} NICK :{nick}")
        self.nick = nick
        self.gateway.connections[nick.lower()] = self
        self._maybe_welcome()

    def irc_USER(self, prefix: str, params: list[str]) -> None:
        if not params:
            self._reply(irc.ERR_NEEDMOREPARAMS, "USER", ":Not enough parameters")
            return
        self.username = params[0]
        self._maybe_welcome()

    def _maybe_welcome(self) -> None:
        if self.registered or self.nick is None or self.username is None:
            return
        self.registered = True
        name = self.gateway.server_name
        self._reply(irc.RPL_WELCOME, f":Welcome to Lattice IRC, {self.nick}")
        self._reply(irc.RPL_YOURHOST, f":Your host is {name}, running lattice-irc")
        self._reply(irc.RPL_CREATED, ":This server's channels live in a Lattice chat store")
        self._reply(irc.RPL_MYINFO, name, "lattice-irc", "i", "n")
        self._reply(irc.ERR_NOMOTD, ":MOTD File is missing")

    def irc_PING(self, prefix: str, params: list[str]) -> None:
        name = self.gateway.server_name
        self.sendMessage("PONG", name, f":{params[0] if params else ''}", prefix=name)

    def irc_PONG(self, prefix: str, params: list[str]) -> None:
        pass

    def _need_registration(self) -> bool:
        if not self.registered:
            self._reply(irc.ERR_NOTREGISTERED, ":You have not registered")
            return True
        return False

    def irc_JOIN(self, prefix: str, params: list[str]) -> None:
        if self._need_registration():
            return
        if not params:
            self._reply(irc.ERR_NEEDMOREPARAMS, "JOIN", ":Not enough parameters")
            return
        for name in params[0].split(","):
            if not name.startswith("#") or not self.gateway.channel_allowed(name):
                self._reply(irc.ERR_NOSUCHCHANNEL, name, ":No such channel")
                continue
            channel = name.lower()
            if channel in self.joined:
                continue
            self.joined.add(channel)
            members = self.gateway.join(self, channel)
            for member in members:
                member.sendLine(f":{self.mask} JOIN {channel}")
            names = " ".join(sorted(m.nick for m in members if m.nick))
            self._reply(irc.RPL_NAMREPLY, "=", channel, f":{names}")
            self._reply(irc.RPL_ENDOFNAMES, channel, ":End of /NAMES list")
            for message in self.gateway.history.get(channel, ()):
                self.relay(message["nick"], channel, message["text"])

    def irc_PART(self, prefix: str, params: list[str]) -> None:
        if self._need_registration() or not params:
            return
        for channel in params[0].lower().split(","):
            if channel not in self.joined:
                self._reply(irc.ERR_NOTONCHANNEL, channel, ":You're not on that channel")
                continue
            self.joined.discard(channel)
            line = f":{self.mask} PART {channel}"
            self.sendLine(line)
            for member in self.gateway.leave(self, channel):
                member.sendLine(line)

    def irc_PRIVMSG(self, prefix: str, params: list[str]) -> None:
        if self._need_registration():
            return
        if len(params) < 2 or not params[1]:
            self._reply(irc.ERR_NOTEXTTOSEND, ":No text to send")
            return
        target, text = params[0], params[1]
        if target.startswith("#"):
            channel = target.lower()
            if channel not in self.joined:
                self._reply(irc.ERR_CANNOTSENDTOCHAN, target, ":Cannot send to channel")
                return
            Deferred.fromCoroutine(self.gateway.post(self, channel, text)).addErrback(
                self._not_stored, target
            )
            return
        peer = self.gateway.connections.get(target.lower())
        if peer is None:
            self._reply(irc.ERR_NOSUCHNICK, target, ":No such nick/channel")
            return
        peer.sendLine(f":{self.mask} PRIVMSG {peer.nick} :{text}")

    def _not_stored(self, failure: Failure, target: str) -> None:
        self._log.error("Cannot store a message: {error}", error=failure.getErrorMessage())
        self.sendMessage(
            "NOTICE", self.nick or "*", f":message to {target} not delivered: store unavailable"
        )

    def irc_QUIT(self, prefix: str, params: list[str]) -> None:
        self._quit(params[0] if params else "Quit")
        if self.transport is not None:
            self.transport.loseConnection()

    def _quit(self, reason: str) -> None:
        if self.nick is not None and self.gateway.connections.get(self.nick.lower()) is self:
            del self.gateway.connections[self.nick.lower()]
        notified: set[IrcConnection] = set()
        for channel in self.joined:
            for member in self.gateway.leave(self, channel):
                if member not in notified:
                    notified.add(member)
                    member.sendLine(f":{self.mask} QUIT :{reason}")
        self.joined.clear()

    def relay(self, nick: str, channel: str, text: str) -> None:
        """Show a channel message from ``nick``."""
        for line in text.splitlines() or [""]:
            self.sendLine(f":{nick}!{nick}@lattice PRIVMSG {channel} :{line}")


class IrcFactory(Factory):
    """Builds :class:`IrcConnection` for one gateway."""

    noisy = False

    def __init__(self, gateway: IrcGateway) -> None:
        self.gateway = gateway

    def buildProtocol(self, addr: object) -> IrcConnection:
        protocol = IrcConnection(self.gateway)
        protocol.factory = self
        return protocol
