"""
``python -m lattice.irc`` (console script ``lattice-irc``): the IRC gateway daemon.

Started by the node's registry, which passes the LSP address, token, port and settings in the
environment (see :mod:`lattice.lsp.client`).  Logs go to stderr (the node logs them line by
line); readiness goes to stdout as ``LATTICE-READY port=N endpoint=tcp://HOST:N``.  Exits with
status 1 if the node's LSP connection is lost (the node restarts it).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from lattice.irc._gateway import IrcFactory, IrcGateway
from lattice.lsp.client import DaemonEnvironment, LspClient, report_ready

__all__ = ["main", "run"]

_log = Logger()


async def run(reactor: Any, environment: DaemonEnvironment) -> None:
    """Connect to the node, open the chat store, serve IRC until stopped."""
    config = environment.config
    client = await LspClient.connect(
        reactor,
        environment.address,
        environment.token,
        environment.service_id,
        environment.store_id,
    )
    await client.open_store()
    gateway = IrcGateway(
        client,
        server_name=str(config.get("server_name") or "lattice-irc"),
        channels=list(config.get("channels") or []),
        history=int(config.get("history", 50)),
    )
    await gateway.start()
    bind = str(config.get("bind") or "127.0.0.1")
    port_number = environment.port if environment.port is not None else 6667
    host = bind.replace(":", "\\:")
    port = await serverFromString(reactor, f"tcp:{port_number}:interface={host}").listen(
        IrcFactory(gateway)
    )
    bound = port.getHost().port
    shown = f"[{bind}]" if ":" in bind else bind
    _log.info(
        "lattice-irc serving {store} on {bind}:{port} (LSP revision {revision})",
        store=client.store_id,
        bind=bind,
        port=bound,
        revision=gateway.revision,
    )
    report_ready(bound, (f"tcp://{shown}:{bound}",))

    stopping: Deferred[None] = Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: stopping.callback(None))
    first: Deferred[Any] = DeferredList(
        [stopping, gateway.done, client.channel.protocol.lost],
        fireOnOneCallback=True,
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    await first
    if not stopping.called:
        raise SystemExit("lost the node's LSP connection or the chat store watch")
    gateway.stop()
    await port.stopListening()


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    try:
        environment = DaemonEnvironment.from_environ()
    except (KeyError, ValueError) as e:
        sys.stderr.write(f"lattice-irc: run me from a Lattice node's registry ({e} missing)\n")
        raise SystemExit(2) from None
    react(lambda reactor: Deferred.fromCoroutine(run(reactor, environment)))


if __name__ == "__main__":
    main()
