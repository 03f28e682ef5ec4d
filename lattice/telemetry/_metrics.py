"""
The node's Prometheus registry.

Each node owns one L{CollectorRegistry} (never the library's global one, so
tests and several nodes in one process stay apart).  Subsystems register
their C{lattice_*} metrics in it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from lattice.readiness import Readiness


class _ReadinessCollector(Collector):
    def __init__(self, readiness: Readiness):
        self._readiness = readiness

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "lattice_subsystem_ready",
            "1 when the subsystem serves, 0 while it starts or after it failed.",
            labels=["subsystem"],
        )
        for name, state in self._readiness.snapshot().items():
            family.add_metric([name], 1.0 if state.ready else 0.0)
        yield family


def new_registry(readiness: Readiness) -> CollectorRegistry:
    """
    A registry with process and platform metrics and subsystem readiness.
    """
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(_ReadinessCollector(readiness))
    return registry
