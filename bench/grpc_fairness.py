"""
gRPC fairness benchmark: Lattice's gRPC server against grpcio's, alone and next to HTTP load.

Run from the repository root::

    .venv/bin/python bench/grpc_fairness.py [--rounds 3] [--duration 3] [--http-rate 1000]

This process is the grpcio client for every measurement.  It measures unary ``UnaryEcho``
throughput and p99 latency on loopback (16 calls in flight on one channel) against

(a) grpcio's own asyncio server (``grpc.aio``) on plain asyncio, in a child process;
(b) Lattice's server (``lattice.grpc``) alone, in a child process on Twisted's default reactor;
(c) the same Lattice server process while it also answers HTTP/1.1 requests on the same port,
    driven by a Python load generator in another child process.

(a), (b) and (c) are measured in turn for several rounds, so that noise from other work on
the machine hits all three alike; the summary uses the median of each.  The HTTP load is
paced (``--http-rate``, default 1000 requests/s; ``0`` for a closed loop as fast as the server
answers), so that the load generator does not take the CPU the measured processes need.

The last line is ``grpc_fairness standalone_ratio=<b/a> mixed_ratio=<c/b> mixed_p99_ms=<p99 c>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/lattice.grpc.testing.Echo/UnaryEcho"


def _child(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        env=env,
    )


def _read_port(process: subprocess.Popen[bytes]) -> int:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"child {process.args!r} exited without reporting its port")
    return int(line)


def _stop(process: subprocess.Popen[bytes]) -> bytes:
    process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


# Servers and load generator (child processes).


def serve_grpcio() -> None:
    """(a): grpcio's asyncio server with a generic handler for UnaryEcho."""
    import grpc

    from lattice.grpc.testing.echo_pb2 import EchoRequest, EchoResponse

    async def unary_echo(request: EchoRequest, context: object) -> EchoResponse:
        return EchoResponse(message=request.message, payload=request.payload)

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "lattice.grpc.testing.Echo",
            {
                "UnaryEcho": grpc.unary_unary_rpc_method_handler(
                    unary_echo,
                    request_deserializer=EchoRequest.FromString,
                    response_serializer=EchoResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        print(port, flush=True)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


def serve_lattice() -> None:
    """(b) and (c): Lattice's server on the default reactor, with HTTP/1.1 on the same port."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from lattice.grpc.testing import echo_factory

    root = Resource()
    root.putChild(b"healthz", Data(b"ok\n", "text/plain"))
    site = Site(root)
    site.noisy = False
    factory = echo_factory(reactor, http_fallback=site)
    factory.noisy = False

    def report(port: object) -> None:
        print(port.getHost().port, flush=True)  # type: ignore[attr-defined]

    serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory).addCallback(report)
    reactor.run()


def http_load(port: int, connections: int, rate: float) -> None:
    """
    Keep-alive HTTP/1.1 GET /healthz on *connections* connections until interrupted.

    With *rate* > 0 the requests are paced to that many per second in total (so that the load
    generator does not take the CPU the measured processes need); 0 means as fast as answered.
    """
    count = 0
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    interval = connections / rate if rate > 0 else 0.0

    async def worker(offset: float) -> None:
        nonlocal count
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        next_at = loop.time() + offset
        while True:
            if interval:
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            writer.write(request)
            headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in headers.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            count += 1

    async def main() -> None:
        tasks = [
            asyncio.ensure_future(worker(i * interval / connections)) for i in range(connections)
        ]
        print(0, flush=True)
        await asyncio.gather(*tasks)

    start = time.monotonic()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    print(f"{count / (time.monotonic() - start):.0f}", flush=True)


# The client (this process).


def measure(port: int, duration: float, concurrency: int) -> tuple[float, float]:
    """Run unary calls for *duration* seconds; return (calls per second, p99 in ms)."""
    import grpc

    from lattice.grpc.testing.echo_pb2 import EchoRequest, EchoResponse

    async def main() -> tuple[float, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                METHOD,
                request_serializer=EchoRequest.SerializeToString,
                response_deserializer=EchoResponse.FromString,
            )
            request = EchoRequest(message="fairness", payload=b"p" * 64)
            await call(request, timeout=10)
            latencies: list[float] = []
            measuring = False
            stop = False

            async def worker() -> None:
                while not stop:
                    started = time.perf_counter()
                    await call(request, timeout=10)
                    if measuring:
                        latencies.append(time.perf_counter() - started)

            workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
            await asyncio.sleep(min(1.0, duration / 4))  # warm-up
            measuring = True
            started = time.perf_counter()
            await asyncio.sleep(duration)
            measuring = False
            elapsed = time.perf_counter() - started
            stop = True
            await asyncio.gather(*workers)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("inf")
        return len(latencies) / elapsed, p99

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description="gRPC fairness benchmark")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="(a), (b), (c) are measured in turn this many times; medians are reported",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--http-connections", type=int, default=4)
    parser.add_argument(
        "--http-rate",
        type=float,
        default=1000.0,
        help="HTTP requests per second during (c); 0 for a closed loop as fast as answered",
    )
    parser.add_argument("--role", choices=["grpcio", "lattice", "http-load"], help="internal")
    parser.add_argument("--port", type=int, help="internal")
    options = parser.parse_args()

    if options.role == "grpcio":
        serve_grpcio()
        return
    if options.role == "lattice":
        serve_lattice()
        return
    if options.role == "http-load":
        http_load(options.port, options.http_connections, options.http_rate)
        return

    grpcio_server = _child("--role", "grpcio")
    lattice_server = _child("--role", "lattice")
    results: dict[str, list[tuple[float, float]]] = {"a": [], "b": [], "c": []}
    http_rates: list[str] = []
    try:
        grpcio_port = _read_port(grpcio_server)
        port = _read_port(lattice_server)
        for round_number in range(1, options.rounds + 1):
            a = measure(grpcio_port, options.duration, options.concurrency)
            b = measure(port, options.duration, options.concurrency)
            load = _child(
                "--role",
                "http-load",
                "--port",
                str(port),
                "--http-connections",
                str(options.http_connections),
                "--http-rate",
                str(options.http_rate),
            )
            try:
                _read_port(load)
                c = measure(port, options.duration, options.concurrency)
            finally:
                http_rates.append(_stop(load).decode().strip() or "?")
            for key, value in zip("abc", (a, b, c), strict=True):
                results[key].append(value)
            print(
                f"round {round_number}: a={a[0]:.0f}/s p99={a[1]:.1f}ms"
                f"  b={b[0]:.0f}/s p99={b[1]:.1f}ms"
                f"  c={c[0]:.0f}/s p99={c[1]:.1f}ms (HTTP {http_rates[-1]} req/s)",
                flush=True,
            )
    finally:
        _stop(grpcio_server)
        _stop(lattice_server)

    a, a_p99 = (statistics.median(v) for v in zip(*results["a"], strict=True))
    b, b_p99 = (statistics.median(v) for v in zip(*results["b"], strict=True))
    c, c_p99 = (statistics.median(v) for v in zip(*results["c"], strict=True))
    print(f"(a) grpcio asyncio server: {a:.0f} calls/s, p99 {a_p99:.1f} ms", flush=True)
    print(f"(b) lattice server alone: {b:.0f} calls/s, p99 {b_p99:.1f} ms", flush=True)
    print(
        f"(c) lattice server with HTTP load: {c:.0f} calls/s, p99 {c_p99:.1f} ms"
        f" (HTTP/1.1 on the same port, {options.http_connections} connections,"
        f" served {'/'.join(http_rates)} requests/s)",
        flush=True,
    )
    print(
        f"grpc_fairness standalone_ratio={b / a:.3f} mixed_ratio={c / b:.3f}"
        f" mixed_p99_ms={c_p99:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
