"""
The daemon of ``bench/registry.py``'s services.  ``mode`` ``ready`` (default): connect to LSP,
report ready, wait.  ``mode`` ``load``: measure LSP get/put/watch throughput and the same
operations over the node's etcd API (same client stack, ``lattice.grpc``), print one
``BENCH-LSP ...`` line, then report ready.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import react

from lattice.lsp.client import DaemonEnvironment, LspClient, report_ready

CONCURRENCY = 16
VALUE = b"v" * 100


async def _rate(ops: int, call: Callable[[int], Awaitable[Any]]) -> float:
    numbers = iter(range(ops))

    async def worker() -> None:
        for i in numbers:
            await call(i)

    start = time.perf_counter()
    await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(CONCURRENCY)])
    return ops / (time.perf_counter() - start)


async def _watch_rate(ops: int, events: Any, put: Callable[[int], Awaitable[Any]]) -> float:
    done: Deferred[None] = Deferred()
    seen = 0

    async def consume() -> None:
        nonlocal seen
        async for count in events:
            seen += count
            if seen >= ops and not done.called:
                done.callback(None)
                return

    Deferred.fromCoroutine(consume())
    start = time.perf_counter()
    await _rate(ops, put)
    await done
    return ops / (time.perf_counter() - start)


async def load(reactor: Any, client: LspClient, etcd: str, ops: int) -> dict[str, float]:
    # Imported here: the plain daemons start faster without the KV package.
    from lattice.grpc import connect_channel
    from lattice.kv import prefix_end
    from lattice.kv._proto import rpc_pb2

    results: dict[str, float] = {}
    results["lsp_put"] = await _rate(ops, lambda i: client.put(f"/bench/l/{i:07}", VALUE))
    results["lsp_get"] = await _rate(ops, lambda i: client.get(f"/bench/l/{i:07}"))
    watch = client.watch("/bench/lw/")
    await watch.established()

    async def lsp_events() -> Any:
        async for _ in watch:
            yield 1

    results["lsp_watch"] = await _watch_rate(
        ops, lsp_events(), lambda i: client.put(f"/bench/lw/{i:07}", VALUE)
    )
    watch.cancel()

    host, port = etcd.rsplit(":", 1)
    channel = await connect_channel(
        reactor, clientFromString(reactor, f"tcp:{host}:{port}"), authority=etcd
    )

    def put(key: str) -> Awaitable[Any]:
        return channel.unary_unary(
            "/etcdserverpb.KV/Put",
            rpc_pb2.PutRequest(key=key.encode(), value=VALUE),
            rpc_pb2.PutResponse,
        )

    results["etcd_put"] = await _rate(ops, lambda i: put(f"/bench/e/{i:07}"))
    results["etcd_get"] = await _rate(
        ops,
        lambda i: channel.unary_unary(
            "/etcdserverpb.KV/Range",
            rpc_pb2.RangeRequest(key=f"/bench/e/{i:07}".encode()),
            rpc_pb2.RangeResponse,
        ),
    )
    call = channel.stream_stream("/etcdserverpb.Watch/Watch", rpc_pb2.WatchResponse)
    await call.send(
        rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=b"/bench/ew/", range_end=prefix_end(b"/bench/ew/")
            )
        )
    )
    created = await call.receive()
    assert created is not None and created.created

    async def etcd_events() -> Any:
        async for response in call:
            yield len(response.events)

    results["etcd_watch"] = await _watch_rate(
        ops, etcd_events(), lambda i: put(f"/bench/ew/{i:07}")
    )
    call.cancel()
    await channel.close()
    return results


async def run(reactor: Any) -> None:
    env = DaemonEnvironment.from_environ()
    client = await LspClient.connect(reactor, env.address, env.token, env.service_id)
    if env.config.get("mode") == "load":
        results = await load(reactor, client, str(env.config["etcd"]), int(env.config["ops"]))
        line = " ".join(f"{name}={value:.0f}" for name, value in results.items())
        sys.stdout.write(f"BENCH-LSP {line}\n")
    report_ready()
    await Deferred()


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
