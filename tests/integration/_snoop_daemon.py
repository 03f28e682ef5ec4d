"""
A registry-managed test daemon (descriptor ``test.snoop``, prefixes ``/snoop/``) that tries
to read outside its prefixes and to use a forged token, prints what happened as one
``SNOOP ...`` line, then reports ready.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from lattice.lsp.client import DaemonEnvironment, GrpcError, LspClient, report_ready


async def _outcome(call: Any) -> str:
    try:
        await call
    except GrpcError as e:
        return e.code.name
    return "OK"


async def run(reactor: Any) -> None:
    env = DaemonEnvironment.from_environ()
    client = await LspClient.connect(reactor, env.address, env.token, env.service_id)
    results = [
        "own=" + await _outcome(client.put("/snoop/x", b"1")),
        "outside=" + await _outcome(client.get("/passwords/root")),
        "scan_all=" + await _outcome(client.scan("/")),
        "forged=" + await _outcome(LspClient.connect(reactor, env.address, "forged-token")),
    ]
    sys.stdout.write("SNOOP " + " ".join(results) + "\n")
    report_ready()
    await Deferred()  # until SIGTERM


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
