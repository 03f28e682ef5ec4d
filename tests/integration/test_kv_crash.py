"""
Crash safety: SIGKILL the daemon during a concurrent put load, restart it, and find every
acknowledged write and no transaction half-applied; a corrupted database stops start-up.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

from twisted.trial.unittest import SynchronousTestCase

from ._daemon import child_environment
from .test_kv_etcdctl import KVDaemon, require, running_daemon

# A child that writes as fast as it can with 16 concurrent workers (grpcio asyncio) and
# prints each write once acknowledged: "P <key> <value>" for puts, "T <prefix>" for
# transactions that write <prefix>/a and <prefix>/b together.
LOAD = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from lattice.kv._proto import rpc_pb2 as pb

    async def worker(channel, n, run):
        put = channel.unary_unary(
            "/etcdserverpb.KV/Put",
            request_serializer=pb.PutRequest.SerializeToString,
            response_deserializer=pb.PutResponse.FromString,
        )
        txn = channel.unary_unary(
            "/etcdserverpb.KV/Txn",
            request_serializer=pb.TxnRequest.SerializeToString,
            response_deserializer=pb.TxnResponse.FromString,
        )
        i = 0
        while True:
            i += 1
            try:
                if i % 4:
                    key = f"{run}/p/{n}/{i}".encode()
                    await put(pb.PutRequest(key=key, value=b"v%d" % i), timeout=10)
                    sys.stdout.write(f"P {key.decode()} v{i}\\n")
                else:
                    prefix = f"{run}/t/{n}/{i}"
                    ops = []
                    for x in "ab":
                        one = pb.PutRequest(key=f"{prefix}/{x}".encode(), value=x.encode())
                        ops.append(pb.RequestOp(request_put=one))
                    await txn(pb.TxnRequest(success=ops), timeout=10)
                    sys.stdout.write(f"T {prefix}\\n")
                sys.stdout.flush()
            except grpc.RpcError:
                return

    async def main(port, run):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.gather(*(worker(channel, n, run) for n in range(16)))

    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
    """
)


class CrashTests(SynchronousTestCase):
    """SIGKILL under load loses nothing acknowledged and half-applies nothing."""

    def load_until_killed(self, kv: KVDaemon, run: str, acks_before_kill: int) -> list[str]:
        """Run the load, SIGKILL the daemon after ``acks_before_kill`` acks; return the acks."""
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, str(kv.port), run],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=child_environment(),
        )
        acks: list[str] = []
        killed = threading.Event()
        assert load.stdout is not None
        for raw in load.stdout:
            acks.append(raw.decode().strip())
            if len(acks) == acks_before_kill and not killed.is_set():
                killed.set()
                self.assertEqual(kv.kill(signal.SIGKILL), -signal.SIGKILL)
        load.wait(timeout=60)
        self.assertTrue(killed.is_set(), f"only {len(acks)} writes acknowledged")
        return acks

    def test_sigkill_during_load(self) -> None:
        """Three kills at different points: every acknowledged write survives each restart."""
        require("etcdctl")
        kv = running_daemon(self)
        acknowledged: list[str] = []
        for run, count in (("r1", 40), ("r2", 700), ("r3", 2500)):
            acknowledged += self.load_until_killed(kv, run, count)
            kv.start()
            stored = self.dump(kv)
            for ack in acknowledged:
                kind, rest = ack.split(" ", 1)
                if kind == "P":
                    key, value = rest.split(" ")
                    self.assertEqual(stored.get(key), value, f"acknowledged put lost: {ack}")
                else:
                    self.assertEqual(
                        (stored.get(f"{rest}/a"), stored.get(f"{rest}/b")), ("a", "b"), ack
                    )
            for key in stored:
                if "/t/" in key:
                    prefix = key.rsplit("/", 1)[0]
                    self.assertIn(f"{prefix}/a", stored, "half-applied transaction")
                    self.assertIn(f"{prefix}/b", stored, "half-applied transaction")

    def dump(self, kv: KVDaemon) -> dict[str, str]:
        lines = kv.etcdctl("get", "", "--from-key").splitlines()
        return dict(zip(lines[0::2], lines[1::2], strict=True))

    def test_corrupt_database(self) -> None:
        """A damaged database file makes start-up fail with a clear message."""
        kv = running_daemon(self)
        for i in range(4):
            kv.etcdctl("put", f"k{i}", "x" * 500)
        kv.stop()
        path = kv.directory / "state" / "kv.sqlite"
        data = bytearray(path.read_bytes())
        for offset in range(4096, len(data), 5):
            data[offset] = 0x5A
        path.write_bytes(bytes(data))
        for suffix in ("-wal", "-shm"):
            (path.parent / (path.name + suffix)).unlink(missing_ok=True)
        with self.assertRaises(AssertionError) as raised:
            kv.start()
        message = str(raised.exception)
        self.assertIn("daemon exited", message)
        self.assertIn("refusing to start", message)
        self.assertIn(str(path), message)
