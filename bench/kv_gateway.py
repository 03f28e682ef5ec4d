"""
etcd's HTTP/JSON gateway, Lattice's against Debian's etcd, side by side on loopback.

Run from the repository root (needs the ``etcd-server`` package)::

    .venv/bin/python bench/kv_gateway.py [--seconds 3] [--clients 8]

Both servers are started as in ``bench/kv_vs_etcd.py`` (fresh data directories, fsync on
every commit).  ``--clients`` threads, each with one keep-alive HTTP/1.1 connection
(``http.client``), post the same JSON requests for ``--seconds`` per measure:

- ``put``: ``/v3/kv/put`` of distinct keys with 100-byte values;
- ``range``: ``/v3/kv/range`` of one existing key.

Servers are measured alternately, twice each, and the better of the two runs is kept.  The
last line is ``kv_gateway put=<ratio> range=<ratio>``, each Lattice/etcd requests per second.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from kv_vs_etcd import start_etcd, start_lattice, stop  # noqa: E402

VALUE = base64.b64encode(b"v" * 100).decode()


def rate(
    port: int, clients: int, seconds: float, body: Callable[[int, int], bytes], route: str
) -> float:
    """Requests per second over ``clients`` connections posting ``body(client, n)``."""
    counts = [0] * clients
    deadline = time.monotonic() + seconds
    errors: list[str] = []

    def run(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        try:
            while time.monotonic() < deadline:
                connection.request("POST", f"/v3/{route}", body=body(index, n))
                response = connection.getresponse()
                data = response.read()
                if response.status != 200:
                    errors.append(data.decode(errors="replace"))
                    return
                n += 1
        finally:
            counts[index] = n
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{route} failed on port {port}: {errors[0]}")
    return sum(counts) / (time.monotonic() - started)


def put_body(client: int, n: int) -> bytes:
    key = base64.b64encode(b"bench/%d/%d" % (client, n)).decode()
    return json.dumps({"key": key, "value": VALUE}).encode()


def range_body(client: int, n: int) -> bytes:
    return json.dumps({"key": base64.b64encode(b"bench/0/0").decode()}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "lattice").mkdir()
        etcd, etcd_port = start_etcd(directory)
        lattice, lattice_port = start_lattice(directory / "lattice")
        try:
            time.sleep(1.0)
            ports = {"etcd": etcd_port, "lattice": lattice_port}
            best: dict[tuple[str, str], float] = {}
            for _ in range(2):
                for measure, route, body in (
                    ("put", "kv/put", put_body),
                    ("range", "kv/range", range_body),
                ):
                    for name, port in ports.items():
                        value = rate(port, args.clients, args.seconds, body, route)
                        best[(measure, name)] = max(best.get((measure, name), 0.0), value)
        finally:
            stop(lattice)
            stop(etcd)
    print(f"{'measure':10} {'etcd':>10} {'lattice':>10} {'ratio':>7}")
    ratios = []
    for measure in ("put", "range"):
        reference, ours = best[(measure, "etcd")], best[(measure, "lattice")]
        print(f"{measure:10} {reference:8.0f}/s {ours:8.0f}/s {ours / reference:7.2f}")
        ratios.append(f"{measure}={ours / reference:.2f}")
    print("kv_gateway " + " ".join(ratios))


if __name__ == "__main__":
    main()
