"""
Lattice in front of a three-member etcd cluster against the same client talking to the
cluster directly, in the same run.

Run from the repository root (needs the ``etcd-server`` package)::

    .venv/bin/python bench/cluster.py [--seconds 3] [--concurrency 32]

Three ``etcd`` members (3.4, default fsync settings) run on loopback, and one
``twistd -n lattice`` with ``[kv] backend = etcd`` in front of them.  This process is the
client for both, with grpcio's asyncio API and the same closed-loop workload:

- ``put``: distinct keys, 100-byte values, ``--concurrency`` workers for ``--seconds``;
- ``range``: linearizable single-key Range of existing keys, same concurrency.

"Direct" talks to the first member, the one Lattice forwards to.  It prints a table and,
last, ``cluster put_ratio=<r> range_ratio=<r> p99_ratio=<r>``: throughput ratios
Lattice/direct (higher is better) and the ratio of the p99 latencies over both operations
(lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lattice.kv._proto import rpc_pb2 as pb  # noqa: E402

VALUE = b"v" * 100
MEMBERS = ("m0", "m1", "m2")


def _free_port() -> int:
    # etcd needs every peer URL before any member starts: pick ports by binding port 0.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(directory: Path) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("etcd is not installed (Debian package etcd-server)")
    clients = [_free_port() for _ in MEMBERS]
    peers = [_free_port() for _ in MEMBERS]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(MEMBERS, peers, strict=True))
    processes = []
    for name, client, peer in zip(MEMBERS, clients, peers, strict=True):
        processes.append(
            subprocess.Popen(
                [
                    etcd,
                    "--name",
                    name,
                    "--data-dir",
                    str(directory / name),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{client}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{client}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-cluster",
                    initial,
                    "--initial-cluster-state",
                    "new",
                    "--log-level",
                    "error",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    deadline = time.monotonic() + 30
    for client in clients:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("etcd cluster not healthy")
            time.sleep(0.1)
    return processes, clients


def start_lattice(directory: Path, endpoints: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    config = directory / "lattice.ini"
    urls = ", ".join(f"http://127.0.0.1:{port}" for port in endpoints)
    config.write_text(
        f"[node]\nstate_dir = {directory / 'lattice'}\n"
        "[telemetry]\nenabled = false\n[discovery]\nenabled = false\n"
        "[kv]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\n"
        f"backend = etcd\netcd_endpoints = {urls}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "lattice",
         "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(rb"kv: listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
            return process, int(match.group(1))
    raise SystemExit("lattice exited before listening")


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


class Client:
    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.put = self.channel.unary_unary(
            "/etcdserverpb.KV/Put",
            request_serializer=pb.PutRequest.SerializeToString,
            response_deserializer=pb.PutResponse.FromString,
        )
        self.range = self.channel.unary_unary(
            "/etcdserverpb.KV/Range",
            request_serializer=pb.RangeRequest.SerializeToString,
            response_deserializer=pb.RangeResponse.FromString,
        )

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.range(pb.RangeRequest(key=b"ready"), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def closed_loop(
    concurrency: int, seconds: float, call: Callable[[int, int], Awaitable[object]]
) -> tuple[float, list[float]]:
    """Operations per second and every latency of ``concurrency`` workers."""
    stop = time.monotonic() + seconds
    latencies: list[float] = []

    async def worker(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            await call(n, i)
            latencies.append(time.perf_counter() - started)
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return len(latencies) / (time.monotonic() - started), latencies


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def measure(name: str, port: int, seconds: float, concurrency: int) -> dict[str, float]:
    client = Client(port)
    await client.ready()
    tag = name.encode()
    await client.put(pb.PutRequest(key=b"warm/" + tag, value=VALUE))

    async def put(worker: int, i: int) -> None:
        await client.put(pb.PutRequest(key=b"%s/%d/%d" % (tag, worker, i), value=VALUE))

    async def get(worker: int, i: int) -> None:
        response = await client.range(pb.RangeRequest(key=b"%s/%d/%d" % (tag, worker, i % 50)))
        assert response.kvs or i % 50 >= 0

    put_rate, put_latencies = await closed_loop(concurrency, seconds, put)
    range_rate, range_latencies = await closed_loop(concurrency, seconds, get)
    await client.channel.close()
    return {
        "put/s": put_rate,
        "range/s": range_rate,
        "put_p99_ms": p99(put_latencies) * 1000,
        "range_p99_ms": p99(range_latencies) * 1000,
        "p99_ms": p99(put_latencies + range_latencies) * 1000,
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    members: list[subprocess.Popen[bytes]] = []
    lattice: subprocess.Popen[bytes] | None = None
    try:
        members, clients = start_cluster(directory)
        lattice, port = start_lattice(directory, clients)
        results = {
            "direct": asyncio.run(
                measure("direct", clients[0], options.seconds, options.concurrency)
            ),
            "lattice": asyncio.run(measure("lattice", port, options.seconds, options.concurrency)),
        }
    finally:
        if lattice is not None:
            stop(lattice)
        for member in members:
            stop(member)
        shutil.rmtree(directory, ignore_errors=True)
    direct, through = results["direct"], results["lattice"]
    print(f"{'measure':<14}{'direct':>12}{'lattice':>12}{'ratio':>8}")
    for key in direct:
        print(
            f"{key:<14}{direct[key]:>12.1f}{through[key]:>12.1f}{through[key] / direct[key]:>8.2f}"
        )
    print(
        f"cluster put_ratio={through['put/s'] / direct['put/s']:.2f} "
        f"range_ratio={through['range/s'] / direct['range/s']:.2f} "
        f"p99_ratio={through['p99_ms'] / direct['p99_ms']:.2f}"
    )


if __name__ == "__main__":
    main()
