"""
Two Lattice nodes (``[kv] backend = etcd``) in front of a real three-member etcd cluster
(Debian's ``etcd-server``, etcd 3.4) on loopback, driven with the reference gRPC client.
"""

from __future__ import annotations

import json
import queue
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from twisted.trial.unittest import SynchronousTestCase

from lattice.kv._proto import rpc_pb2

from ._etcd_cluster import EtcdCluster
from .test_kv_etcdctl import KVDaemon

UPSTREAM_TIMEOUT = "1s"
# Lattice's request limit; etcd's stays at its default (1.5 MiB), so only Lattice fragments.
MAX_REQUEST_BYTES = 64 * 1024


class Client:
    """The reference gRPC client (grpcio) speaking etcd's API to one endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)

    def _unary(self, service: str, method: str, request: Any, response: Any) -> Any:
        call = self.channel.unary_unary(
            f"/etcdserverpb.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return call(request, timeout=10)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> rpc_pb2.PutResponse:
        response: rpc_pb2.PutResponse = self._unary(
            "KV", "Put", rpc_pb2.PutRequest(key=key, value=value, lease=lease), rpc_pb2.PutResponse
        )
        return response

    def range(
        self, key: bytes, range_end: bytes = b"", serializable: bool = False
    ) -> rpc_pb2.RangeResponse:
        response: rpc_pb2.RangeResponse = self._unary(
            "KV",
            "Range",
            rpc_pb2.RangeRequest(key=key, range_end=range_end, serializable=serializable),
            rpc_pb2.RangeResponse,
        )
        return response

    def get(self, key: bytes, serializable: bool = False) -> bytes | None:
        kvs = self.range(key, serializable=serializable).kvs
        return kvs[0].value if kvs else None

    def watch(
        self, key: bytes, range_end: bytes = b"", *, prev_kv: bool = False, fragment: bool = False
    ) -> queue.SimpleQueue[Any]:
        """Start a watch; responses (or the final error) arrive on the returned queue."""
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        create = rpc_pb2.WatchCreateRequest(
            key=key, range_end=range_end, prev_kv=prev_kv, fragment=fragment
        )
        requests.put(rpc_pb2.WatchRequest(create_request=create))

        def iterate() -> Iterator[Any]:
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        call = self.channel.stream_stream(
            "/etcdserverpb.Watch/Watch",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=rpc_pb2.WatchResponse.FromString,
        )
        responses = call(iterate())
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def pump() -> None:
            try:
                for response in responses:
                    out.put(response)
            except grpc.RpcError as e:
                out.put(e)

        threading.Thread(target=pump, daemon=True).start()
        self._watch_cleanup = (requests, responses)
        return out

    def close(self) -> None:
        cleanup = getattr(self, "_watch_cleanup", None)
        if cleanup is not None:
            cleanup[0].put(None)
            cleanup[1].cancel()
        self.channel.close()


def next_events(responses: queue.SimpleQueue[Any], timeout: float = 10.0) -> list[Any]:
    """The events of the next watch response that has some."""
    return list(next_with_events(responses, timeout).events)


def next_with_events(responses: queue.SimpleQueue[Any], timeout: float = 10.0) -> Any:
    """The next watch response that has events."""
    deadline = time.monotonic() + timeout
    while True:
        response = responses.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(response, Exception):
            raise response
        if response.events:
            return response


def gateway(port: int, route: str, body: Any) -> tuple[int, Any]:
    """``POST /v3/<route>`` to etcd's JSON gateway on a node's KV port."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v3/{route}", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class KVClusterTests(SynchronousTestCase):
    """Two Lattice nodes sharing a three-member etcd cluster."""

    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="lattice-etcd-"))
        self.addCleanup(shutil.rmtree, directory, True)
        self.cluster = EtcdCluster(directory / "etcd")
        (directory / "etcd").mkdir()
        self.addCleanup(self.cluster.stop)
        self.cluster.start_all()
        self.nodes: list[KVDaemon] = []
        self.clients: list[Client] = []
        for name in ("a", "b"):
            node_dir = directory / name
            node_dir.mkdir()
            daemon = KVDaemon(
                node_dir,
                backend="etcd",
                etcd_endpoints=", ".join(self.cluster.endpoints),
                upstream_timeout=UPSTREAM_TIMEOUT,
                max_request_bytes=str(MAX_REQUEST_BYTES),
            )
            self.addCleanup(daemon.stop)
            daemon.start()
            self.nodes.append(daemon)
            client = Client(daemon.endpoint)
            self.addCleanup(client.close)
            self.clients.append(client)
        self.a, self.b = self.clients

    def wait_for(self, check: Any, timeout: float = 15.0) -> Any:
        """Retry ``check`` until it returns a true value (the cluster converges)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
            except grpc.RpcError:
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached")
            time.sleep(0.1)

    def test_write_through_a_read_and_watch_through_b(self) -> None:
        """A write through node A is read, and watched, through node B, in the tenant's keyspace."""
        watch_a = self.a.watch(b"shared/", b"shared0")
        watch_b = self.b.watch(b"shared/", b"shared0")
        watch_b2 = self.b.watch(b"shared/", b"shared0")
        for responses in (watch_a, watch_b, watch_b2):
            created = responses.get(timeout=10)
            self.assertTrue(created.created)
        put = self.a.put(b"shared/x", b"1")
        self.assertEqual(self.b.get(b"shared/x"), b"1")
        self.assertEqual(self.b.get(b"shared/x", serializable=True) or b"1", b"1")
        for responses in (watch_a, watch_b, watch_b2):
            (event,) = next_events(responses)
            self.assertEqual((event.kv.key, event.kv.value), (b"shared/x", b"1"))
            self.assertEqual(event.kv.mod_revision, put.header.revision)
        # Upstream, the key lives under the default tenant's prefix.
        direct = Client(self.cluster.endpoints[0].removeprefix("http://"))
        self.addCleanup(direct.close)
        self.assertEqual(direct.get(b"default\0shared/x"), b"1")
        self.assertIsNone(direct.get(b"shared/x"))
        # etcd's JSON gateway works in front of the cluster too: written through A's,
        # read through B's, in the same keyspace.
        status, _ = gateway(self.nodes[0].port, "kv/put", {"key": "c2hhcmVkL3k=", "value": "Mg=="})
        self.assertEqual(status, 200)
        status, answer = gateway(self.nodes[1].port, "kv/range", {"key": "c2hhcmVkL3k="})
        self.assertEqual((status, answer["kvs"][0]["value"]), (200, "Mg=="))
        self.assertEqual(direct.get(b"default\0shared/y"), b"2")

    def test_watch_fragment(self) -> None:
        """
        A client watch created with ``fragment`` gets a revision larger than Lattice's
        request limit in several responses under the limit, every one but the last marked,
        which join into the revision's events; a watch without it (sharing the same upstream
        watch) gets the revision whole, as from etcd.
        """
        plain = self.b.watch(b"big/", b"big0", prev_kv=True)
        split = self.b.watch(b"big/", b"big0", prev_kv=True, fragment=True)
        for responses in (plain, split):
            self.assertTrue(responses.get(timeout=10).created)
        for i in range(10):
            self.a.put(b"big/%d" % i, b"x" * 10_000)
        for responses in (plain, split):
            for _ in range(10):
                next_events(responses)
        deleted: rpc_pb2.DeleteRangeResponse = self.a._unary(
            "KV",
            "DeleteRange",
            rpc_pb2.DeleteRangeRequest(key=b"big/", range_end=b"big0"),
            rpc_pb2.DeleteRangeResponse,
        )
        self.assertEqual(deleted.deleted, 10)
        whole = next_with_events(plain)
        self.assertEqual(len(whole.events), 10)
        self.assertGreater(whole.ByteSize(), MAX_REQUEST_BYTES)
        self.assertFalse(whole.fragment)
        parts = [next_with_events(split)]
        while parts[-1].fragment:
            parts.append(next_with_events(split))
        self.assertGreater(len(parts), 1)
        for part in parts:
            self.assertLessEqual(part.ByteSize(), MAX_REQUEST_BYTES)
            self.assertEqual(part.header.revision, deleted.header.revision)
        joined = [event for part in parts for event in part.events]
        self.assertEqual(joined, list(whole.events))
        self.assertEqual(
            [(e.kv.key, len(e.prev_kv.value)) for e in joined],
            [(b"big/%d" % i, 10_000) for i in range(10)],
        )

    def test_member_failures(self) -> None:
        """One member down: all works; two down: linearizable calls fail as mapped; recovery."""
        acknowledged: dict[bytes, bytes] = {}

        def put(client: Client, key: bytes, value: bytes) -> bool:
            client.put(key, value)
            acknowledged[key] = value
            return True

        def watched(*keys: bytes) -> set[bytes]:
            seen: set[bytes] = set()
            while not seen.issuperset(keys):
                seen.update(e.kv.key for e in next_events(watch, timeout=15))
            return seen

        watch = self.b.watch(b"k/", b"k0")
        self.assertTrue(watch.get(timeout=10).created)
        put(self.a, b"k/0", b"v0")
        self.assertEqual([e.kv.key for e in next_events(watch)], [b"k/0"])
        self.cluster.kill("m0")
        # Every operation keeps working through both nodes (etcd elects a new leader if m0
        # led: allow for the election).
        self.wait_for(lambda: put(self.a, b"k/1", b"v1"))
        put(self.b, b"k/2", b"v2")
        self.assertEqual(self.b.get(b"k/1"), b"v1")
        self.assertEqual(self.a.get(b"k/2"), b"v2")
        self.assertEqual(readyz(self.nodes[0].port)[0], 200)
        # The watch through B resumed on a surviving member without losing events.
        self.assertEqual(watched(b"k/1", b"k/2"), {b"k/1", b"k/2"})

        self.cluster.kill("m1")
        # Without quorum: linearizable writes and reads fail with the mapped error.
        for client in (self.a, self.b):
            with self.assertRaises(grpc.RpcError) as raised:
                client.put(b"k/3", b"v3")
            self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertIn("linearizability unavailable", raised.exception.details())
            with self.assertRaises(grpc.RpcError) as raised:
                client.get(b"k/1")
            self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertIn("linearizability unavailable", raised.exception.details())
            # Serializable reads are served by the surviving member.
            self.assertEqual(client.get(b"k/1", serializable=True), b"v1")
        # Readiness says so.
        _status, body = self.wait_for(
            lambda: (r := readyz(self.nodes[1].port))[0] == 503 and r, timeout=10
        )
        self.assertIn("linearizability unavailable", body)

        self.cluster.start("m0")
        self.cluster.start("m1")
        self.wait_for(lambda: put(self.a, b"k/4", b"v4"), timeout=30)
        put(self.b, b"k/5", b"v5")
        self.wait_for(lambda: readyz(self.nodes[1].port)[0] == 200)
        # k/3 was refused without quorum, but etcd may still commit it once the proposal
        # reaches a quorum: UNAVAILABLE means "unknown", like a timeout.
        self.assertLessEqual(watched(b"k/4", b"k/5"), {b"k/3", b"k/4", b"k/5"})
        for client in (self.a, self.b):
            stored = {kv.key: kv.value for kv in client.range(b"k/", b"k0").kvs}
            # No acknowledged write is lost.
            self.assertEqual({k: stored.get(k) for k in acknowledged}, acknowledged)
            self.assertLessEqual(set(stored) - set(acknowledged), {b"k/3"})
