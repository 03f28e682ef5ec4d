"""
The service registry: descriptors, consent, the reconciler and daemon supervision.

See ``docs/registry.rst``.
"""

from lattice.registry._cluster import ClusterStoreAdapter
from lattice.registry._descriptor import (
    KERNEL_SERVICES,
    IServiceDescriptor,
    ServiceDescriptor,
    load_descriptors,
)
from lattice.registry._local import LocalState, LocalStateError
from lattice.registry._policy import (
    Consent,
    Decision,
    EntryInvalid,
    Policy,
    ServiceEntry,
    parse_entry,
    parse_policy,
    should_run,
)
from lattice.registry._reconciler import Planned, Reconciler
from lattice.registry._schema import validate
from lattice.registry._store import KeyValueStore, KVStoreAdapter, StoredValue, StoreEvent
from lattice.registry._supervisor import Child, ProcessSupervisor, parse_ready_line
from lattice.registry.service import RegistryService

__all__ = [
    "KERNEL_SERVICES",
    "Child",
    "ClusterStoreAdapter",
    "Consent",
    "Decision",
    "EntryInvalid",
    "IServiceDescriptor",
    "KVStoreAdapter",
    "KeyValueStore",
    "LocalState",
    "LocalStateError",
    "Planned",
    "Policy",
    "ProcessSupervisor",
    "Reconciler",
    "RegistryService",
    "ServiceDescriptor",
    "ServiceEntry",
    "StoreEvent",
    "StoredValue",
    "load_descriptors",
    "parse_entry",
    "parse_policy",
    "parse_ready_line",
    "should_run",
    "validate",
]
