"""
Lattice's KV store against Debian's etcd, side by side on loopback.

Run from the repository root (needs the ``etcd-server`` package)::

    .venv/bin/python bench/kv_vs_etcd.py [--seconds 3] [--keys 100000]

Both servers run as child processes with fresh data directories: ``etcd`` (3.4, default
settings: fsync on every commit) and ``twistd -n lattice`` with only the KV store
(``durability = sync``).  This one process is the client for both, with grpcio's asyncio API
and the same workload:

- ``put`` at concurrency 1, 16 and 64 (distinct keys, 100-byte values), for ``--seconds`` each;
- ``range`` (single-key Range of existing keys) at concurrency 1, 16 and 64;
- watch delivery: 1 and 100 Watch streams on one prefix while 16 writers put 2000 keys;
  events delivered per second across all watchers;
- RSS of the server process after loading ``--keys`` keys (Txns of 100 puts).

It prints a table and, last, ``kv_vs_etcd put64=<r> range64=<r> watch100=<r> rss=<r>`` where
each ratio is Lattice/etcd (for RSS lower is better).
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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lattice.kv._proto import rpc_pb2 as pb  # noqa: E402

VALUE = b"v" * 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_etcd(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("etcd is not installed (Debian package etcd-server)")
    client, peer = _free_port(), _free_port()
    process = subprocess.Popen(
        [
            etcd,
            "--data-dir", str(directory / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--log-level", "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, client


def start_lattice(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = directory / "lattice.ini"
    config.write_text(
        f"[node]\nstate_dir = {directory / 'lattice'}\n"
        "[telemetry]\nenabled = false\n[discovery]\nenabled = false\n"
        "[kv]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\n"
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
            # Keep draining the log so the child never blocks on a full pipe.
            threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
            return process, int(match.group(1))
    raise SystemExit("lattice exited before listening")


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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
        self.txn = self.channel.unary_unary(
            "/etcdserverpb.KV/Txn",
            request_serializer=pb.TxnRequest.SerializeToString,
            response_deserializer=pb.TxnResponse.FromString,
        )
        self.watch = self.channel.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=pb.WatchRequest.SerializeToString,
            response_deserializer=pb.WatchResponse.FromString,
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
) -> float:
    """Operations per second of ``concurrency`` workers calling ``call(worker, i)``."""
    stop = time.monotonic() + seconds
    counts = [0] * concurrency

    async def worker(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            await call(n, i)
            i += 1
        counts[n] = i

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return sum(counts) / (time.monotonic() - started)


async def watch_rate(client: Client, watchers: int, events: int, tag: str) -> float:
    prefix = f"watch/{tag}/".encode()
    received = [0] * watchers
    done = asyncio.Event()
    total = watchers * events
    created = 0
    all_created = asyncio.Event()

    async def watch(n: int) -> None:
        nonlocal created
        queue: asyncio.Queue[pb.WatchRequest] = asyncio.Queue()
        await queue.put(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(key=prefix, range_end=prefix[:-1] + b"0")
            )
        )

        async def requests() -> AsyncIterator[pb.WatchRequest]:
            while True:
                yield await queue.get()

        call = client.watch(requests())
        async for response in call:
            if response.created:
                created += 1
                if created == watchers:
                    all_created.set()
            received[n] += len(response.events)
            if sum(received) >= total:
                done.set()
            if received[n] >= events:
                break
        call.cancel()

    tasks = [asyncio.ensure_future(watch(n)) for n in range(watchers)]
    await asyncio.wait_for(all_created.wait(), 60)
    started = time.monotonic()
    counter = iter(range(events))

    async def writer() -> None:
        for i in counter:
            await client.put(pb.PutRequest(key=prefix + b"%06d" % i, value=VALUE))

    await asyncio.gather(*(writer() for _ in range(16)))
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.monotonic() - started
    for task in tasks:
        task.cancel()
    return sum(received) / elapsed


async def measure(name: str, port: int, pid: int, seconds: float, keys: int) -> dict[str, float]:
    client = Client(port)
    await client.ready()
    results: dict[str, float] = {}
    for concurrency in (1, 16, 64):

        async def put(n: int, i: int, c: int = concurrency) -> None:
            await client.put(pb.PutRequest(key=b"put/%d/%d/%d" % (c, n, i), value=VALUE))

        results[f"put{concurrency}"] = await closed_loop(concurrency, seconds, put)
    for concurrency in (1, 16, 64):

        async def get(n: int, i: int) -> None:
            await client.range(pb.RangeRequest(key=b"put/64/%d/%d" % (n % 64, i % 50)))

        results[f"range{concurrency}"] = await closed_loop(concurrency, seconds, get)
    results["watch1"] = await watch_rate(client, 1, 2000, "one")
    results["watch100"] = await watch_rate(client, 100, 2000, "hundred")
    batch = 100
    loaded = 0
    semaphore = asyncio.Semaphore(16)

    async def load(start: int) -> None:
        async with semaphore:
            ops = [
                pb.RequestOp(request_put=pb.PutRequest(key=b"load/%08d" % k, value=VALUE))
                for k in range(start, min(start + batch, keys))
            ]
            await client.txn(pb.TxnRequest(success=ops))

    await asyncio.gather(*(load(start) for start in range(0, keys, batch)))
    loaded = keys
    results["rss_mib"] = rss_kib(pid) / 1024
    print(f"{name}: loaded {loaded} keys", file=sys.stderr)
    await client.channel.close()
    return results


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
    parser.add_argument("--keys", type=int, default=100_000)
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    try:
        results: dict[str, dict[str, float]] = {}
        for name, start in (("etcd", start_etcd), ("lattice", start_lattice)):
            process, port = start(directory)
            try:
                results[name] = asyncio.run(
                    measure(name, port, process.pid, options.seconds, options.keys)
                )
            finally:
                stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    etcd, lattice = results["etcd"], results["lattice"]
    print(f"{'measure':<12}{'etcd':>12}{'lattice':>12}{'ratio':>8}")
    for key in etcd:
        unit = "MiB" if key == "rss_mib" else "/s"
        print(
            f"{key:<12}{etcd[key]:>10.0f}{unit:>2}{lattice[key]:>10.0f}{unit:>2}"
            f"{lattice[key] / etcd[key]:>8.2f}"
        )
    ratio = {key: lattice[key] / etcd[key] for key in etcd}
    print(
        f"kv_vs_etcd put64={ratio['put64']:.2f} range64={ratio['range64']:.2f} "
        f"watch100={ratio['watch100']:.2f} rss={ratio['rss_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
