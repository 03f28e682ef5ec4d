"""
Registry benchmark: time from a registry write to the daemon reporting ready, and LSP
throughput beside the same operations over the etcd API on the same node.

Run from the repository root::

    .venv/bin/python bench/registry.py [--services 50] [--ops 2000]

A real node (``twistd -n lattice``, KV store and registry) runs in a fresh directory with a
third-party plugin declaring ``--services`` descriptors (``bench.svc-NN``, consent
``AlwaysAllow``), each a small daemon that connects to LSP and reports ready.  This process
is an etcd v3 client (grpcio) of the node:

- ready latency: for each service in turn, put ``/services/bench.svc-NN/config`` and wait
  until the watch on ``/nodes/`` shows its advertisement with ``status: Running`` (so the
  time covers the watch, consent and policy, spawning the daemon, its LSP connection, its
  readiness line and the advertisement written back);
- throughput: one more service (``bench.lsp-load``) measures, from inside a daemon, LSP
  ``put``/``get`` (16 in flight) and watch delivery (events/s while 16 writers put), and
  the same operations over the node's etcd API with the same client stack.

The last line reads ``registry ready_p50_ms=.. ready_p99_ms=.. lsp_put=.. etcd_put=..
lsp_get=.. etcd_get=.. lsp_watch=.. etcd_watch=..`` (operations per second).  Required:
``ready_p99_ms`` under 1000.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lattice.kv import prefix_end  # noqa: E402
from lattice.kv._proto import rpc_pb2  # noqa: E402

PLUGIN = """
from lattice.registry import ServiceDescriptor

_DAEMON = ("{{python}}", {daemon!r})
_SCHEMA = {{
    "type": "object",
    "properties": {{
        "mode": {{"type": "string"}}, "etcd": {{"type": "string"}}, "ops": {{"type": "integer"}}
    }},
}}
{descriptors}
"""


def _write_plugin(directory: Path, count: int) -> list[str]:
    plugins = directory / "thirdparty" / "lattice" / "plugins"
    plugins.mkdir(parents=True)
    ids = [f"bench.svc-{i:02}" for i in range(count)] + ["bench.lsp-load"]
    lines = [
        f"d{n} = ServiceDescriptor(id={ident!r}, description='bench', prefixes=('/bench/',), "
        f"argv=_DAEMON, schema=_SCHEMA)"
        for n, ident in enumerate(ids)
    ]
    daemon = str(ROOT / "bench" / "_registry_daemon.py")
    (plugins / "bench_registry.py").write_text(
        PLUGIN.format(daemon=daemon, descriptors="\n".join(lines))
    )
    return ids


class Node:
    """The node under test and its log lines."""

    def __init__(self, directory: Path, ids: list[str]) -> None:
        state = directory / "state"
        state.mkdir(mode=0o700)
        consent = {ident: "AlwaysAllow" for ident in ids}
        (state / "service-consent.json").write_text(json.dumps({"consent": consent}))
        config = directory / "lattice.ini"
        config.write_text(
            "[node]\nstate_dir = state\n[telemetry]\nenabled = false\n"
            "[kv]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\n"
            "[registry]\nenabled = true\n[log]\nlevel = info\n"
        )
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("LATTICE_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        env["PYTHONPATH"] = f"{directory / 'thirdparty'}:{ROOT}"
        twistd = str(Path(sys.executable).parent / "twistd")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "lattice", "--config", str(config)],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace")
            if os.environ.get("BENCH_VERBOSE"):
                sys.stderr.write(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"timed out waiting for {pattern!r}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Adverts:
    """A Watch on ``/nodes/``: records when each service is first advertised Running."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.running: dict[str, float] = {}
        self.changed = threading.Condition()
        watch = channel.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=rpc_pb2.WatchRequest.SerializeToString,
            response_deserializer=rpc_pb2.WatchResponse.FromString,
        )
        request = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=b"/nodes/", range_end=prefix_end(b"/nodes/")
            )
        )
        self._closed = threading.Event()

        def requests() -> Iterator[rpc_pb2.WatchRequest]:
            yield request
            self._closed.wait()  # half-closing would end the watch

        self._responses = watch(requests())
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for response in self._responses:
                now = time.perf_counter()
                for event in response.events:
                    if not event.kv.value:
                        continue
                    service = event.kv.key.decode().rsplit("/", 1)[-1]
                    if json.loads(event.kv.value).get("status") == "Running":
                        with self.changed:
                            self.running.setdefault(service, now)
                            self.changed.notify_all()
        except grpc.RpcError:
            pass

    def wait(self, service: str, timeout: float = 30.0) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: service in self.running, timeout):
                raise SystemExit(f"{service} never became ready")
            return self.running[service]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--ops", type=int, default=2000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        directory = Path(tmp)
        ids = _write_plugin(directory, options.services)
        node = Node(directory, ids)
        try:
            port = int(node.wait_for(r"kv: listening on 127\.0\.0\.1:(\d+)").group(1))
            node.wait_for(r"Registry: watching /services/")
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            put = channel.unary_unary(
                "/etcdserverpb.KV/Put",
                request_serializer=rpc_pb2.PutRequest.SerializeToString,
                response_deserializer=rpc_pb2.PutResponse.FromString,
            )
            adverts = Adverts(channel)
            time.sleep(0.2)  # let the watch be created before the first write
            latencies = []
            for ident in ids[:-1]:
                start = time.perf_counter()
                put(
                    rpc_pb2.PutRequest(
                        key=f"/services/{ident}/config".encode(), value=b'{"policy": "LocalOnly"}'
                    )
                )
                latencies.append(adverts.wait(ident) - start)
            load = {"policy": "LocalOnly", "mode": "load", "etcd": f"127.0.0.1:{port}"}
            load["ops"] = options.ops
            put(
                rpc_pb2.PutRequest(
                    key=b"/services/bench.lsp-load/config", value=json.dumps(load).encode()
                )
            )
            match = node.wait_for(r"BENCH-LSP (.*)$", timeout=300)
            throughput = dict(item.split("=") for item in match.group(1).split())
            adverts._closed.set()
            channel.close()
        finally:
            node.stop()
    p50 = percentile(latencies, 0.50) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    print(
        f"services: {len(latencies)}  ready latency p50 {p50:.0f} ms  p99 {p99:.0f} ms  "
        f"max {max(latencies) * 1000:.0f} ms"
    )
    print(f"{'operation':<10}{'LSP ops/s':>12}{'etcd API ops/s':>16}")
    for name in ("put", "get", "watch"):
        print(f"{name:<10}{throughput['lsp_' + name]:>12}{throughput['etcd_' + name]:>16}")
    fields = {
        "ready_p50_ms": f"{p50:.0f}",
        "ready_p99_ms": f"{p99:.0f}",
        **{
            name: throughput[name]
            for name in ("lsp_put", "etcd_put", "lsp_get", "etcd_get", "lsp_watch", "etcd_watch")
        },
    }
    print("registry " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
