"""
Leases: time-to-live handles that keys attach to (etcd's ``lease.Lessor``, minus storage).

Time comes from an injected ``clock`` (monotonic seconds).  The lessor only keeps the books;
deleting an expired lease's keys (in one revision) is the store's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lattice.kv._errors import lease_exists, lease_not_found

__all__ = ["Lease", "Lessor"]


@dataclass(slots=True)
class Lease:
    """One lease: its TTL, when it expires, its keys and the tenant that owns it."""

    id: int
    ttl: int
    tenant: str
    expiry: float
    keys: set[bytes] = field(default_factory=set)

    def remaining(self, now: float) -> int:
        """
        Whole seconds left, the fraction dropped as etcd 3.4 does (59 just after a grant
        of 60); -1 once expired.
        """
        left = self.expiry - now
        return int(left) if left > 0 else -1


class Lessor:
    """The set of live leases."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._leases: dict[int, Lease] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._leases)

    def leases(self) -> list[Lease]:
        """Every live lease."""
        return list(self._leases.values())

    def new_id(self, random_id: Callable[[], int]) -> int:
        """A positive ID not in use, drawn from ``random_id``."""
        while True:
            candidate = random_id() & 0x7FFFFFFFFFFFFFFF
            if candidate and candidate not in self._leases:
                return candidate

    def grant(self, lease_id: int, ttl: int, tenant: str) -> Lease:
        """Create a lease that expires ``ttl`` seconds from now."""
        if lease_id in self._leases:
            raise lease_exists()
        lease = Lease(lease_id, ttl, tenant, self._clock() + ttl)
        self._leases[lease_id] = lease
        return lease

    def restore(self, lease_id: int, ttl: int, tenant: str) -> Lease:
        """Bring back a persisted lease with a full TTL from now (as etcd does on restart)."""
        lease = Lease(lease_id, ttl, tenant, self._clock() + ttl)
        self._leases[lease_id] = lease
        return lease

    def lookup(self, lease_id: int, tenant: str | None = None) -> Lease:
        """The live lease ``lease_id`` (owned by ``tenant`` when given)."""
        lease = self._leases.get(lease_id)
        if lease is None or (tenant is not None and lease.tenant != tenant):
            raise lease_not_found()
        return lease

    def remove(self, lease_id: int) -> Lease:
        """Forget a lease (revoked or expired); its keys are the caller's to delete."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise lease_not_found()
        return lease

    def renew(self, lease_id: int, tenant: str | None = None) -> Lease:
        """Restart a lease's TTL from now; a lease past its expiry cannot be renewed."""
        lease = self.lookup(lease_id, tenant)
        now = self._clock()
        if lease.expiry <= now:
            raise lease_not_found()
        lease.expiry = now + lease.ttl
        return lease

    def attach(self, lease_id: int, key: bytes) -> None:
        """Record that ``key`` is held by ``lease_id``."""
        if lease_id:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        """Record that ``key`` is no longer held by ``lease_id``."""
        if lease_id:
            lease = self._leases.get(lease_id)
            if lease is not None:
                lease.keys.discard(key)

    def expired(self) -> list[Lease]:
        """The leases whose time is up, oldest expiry first."""
        now = self._clock()
        due = [lease for lease in self._leases.values() if lease.expiry <= now]
        due.sort(key=lambda lease: lease.expiry)
        return due

    def now(self) -> float:
        """The lessor's clock."""
        return self._clock()
