"""
A small Twisted client for daemon authors: connect to the node's LSP socket with the token
from the environment, then ``get``/``put``/``delete``/``scan`` and ``watch`` keys.

.. code-block:: python

    client = await LspClient.from_environment(reactor)
    await client.put("/chat/#general/messages/0001", b"hello")
    values, revision = await client.scan("/chat/#general/messages/")
    watch = client.watch("/chat/", start_revision=revision + 1)
    async for event in watch:          # LspEvent(key, value or None, revision)
        ...

The node passes, in the daemon's environment: ``LATTICE_LSP_ADDRESS`` (a Twisted client
endpoint string, e.g. ``unix:/var/lib/lattice/lsp.sock``), ``LATTICE_LSP_TOKEN``,
``LATTICE_SERVICE_ID``, ``LATTICE_STORE_ID``, ``LATTICE_NODE_ID``, ``LATTICE_PORT`` (the port
to listen on; ``0``: choose one and report it) and ``LATTICE_SERVICE_CONFIG`` (the service's
settings, JSON).  A daemon reports readiness by printing ``LATTICE-READY port=N`` on its
standard output (see :func:`report_ready`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime

from lattice.grpc import ClientCall, GrpcChannel, GrpcError, StatusCode, connect_channel
from lattice.lsp import lsp_pb2

__all__ = [
    "DaemonEnvironment",
    "GrpcError",
    "LspClient",
    "LspEvent",
    "LspWatch",
    "StatusCode",
    "report_ready",
]

_CONTROLLER = "/lattice.lsp.LatticeController/"
_STORE = "/lattice.lsp.LatticeStore/"


def _bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


@dataclass(frozen=True)
class DaemonEnvironment:
    """What the node tells a daemon through its environment."""

    address: str
    token: str
    service_id: str
    store_id: str
    node_id: str
    port: int | None
    config: Mapping[str, Any]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DaemonEnvironment:
        """Read the ``LATTICE_*`` variables (raises ``KeyError`` naming a missing one)."""
        env = os.environ if environ is None else environ
        port = env.get("LATTICE_PORT", "")
        return cls(
            address=env["LATTICE_LSP_ADDRESS"],
            token=env["LATTICE_LSP_TOKEN"],
            service_id=env.get("LATTICE_SERVICE_ID", ""),
            store_id=env.get("LATTICE_STORE_ID", "local"),
            node_id=env.get("LATTICE_NODE_ID", ""),
            port=int(port) if port.isdigit() else None,
            config=json.loads(env.get("LATTICE_SERVICE_CONFIG", "{}") or "{}"),
        )


def report_ready(port: int | None = None, endpoints: tuple[str, ...] = (), out: Any = None) -> None:
    """Tell the node the daemon is ready (and which port it bound): one line on stdout."""
    words = ["LATTICE-READY"]
    if port is not None:
        words.append(f"port={port}")
    words.extend(f"endpoint={endpoint}" for endpoint in endpoints)
    stream = out if out is not None else sys.stdout
    stream.write(" ".join(words) + "\n")
    stream.flush()


@dataclass(frozen=True)
class LspEvent:
    """A put (``value`` set) or a delete (``value`` is ``None``)."""

    key: bytes
    value: bytes | None
    revision: int


@dataclass(frozen=True)
class LspValue:
    """A key's value and revisions."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


def _value(kv: lsp_pb2.KeyValue) -> LspValue:
    return LspValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)


class LspWatch:
    """A live watch: iterate it for :class:`LspEvent`; :meth:`cancel` ends it."""

    def __init__(self, call: ClientCall[lsp_pb2.WatchEvent]) -> None:
        self._call = call
        self._cancelled = False

    async def established(self) -> None:
        """Wait until the node confirms the watch (every later write is seen)."""
        first = await self._call.receive()
        if first is None or not first.created:
            raise GrpcError(StatusCode.INTERNAL, "watch not confirmed")

    def __aiter__(self) -> AsyncIterator[LspEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[LspEvent]:
        while True:
            try:
                event = await self._call.receive()
            except GrpcError as e:
                if self._cancelled and e.code == StatusCode.CANCELLED:
                    return
                raise
            if event is None:
                return
            if event.created:
                continue
            if event.HasField("put"):
                yield LspEvent(event.put.key, event.put.value, event.revision)
            else:
                yield LspEvent(event.delete, None, event.revision)

    def cancel(self) -> None:
        """Stop watching (iteration ends quietly)."""
        self._cancelled = True
        self._call.cancel()


class LspClient:
    """A connection to the node's LSP server, authenticated as one instance."""

    def __init__(self, channel: GrpcChannel, token: str, store_id: str) -> None:
        self.channel = channel
        self.store_id = store_id
        self.prefixes: tuple[str, ...] = ()
        self.node_id = ""
        self.session_id = ""
        self._metadata = [("authorization", f"Bearer {token}")]
        self._token = token

    @classmethod
    async def connect(
        cls,
        reactor: IReactorTime,
        address: str,
        token: str,
        service_id: str = "",
        store_id: str = "local",
    ) -> LspClient:
        """Connect to ``address`` (a client endpoint string) and authenticate."""
        endpoint = clientFromString(reactor, address)
        channel = await connect_channel(reactor, endpoint, authority="lattice-lsp")
        client = cls(channel, token, store_id)
        try:
            await client.authenticate(service_id)
        except BaseException:
            await channel.close()
            raise
        return client

    async def authenticate(self, service_id: str = "") -> None:
        """Check the token with the node (``Connect``); learn the store and prefixes."""
        response = await self.channel.unary_unary(
            _CONTROLLER + "Connect",
            lsp_pb2.ConnectRequest(service_id=service_id, auth_token=self._token, version="1"),
            lsp_pb2.ConnectResponse,
        )
        self.store_id = response.store_id or self.store_id
        self.prefixes = tuple(response.prefixes)
        self.node_id = response.node_info.node_id
        self.session_id = response.session_id

    @classmethod
    async def from_environment(
        cls, reactor: IReactorTime, environ: Mapping[str, str] | None = None
    ) -> LspClient:
        """Connect with what the node put in the environment."""
        env = DaemonEnvironment.from_environ(environ)
        return await cls.connect(reactor, env.address, env.token, env.service_id, env.store_id)

    async def open_store(self, store_id: str | None = None) -> int:
        """Open the instance's store; returns its current revision."""
        response = await self.channel.unary_unary(
            _CONTROLLER + "OpenStore",
            lsp_pb2.OpenStoreRequest(store_id=store_id or self.store_id),
            lsp_pb2.StoreHandleResponse,
            metadata=self._metadata,
        )
        return int(response.revision)

    async def get(self, key: str | bytes) -> LspValue | None:
        """The value of ``key``, or ``None``."""
        response = await self.channel.unary_unary(
            _STORE + "Get",
            lsp_pb2.GetRequest(store_id=self.store_id, key=_bytes(key)),
            lsp_pb2.GetResponse,
            metadata=self._metadata,
        )
        return _value(response.kv) if response.found else None

    async def put(self, key: str | bytes, value: bytes) -> int:
        """Write ``key`` (durably); returns the revision."""
        response = await self.channel.unary_unary(
            _STORE + "Put",
            lsp_pb2.PutRequest(store_id=self.store_id, key=_bytes(key), value=value),
            lsp_pb2.PutResponse,
            metadata=self._metadata,
        )
        return int(response.revision)

    async def delete(self, key: str | bytes, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        response = await self.channel.unary_unary(
            _STORE + "Delete",
            lsp_pb2.DeleteRequest(store_id=self.store_id, key=_bytes(key), prefix=prefix),
            lsp_pb2.DeleteResponse,
            metadata=self._metadata,
        )
        return int(response.deleted)

    async def scan(self, prefix: str | bytes, limit: int = 0) -> tuple[list[LspValue], int]:
        """Every key under ``prefix`` (key order) and the revision read at."""
        call = self.channel.unary_stream(
            _STORE + "Scan",
            lsp_pb2.ScanRequest(store_id=self.store_id, key_prefix=_bytes(prefix), limit=limit),
            lsp_pb2.ScanResponse,
            metadata=self._metadata,
        )
        values: list[LspValue] = []
        revision = 0
        async for response in call:
            revision = int(response.revision)
            values.extend(_value(kv) for kv in response.kvs)
        return values, revision

    def watch(self, prefix: str | bytes, start_revision: int = 0) -> LspWatch:
        """Watch every key under ``prefix`` (from ``start_revision``; 0: from now)."""
        call = self.channel.unary_stream(
            _STORE + "Watch",
            lsp_pb2.WatchRequest(
                store_id=self.store_id, key_prefix=_bytes(prefix), start_revision=start_revision
            ),
            lsp_pb2.WatchEvent,
            metadata=self._metadata,
        )
        return LspWatch(call)

    async def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(CancelledError):
            await self.channel.close()
