"""
Gossip convergence benchmark: the real discovery protocol code
(L{lattice.discovery.DiscoveryNode}: bootstrap with endpoint proof, push-pull
anti-entropy, pending records proven before they are forwarded, neighbor
top-up) for N nodes in one process over an in-memory transport.

Run from the repository root::

    .venv/bin/python bench/gossip_convergence.py [--sizes 100,1000] [--large] [--real-crypto]

Topology: node 0 starts alone; node i bootstraps from a random earlier node
(servers that joined over time through different bootstrap servers).  A
round is one gossip timer tick at every node, in a random order, as with
unsynchronised timers.  Convergence: every node holds the proven record of
every other node.  "Messages" are requests a node sends (digest, push,
announcement fetches for proofs and bootstrap).

Every server proves every other server's endpoint once: the protocol makes
a server accept a record only after the record's server answered a fresh
challenge at its announced endpoint, so there are N^2 proofs, N^2 record
checks and N^2 table entries in all, and the run time and memory grow with
N^2.  The simulation keeps them small (records and keys are shared between
the nodes' tables, the endpoint memory drops expired entries in bulk, parsed
keys, key ids and decoded signatures are cached process-wide): N = 1,000
takes about 50 s of CPU and 230 MiB on this 2-core machine (it took 92 s and
790 MiB before those changes).

N = 10,000 is not in the default run: it is behind ``--large`` (or
``--sizes 10000``).  It makes 100 times the proofs of N = 1,000, at 50 to
60 us of CPU each; measured on this machine (2 cores, the run on one):
converged in 7 rounds (bound 26.6), 1,432 messages per node per round
(3.98 of them gossip), 6,383 s of CPU and a peak RSS of 9.8 GiB.  It prints
a progress line per round.  ``--max-memory``
(default 20 GiB) caps the address space, so a run that does not fit stops
with a MemoryError instead of waking the OOM killer.

Signatures use a cheap stand-in (L{lattice.discovery.testing.FastKey}) by
default so that the N^2 record checks fit in one process; the protocol code
is the same.  C{--real-crypto} uses Ed25519 keys instead.

The last line is ``gossip_convergence n100_rounds=... n1000_rounds=...
n1000_bound=... n1000_msgs_per_node_round=... ... n1000_cpu_seconds=...
n1000_peak_rss_mib=...``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import operator
import random
import resource
import time

from twisted.internet.defer import Deferred, FirstError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from lattice.discovery._node import DiscoveryNode, Settings
from lattice.discovery._records import verify_signature
from lattice.discovery.testing import FastKey, MemoryNetwork, fast_verify
from lattice.identity import NodeIdentity


def build(
    n: int, rng: random.Random, real_crypto: bool, clock: Clock
) -> tuple[MemoryNetwork, list[DiscoveryNode]]:
    network = MemoryNetwork(copy=False)
    nodes: list[DiscoveryNode] = []
    for i in range(n):
        endpoint = f"http://n{i}.bench.test"
        bootstrap = ((f"http://n{rng.randrange(i)}.bench.test", None),) if i else ()
        key = NodeIdentity.generate() if real_crypto else FastKey()
        holder: list[DiscoveryNode] = []
        node = DiscoveryNode(
            identity=key,
            public_key=key.public_key,
            settings=Settings(server_name=f"n{i}", endpoints=(endpoint,), bootstrap=bootstrap),
            clock=clock,
            store=None,
            run=None,
            transport=network.transport(functools.partial(operator.itemgetter(0), holder)),
            webhook=None,
            rng=random.Random(rng.random()),
            verify=verify_signature if real_crypto else fast_verify,
        )
        holder.append(node)
        network.add(endpoint, node)
        nodes.append(node)
    for node in nodes:
        done = Deferred.fromCoroutine(node.start())
        assert done.called
    return network, nodes


def _rss_mb() -> float:
    """
    The process's peak resident set size so far, in MiB.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(
    n: int, seed: int, real_crypto: bool, max_rounds: int, progress: bool
) -> tuple[int, float, float, float, float]:
    rng = random.Random(seed)
    clock = Clock()
    clock.advance(1_800_000_000)
    network, nodes = build(n, rng, real_crypto, clock)
    started = time.perf_counter()
    cpu = _cpu_seconds()
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        clock.advance(600)
        order = list(nodes)
        rng.shuffle(order)
        for node in order:
            result = Deferred.fromCoroutine(node.gossip_round())
            assert result.called, "the in-memory network answers synchronously"
            failures: list[Failure] = []
            result.addErrback(failures.append)
            if failures:
                failure = failures[0]
                while isinstance(failure.value, FirstError):
                    failure = failure.value.subFailure
                failure.raiseException()  # MemoryError included
        known = sum(len(node.table.records) for node in nodes)
        if progress:
            print(
                f"  N={n} round {rounds}: {known / (n * (n - 1)):.4f} of all records proven,"
                f" {time.perf_counter() - started:.0f}s, peak RSS {_rss_mb():.0f} MiB",
                flush=True,
            )
        if known == n * (n - 1):
            break
    else:
        rounds = -1
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    messages = sum(network.sent.values()) / n / max(1, abs(rounds))
    gossip = network.kinds["/api/v1/gossip/receive"] / n / max(1, abs(rounds))
    print(
        f"N={n}: {'converged in ' + str(rounds) + ' rounds' if rounds > 0 else 'NOT converged'}"
        f" (bound 2*log2(N) = {2 * math.log2(n):.1f}), {messages:.2f} messages per node per round"
        f" ({gossip:.2f} gossip, the rest announcement fetches for endpoint proofs),"
        f" {elapsed:.1f}s ({cpu:.1f}s CPU), peak RSS {_rss_mb():.0f} MiB",
        flush=True,
    )
    return rounds, messages, gossip, elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument(
        "--large", action="store_true", help="also run N = 10,000 (see the module docstring)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--real-crypto", action="store_true")
    parser.add_argument("--max-rounds", type=int, default=60)
    parser.add_argument(
        "--max-memory",
        type=float,
        default=20.0,
        help="address space limit in GiB (default 20): past it the run stops with "
        "MemoryError instead of pushing the machine into the OOM killer",
    )
    args = parser.parse_args()
    limit = int(args.max_memory * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.large and 10_000 not in sizes:
        sizes.append(10_000)
    figures = []
    for size in sizes:
        try:
            rounds, messages, gossip, elapsed, cpu = run(
                size, args.seed, args.real_crypto, args.max_rounds, progress=size >= 5000
            )
        except MemoryError:
            gc.collect()
            print(f"N={size}: out of memory (limit {args.max_memory} GiB)", flush=True)
            figures.append(f"n{size}_rounds=oom")
            continue
        figures.append(f"n{size}_rounds={rounds}")
        figures.append(f"n{size}_bound={2 * math.log2(size):.1f}")
        figures.append(f"n{size}_msgs_per_node_round={messages:.2f}")
        figures.append(f"n{size}_gossip_msgs_per_node_round={gossip:.2f}")
        figures.append(f"n{size}_seconds={elapsed:.1f}")
        figures.append(f"n{size}_cpu_seconds={cpu:.1f}")
        figures.append(f"n{size}_peak_rss_mib={_rss_mb():.0f}")
        gc.collect()
    print("gossip_convergence " + " ".join(figures))


if __name__ == "__main__":
    main()
