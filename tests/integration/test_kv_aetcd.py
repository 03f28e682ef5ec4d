"""
A second etcd client library from PyPI, ``aetcd`` (asyncio, grpcio), against a real daemon.

The scenario runs in a child Python: aetcd registers etcd's protobuf messages under the same
names as ``lattice.kv`` does, and one process cannot hold both.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .test_kv_etcdctl import running_daemon

SCENARIO = textwrap.dedent(
    """
    import asyncio, sys
    import aetcd

    async def main(port):
        async with aetcd.Client(host="127.0.0.1", port=port) as client:
            put = await client.put(b"app/a", b"1")
            assert put.header.revision == 2, put
            await client.put(b"app/b", b"2")
            got = await client.get(b"app/a")
            assert (got.value, got.version, got.create_revision) == (b"1", 1, 2), got
            assert await client.get(b"missing") is None
            keys = [kv.key for kv in await client.get_prefix(b"app/")]
            assert keys == [b"app/a", b"app/b"], keys

            # A transaction: compare on value, one revision for both writes.
            t = client.transactions
            ok = await client.transaction(
                compare=[t.value(b"app/a") == b"1"],
                success=[t.put(b"app/c", b"3"), t.put(b"app/d", b"4")],
                failure=[t.put(b"app/fail", b"x")],
            )
            assert ok[0] is True, ok
            c, d = await client.get(b"app/c"), await client.get(b"app/d")
            assert c.mod_revision == d.mod_revision == 4, (c, d)

            # Watch from history, then live.
            watch = await client.watch_prefix(b"app/", start_revision=2)
            seen = []
            async def collect():
                async for event in watch:
                    seen.append((event.kind, event.kv.key))
                    if len(seen) == 5:
                        return
            task = asyncio.ensure_future(collect())
            await asyncio.sleep(0)
            await client.delete(b"app/a")
            await asyncio.wait_for(task, 10)
            await watch.cancel()
            assert [key for _, key in seen] == [
                b"app/a", b"app/b", b"app/c", b"app/d", b"app/a"], seen
            assert seen[-1][0] == aetcd.EventKind.DELETE, seen

            # Leases: keys go when the lease is revoked.
            lease = await client.lease(30)
            await client.put(b"leased", b"v", lease=lease)
            assert await lease.remaining_ttl() > 0
            assert list(await lease.keys()) == [b"leased"]
            refreshed = await lease.refresh()
            assert refreshed, refreshed
            await lease.revoke()
            assert await client.get(b"leased") is None

            status = await client.status()
            assert status.version.startswith("3."), status
            members = [m async for m in client.members()]
            assert len(members) == 1, members
        print("aetcd scenario ok")

    asyncio.run(main(int(sys.argv[1])))
    """
)


class AetcdTests(SynchronousTestCase):
    """aetcd's KV, transaction, watch, lease, status and member calls."""

    def test_scenario(self) -> None:
        """The aetcd scenario passes against Lattice."""
        if importlib.util.find_spec("aetcd") is None:
            raise SkipTest("aetcd is not installed (pip install aetcd)")
        kv = running_daemon(self)
        result = subprocess.run(
            [sys.executable, "-c", SCENARIO, str(kv.port)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(
            result.returncode, 0, result.stderr.decode() + result.stdout.decode() + kv.log()
        )
        self.assertIn(b"aetcd scenario ok", result.stdout)
