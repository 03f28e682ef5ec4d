"""
Gossip convergence benchmark: the real discovery protocol code
(L{lattice.discovery.DiscoveryNode}: bootstrap with endpoint proof, push-pull
anti-entropy, pending records proven before they are forwarded, neighbor
top-up) for N nodes in one process over an in-memory transport.

Run from the repository root::

    .venv/bin/python bench/gossip_convergence.py [--sizes 100,1000] [--real-crypto]

Topology: node 0 starts alone; node i bootstraps from a random earlier node
(servers that joined over time through different bootstrap servers).  A
round is one gossip timer tick at every node, in a random order, as with
unsynchronised timers.  Convergence: every node holds the proven record of
every other node.  "Messages" are requests a node sends (digest, push,
announcement fetches for proofs and bootstrap).

Every server proves every other server's endpoint once (N^2 proofs in all),
so the work and memory grow with N^2: N = 1,000 takes about two minutes here;
N = 10,000 (``--sizes 10000``) needs about 100 times that and tens of GB of
memory (10^8 records held), so it is not in the default run.

Signatures use a cheap stand-in (L{lattice.discovery.testing.FastKey}) by
default so that the N^2 record checks fit in one process; the protocol code
is the same.  C{--real-crypto} uses Ed25519 keys instead.

The last line is ``gossip_convergence n100_rounds=... n1000_rounds=...
n1000_bound=... n1000_msgs_per_node_round=... ...``.
"""

from __future__ import annotations

import argparse
import functools
import math
import operator
import random
import time

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

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


def run(n: int, seed: int, real_crypto: bool, max_rounds: int) -> tuple[int, float, float, float]:
    rng = random.Random(seed)
    clock = Clock()
    clock.advance(1_800_000_000)
    network, nodes = build(n, rng, real_crypto, clock)
    started = time.perf_counter()
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        clock.advance(600)
        order = list(nodes)
        rng.shuffle(order)
        for node in order:
            result = Deferred.fromCoroutine(node.gossip_round())
            assert result.called, "the in-memory network answers synchronously"
        known = sum(len(node.table.records) for node in nodes)
        if known == n * (n - 1):
            break
    else:
        rounds = -1
    elapsed = time.perf_counter() - started
    messages = sum(network.sent.values()) / n / max(1, abs(rounds))
    gossip = network.kinds["/api/v1/gossip/receive"] / n / max(1, abs(rounds))
    print(
        f"N={n}: {'converged in ' + str(rounds) + ' rounds' if rounds > 0 else 'NOT converged'}"
        f" (bound 2*log2(N) = {2 * math.log2(n):.1f}), {messages:.2f} messages per node per round"
        f" ({gossip:.2f} gossip, the rest announcement fetches for endpoint proofs),"
        f" {elapsed:.1f}s",
        flush=True,
    )
    return rounds, messages, gossip, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--real-crypto", action="store_true")
    parser.add_argument("--max-rounds", type=int, default=60)
    args = parser.parse_args()
    figures = []
    for size in (int(s) for s in args.sizes.split(",")):
        rounds, messages, gossip, elapsed = run(size, args.seed, args.real_crypto, args.max_rounds)
        figures.append(f"n{size}_rounds={rounds}")
        figures.append(f"n{size}_bound={2 * math.log2(size):.1f}")
        figures.append(f"n{size}_msgs_per_node_round={messages:.2f}")
        figures.append(f"n{size}_gossip_msgs_per_node_round={gossip:.2f}")
        figures.append(f"n{size}_seconds={elapsed:.1f}")
    print("gossip_convergence " + " ".join(figures))


if __name__ == "__main__":
    main()
