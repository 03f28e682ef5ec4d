"""
Federation throughput: signed, acknowledged messages per second between two
Lattice daemons on loopback.

Run from the repository root::

    .venv/bin/python bench/federation_messages.py [--messages 3000] [--concurrency 32]

Two real C{twistd lattice} children (sender S, receiver R, SQLite stores,
port 0) federate through R as bootstrap server.  This process is the
application on both sides: it submits messages to S's admin listener
(C{POST /api/v1/messages/send}) and is R's webhook (a Twisted web server
that answers 200).  A message counts once S holds R's verified, signed
acknowledgement for it, which R only gives after the webhook accepted it.
The clock runs from the first submission until every message is delivered.
The per-peer rate limit of R is raised for the run (100 requests per minute
by default would cap any benchmark).

The last line is ``federation_messages messages=N seconds=T msgs_per_s=R``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, task
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.web import resource, server

from lattice.config import section_classes

ROOT = Path(__file__).resolve().parent.parent


class Hook(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def render_POST(self, request: Any) -> bytes:
        request.content.read()
        self.count += 1
        request.setHeader(b"Content-Type", b"application/json")
        return b"{}"


def write_ini(directory: Path, name: str, webhook: str, extra: str) -> Path:
    from dataclasses import fields

    lines = []
    for section, cls in section_classes().items():
        if section != "discovery" and "enabled" in {f.name for f in fields(cls)}:
            lines.append(f"[{section}]\nenabled = false\n")
    lines.append(f"[node]\nstate_dir = {directory / name}\n[log]\nlevel = warn\n")
    lines.append(
        "[discovery]\nenabled = true\n"
        f"server_name = {name}\nlisten = tcp:0:interface=127.0.0.1\n"
        "admin_listen = tcp:0:interface=127.0.0.1\nallow_private_addresses = true\n"
        "peer_rate_limit = 1000000\ngossip_interval = 1h\ndelivery_interval = 1h\n"
        f"webhook_url = {webhook}\nwebhook_secret_file = {directory / 'secret'}\n{extra}"
    )
    path = directory / f"{name}.ini"
    path.write_text("".join(lines))
    return path


def start(directory: Path, name: str, config: Path, bootstrap: str = "") -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATTICE_")}
    env["PYTHONPATH"] = str(ROOT)
    if bootstrap:
        env["LATTICE_BOOTSTRAP_SERVERS"] = bootstrap
    log = open(directory / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "twisted", "lattice", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(ROOT),
    )


async def admin(reactor: Any, base: str, method: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers: dict[bytes | str, bytes | str] = {"Content-Type": "application/json"}
    response = await treq.request(
        method,
        base + path,
        data=data,
        headers=headers,
        reactor=reactor,
    )
    content = await treq.content(response)
    return response.code, json.loads(content) if content else None


async def health(reactor: Any, directory: Path, name: str) -> dict[str, Any]:
    # the admin TCP port is only known from /health, which the node's admin
    # socket also serves; read it there
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.web.client import Agent
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    @implementer(IAgentEndpointFactory)
    class Unix:
        def endpointForURI(self, uri: Any) -> Any:
            return UNIXClientEndpoint(reactor, str(directory / name / "admin.sock"))

    client = treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, Unix()))
    for _ in range(300):
        try:
            response = await client.get("http://unix/health")
            if response.code == 200:
                return dict(json.loads(await treq.content(response)))
        except Exception:
            pass
        await task.deferLater(reactor, 0.1, lambda: None)
    raise RuntimeError(f"{name} did not start; see {directory / name}.log")


async def main(reactor: Any, args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="lattice-bench-"))
    (directory / "secret").write_text("bench-secret\n")
    hook = Hook()
    port = reactor.listenTCP(0, server.Site(hook), interface="127.0.0.1")
    webhook = f"http://127.0.0.1:{port.getHost().port}/hook"
    children = []
    try:
        receiver = start(directory, "R", write_ini(directory, "R", webhook, ""))
        children.append(receiver)
        r = await health(reactor, directory, "R")
        sender = start(directory, "S", write_ini(directory, "S", webhook, ""), r["endpoints"][0])
        children.append(sender)
        s = await health(reactor, directory, "S")
        base = "http://" + s["listeners"]["admin"]
        rbase = "http://" + r["listeners"]["admin"]
        for _ in range(3):
            await admin(reactor, base, "POST", "/api/v1/announce", {"force": True})
            await admin(reactor, rbase, "POST", "/api/v1/announce", {"force": True})
        total = args.messages
        limit = DeferredSemaphore(args.concurrency)

        async def send(i: int) -> None:
            code, body = await admin(
                reactor,
                base,
                "POST",
                "/api/v1/messages/send",
                {
                    "to_address": "bob@R",
                    "from_address": "alice@S",
                    "content": f"message {i}",
                },
            )
            if code != 200:
                raise RuntimeError(f"send failed: {code} {body}")

        # warm-up: one message end to end
        await send(-1)
        while hook.count < 1:
            await task.deferLater(reactor, 0.05, lambda: None)
        hook.count = 0
        started = time.perf_counter()
        await defer.gatherResults([limit.run(send, i) for i in range(total)])
        submitted = time.perf_counter() - started
        while True:
            _, state = await admin(reactor, base, "GET", "/health")
            if state["queues"]["pending"] == 0 and hook.count >= total:
                break
            await admin(reactor, base, "POST", "/api/v1/maintenance/process_messages", {})
            await task.deferLater(reactor, 0.02, lambda: None)
        elapsed = time.perf_counter() - started
        _, state = await admin(reactor, base, "GET", "/health")
        failed = state["queues"]["failed"]
        rate = total / elapsed
        print(
            f"submitted {total} messages in {submitted:.2f}s; "
            f"all acknowledged after {elapsed:.2f}s; webhook calls {hook.count}; failed {failed}",
            flush=True,
        )
        print(
            f"federation_messages messages={total} seconds={elapsed:.2f} "
            f"msgs_per_s={rate:.0f} failed={failed}",
            flush=True,
        )
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(15)
        await port.stopListening()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    arguments = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
