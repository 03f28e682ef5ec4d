"""
The KV store's Prometheus metrics (names from ``spec/kv.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["KVMetrics"]


class KVMetrics:
    """Every metric of the KV listener, registered in one registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        revision: Callable[[], float],
        leases: Callable[[], float],
    ) -> None:
        self.revision = Gauge(
            "lattice_kv_revision", "Current revision of the KV store.", registry=registry
        )
        self.revision.set_function(revision)
        self.requests = Counter(
            "lattice_adapter_etcd_requests",
            "etcd API requests received, by method.",
            ["method"],
            registry=registry,
        )
        self.errors = Counter(
            "lattice_adapter_etcd_errors",
            "etcd API requests that failed, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "lattice_adapter_etcd_request_duration_seconds",
            "Time to answer an etcd API request (unary methods), by method.",
            ["method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.watch_streams = Gauge(
            "lattice_watch_active_streams", "Open Watch streams.", registry=registry
        )
        self.leases = Gauge("lattice_lease_active_leases", "Live leases.", registry=registry)
        self.leases.set_function(leases)
        self.can_linearize = Gauge(
            "lattice_lin_bound_can_linearize",
            "1 when reads can be served linearizably (always, for a standalone node).",
            registry=registry,
        )
        self.can_linearize.set(1)
        self.cache_state = Gauge(
            "lattice_cp_cache_state",
            "Control-plane cache state: 1 fresh (a standalone node is always fresh), 0 stale.",
            registry=registry,
        )
        self.cache_state.set(1)
        self._requests: dict[str, Any] = {}
        self._latency: dict[str, Any] = {}

    def request(self, method: str) -> None:
        """Count one request (label children are cached: this is on every call's path)."""
        child = self._requests.get(method)
        if child is None:
            child = self._requests[method] = self.requests.labels(method)
        child.inc()

    def observe(self, method: str, seconds: float) -> None:
        """Record one call's latency."""
        child = self._latency.get(method)
        if child is None:
            child = self._latency[method] = self.latency.labels(method)
        child.observe(seconds)
